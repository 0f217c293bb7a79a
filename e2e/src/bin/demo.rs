//! `mkb-demo`: the quickstart behind `cargo xtask demo`, against the test
//! environment (its variables in the environment).
//!
//! - `up`: installs the operator with the Helm chart — a pod on the test
//!   environment's real node (kubelet + containerd) from the operator image
//!   `cargo xtask demo` imported — creates the topic, the Secrets and the
//!   sample bridge, whose pods run there too from the bridge image, and
//!   starts the `agent` in the background.
//! - `agent` (background): runs the sensor fleet over MQTT, counts what comes
//!   back and reads the bridge pods' status; writes `status.json` in the
//!   state directory.
//! - `watch`: shows the flow live for a while.
//! - `down`: stops the background processes it recorded and deletes what
//!   `up` created (the test environment stays up).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use e2e::install::{self, BridgeNames};
use e2e::node::{self, RealNode};
use e2e::{Servers, run};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const OPERATOR_NS: &str = "mkb-demo-system";
const BRIDGE_NS: &str = "mkb-demo";
const RELEASE: &str = "mqtt-kafka-operator";
const BRIDGE: &str = "sensor-fleet";
const LABEL: &str = "mqttkafka.io/bridge=sensor-fleet";
/// Tag of the images `cargo xtask demo` imported into the real node.
const IMAGE_TAG: &str = "demo";

