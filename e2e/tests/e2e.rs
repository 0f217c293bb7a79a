//! End to end: the chart installs the operator; Secrets and the 2000-sensor
//! example bridge are applied; the bridge pods run as their template says
//! (see `e2e::kubelet`) and their readiness is what the operator reports;
//! a sensor fleet publishes and its readings arrive in Kafka (keys,
//! partitions, payloads) and back on MQTT; Kafka is restarted mid-stream
//! without loss while readiness and the CR say it is down; a route change
//! rolls the pods; deleting the CR deletes everything it created.
//!
//! Everything has unique names (namespaces, topics, MQTT topic root, client
//! ids, groups): other tests share the servers. The bridge pods run as
//! containers of the bridge image (built from the test binaries with
//! `cargo xtask images`, private podman storage; podman refuses a run root
//! longer than 50 characters, hence /tmp/mkb-<pid>); `E2E_RUNTIME=process`
//! runs the binary as a local process instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::install::{self, BridgeNames, Guard};
use e2e::kubelet::{Kubelet, Podman, Runtime, Settings};
use e2e::{Servers, records, run};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;
use sensor_fleet::simulate::{
    Fleet, KafkaSim, MqttSim, SimCounters, simulate_kafka, simulate_mqtt_with,
};
use sensor_fleet::verify::{self, Control, MqttSub};
use sensor_fleet::{Expected, MqttEndpoint};

const BRIDGE: &str = "sensor-fleet";
const LABEL: &str = "mqttkafka.io/bridge=sensor-fleet";
const WAIT: &str = "--timeout=180s";

/// Deletes what the test created, however it ends.
struct Cleanup {
    servers: Servers,
    namespaces: Vec<String>,
    dir: PathBuf,
    podman: Option<Podman>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pm) = &self.podman {
            // vfs layers are full copies: drop the private store.
            let _ = e2e::output(pm.command().args(["rm", "--all", "--force"]), None);
            let _ = std::fs::remove_dir_all(&pm.storage);
        }
        for ns in &self.namespaces {
            let _ = e2e::output(
                self.servers
                    .kubectl()
                    .args(["delete", "namespace", ns, "--wait=false"]),
                None,
            );
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("e2e: logs kept in {}", self.dir.display());
        }
    }
}

/// `target/<profile>/<name>`, built by `cargo test --workspace`.
fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: `cargo xtask test` builds it (or `cargo build -p {name}`)",
        path.display()
    );
    path
}

