//! End to end on the test environment's real node (kubelet + containerd):
//! the chart installs the operator, which runs as a pod there; Secrets and the 2000-sensor example
//! bridge are applied with a pod template that puts the bridge pods on the
//! real node (host network, its taint tolerated); the pods run from the
//! bridge image (built from the test binaries with `cargo xtask images`,
//! imported into containerd) with real probes, volumes and restarts, so
//! every pod status the operator reports comes from a real kubelet. A
//! sensor fleet publishes and its readings arrive in Kafka (keys,
//! partitions, payloads) and back on MQTT; the pods run as uid 65532 on a
//! read-only root file system; Kafka is stopped for 90 s under load —
//! no restart (liveness holds), the bridge Ready=False with the reason, then
//! Ready with nothing lost; a wrong password in the Secret reaches the
//! bridge's status as the pod's termination message while the rollout
//! halts at slot 0 and the other slots keep carrying data, and fixing it
//! resumes the rollout slot by slot onto the projected new value; a route
//! change reaches the slots one at a time under load with nothing lost;
//! deleting the CR deletes everything it created.
//!
//! Everything has unique names (namespaces, topics, MQTT topic root, client
//! ids, groups, HTTP ports): other tests share the servers and the node.
//! The operator runs as a pod of the chart on the real node too, from the
//! operator image (`e2e::install::helm_install_on_node`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::install::{self, BridgeNames};
use e2e::node::{self, RealNode};
use e2e::{Servers, records, run};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use sensor_fleet::simulate::{
    Fleet, KafkaSim, MqttSim, SimCounters, simulate_kafka, simulate_mqtt_with,
};
use sensor_fleet::verify::{self, Control, MqttSub};
use sensor_fleet::{Expected, MqttEndpoint};

const BRIDGE: &str = "sensor-fleet";
/// Slots (pods) of the example bridge as applied (`replicas: 2`).
const FIRST_SLOTS: usize = 2;
/// Slots after scaling up (`kubectl scale mkb`), before the rollout steps:
/// enough to see a change reach them one by one.
const SLOTS: usize = 3;
const LABEL: &str = "mqttkafka.io/bridge=sensor-fleet";
const WAIT: &str = "--timeout=180s";
const CONFIG_HASH: &str = "mqttkafka.io/config-hash";
/// How long Kafka stays down under load.
const KAFKA_OUTAGE: Duration = Duration::from_secs(90);

/// Deletes what the test created, however it ends.
struct Cleanup {
    servers: Servers,
    namespaces: Vec<String>,
    dir: PathBuf,
    /// Private containers-storage of the image build (vfs: full copies).
    storage: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.storage);
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
    condition(s, ns, "Ready")
}

/// Status, reason, message and observed generation of the bridge's
/// condition of `type_`.
fn condition(s: &Servers, ns: &str, type_: &str) -> Option<(String, String, String, i64)> {
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
        .find(|c| c["type"] == type_)?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((
        text("status"),
        text("reason"),
        text("message"),
        c["observedGeneration"].as_i64().unwrap_or(0),
    ))
}