#[derive(Parser)]
#[command(name = "mkb-demo", about = "The MQTT-Kafka bridge quickstart")]
struct Cli {
    /// Where the demo keeps its state, logs and pid file.
    #[arg(long, global = true, default_value = "target/demo")]
    state: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install, apply, start the bridges and the fleet in the background.
    Up(UpArgs),
    /// (internal) The background process: bridge pods, fleet, counters.
    Agent(UpArgs),
    /// Show the flow live.
    Watch {
        /// For how long.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Stop the background processes and delete what `up` created.
    Down,
}

#[derive(Args, Clone)]
struct UpArgs {
    /// Directory of the release binaries (operator, bridge-runtime).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Sensors in the fleet.
    #[arg(long, default_value_t = 2000)]
    sensors: usize,
    /// Readings per second per sensor.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Prefix of the MQTT topics and the Kafka topic (empty: exactly the
    /// example's `sensors/…` and `sensor_data`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// (internal, for `agent`) The bridge's `spec.http.port` that `up` chose.
    #[arg(long, default_value_t = 0, hide = true)]
    bridge_http_port: u16,
}

impl UpArgs {
    fn names(&self, http_port: u16, node: &RealNode) -> BridgeNames {
        BridgeNames {
            http_port,
            pod_template: node.bridge_pod_template(),
            name: BRIDGE.into(),
            mqtt_root: if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            },
            kafka_topic: if self.prefix.is_empty() {
                "sensor_data".into()
            } else {
                format!("{}.sensor_data", self.prefix)
            },
            client_prefix: "sensor-fleet-demo".into(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    sensor_fleet::install_crypto_provider();
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.state)
        .with_context(|| format!("create {}", cli.state.display()))?;
    let state = std::fs::canonicalize(&cli.state)?;
    match cli.command {
        Cmd::Up(a) => up(&state, &a).await,
        Cmd::Agent(a) => agent(&state, &a).await,
        Cmd::Watch { seconds } => watch(&state, seconds).await,
        Cmd::Down => down(&state).await,
    }
}

fn say(what: &str) {
    eprintln!("demo: {what}");
}

/// The pids `up` started, and where things are.
fn pids_file(state: &Path) -> PathBuf {
    state.join("processes.json")
}

async fn up(state: &Path, a: &UpArgs) -> Result<()> {
    let s = Servers::from_env()?;
    let bin_dir = std::fs::canonicalize(&a.bin_dir)
        .with_context(|| format!("{}: build the release binaries first", a.bin_dir.display()))?;
    if pids_file(state).exists() {
        say("a demo is already up; restarting it (`cargo xtask demo down` removes it)");
        down(state).await?;
    }
    let real_node = RealNode::from_env()?;
    let names = a.names(node::free_port_range(2)?, &real_node);

    say(&format!(
        "installing the operator with Helm (release {RELEASE}, namespace {OPERATOR_NS}, watching {BRIDGE_NS})"
    ));
    install::create_namespace(&s, BRIDGE_NS)?;
    let op_port = e2e::free_port()?;
    install::helm_install_on_node(
        &s,
        &state.join("helm"),
        RELEASE,
        OPERATOR_NS,
        BRIDGE_NS,
        IMAGE_TAG,
        &real_node,
        op_port,
    )?;
    let op_http = format!("127.0.0.1:{op_port}");
    say(&format!(
        "operator running as a pod on node {} (ServiceAccount {}; kubectl logs -n {OPERATOR_NS} deploy/{RELEASE})",
        real_node.name,
        install::service_account(&s, RELEASE, OPERATOR_NS)?,
    ));

    say(&format!(
        "Kafka topic {} with 10 partitions, Secrets {} and {}",
        names.kafka_topic,
        install::KAFKA_SECRET,
        install::MQTT_SECRET
    ));
    sensor_fleet::conn::create_topic(&s.kafka(), &names.kafka_topic, 10).await?;
    install::create_secrets(&s, BRIDGE_NS)?;
    let manifest = install::sensor_fleet_bridge(&s, &names)?;
    std::fs::write(state.join("bridge.yaml"), &manifest)?;
    run(
        s.kubectl().args(["apply", "-n", BRIDGE_NS, "-f", "-"]),
        Some(&manifest),
    )?;
    say(&format!(
        "applied the sample bridge: {} (kubectl get mkb -n {BRIDGE_NS})",
        state.join("bridge.yaml").display()
    ));

    // The agent outlives this command: its own process group, so a Ctrl-C
    // of the terminal does not stop it; `down` does, by pid.
    let log = std::fs::File::create(state.join("agent.log"))?;
    let me = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(&me);
    cmd.arg("--state")
        .arg(state)
        .arg("agent")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--sensors", &a.sensors.to_string()])
        .args(["--rate", &a.rate.to_string()])
        .args(["--prefix", &a.prefix])
        .args(["--bridge-http-port", &names.http_port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let agent = cmd.spawn().context("start the demo agent")?;
    std::fs::write(
        pids_file(state),
        serde_json::to_vec_pretty(&json!({
            "agent": {"pid": agent.id(), "program": "mkb-demo"},
            "operator_http": op_http,
            "bridge_http_port": names.http_port,
            "kafka_topic": names.kafka_topic,
            "mqtt_root": names.mqtt_root,
        }))?,
    )?;
    say(&format!(
        "a fleet of {} sensors at {} Hz started (pid {}, log {}); the bridge pods run on node {}",
        a.sensors,
        a.rate,
        agent.id(),
        state.join("agent.log").display(),
        real_node.name
    ));
    say(
        "waiting for the bridge to become Ready (kubectl wait --for=condition=Ready mkb/sensor-fleet)",
    );
    run(
        s.kubectl().args([
            "wait",
            "-n",
            BRIDGE_NS,
            "--for=condition=Ready",
            &format!("mkb/{BRIDGE}"),
            "--timeout=300s",
        ]),
        None,
    )
    .context("the bridge did not become Ready; see the logs in the demo directory")?;
    say("Ready");
    Ok(())
}

async fn agent(state: &Path, a: &UpArgs) -> Result<()> {
    let s = Servers::from_env()?;
    let http_port = a.bridge_http_port;
    let names = a.names(http_port, &RealNode::from_env()?);
    let client = s.kube_client().await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, BRIDGE_NS);

    // The way back, counted (not accounted: the fleet runs for hours).
    let back = sensor_fleet::verify::Control::new(
        Duration::from_secs(365 * 24 * 3600),
        Duration::from_secs(365 * 24 * 3600),
    );
    let mut sub =
        sensor_fleet::verify::MqttSub::new(s.mqtt(), format!("{}sensors/+", names.mqtt_root));
    sub.client_id_prefix = "sensor-fleet-demo-watch".into();
    sub.account = false;
    let _back = sensor_fleet::verify::mqtt(&sub, back.clone()).await?;

    let counters = Arc::new(sensor_fleet::simulate::SimCounters::default());
    let counters_kafka = Arc::new(sensor_fleet::simulate::SimCounters::default());
    let mut fleet =
        sensor_fleet::simulate::Fleet::new(a.sensors, a.rate, Duration::from_secs(365 * 24 * 3600));
    fleet.topic_template = format!("{}sensors/{{id}}/temperature", names.mqtt_root);
    let mut sim = sensor_fleet::simulate::MqttSim::new(fleet, s.mqtt());
    sim.client_id_prefix = "sensor-fleet-demo-sim".into();
    {
        let counters = counters.clone();
        tokio::spawn(async move {
            if let Err(e) = sensor_fleet::simulate::simulate_mqtt_with(&sim, counters).await {
                eprintln!("demo agent: fleet stopped: {e:#}");
            }
        });
    }

    // Besides the fleet's own readings, the way back carries what another
    // producer writes into the topic: a tenth of the fleet, straight to Kafka.
    {
        let mut fleet = sensor_fleet::simulate::Fleet::new(
            (a.sensors / 10).max(1),
            a.rate,
            Duration::from_secs(365 * 24 * 3600),
        );
        fleet.id_prefix = "service".into();
        let sim = sensor_fleet::simulate::KafkaSim {
            fleet,
            endpoint: s.kafka(),
            topic: names.kafka_topic.clone(),
            drain_timeout: Duration::from_secs(10),
            progress: None,
        };
        let counters = counters_kafka.clone();
        tokio::spawn(async move {
            if let Err(e) = sensor_fleet::simulate::simulate_kafka_with(&sim, counters).await {
                eprintln!("demo agent: Kafka producer stopped: {e:#}");
            }
        });
    }

    let watermarks = {
        let consumer: rdkafka::consumer::BaseConsumer = s
            .kafka()
            .client_config()
            .set("group.id", "sensor-fleet-demo-watermarks")
            .create()
            .context("create Kafka consumer")?;
        Arc::new(consumer)
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let records = {
            let (c, topic) = (watermarks.clone(), names.kafka_topic.clone());
            tokio::task::spawn_blocking(move || kafka_records(&c, &topic))
                .await
                .ok()
                .flatten()
        };
        let bridges: Vec<_> = pods
            .list(&kube::api::ListParams::default().labels(LABEL))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let slot = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("mqttkafka.io/slot"))
                    .cloned()
                    .unwrap_or_default();
                let port = u32::from(http_port) + slot.parse::<u32>().unwrap_or(0);
                let (ready, restarts) = node::bridge_container(p)
                    .map(|c| (Some(c.0), c.1))
                    .unwrap_or((None, 0));
                json!({"pod": p.metadata.name, "slot": slot, "http": format!("127.0.0.1:{port}"),
                       "ready": ready, "restarts": restarts,
                       "phase": p.status.as_ref().and_then(|s| s.phase.clone())})
            })
            .collect();
        let status = json!({
            "at": sensor_fleet::payload::now_micros(),
            "published": counters.published.load(Ordering::Relaxed),
            "acked": counters.acked.load(Ordering::Relaxed),
            "kafka_records": records,
            "back": back.received.load(Ordering::Relaxed),
            "produced": counters_kafka.published.load(Ordering::Relaxed),
            "bridges": bridges,
        });
        let tmp = state.join("status.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&status)?)?;
        std::fs::rename(&tmp, state.join("status.json"))?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = term.recv() => break,
        }
    }
    counters.stop.store(true, Ordering::Relaxed);
    counters_kafka.stop.store(true, Ordering::Relaxed);
    Ok(())
}