fn step(t0: Instant, what: &str) {
    eprintln!("e2e [{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The CR's Ready condition: (status, reason, message, observedGeneration).
fn ready_condition(s: &Servers, ns: &str) -> Option<(String, String, String, i64)> {
    let out = run(
        s.kubectl()
            .args(["get", "mkb", BRIDGE, "-n", ns, "-o", "json"]),
        None,
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let c = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((
        text("status"),
        text("reason"),
        text("message"),
        c["observedGeneration"].as_i64().unwrap_or(0),
    ))
}

fn kubectl_wait_ready(s: &Servers, ns: &str) {
    run(
        s.kubectl().args([
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &format!("mkb/{BRIDGE}"),
            WAIT,
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("kubectl wait: {e:#}"));
}

async fn publish(
    s: &Servers,
    root: &str,
    sub_root: &str,
    prefix: &str,
    sensors: usize,
    secs: u64,
) -> sensor_fleet::simulate::SimSummary {
    publish_with(s, root, sub_root, prefix, sensors, secs, Arc::default()).await
}

/// `sensors` sensors at 5 Hz for `secs` on `<root><sub_root>sensors/<id>/temperature`.
async fn publish_with(
    s: &Servers,
    root: &str,
    sub_root: &str,
    prefix: &str,
    sensors: usize,
    secs: u64,
    counters: Arc<SimCounters>,
) -> sensor_fleet::simulate::SimSummary {
    let mut fleet = Fleet::new(sensors, 5.0, Duration::from_secs(secs));
    fleet.id_prefix = prefix.into();
    fleet.topic_template = format!("{root}{sub_root}sensors/{{id}}/temperature");
    let mut sim = MqttSim::new(fleet, s.mqtt());
    sim.connections = 2;
    sim.client_id_prefix = format!("{}-{prefix}", root.trim_end_matches('/'));
    sim.drain_timeout = Duration::from_secs(30);
    // The simulator's clean session loses its in-flight publishes when
    // another test restarts the shared broker mid-run; that is no fault of
    // the bridge, so publish the same readings again (the checks count
    // distinct readings, as an at-least-once consumer must).
    let mut counters = counters;
    for attempt in 1..=3 {
        let summary = simulate_mqtt_with(&sim, counters).await.unwrap();
        // The counters add up over a run: a retry gets its own.
        counters = Arc::default();
        if summary.acked == summary.published && summary.errors == 0 {
            return summary;
        }
        eprintln!(
            "e2e: fleet {prefix} attempt {attempt}: the broker acknowledged {} of {} publishes \
             ({} connection errors: a broker restart?); publishing it again",
            summary.acked, summary.published, summary.errors
        );
    }
    panic!("fleet {prefix}: the broker never acknowledged every publish in 3 attempts");
}

/// Waits until both bridges run (with one of `hashes` as configuration)
/// and the kubelet wrote their own Ready=True to their pods.
async fn bridges_ready(
    kubelet: &Kubelet,
    hashes: Option<&[String]>,
    fail: &dyn Fn(&str) -> String,
) {
    let start = Instant::now();
    loop {
        let r = kubelet.running();
        let ok = r.len() == 2
            && r.iter().all(|c| {
                c.reported == Some(true)
                    && hashes.is_none_or(|h| c.config_hash.as_ref().is_some_and(|x| h.contains(x)))
            });
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{}",
            fail(&format!("bridges not ready after 180 s: {r:?}"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `sensors` sensors at 5 Hz for `secs` produced straight to the Kafka
/// topic, keyed by sensor id: records from a producer other than the bridge.
async fn produce(s: &Servers, topic: &str, prefix: &str, sensors: usize, secs: u64) -> Expected {
    let mut fleet = Fleet::new(sensors, 5.0, Duration::from_secs(secs));
    fleet.id_prefix = prefix.into();
    let sim = KafkaSim {
        fleet,
        endpoint: s.kafka(),
        topic: topic.into(),
        drain_timeout: Duration::from_secs(60),
        progress: None,
    };
    let summary = simulate_kafka(&sim).await.unwrap();
    assert_eq!(
        summary.acked, summary.published,
        "Kafka acknowledged fleet {prefix}: {summary:?}"
    );
    summary.expected
}

fn expected_of(list: &[&Expected]) -> Expected {
    let mut e = Expected::default();
    for x in list {
        e.merge(x);
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_kubectl_apply_to_sensor_data_and_back() {
    let t0 = Instant::now();
    let s = Servers::from_env().unwrap();
    let id = testenv::unique_name("e2e");
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let (op_ns, ns) = (format!("{id}-op"), format!("{id}-br"));
    let mut cleanup = Cleanup {
        servers: s.clone(),
        namespaces: vec![ns.clone(), op_ns.clone()],
        dir: dir.clone(),
        podman: None,
    };
    let client = s.kube_client().await.unwrap();

    // 1. The chart: CRD (already installed, shared), RBAC for the watched
    //    namespace, ServiceAccount; the operator under that account's token.
    // The bridge image with podman by default; E2E_RUNTIME=process runs the
    // binary as a local process instead (no podman needed).
    let podman = std::env::var("E2E_RUNTIME").map_or(true, |v| v != "process");
    let image = "localhost/mqtt-kafka-bridge:e2e";
    let runtime = if podman {
        let pm =
            Podman::new(&std::env::temp_dir().join(format!("mkb-{}", std::process::id()))).unwrap();
        cleanup.podman = Some(pm.clone());
        step(t0, "building the bridge image (podman runtime)");
        run(
            std::process::Command::new(testenv::var("TESTENV_CTL"))
                .args(["images", "--tag", "e2e", "--bin-dir"])
                .arg(cargo_bin("bridge-runtime").parent().unwrap())
                .args(pm.root_args()),
            None,
        )
        .unwrap();
        Runtime::Podman(pm)
    } else {
        Runtime::Process {
            binary: cargo_bin("bridge-runtime"),
        }
    };
    install::create_namespace(&s, &ns).unwrap();
    let release = "mko";
    install::helm_install(&s, &dir.join("helm"), release, &op_ns, &ns, image).unwrap();
    let kubeconfig = dir.join("operator.kubeconfig");
    install::token_kubeconfig(&s, release, &op_ns, "30m", &kubeconfig).unwrap();
    let op_http: std::net::SocketAddr = ([127, 0, 0, 1], e2e::free_port().unwrap()).into();
    let operator_log = dir.join("operator.log");
    let _operator = Guard(Some(
        install::start_operator(
            &cargo_bin("operator"),
            &kubeconfig,
            &ns,
            image,
            op_http,
            &operator_log,
        )
        .unwrap(),
    ));
    step(
        t0,
        "operator installed with the chart and running under its ServiceAccount",
    );

    // 2. Topic, Secrets, the example bridge.
    let kafka_topic = format!("sensor_data.{id}");
    sensor_fleet::conn::create_topic(&s.kafka(), &kafka_topic, 10)
        .await
        .unwrap();
    install::create_secrets(&s, &ns).unwrap();
    let root = format!("{id}/");
    let names = BridgeNames {
        name: BRIDGE.into(),
        mqtt_root: root.clone(),
        kafka_topic: kafka_topic.clone(),
        client_prefix: id.clone(),
    };
    let manifest = install::sensor_fleet_bridge(&s, &names).unwrap();
    run(
        s.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        Some(&manifest),
    )
    .unwrap();

    // 3. The operator's Deployments; their pods run as the template says.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deps = wait_until(
        "the operator creates 2 slot Deployments",
        Duration::from_secs(120),
        || async {
            let l = deployments
                .list(&ListParams::default().labels(LABEL))
                .await
                .ok()?;
            (l.items.len() == 2).then_some(l.items)
        },
    )
    .await;
    let template = &deps[0].spec.as_ref().unwrap().template;
    let container = &template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.args.as_deref(), Some(&["run".to_string()][..]));
    step(t0, "2 Deployments created; starting their pods");
    let kubelet = Kubelet::start(
        client.clone(),
        Settings {
            namespace: ns.clone(),
            selector: LABEL.into(),
            exclusive_label: Some("mqttkafka.io/slot".into()),
            runtime,
            work_dir: dir.join("pods"),
            period: Duration::from_secs(1),
        },
    );
    let fail = |what: &str| -> String {
        let logs: String = std::fs::read_dir(dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {}\n{}\n",
                    e.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        format!(
            "{what}\n{logs}--- operator\n{}",
            std::fs::read_to_string(&operator_log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    // 5. kubectl wait: both pods ready (from the bridges' /readyz) → Ready.
    // kwok marks new pods Ready at once, so first wait until our kubelet has
    // written the bridges' own readiness.
    bridges_ready(&kubelet, None, &fail).await;
    if let Err(e) = run(
        s.kubectl().args([
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            &format!("mkb/{BRIDGE}"),
            WAIT,
        ]),
        None,
    ) {
        panic!("{}", fail(&format!("{e:#}")));
    }
    let running = kubelet.running();
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|r| r.ready == Some(true)), "{running:?}");
    step(
        t0,
        "kubectl wait --for=condition=Ready succeeded: both bridges report /readyz ok",
    );

    // The way back, subscribed before anything is published.
    let back_control = Control::new(Duration::from_secs(600), Duration::from_secs(600));
    let mut sub = MqttSub::new(MqttEndpoint::plain(&s.mqtt_url), format!("{root}sensors/+"));
    sub.client_id_prefix = format!("{id}-back");
    let back = verify::mqtt(&sub, back_control.clone()).await.unwrap();

    // 4. 200 sensors at 5 Hz for 10 s.
    let a = publish(&s, &root, "", "a", 200, 10).await;
    step(t0, &format!("fleet a published {} readings", a.published));
    let recs = records::read(
        &s.kafka(),
        &kafka_topic,
        &a.expected,
        Duration::from_secs(1),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let report = recs.tracker.report(Some(&a.expected));
    assert_eq!(report.missing, 0, "{}", fail(&report.summary()));
    assert_eq!(
        report.malformed,
        0,
        "payloads are the sensors' JSON: {}",
        report.summary()
    );
    assert!(
        recs.wrong_keys.is_empty(),
        "keys = sensor_id: {:?}",
        &recs.wrong_keys[..recs.wrong_keys.len().min(5)]
    );
    assert_eq!(
        recs.partitions.len(),
        10,
        "200 keys spread over the 10 partitions: {:?}",
        recs.partitions.keys()
    );
    assert_eq!(
        recs.keys_on_several_partitions(),
        0,
        "one sensor, one partition"
    );
    assert_eq!(recs.per_prefix.keys().collect::<Vec<_>>(), vec!["a"]);
    step(t0, &format!("Kafka: {}", report.summary()));

    // The way back: the fleet's own readings (which the bridge itself wrote
    // into Kafka; its loop prevention only drops records that would come
    // straight back round) and readings another producer writes into the topic.
    let k = produce(&s, &kafka_topic, "k", 100, 6).await;
    let want_back = a.expected.total() + k.total();
    wait_until(
        "the fleet's readings and the Kafka-produced readings back on MQTT",
        Duration::from_secs(120),
        || async { (back_control.unique.load(Ordering::Relaxed) >= want_back).then_some(()) },
    )
    .await;
    step(
        t0,
        &format!(
            "MQTT: {} readings back on {root}sensors/<sensor_id>",
            back_control.unique.load(Ordering::Relaxed)
        ),
    );

    // 6. Kafka restarted mid-stream.
    let counters = Arc::new(SimCounters::default());
    let b_task = {
        let (s, root, counters) = (s.clone(), root.clone(), counters.clone());
        tokio::spawn(async move { publish_with(&s, &root, "", "b", 200, 25, counters).await })
    };
    wait_until("fleet b under way", Duration::from_secs(60), || async {
        (counters.published.load(Ordering::Relaxed) > 2000).then_some(())
    })
    .await;
    step(t0, "stopping Kafka mid-stream");
    tokio::task::spawn_blocking(|| testenv::control("stop", "kafka"))
        .await
        .unwrap();
    let down_probe = wait_until(
        "a bridge's /readyz says Kafka is down",
        Duration::from_secs(120),
        || async {
            kubelet
                .running()
                .into_iter()
                .find(|r| r.ready == Some(false) && r.probe.contains("kafka"))
                .map(|r| r.probe)
        },
    )
    .await;
    let (_, reason, message, _) = wait_until(
        "the CR's Ready condition turns False",
        Duration::from_secs(120),
        || async { ready_condition(&s, &ns).filter(|c| c.0 == "False") },
    )
    .await;
    assert_eq!(reason, "ReplicasUnavailable", "{message}");
    step(
        t0,
        &format!("while Kafka is down: /readyz `{down_probe}`; CR Ready=False {reason}: {message}"),
    );
    tokio::task::spawn_blocking(|| testenv::control("start", "kafka"))
        .await
        .unwrap();
    step(t0, "Kafka started again");
    kubectl_wait_ready(&s, &ns);
    step(t0, "CR Ready again");
    let b = b_task.await.unwrap();
    let ab = expected_of(&[&a.expected, &b.expected, &k]);
    let recs = records::read(
        &s.kafka(),
        &kafka_topic,
        &ab,
        Duration::from_secs(1),
        Duration::from_secs(180),
    )
    .await
    .unwrap();
    let report = recs.tracker.report(Some(&ab));
    assert_eq!(
        report.missing,
        0,
        "nothing lost across the Kafka restart: {}",
        fail(&report.summary())
    );
    assert!(recs.wrong_keys.is_empty());
    assert_eq!(recs.keys_on_several_partitions(), 0);
    step(
        t0,
        &format!("Kafka after the restart: {}", report.summary()),
    );
    // The way back works again after the restart (its consumer group resumed):
    // every reading that went into the topic, the fleets' and the other
    // producer's, comes back out on MQTT.
    let k2 = produce(&s, &kafka_topic, "k2", 100, 6).await;
    let back_expected = expected_of(&[&a.expected, &b.expected, &k, &k2]);
    wait_until(
        "the way back after the restart",
        Duration::from_secs(180),
        || async {
            (back_control.unique.load(Ordering::Relaxed) >= back_expected.total()).then_some(())
        },
    )
    .await;
    back_control.cancel();
    let (back_tracker, _) = back.finish().await.unwrap();
    let back_report = back_tracker.report(Some(&back_expected));
    assert_eq!(back_report.missing, 0, "{}", back_report.summary());
    assert_eq!(back_report.malformed, 0, "{}", back_report.summary());
    step(
        t0,
        &format!(
            "MQTT after the restart (fleets a and b and the Kafka producer): {}",
            back_report.summary()
        ),
    );

    // 7. A route change rolls the pods; the new route carries data, the old one stops.
    let hashes = |ds: &[Deployment]| -> Vec<String> {
        ds.iter()
            .map(|d| {
                d.spec
                    .as_ref()
                    .unwrap()
                    .template
                    .metadata
                    .as_ref()
                    .unwrap()
                    .annotations
                    .as_ref()
                    .unwrap()["mqttkafka.io/config-hash"]
                    .clone()
            })
            .collect()
    };
    let old_hashes = hashes(
        &deployments
            .list(&ListParams::default().labels(LABEL))
            .await
            .unwrap()
            .items,
    );
    let new_filter = format!("{root}v2/sensors/+/temperature");
    run(
        s.kubectl().args([
            "patch", "mkb", BRIDGE, "-n", &ns, "--type=json", "-p",
            &serde_json::json!([{"op": "replace", "path": "/spec/routes/0/mqttToKafka/mqttTopicFilter", "value": new_filter}]).to_string(),
        ]),
        None,
    )
    .unwrap();
    let new_hashes = wait_until(
        "both Deployments get the new configuration",
        Duration::from_secs(120),
        || async {
            let l = deployments
                .list(&ListParams::default().labels(LABEL))
                .await
                .ok()?;
            let h = hashes(&l.items);
            (h.len() == 2 && h.iter().all(|x| !old_hashes.contains(x))).then_some(h)
        },
    )
    .await;
    bridges_ready(&kubelet, Some(&new_hashes), &fail).await;
    kubectl_wait_ready(&s, &ns);
    let rs = run(
        s.kubectl()
            .args(["get", "rs", "-n", &ns, "-l", LABEL, "-o", "name"]),
        None,
    )
    .unwrap();
    assert_eq!(rs.lines().count(), 4, "a new ReplicaSet per slot: {rs}");
    step(t0, "route changed: pods rolled to the new configuration");
    let (c, d) = tokio::join!(
        publish(&s, &root, "v2/", "c", 100, 6),
        publish(&s, &root, "", "d", 100, 6),
    );
    let all = expected_of(&[&a.expected, &b.expected, &c.expected, &k, &k2]);
    let recs = records::read(
        &s.kafka(),
        &kafka_topic,
        &all,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let report = recs.tracker.report(Some(&all));
    assert_eq!(
        report.missing,
        0,
        "the new route carries data: {}",
        fail(&report.summary())
    );
    assert!(
        !recs.per_prefix.contains_key("d"),
        "the old route stopped, yet {} of its {} readings arrived",
        recs.per_prefix.get("d").copied().unwrap_or(0),
        d.published
    );
    step(
        t0,
        &format!(
            "new route carried {} readings, old route none of {}",
            c.published, d.published
        ),
    );

    // 8. Deleting the CR deletes what it created.
    run(
        s.kubectl().args(["delete", "mkb", BRIDGE, "-n", &ns, WAIT]),
        None,
    )
    .unwrap();
    wait_until(
        "garbage collection of the bridge's children",
        Duration::from_secs(120),
        || async {
            let left = run(
                s.kubectl().args([
                    "get",
                    "deployments,replicasets,pods,configmaps,services",
                    "-n",
                    &ns,
                    "-l",
                    LABEL,
                    "-o",
                    "name",
                ]),
                None,
            )
            .ok()?;
            left.trim().is_empty().then_some(())
        },
    )
    .await;
    wait_until(
        "the bridges stopped with their pods",
        Duration::from_secs(60),
        || async { kubelet.running().is_empty().then_some(()) },
    )
    .await;
    step(
        t0,
        "CR deleted: Deployments, ReplicaSets, pods, ConfigMap and Service gone",
    );
    kubelet.shutdown().await;
    step(t0, "done");
}
