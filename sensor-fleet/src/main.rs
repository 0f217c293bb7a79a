//! `sensor-fleet`: simulate a fleet of sensors over MQTT (or straight into
//! Kafka) and verify what arrived on the other side of a bridge.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sensor_fleet::simulate::{self, Fleet, KafkaSim, MqttSim};
use sensor_fleet::verify::{self, Control, MqttSub, StartAt};
use sensor_fleet::{Expected, KafkaEndpoint, MqttEndpoint};

#[derive(Parser)]
#[command(
    name = "sensor-fleet",
    about = "Sensor fleet simulator and loss/latency verifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish N sensors at R Hz to MQTT.
    Simulate {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        mqtt: MqttEndpoint,
        /// QoS of the publishes (0, 1 or 2).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// MQTT connections the sensors are spread over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Unacknowledged publishes per connection (Mosquitto's default window is 20).
        #[arg(long, default_value_t = 20)]
        inflight: u16,
        /// Client ids are `<prefix>-<connection>`.
        #[arg(long)]
        client_id_prefix: Option<String>,
    },
    /// Produce the same readings straight to a Kafka topic (keyed by sensor id).
    SimulateKafka {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        kafka: KafkaEndpoint,
        /// Kafka topic.
        #[arg(long)]
        topic: String,
    },
    /// Consume a Kafka topic and report loss, duplicates, reordering and latency.
    VerifyKafka {
        #[command(flatten)]
        kafka: KafkaEndpoint,
        /// Kafka topic.
        #[arg(long)]
        topic: String,
        /// Where to start reading.
        #[arg(long, value_enum, default_value_t = StartAt::Beginning)]
        from: StartAt,
        #[command(flatten)]
        stop: StopArgs,
    },
    /// Subscribe to MQTT and report loss, duplicates, reordering and latency.
    VerifyMqtt {
        #[command(flatten)]
        mqtt: MqttEndpoint,
        /// Topic filter.
        #[arg(long, default_value = "sensors/+/temperature")]
        filter: String,
        /// QoS of the subscription.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// Connections (more than one form a shared subscription).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Use MQTT 5 with this Receive Maximum (default: MQTT 3.1.1).
        #[arg(long)]
        receive_maximum: Option<u16>,
        #[command(flatten)]
        stop: StopArgs,
    },
}

#[derive(Args)]
struct FleetArgs {
    /// Number of sensors.
    #[arg(long, default_value_t = 100)]
    sensors: usize,
    /// Readings per second per sensor.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How long to send (`60`, `60s`, `500ms`, `2m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// MQTT topic template; `{id}` is the sensor id.
    #[arg(long, default_value = "sensors/{id}/temperature")]
    topic_template: String,
    /// Sensor ids are `<prefix>-<index>`.
    #[arg(long, default_value = "sensor")]
    id_prefix: String,
    /// Write the summary and the per-sensor counts (for `--expect-file`) here.
    #[arg(long)]
    summary_file: Option<PathBuf>,
    /// Print progress this often.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress: Duration,
}

impl FleetArgs {
    fn fleet(&self) -> Fleet {
        Fleet {
            sensors: self.sensors,
            rate_hz: self.rate,
            duration: self.duration,
            id_prefix: self.id_prefix.clone(),
            topic_template: self.topic_template.clone(),
        }
    }
}

#[derive(Args)]
struct StopArgs {
    /// Stop once this many distinct readings arrived.
    #[arg(long, conflicts_with = "expect_file")]
    expected: Option<u64>,
    /// Per-sensor counts written by `simulate --summary-file`: exact loss accounting.
    #[arg(long)]
    expect_file: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop after this long without a message (once something arrived).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle: Duration,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl StopArgs {
    fn expectation(&self) -> Result<Option<Expected>> {
        let Some(path) = &self.expect_file else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let exp = serde_json::from_value(v.get("expected").cloned().unwrap_or(v))
            .with_context(|| format!("{}: no per-sensor counts", path.display()))?;
        Ok(Some(exp))
    }

    fn control(&self, exp: Option<&Expected>) -> std::sync::Arc<Control> {
        let c = Control::new(self.timeout, self.idle);
        if let Some(n) = exp.map(Expected::total).or(self.expected) {
            c.set_expected(n);
        }
        c
    }
}

/// `60`, `60s`, `500ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(value)?)
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    sensor_fleet::install_crypto_provider();
    match run(Cli::parse()).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sensor-fleet: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Exit code 2 means the verifier found loss.
async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Cmd::Simulate {
            fleet,
            mqtt,
            qos,
            connections,
            inflight,
            client_id_prefix,
        } => {
            let mut cfg = MqttSim::new(fleet.fleet(), mqtt);
            cfg.qos = qos;
            cfg.connections = connections;
            cfg.inflight = inflight;
            cfg.progress = Some(fleet.progress);
            if let Some(p) = client_id_prefix {
                cfg.client_id_prefix = p;
            }
            let s = simulate::simulate_mqtt(&cfg).await?;
            println!("{}", s.line());
            write_json(
                &fleet.summary_file,
                &serde_json::json!({"summary": s, "expected": s.expected}),
            )?;
            Ok(0)
        }
        Cmd::SimulateKafka {
            fleet,
            kafka,
            topic,
        } => {
            let cfg = KafkaSim {
                fleet: fleet.fleet(),
                endpoint: kafka,
                topic,
                drain_timeout: Duration::from_secs(30),
                progress: Some(fleet.progress),
            };
            let s = simulate::simulate_kafka(&cfg).await?;
            println!("{}", s.line());
            write_json(
                &fleet.summary_file,
                &serde_json::json!({"summary": s, "expected": s.expected}),
            )?;
            Ok(0)
        }
        Cmd::VerifyKafka {
            kafka,
            topic,
            from,
            stop,
        } => {
            let exp = stop.expectation()?;
            let v = verify::kafka(&kafka, &topic, from, stop.control(exp.as_ref())).await?;
            report(v, exp, &stop).await
        }
        Cmd::VerifyMqtt {
            mqtt,
            filter,
            qos,
            connections,
            receive_maximum,
            stop,
        } => {
            let exp = stop.expectation()?;
            let mut sub = MqttSub::new(mqtt, filter);
            sub.qos = qos;
            sub.connections = connections;
            sub.v5 = receive_maximum.is_some();
            sub.receive_maximum = receive_maximum.unwrap_or(1000);
            let v = verify::mqtt(&sub, stop.control(exp.as_ref())).await?;
            eprintln!("subscribed; waiting for readings");
            report(v, exp, &stop).await
        }
    }
}

async fn report(v: verify::Verifier, exp: Option<Expected>, stop: &StopArgs) -> Result<i32> {
    let (tracker, why) = v.finish().await?;
    let mut r = tracker.report(exp.as_ref());
    if exp.is_none()
        && let Some(n) = stop.expected
    {
        r.expected = Some(n);
        r.missing = r.missing.max(n.saturating_sub(r.unique));
    }
    println!("stopped: {why}\n{}", r.summary());
    write_json(&stop.json, &r)?;
    Ok(if r.lossless() { 0 } else { 2 })
}