/// The bridge's custom resource as JSON.
fn bridge_cr(s: &Servers, ns: &str) -> serde_json::Value {
    let out = run(
        s.kubectl()
            .args(["get", "mkb", BRIDGE, "-n", ns, "-o", "json"]),
        None,
    )
    .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// While a rollout is halted at slot 0: every other slot still has its
/// pod from before (one of `running`), Ready and not restarted.
fn other_slots_kept(now: &[Pod], running: &[String]) {
    for p in now.iter().filter(|p| slot(p) != Some(0)) {
        assert!(
            running.contains(&uid(p)),
            "slot {:?} was rolled despite the halt",
            slot(p)
        );
        let c = node::bridge_container(p).unwrap();
        assert!(c.0, "slot {:?} is not Ready", slot(p));
        assert_eq!(c.1, 0, "slot {:?} restarted", slot(p));
    }
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
    .unwrap_or_else(|e| {
        panic!(
            "kubectl wait: {e:#}; the CR's Ready condition: {:?}",
            ready_condition(s, ns)
        )
    });
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

/// The bridge's pods, oldest first.
async fn bridge_pods(pods: &Api<Pod>) -> Vec<Pod> {
    let mut list = pods
        .list(&ListParams::default().labels(LABEL))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    list
}

fn config_hash(p: &Pod) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(CONFIG_HASH).cloned()
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// Waits until the bridge has exactly `slots` pods, all Ready through the
/// kubelet's probe of their `/readyz` (with one of `hashes` as
/// configuration, none of `not_uids`); returns them and, per pod, how long
/// after the call it was first seen Ready.
async fn bridges_ready(
    slots: usize,
    pods: &Api<Pod>,
    hashes: Option<&[String]>,
    not_uids: &[String],
    fail: &dyn Fn(&str) -> String,
) -> (Vec<Pod>, Vec<Duration>) {
    let start = Instant::now();
    let mut first_ready: std::collections::BTreeMap<String, Duration> = Default::default();
    loop {
        let list = bridge_pods(pods).await;
        for p in &list {
            if node::bridge_container(p).is_some_and(|c| c.0) {
                first_ready.entry(uid(p)).or_insert_with(|| start.elapsed());
            }
        }
        let ok = list.len() == slots
            && list.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !not_uids.contains(&uid(p))
                    && node::bridge_container(p).is_some_and(|c| c.0)
                    && hashes.is_none_or(|h| config_hash(p).is_some_and(|x| h.contains(&x)))
            });
        if ok {
            let times = list.iter().map(|p| first_ready[&uid(p)]).collect();
            return (list, times);
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{}",
            fail(&format!(
                "bridge pods not ready after 180 s: {:?}",
                list.iter()
                    .map(|p| (p.metadata.name.clone(), node::bridge_container(p)))
                    .collect::<Vec<_>>()
            ))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The slot of a bridge pod.
fn slot(p: &Pod) -> Option<usize> {
    p.metadata
        .labels
        .as_ref()?
        .get("mqttkafka.io/slot")?
        .parse()
        .ok()
}

/// Per slot: when its new pod (a uid not in `old`) was first seen, and
/// when it was first Ready, after the call.
type SlotTimes = Vec<(Duration, Duration)>;

/// Watches a rollout until every slot has a new Ready pod; asserts the
/// slots were rolled in order, each only after the one before was Ready.
async fn watch_rollout(
    pods: &Api<Pod>,
    old: &[String],
    fail: &dyn Fn(&str) -> String,
) -> SlotTimes {
    let start = Instant::now();
    let mut seen: Vec<Option<Duration>> = vec![None; SLOTS];
    let mut ready: Vec<Option<Duration>> = vec![None; SLOTS];
    while ready.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}",
            fail(&format!(
                "rollout not done after 300 s: seen {seen:?}, ready {ready:?}"
            ))
        );
        for p in bridge_pods(pods).await {
            let Some(s) = slot(&p).filter(|s| *s < SLOTS) else {
                continue;
            };
            if old.contains(&uid(&p)) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            seen[s].get_or_insert(start.elapsed());
            if node::bridge_container(&p).is_some_and(|c| c.0) {
                ready[s].get_or_insert(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let times: SlotTimes = seen
        .iter()
        .zip(&ready)
        .map(|(s, r)| (s.unwrap_or_default(), r.unwrap_or_default()))
        .collect();
    for k in 1..SLOTS {
        assert!(
            times[k].0 >= times[k - 1].1,
            "slot {k}'s new pod appeared at {:.1?}, before slot {}'s was Ready at {:.1?}: {times:?}",
            times[k].0,
            k - 1,
            times[k - 1].1
        );
    }
    times
}

fn describe_order(times: &SlotTimes) -> String {
    times
        .iter()
        .enumerate()
        .map(|(i, (seen, ready))| {
            format!(
                "slot {i} new pod at {:.1} s, Ready at {:.1} s",
                seen.as_secs_f64(),
                ready.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Restarts of the bridge containers of `pods`.
fn restarts(pods: &[Pod]) -> Vec<i32> {
    pods.iter()
        .map(|p| node::bridge_container(p).map_or(-1, |c| c.1))
        .collect()
}

/// Sets the `password` of Secret `name` (through stdin, never on a command line).
fn set_password(s: &Servers, ns: &str, name: &str, password: &str) {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"password": password},
    });
    run(
        s.kubectl().args(["apply", "-f", "-"]),
        Some(&manifest.to_string()),
    )
    .unwrap();
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

/// The name of the pod's volume of Secret `secret`.
fn secret_volume(p: &Pod, secret: &str) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| {
            v.iter()
                .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
        })
        .map(|v| v.name.clone())
        .unwrap_or_else(|| panic!("pod has no volume of Secret {secret}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_kubectl_apply_to_sensor_data_and_back() {
    let t0 = Instant::now();
    let s = Servers::from_env().unwrap();
    let real_node = RealNode::from_env().unwrap();
    let id = testenv::unique_name("e2e");
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let (op_ns, ns) = (format!("{id}-op"), format!("{id}-br"));
    let _cleanup = Cleanup {
        servers: s.clone(),
        namespaces: vec![ns.clone(), op_ns.clone()],
        dir: dir.clone(),
        // Short: podman/buildah refuse a run root longer than 50 characters.
        storage: std::env::temp_dir().join(format!("mkb-{}", std::process::id())),
    };
    let client = s.kube_client().await.unwrap();

    // 1. The bridge image into the node's containerd; the chart: CRD
    //    (already installed, shared), RBAC for the watched namespace,
    //    ServiceAccount; the operator under that account's token.
    let started = Instant::now();
    node::build_images(
        "e2e",
        testenv::cargo_bin("bridge-runtime").parent().unwrap(),
        &std::env::temp_dir().join(format!("mkb-{}", std::process::id())),
    )
    .unwrap();
    step(
        t0,
        &format!(
            "images built and imported into the node's containerd in {:.0} s",
            started.elapsed().as_secs_f64()
        ),
    );
    install::create_namespace(&s, &ns).unwrap();
    let started = Instant::now();
    install::helm_install_on_node(
        &s,
        &dir.join("helm"),
        "mko",
        &op_ns,
        &ns,
        "e2e",
        &real_node,
        e2e::free_port().unwrap(),
    )
    .unwrap();
    step(
        t0,
        &format!(
            "operator installed with the chart, its pod Ready on the real node after {:.1} s (helm --wait)",
            started.elapsed().as_secs_f64()
        ),
    );

    // 2. Topic, Secrets, the example bridge on the real node.
    let kafka_topic = format!("sensor_data.{id}");
    sensor_fleet::conn::create_topic(&s.kafka(), &kafka_topic, 10)
        .await
        .unwrap();
    install::create_secrets(&s, &ns).unwrap();
    let root = format!("{id}/");
    let http_port = node::free_port_range(SLOTS as u16).unwrap();
    let names = BridgeNames {
        name: BRIDGE.into(),
        mqtt_root: root.clone(),
        kafka_topic: kafka_topic.clone(),
        client_prefix: id.clone(),
        http_port,
        pod_template: real_node.bridge_pod_template(),
    };
    let manifest = install::sensor_fleet_bridge(&s, &names).unwrap();
    let mut manifest: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
    manifest["spec"]["replicas"] = (FIRST_SLOTS as u64).into();
    let manifest = serde_yaml::to_string(&manifest).unwrap();
    run(
        s.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        Some(&manifest),
    )
    .unwrap();

    // 3. The operator's Deployments; the kubelet runs their pods.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deps = wait_until(
        "the operator creates a Deployment per slot",
        Duration::from_secs(120),
        || async {
            let l = deployments
                .list(&ListParams::default().labels(LABEL))
                .await
                .ok()?;
            (l.items.len() == FIRST_SLOTS).then_some(l.items)
        },
    )
    .await;
    let template = &deps[0].spec.as_ref().unwrap().template;
    let container = &template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.args.as_deref(), Some(&["run".to_string()][..]));
    step(
        t0,
        &format!("{FIRST_SLOTS} Deployments created; the kubelet starts their pods"),
    );
    let fail = |what: &str| -> String {
        let logs = e2e::output(
            s.kubectl()
                .args(["logs", "-n", &ns, "-l", LABEL, "--tail=15", "--prefix"]),
            None,
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
        let describe = e2e::output(
            s.kubectl()
                .args(["get", "pods", "-n", &ns, "-l", LABEL, "-o", "wide"]),
            None,
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
        let operator = e2e::output(
            s.kubectl().args([
                "logs",
                "-n",
                &op_ns,
                "-l",
                "app.kubernetes.io/name=mqtt-kafka-operator",
                "--tail=15",
            ]),
            None,
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
        format!("{what}\n--- pods\n{describe}--- bridge logs\n{logs}\n--- operator\n{operator}")
    };

    // 5. kubectl wait: both pods ready (the kubelet's probe of /readyz) → Ready.
    let (ready_pods, start_times) = bridges_ready(FIRST_SLOTS, &pods, None, &[], &fail).await;
    step(
        t0,
        &format!(
            "all bridge pods Ready on node {}: Deployments seen → pods Ready in {:.1?}",
            real_node.name, start_times
        ),
    );
    for p in &ready_pods {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(real_node.name.as_str()));
        assert_eq!(spec.host_network, Some(true));
    }
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
    step(
        t0,
        "kubectl wait --for=condition=Ready succeeded: both bridges' /readyz pass the kubelet's probe",
    );

    // The pods run locked down: uid 65532, read-only root file system (as
    // the kernel sees the container's process, not as the spec says).
    for p in &ready_pods {
        let (_, _, _, container_id) = node::bridge_container(p).unwrap();
        let pid = real_node
            .container_pid(&container_id.expect("a running container has an id"))
            .unwrap();
        let (uid, read_only_root) = node::process_identity(pid).unwrap();
        assert_eq!(uid, 65532, "bridge process {pid} runs as uid {uid}");
        assert!(read_only_root, "bridge process {pid}: / is writable");
    }
    step(
        t0,
        "both bridge processes run as uid 65532 on a read-only /",
    );

    // The way back, subscribed before anything is published.
    let back_control = Control::new(Duration::from_secs(900), Duration::from_secs(900));
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

    // 6. Kafka stopped for 90 s under load: the kubelet's liveness probe
    //    holds (no restart), its readiness probe fails, the bridge says why;
    //    then Ready again and nothing lost.
    let publish_secs = KAFKA_OUTAGE.as_secs() + 20;
    let counters = Arc::new(SimCounters::default());
    let b_task = {
        let (s, root, counters) = (s.clone(), root.clone(), counters.clone());
        tokio::spawn(
            async move { publish_with(&s, &root, "", "b", 100, publish_secs, counters).await },
        )
    };
    wait_until("fleet b under way", Duration::from_secs(60), || async {
        (counters.published.load(Ordering::Relaxed) > 1000).then_some(())
    })
    .await;
    step(t0, "stopping Kafka under load for 90 s");
    let before = bridge_pods(&pods).await;
    let restarts_before = restarts(&before);
    tokio::task::spawn_blocking(|| testenv::control("stop", "kafka"))
        .await
        .unwrap();
    let stopped = Instant::now();
    wait_until(
        "a bridge pod turns NotReady (the kubelet's readiness probe)",
        Duration::from_secs(120),
        || async {
            bridge_pods(&pods)
                .await
                .iter()
                .any(|p| node::bridge_container(p).is_some_and(|c| !c.0))
                .then_some(())
        },
    )
    .await;
    // The message carries what the pods say of themselves (their `/report`,
    // read by the operator): not just "unavailable" but why.
    let (_, reason, message, _) = wait_until(
        "the CR's Ready condition turns False, saying Kafka is not reachable",
        Duration::from_secs(120),
        || async {
            ready_condition(&s, &ns)
                .filter(|c| c.0 == "False" && c.2.contains("kafka not reachable"))
        },
    )
    .await;
    assert_eq!(reason, "ReplicasUnavailable", "{message}");
    step(
        t0,
        &format!(
            "{:.0} s after Kafka stopped: pods NotReady; CR Ready=False {reason}: {message}",
            stopped.elapsed().as_secs_f64()
        ),
    );
    // Hold the outage, watching the restart counts all along.
    while stopped.elapsed() < KAFKA_OUTAGE {
        let now = bridge_pods(&pods).await;
        assert_eq!(
            restarts(&now),
            restarts_before,
            "{}",
            fail(&format!(
                "a bridge container restarted {:.0} s into the Kafka outage (liveness probe /healthz failed?)",
                stopped.elapsed().as_secs_f64()
            ))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::task::spawn_blocking(|| testenv::control("start", "kafka"))
        .await
        .unwrap();
    step(
        t0,
        &format!(
            "Kafka started again after {:.0} s; no bridge restart",
            stopped.elapsed().as_secs_f64()
        ),
    );
    kubectl_wait_ready(&s, &ns);
    let after = bridge_pods(&pods).await;
    assert_eq!(
        after.iter().map(uid).collect::<Vec<_>>(),
        before.iter().map(uid).collect::<Vec<_>>(),
        "the same pods before and after the outage"
    );
    assert_eq!(restarts(&after), restarts_before, "{}", fail("restarts"));
    step(t0, "CR Ready again, same pods, restart counts unchanged");
    let b = b_task.await.unwrap();
    let ab = expected_of(&[&a.expected, &b.expected, &k]);
    let recs = records::read(
        &s.kafka(),
        &kafka_topic,
        &ab,
        Duration::from_secs(1),
        Duration::from_secs(240),
    )
    .await
    .unwrap();
    let report = recs.tracker.report(Some(&ab));
    assert_eq!(
        report.missing,
        0,
        "nothing lost across the 90 s Kafka outage: {}",
        fail(&report.summary())
    );
    assert!(recs.wrong_keys.is_empty());
    assert_eq!(recs.keys_on_several_partitions(), 0);
    step(t0, &format!("Kafka after the outage: {}", report.summary()));
    // The way back works again after the outage (its consumer group resumed):
    // every reading that went into the topic, the fleets' and the other
    // producer's, comes back out on MQTT.
    let k2 = produce(&s, &kafka_topic, "k2", 100, 6).await;
    let back_expected = expected_of(&[&a.expected, &b.expected, &k, &k2]);
    wait_until(
        "the way back after the outage",
        Duration::from_secs(240),
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
            "MQTT after the outage (fleets a and b and the Kafka producer): {}",
            back_report.summary()
        ),
    );

    // 6b. An undeliverable message on a route without a dead-letter topic
    //     (`readings-in` keys by the JSON field sensor_id; this payload is
    //     not JSON): dropped and counted by the bridge, and the bridge's
    //     status says so in its MessagesDropped condition.
    let junk_topic = format!("{root}sensors/junk/temperature");
    run(
        std::process::Command::new("mosquitto_pub").args([
            "-L",
            &format!("{}/{junk_topic}", s.mqtt_url.trim_end_matches('/')),
            "-q",
            "1",
            "-m",
            "not json",
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("mosquitto_pub: {e:#}"));
    let (status, reason, message, _) = wait_until(
        "the CR's MessagesDropped condition turns True",
        Duration::from_secs(150),
        || async { condition(&s, &ns, "MessagesDropped").filter(|c| c.0 == "True") },
    )
    .await;
    assert_eq!(reason, "UndeliverableDropped", "{message}");
    assert!(
        message.contains("route readings-in, reason payload_not_json"),
        "{message}"
    );
    step(
        t0,
        &format!("a non-JSON reading: MessagesDropped={status} {reason}: {message}"),
    );

    // Scaled up with `kubectl scale` (the CRD's scale subresource): the new
    // slot starts at once, the running ones are not touched.
    run(
        s.kubectl().args([
            "scale",
            "mkb",
            BRIDGE,
            "-n",
            &ns,
            &format!("--replicas={SLOTS}"),
        ]),
        None,
    )
    .unwrap();
    let (scaled, _) = bridges_ready(SLOTS, &pods, None, &[], &fail).await;
    kubectl_wait_ready(&s, &ns);
    let kept: Vec<String> = after.iter().map(uid).collect();
    assert_eq!(
        scaled.iter().filter(|p| kept.contains(&uid(p))).count(),
        FIRST_SLOTS,
        "scaling up left the running slots alone"
    );
    let after = scaled;
    step(
        t0,
        &format!("scaled up to {SLOTS} slots; the running ones untouched"),
    );

    // 7. A wrong password in the Secret: the change reaches slot 0 first
    //    (the kubelet projects the new value), Kafka refuses it, the pod
    //    crashes and the rollout halts: the pod's termination message —
    //    written by the bridge, read by the kubelet — and which change reach
    //    the bridge's status (never the password itself); the other slots
    //    keep their pods, run the previous configuration and carry data.
    let good_uids: Vec<String> = after.iter().map(uid).collect();
    let wrong = format!("wrong-{}", testenv::unique_name("pw"));
    set_password(&s, &ns, install::KAFKA_SECRET, &wrong);
    let (_, reason, message, _) = wait_until(
        "the CR says RolloutHalted with the pod's termination message",
        Duration::from_secs(180),
        || async {
            ready_condition(&s, &ns)
                .filter(|c| c.1 == "RolloutHalted" && c.2.contains("KafkaAuthentication"))
        },
    )
    .await;
    assert!(!message.contains(&wrong), "the status shows the password");
    assert!(
        message.contains(&format!("Secret {}", install::KAFKA_SECRET)),
        "the status says which change: {message}"
    );
    let failing = bridge_pods(&pods).await;
    // `… halted at slot 0: pod <name>: <termination message>; …`
    let named = message
        .split_once("halted at slot 0: pod ")
        .and_then(|(_, m)| m.split_once(": "))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| panic!("the status names no pod of slot 0: {message}"));
    let failing_pod = failing
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(named.as_str()))
        .unwrap_or_else(|| panic!("{}", fail(&format!("no pod {named}"))));
    assert_eq!(slot(failing_pod), Some(0), "slot 0 is rolled first");
    assert!(!good_uids.contains(&uid(failing_pod)), "a new pod fails");
    let termination = node::bridge_container(failing_pod)
        .and_then(|c| c.2)
        .unwrap_or_else(|| {
            panic!(
                "{}",
                fail(&format!("pod {named} has no termination message"))
            )
        });
    assert!(
        termination.starts_with("KafkaAuthentication"),
        "termination message: {termination}"
    );
    // Each restart writes it anew, with its own timing (`… (after 385ms in
    // state AUTH_REQ)`): compare what comes before.
    let stable = |m: &str| m.split(" (after ").next().unwrap_or(m).trim().to_owned();
    assert!(
        message.contains(&stable(&format!("pod {named}: {termination}"))),
        "the status carries the pod's own termination message: {message}"
    );
    let projected = real_node.secret_volume_file(
        &uid(failing_pod),
        &secret_volume(failing_pod, install::KAFKA_SECRET),
        "password",
    );
    assert_eq!(
        std::fs::read_to_string(&projected).unwrap(),
        wrong,
        "{} holds the new value",
        projected.display()
    );
    step(
        t0,
        &format!("wrong Kafka password: CR Ready=False {reason}: {message}"),
    );
    // The other slots: the same pods as before, not restarted, Ready, and
    // carrying what sensors publish while the rollout is halted.
    other_slots_kept(&failing, &good_uids);
    let h = publish(&s, &root, "", "h", 100, 6).await;
    let during_halt = records::read(
        &s.kafka(),
        &kafka_topic,
        &h.expected,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let arrived = during_halt.per_prefix.get("h").copied().unwrap_or(0);
    assert!(
        arrived > 0,
        "{}",
        fail("nothing reached Kafka while the rollout was halted")
    );
    assert_eq!(
        ready_condition(&s, &ns).map(|c| c.1).as_deref(),
        Some("RolloutHalted")
    );
    step(
        t0,
        &format!(
            "while halted, slots 1..{} carried {arrived} of {} readings into Kafka (slot 0's share waits in its broker session)",
            SLOTS - 1,
            h.published
        ),
    );

    // 8. The Secret fixed: slot 0 gets a newer template, the rollout
    //    resumes and reaches the slots one at a time; the kubelet projects
    //    the value into the new pods, and they connect with it.
    set_password(&s, &ns, install::KAFKA_SECRET, &s.kafka_scram_password);
    let old_uids: Vec<String> = failing.iter().map(uid).collect();
    let started = Instant::now();
    let order = watch_rollout(&pods, &old_uids, &fail).await;
    let (rotated, _) = bridges_ready(SLOTS, &pods, None, &old_uids, &fail).await;
    kubectl_wait_ready(&s, &ns);
    for p in &rotated {
        let file = real_node.secret_volume_file(
            &uid(p),
            &secret_volume(p, install::KAFKA_SECRET),
            "password",
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            s.kafka_scram_password,
            "{} holds the rotated value",
            file.display()
        );
        assert_eq!(node::bridge_container(p).map(|c| c.1), Some(0));
    }
    step(
        t0,
        &format!(
            "Secret fixed: rollout completed in {:.1} s, {}",
            started.elapsed().as_secs_f64(),
            describe_order(&order)
        ),
    );

    // 8b. A slot that runs but never turns Ready halts the rollout at the
    //     bridge's own progress deadline (`spec.progressDeadlineSeconds`,
    //     here 15 s instead of the default 180): a Kafka address where
    //     nothing listens keeps slot 0's new pod NotReady without a crash
    //     (its /healthz holds). The other slots keep their pods. Put back
    //     (and the deadline back to its default), slot 0 runs again.
    let cr = bridge_cr(&s, &ns);
    let good_bootstrap = cr["spec"]["kafka"]["bootstrapServers"].clone();
    let merge = |patch: serde_json::Value| {
        run(
            s.kubectl().args([
                "patch",
                "mkb",
                BRIDGE,
                "-n",
                &ns,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ]),
            None,
        )
        .unwrap();
    };
    let running: Vec<String> = bridge_pods(&pods).await.iter().map(uid).collect();
    merge(serde_json::json!({"spec": {
        "progressDeadlineSeconds": 15,
        "kafka": {"bootstrapServers": "127.0.0.1:1"},
    }}));
    let started = Instant::now();
    let (_, reason, message, _) = wait_until(
        "the CR says RolloutHalted at the 15 s progress deadline",
        Duration::from_secs(120),
        || async {
            ready_condition(&s, &ns)
                .filter(|c| c.1 == "RolloutHalted" && c.2.contains("progress deadline of 15 s"))
        },
    )
    .await;
    let halted_after = started.elapsed();
    assert!(
        halted_after >= Duration::from_secs(14),
        "halted before the deadline: {halted_after:?}: {message}"
    );
    assert!(message.contains("halted at slot 0"), "{message}");
    other_slots_kept(&bridge_pods(&pods).await, &running);
    let stuck = bridge_pods(&pods)
        .await
        .into_iter()
        .find(|p| slot(p) == Some(0))
        .unwrap_or_else(|| panic!("{}", fail("no pod of slot 0")));
    assert!(!running.contains(&uid(&stuck)), "slot 0 has a new pod");
    assert_eq!(
        node::bridge_container(&stuck).map(|c| (c.0, c.1)),
        Some((false, 0)),
        "slot 0's new pod runs NotReady, not restarted"
    );
    step(
        t0,
        &format!(
            "a slot that never turns Ready: CR Ready=False {reason} after {:.0} s: {message}",
            halted_after.as_secs_f64()
        ),
    );
    merge(serde_json::json!({"spec": {
        "progressDeadlineSeconds": null,
        "kafka": {"bootstrapServers": good_bootstrap},
    }}));
    let started = Instant::now();
    bridges_ready(SLOTS, &pods, None, &[uid(&stuck)], &fail).await;
    kubectl_wait_ready(&s, &ns);
    let deadlines: Vec<Option<i32>> = deployments
        .list(&ListParams::default().labels(LABEL))
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.spec.as_ref().and_then(|s| s.progress_deadline_seconds))
        .collect();
    assert_eq!(deadlines, vec![Some(180); SLOTS], "the default is back");
    step(
        t0,
        &format!(
            "Kafka address put back: slot 0 Ready again, CR Ready, in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );

    // 9. A route change (a second route) reaches the slots one at a time
    //    while a fleet publishes: nothing is lost, and the new route
    //    carries data once rolled.
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
                    .unwrap()[CONFIG_HASH]
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
    let cr = bridge_cr(&s, &ns);
    let mut v2 = cr["spec"]["routes"][0].clone();
    v2["name"] = "readings-v2".into();
    v2["mqttToKafka"]["mqttTopicFilter"] = format!("{root}v2/sensors/+/temperature").into();
    let old_uids: Vec<String> = bridge_pods(&pods).await.iter().map(uid).collect();
    let during = tokio::spawn({
        let (s, root) = (s.clone(), root.clone());
        async move { publish(&s, &root, "", "e", 100, 40).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    run(
        s.kubectl().args([
            "patch",
            "mkb",
            BRIDGE,
            "-n",
            &ns,
            "--type=json",
            "-p",
            &serde_json::json!([{"op": "add", "path": "/spec/routes/-", "value": v2}]).to_string(),
        ]),
        None,
    )
    .unwrap();
    let started = Instant::now();
    let order = watch_rollout(&pods, &old_uids, &fail).await;
    let rollout_took = started.elapsed();
    let new_hashes = hashes(
        &deployments
            .list(&ListParams::default().labels(LABEL))
            .await
            .unwrap()
            .items,
    );
    assert!(
        new_hashes.iter().all(|x| !old_hashes.contains(x)),
        "{new_hashes:?}"
    );
    let (rolled, _) = bridges_ready(SLOTS, &pods, Some(&new_hashes), &[], &fail).await;
    kubectl_wait_ready(&s, &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let active: Vec<String> = replica_sets
        .list(&ListParams::default().labels(LABEL))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .filter_map(|rs| {
            rs.spec
                .as_ref()?
                .template
                .as_ref()?
                .metadata
                .as_ref()?
                .annotations
                .as_ref()?
                .get(CONFIG_HASH)
                .cloned()
        })
        .collect();
    assert_eq!(
        active.len(),
        SLOTS,
        "one active ReplicaSet per slot: {active:?}"
    );
    assert!(active.iter().all(|h| new_hashes.contains(h)), "{active:?}");
    let cms = run(
        s.kubectl()
            .args(["get", "configmaps", "-n", &ns, "-l", LABEL, "-o", "name"]),
        None,
    )
    .unwrap();
    assert_eq!(
        cms.lines().count(),
        1,
        "the previous configurations' ConfigMaps are deleted once no slot runs them: {cms}"
    );
    let e = during.await.unwrap();
    step(
        t0,
        &format!(
            "route added: rollout took {:.1} s under load ({} readings), {}",
            rollout_took.as_secs_f64(),
            e.published,
            describe_order(&order)
        ),
    );
    let c = publish(&s, &root, "v2/", "c", 100, 6).await;
    let all = expected_of(&[
        &a.expected,
        &b.expected,
        &c.expected,
        &e.expected,
        &h.expected,
        &k,
        &k2,
    ]);
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
        "nothing lost through the halted rollout, its fix and the route change; the new route carries data: {}",
        fail(&report.summary())
    );
    step(
        t0,
        &format!(
            "Kafka holds every reading: {} (the {} published while halted, the {} during the route rollout, the new route's {})",
            report.summary(),
            h.published,
            e.published,
            c.published
        ),
    );

    // 10. Deleting the CR deletes what it created, and the kubelet stops the containers.
    let container_ids: Vec<String> = rolled
        .iter()
        .filter_map(|p| node::bridge_container(p).and_then(|c| c.3))
        .collect();
    run(
        s.kubectl().args(["delete", "mkb", BRIDGE, "-n", &ns, WAIT]),
        None,
    )
    .unwrap();
    wait_until(
        "garbage collection of the bridge's children and their pods",
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
    for id in &container_ids {
        assert!(
            real_node.container_pid(id).is_err(),
            "container {id} still runs after its pod was deleted"
        );
    }
    step(
        t0,
        "CR deleted: Deployments, ReplicaSets, pods, ConfigMap and Service gone, containers stopped",
    );
    step(t0, "done");
}