/// Records in the topic so far (sum of the partitions' high watermarks).
fn kafka_records(c: &rdkafka::consumer::BaseConsumer, topic: &str) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(2)).ok()?;
    let mut sum = 0;
    for t in md.topics() {
        for p in t.partitions() {
            let (low, high) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(2))
                .ok()?;
            sum += high - low.min(high);
        }
    }
    Some(sum)
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

async fn watch(state: &Path, seconds: u64) -> Result<()> {
    let s = Servers::from_env()?;
    let Some(procs) = read_json(&pids_file(state)) else {
        bail!("no demo is up: run `cargo xtask demo`");
    };
    let start = Instant::now();
    let mut last: Option<serde_json::Value> = None;
    let mut shown_endpoints = false;
    let mut next_get = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let Some(now) = read_json(&state.join("status.json")) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if !shown_endpoints && now["bridges"].as_array().is_some_and(|b| !b.is_empty()) {
            println!("metrics endpoints (Prometheus text):");
            println!(
                "  operator  http://{}/metrics",
                procs["operator_http"].as_str().unwrap_or("?")
            );
            for b in now["bridges"].as_array().into_iter().flatten() {
                println!(
                    "  bridge slot {}  http://{}/metrics  (/readyz, /healthz; pod {}: kubectl logs -n {BRIDGE_NS} {})",
                    b["slot"].as_str().unwrap_or("?"),
                    b["http"].as_str().unwrap_or("?"),
                    b["pod"].as_str().unwrap_or("?"),
                    b["pod"].as_str().unwrap_or("?")
                );
            }
            println!(
                "Kafka → MQTT carries the fleet's readings back out on sensors/<sensor_id>, plus what \
                 other producers write into the topic (here a tenth of the fleet, produced straight to Kafka)."
            );
            shown_endpoints = true;
        }
        if Instant::now() >= next_get {
            let out = e2e::output(s.kubectl().args(["get", "mkb", "-n", BRIDGE_NS]), None)?;
            println!(
                "$ kubectl get mkb -n {BRIDGE_NS}\n{}",
                String::from_utf8_lossy(&out.stdout).trim_end()
            );
            next_get = Instant::now() + Duration::from_secs(15);
        }
        if let Some(prev) = &last {
            let dt = (now["at"].as_f64().unwrap_or(0.0) - prev["at"].as_f64().unwrap_or(0.0)) / 1e6;
            if dt > 0.0 {
                let rate = |k: &str| {
                    (now[k].as_f64().unwrap_or(0.0) - prev[k].as_f64().unwrap_or(0.0)) / dt
                };
                let ready: Vec<String> = now["bridges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| match b["ready"].as_bool() {
                        Some(true) => format!("slot {} ready", b["slot"].as_str().unwrap_or("?")),
                        _ => format!(
                            "slot {} NOT ready ({}, {} restarts)",
                            b["slot"].as_str().unwrap_or("?"),
                            b["phase"].as_str().unwrap_or("?"),
                            b["restarts"].as_i64().unwrap_or(0)
                        ),
                    })
                    .collect();
                println!(
                    "sensors → MQTT {:>6.0}/s | into Kafka {:>6.0}/s ({} records) | Kafka → MQTT {:>6.0}/s | {}",
                    rate("published"),
                    rate("kafka_records"),
                    now["kafka_records"]
                        .as_i64()
                        .map_or("?".into(), |n| n.to_string()),
                    rate("back"),
                    ready.join(", ")
                );
            }
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "\nThe demo keeps running in the background. `cargo xtask demo watch` shows it again, \
         `cargo xtask demo down` stops it. Logs: {}",
        state.display()
    );
    Ok(())
}

