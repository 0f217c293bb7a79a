//! `fleet-bench <scenario>`: the benchmarks of issue 7 against the test
//! environment (`cargo xtask bench` builds everything and runs this with the
//! environment's addresses). Each scenario is bounded in time, prints a table
//! and writes `target/bench/<scenario>.json`.

mod bridge;
mod drain;
mod operator;
mod procs;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 2000 sensors × 10 Hz, QoS 1, MQTT→Kafka.
    Reference,
    /// The same at QoS 0.
    ReferenceQos0,
    /// Raise the rate until the bridge loses or falls behind; broker ceiling beside it.
    Peak,
    /// The same at QoS 0.
    PeakQos0,
    /// Kafka→MQTT at 20,000 msg/s.
    KafkaToMqtt,
    /// 500 bridges through a separately running operator.
    OperatorScale,
    /// Backlog drain in both directions: the broker-alone ceiling, this
    /// bridge and the peer bridges the machine has, several rounds each.
    Drain,
    /// Every scenario above, one after the other.
    All,
}

#[derive(Parser, Debug)]
#[command(
    name = "fleet-bench",
    about = "Benchmarks of the bridge and the operator"
)]
pub struct Args {
    #[arg(value_enum, default_value_t = Scenario::Reference)]
    pub scenario: Scenario,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The bridge binary (built with `cargo build --release -p bridge-runtime`).
    #[arg(long, default_value = "target/release/bridge-runtime")]
    pub bridge_bin: PathBuf,
    /// The operator binary (built with `cargo build --release -p operator`).
    #[arg(long, default_value = "target/release/operator")]
    pub operator_bin: PathBuf,
    /// Sending period of the reference and Kafka→MQTT scenarios, seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Sending period of each step of the peak scenario, seconds.
    #[arg(long, default_value_t = 10)]
    pub step_duration: u64,
    /// MQTT connections of the bridge (a shared subscription when more than one).
    #[arg(long, default_value_t = 1)]
    pub bridge_connections: u16,
    /// MQTT 5 Receive Maximum of each bridge connection (and of the ceiling's
    /// subscriber in the peak scenario); unset: the bridge's default.
    #[arg(long)]
    pub bridge_receive_maximum: Option<u16>,
    /// Drain scenario: the bridge's `mqtt.publishConnections` (Kafka→MQTT);
    /// unset: the bridge's default.
    #[arg(long)]
    pub bridge_publish_connections: Option<u16>,
    /// The bridge producer's `linger.ms`; unset: the bridge's default.
    #[arg(long)]
    pub bridge_linger_ms: Option<u32>,
    /// Publisher connections of the simulator.
    #[arg(long, default_value_t = 4)]
    pub publisher_connections: usize,
    /// Peak scenario: use the test environment's Mosquitto (max_queued_messages
    /// raised) instead of starting one with pure default settings.
    #[arg(long)]
    pub testenv_broker: bool,
    /// Number of bridges of the operator scenario.
    #[arg(long, default_value_t = 500)]
    pub bridges: usize,
    /// Rounds of the drain scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Messages in each backlog of the drain scenario.
    #[arg(long, default_value_t = 100_000)]
    pub drain_messages: u64,
    /// Drain scenario: only the contestants whose name contains one of these
    /// (`ceiling`, `bridge`, `python`, `benthos`); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Drain scenario: only this direction (`mqtt-to-kafka` or `kafka-to-mqtt`).
    #[arg(long)]
    pub direction: Option<String>,
}

/// The test environment's addresses.
pub struct Env {
    pub kafka: String,
    pub mqtt: String,
}

fn var(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run `cargo xtask bench`, or `eval \"$(cargo xtask testenv env)\"` first")
    })
}

/// Prints rows as an aligned two-column table.
pub fn table(title: &str, rows: &[(String, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\n== {title} ==");
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}

/// Writes `<out>/<name>.json`.
pub fn write_result(args: &Args, name: &str, value: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("  -> {}", path.display());
    Ok(())
}

/// What every result records about the machine it ran on.
pub fn machine() -> serde_json::Value {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "nproc": nproc,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "loadavg_at_start": load.trim(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// A suffix no earlier run used (topics, client ids, namespaces).
pub fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}-{}", std::process::id(), t % 100_000_000)
}

#[tokio::main]
async fn main() {
    sensor_fleet::install_crypto_provider();
    let args = Args::parse();
    if let Err(e) = run(&args).await {
        eprintln!("fleet-bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<()> {
    let env = Env {
        kafka: var("KAFKA_BOOTSTRAP")?,
        mqtt: var("MQTT_URL")?,
    };
    let all = args.scenario == Scenario::All;
    let is = |s: Scenario| all || args.scenario == s;
    if is(Scenario::Reference) {
        bridge::reference(args, &env, 1).await?;
    }
    if is(Scenario::ReferenceQos0) {
        bridge::reference(args, &env, 0).await?;
    }
    if is(Scenario::Peak) {
        bridge::peak(args, &env, 1).await?;
    }
    if is(Scenario::PeakQos0) {
        bridge::peak(args, &env, 0).await?;
    }
    if is(Scenario::KafkaToMqtt) {
        bridge::kafka_to_mqtt(args, &env).await?;
    }
    if is(Scenario::Drain) {
        drain::drain(args, &env).await?;
    }
    if is(Scenario::OperatorScale) {
        operator::scale(args).await?;
    }
    Ok(())
}