/// Stops `pid` if it still is `program` (a pid may have been reused).
fn stop_recorded(pid: u32, program: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let is_it = Path::new(&*String::from_utf8_lossy(first))
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == program);
    if is_it {
        e2e::terminate(pid);
    }
    is_it
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn down(state: &Path) -> Result<()> {
    let s = Servers::from_env()?;
    if let Some(procs) = read_json(&pids_file(state)) {
        // The agent (the fleet); the operator and the bridge pods go with
        // the bridge and the release below (the kubelet stops them: SIGTERM,
        // they drain).
        for key in ["agent"] {
            let pid = procs[key]["pid"].as_u64().unwrap_or(0) as u32;
            let program = procs[key]["program"].as_str().unwrap_or("");
            if pid != 0 && stop_recorded(pid, program) {
                say(&format!("stopping {key} (pid {pid})"));
                let start = Instant::now();
                while alive(pid) && start.elapsed() < Duration::from_secs(60) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if let Some(topic) = procs["kafka_topic"].as_str() {
            delete_topic(&s, topic).await;
        }
    }
    say(&format!(
        "deleting the bridge, helm release {RELEASE} and namespaces {BRIDGE_NS}, {OPERATOR_NS}"
    ));
    let _ = e2e::output(
        s.kubectl().args([
            "delete",
            "mkb",
            "--all",
            "-n",
            BRIDGE_NS,
            "--ignore-not-found",
            "--timeout=60s",
        ]),
        None,
    );
    let _ = e2e::output(
        s.helm(&state.join("helm")).args([
            "uninstall",
            RELEASE,
            "-n",
            OPERATOR_NS,
            "--ignore-not-found",
        ]),
        None,
    );
    for ns in [BRIDGE_NS, OPERATOR_NS] {
        let _ = e2e::output(
            // Waits, so that an `up` right after finds no terminating namespace.
            s.kubectl().args([
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--timeout=120s",
            ]),
            None,
        );
    }
    let _ = std::fs::remove_file(pids_file(state));
    let _ = std::fs::remove_file(state.join("status.json"));
    say("down (the test environment keeps running: `cargo xtask testenv down` stops it)");
    Ok(())
}

async fn delete_topic(s: &Servers, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = s
        .kafka()
        .client_config()
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
    say(&format!("deleted Kafka topic {topic}"));
}
