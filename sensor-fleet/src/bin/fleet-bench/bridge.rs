//! The bridge scenarios: reference fleet, peak against the broker's ceiling,
//! Kafka→MQTT. The bridge runs as its own process so /proc tells its CPU and RSS.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use sensor_fleet::simulate::{self, Fleet, KafkaSim, MqttSim, SimCounters};
use sensor_fleet::verify::{self, Control, MqttSub, StartAt};
use sensor_fleet::{KafkaEndpoint, MqttEndpoint, conn};

use crate::procs::{self, Memory};
use crate::{Args, Env, machine, run_id, table, write_result};

/// The bridge's YAML for one MQTT→Kafka route, keyed by the payload's `sensor_id`.
fn m2k_config(
    mqtt: &str,
    kafka: &str,
    id: &str,
    filter: &str,
    topic: &str,
    qos: u8,
    args: &Args,
) -> String {
    let connections = args.bridge_connections;
    let shared = if connections > 1 {
        format!("  sharedSubscriptionGroup: {id}\n")
    } else {
        String::new()
    };
    let receive_maximum = args
        .bridge_receive_maximum
        .map_or(String::new(), |n| format!("mqttReceiveMaximum: {n}\n"));
    let linger = args.bridge_linger_ms.map_or(String::new(), |ms| {
        format!("  producer:\n    lingerMs: {ms}\n")
    });
    format!(
        "mqtt:\n  url: {mqtt}\n  protocolVersion: \"5\"\n  clientIdPrefix: {id}\n  connections: {connections}\n  sessionExpirySeconds: 30\n{shared}\
kafka:\n  bootstrapServers: {kafka}\n{linger}{receive_maximum}\
routes:\n  - name: readings\n    mqttToKafka:\n      mqttTopicFilter: \"{filter}\"\n      kafkaTopic: {topic}\n      qos: {qos}\n      key:\n        type: jsonField\n        field: sensor_id\n\
log:\n  level: warn\n"
    )
}

#[derive(Serialize)]
struct BridgeUse {
    cpu_cores: f64,
    #[serde(flatten)]
    memory: Memory,
}

/// Reference fleet: 2000 sensors × 10 Hz through the bridge into a 10-partition topic.
pub async fn reference(args: &Args, env: &Env, qos: u8) -> Result<()> {
    let name = if qos == 0 {
        "reference-qos0"
    } else {
        "reference"
    };
    let id = format!("bench-ref-{}", run_id());
    let topic = format!("sensor_data-{id}");
    let kafka = KafkaEndpoint::plain(&env.kafka);
    conn::create_topic(&kafka, &topic, 10).await?;
    let (mut bridge, http) = procs::start_bridge(
        &args.bridge_bin,
        &args.out.join(name),
        &m2k_config(
            &env.mqtt,
            &env.kafka,
            &id,
            &format!("{id}/+/temperature"),
            &topic,
            qos,
            args,
        ),
    )?;
    let machine = machine();
    let verifier = verify::kafka(
        &kafka,
        &topic,
        StartAt::Beginning,
        Control::new(
            Duration::from_secs(args.duration + 120),
            Duration::from_secs(20),
        ),
    )
    .await?;
    let mut fleet = Fleet::new(2000, 10.0, Duration::from_secs(args.duration));
    fleet.topic_template = format!("{id}/{{id}}/temperature");
    let mut sim = MqttSim::new(fleet, MqttEndpoint::plain(&env.mqtt));
    sim.qos = qos;
    sim.connections = args.publisher_connections;
    sim.client_id_prefix = format!("{id}-pub");
    sim.progress = Some(Duration::from_secs(10));
    let cpu0 = procs::cpu_sample(bridge.pid())?;
    let summary = simulate::simulate_mqtt(&sim).await?;
    verifier.control.set_expected(summary.expected.total());
    let (tracker, why) = verifier.finish().await?;
    let cpu1 = procs::cpu_sample(bridge.pid())?;
    bridge.check_alive()?;
    let usage = BridgeUse {
        cpu_cores: procs::cores(cpu0, cpu1),
        memory: procs::memory(bridge.pid()),
    };
    // The bridge's own view splits the latency: Kafka delivery vs the whole forward.
    let metrics = procs::http_get(&http, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let kafka_ms = metric_mean_ms(&metrics, "bridge_kafka_delivery_latency");
    let forward_ms = metric_mean_ms(&metrics, "bridge_forward_latency");
    bridge.stop(Duration::from_secs(10));
    let r = tracker.report(Some(&summary.expected));
    let met = r.missing == 0
        && r.latency_ms.p99 < 50.0
        && usage.cpu_cores < 0.5
        && usage.memory.peak_rss_mib < 64.0;
    table(
        &format!(
            "{name}: 2000 sensors x 10 Hz, QoS {qos}, {} s, MQTT->Kafka (10 partitions, key sensor_id)",
            args.duration
        ),
        &[
            (
                "published / acked by broker".into(),
                format!("{} / {}", summary.published, summary.acked),
            ),
            (
                "publisher rate achieved".into(),
                format!(
                    "{:.0} msg/s (max lag {:.0} ms)",
                    summary.achieved_rate, summary.max_lag_ms
                ),
            ),
            (
                "received in Kafka".into(),
                format!("{} ({why})", r.received),
            ),
            (
                "throughput".into(),
                format!("{:.0} msg/s", r.throughput_per_s),
            ),
            (
                "loss / duplicates / reordered".into(),
                format!("{} / {} / {}", r.missing, r.duplicates, r.reordered),
            ),
            (
                "partitions / keys split".into(),
                format!("{} / {}", r.partitions.len(), r.keys_on_several_partitions),
            ),
            (
                "latency p50 / p99 / max".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.max
                ),
            ),
            (
                "bridge mean forward / Kafka delivery".into(),
                format!("{forward_ms:.1} / {kafka_ms:.1} ms (bridge /metrics)"),
            ),
            ("bridge CPU".into(), format!("{:.3} cores", usage.cpu_cores)),
            (
                "bridge peak RSS".into(),
                format!("{:.1} MiB", usage.memory.peak_rss_mib),
            ),
            (
                "target (QoS 1: 0 loss, p99<50ms, <0.5 core, <64 MiB)".into(),
                if met { "met".into() } else { "NOT met".into() },
            ),
        ],
    );
    write_result(
        args,
        name,
        &json!({
            "scenario": name, "qos": qos, "machine": machine, "bridge_connections": args.bridge_connections,
            "simulator": summary, "report": r, "bridge": usage, "targets_met": met,
        "bridge_mean_forward_latency_ms": forward_ms, "bridge_mean_kafka_delivery_latency_ms": kafka_ms,
        }),
    )
}

/// Mean of a Prometheus histogram (`<name>…_sum` / `<name>…_count`, all label sets) in ms.
fn metric_mean_ms(body: &str, name: &str) -> f64 {
    let total = |suffix: &str| -> f64 {
        body.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name))
            .filter(|l| {
                l.split(['{', ' '])
                    .next()
                    .is_some_and(|n| n.ends_with(suffix))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = total("_count");
    if count > 0.0 {
        total("_sum") / count * 1000.0
    } else {
        0.0
    }
}

#[derive(Debug, Serialize)]
struct Step {
    offered: f64,
    achieved: f64,
    published: u64,
    acked: u64,
    delivered: u64,
    missing: u64,
    /// From the end of publishing to the last expected message (or giving up).
    drain_s: f64,
    p99_ms: f64,
    bridge_cpu_cores: Option<f64>,
    ok: bool,
}

/// The ramp: fine where QoS 1 ends on a 2-core machine, on up to where a
/// QoS 0 subscriber can fail (at 80,000 it never had).
const RATES: [f64; 16] = [
    5e3, 10e3, 15e3, 20e3, 25e3, 30e3, 32.5e3, 35e3, 40e3, 50e3, 60e3, 70e3, 80e3, 100e3, 120e3,
    150e3,
];
/// A step passes when the publisher kept 97% of the offered rate...
const KEEP_UP: f64 = 0.97;
/// ...and everything arrived within this long after publishing ended.
const MAX_DRAIN: Duration = Duration::from_secs(3);

fn step_fleet(args: &Args, rate: f64, prefix: &str, topic_root: &str) -> Fleet {
    let mut f = Fleet::new(1000, rate / 1000.0, Duration::from_secs(args.step_duration));
    f.id_prefix = prefix.to_owned();
    f.topic_template = format!("{topic_root}/{{id}}/temperature");
    f
}

/// One step against a verifier that is already listening.
async fn run_step(
    sim: &MqttSim,
    verifier: verify::Verifier,
    bridge_pid: Option<u32>,
) -> Result<Step> {
    let counters = Arc::new(SimCounters::default());
    let cpu0 = bridge_pid.map(procs::cpu_sample).transpose()?;
    let summary = simulate::simulate_mqtt_with(sim, counters).await?;
    let sent_at = Instant::now();
    let expected = if sim.qos == 0 {
        summary.acked
    } else {
        summary.expected.total()
    };
    verifier.control.set_expected(expected);
    let control = verifier.control.clone();
    let (tracker, _) = verifier.finish().await?;
    let drain = sent_at.elapsed();
    let cpu1 = bridge_pid.map(procs::cpu_sample).transpose()?;
    // The ceiling subscriber only counts (account off); the Kafka verifier accounts.
    let delivered = control.unique.load(Ordering::Relaxed).max(tracker.unique());
    let (missing, p99) = if tracker.received() > 0 {
        let r = tracker.report(Some(&summary.expected));
        (r.missing, r.latency_ms.p99)
    } else {
        (summary.expected.total().saturating_sub(delivered), 0.0)
    };
    let offered = summary.offered_rate;
    let ok = summary.achieved_rate >= offered * KEEP_UP
        && missing == 0
        && drain <= MAX_DRAIN + Duration::from_millis(500);
    Ok(Step {
        offered,
        achieved: summary.achieved_rate,
        published: summary.published,
        acked: summary.acked,
        delivered,
        missing,
        drain_s: drain.as_secs_f64(),
        p99_ms: p99,
        bridge_cpu_cores: cpu0.zip(cpu1).map(|(a, b)| procs::cores(a, b)),
        ok,
    })
}

fn print_steps(title: &str, steps: &[Step]) {
    println!("\n-- {title} --");
    println!(
        "  {:>8} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>6} ok",
        "offered", "achieved", "acked", "delivered", "missing", "drain s", "p99 ms", "cpu"
    );
    for s in steps {
        println!(
            "  {:>8.0} {:>9.0} {:>9} {:>9} {:>8} {:>7.1} {:>8.1} {:>6} {}",
            s.offered,
            s.achieved,
            s.acked,
            s.delivered,
            s.missing,
            s.drain_s,
            s.p99_ms,
            s.bridge_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            if s.ok { "yes" } else { "NO" }
        );
    }
}

/// Peak MQTT→Kafka: the ceiling (a plain subscriber that only acknowledges,
/// same protocol, Receive Maximum and connections as the bridge), then the
/// bridge, both raising the rate step by step until a step fails.
pub async fn peak(args: &Args, env: &Env, qos: u8) -> Result<()> {
    let name = if qos == 0 { "peak-qos0" } else { "peak" };
    let id = format!("bench-peak-{}", run_id());
    let dir = args.out.join(name);
    let (_mosquitto, mqtt_url, broker_note) = if args.testenv_broker {
        (
            None,
            env.mqtt.clone(),
            "test environment Mosquitto (max_queued_messages raised to 1,000,000)",
        )
    } else {
        let (p, url) = procs::start_default_mosquitto(&dir)?;
        (
            Some(p),
            url,
            "private Mosquitto 2.0 with default settings (in-flight 20, max_queued_messages 1000)",
        )
    };
    let machine = machine();
    let mqtt = MqttEndpoint::plain(&mqtt_url);
    let sim_for = |rate: f64, prefix: &str| {
        let mut s = MqttSim::new(step_fleet(args, rate, prefix, &id), mqtt.clone());
        s.qos = qos;
        s.connections = args.publisher_connections;
        s.client_id_prefix = format!("{prefix}-pub");
        s.drain_timeout = Duration::from_secs(5);
        s
    };

    // The ceiling: the broker delivering to a subscriber that does nothing but acknowledge.
    let mut ceiling_steps = Vec::new();
    for (i, &rate) in RATES.iter().enumerate() {
        let prefix = format!("c{i}");
        let mut sub = MqttSub::new(mqtt.clone(), format!("{id}/+/temperature"));
        sub.qos = qos;
        sub.v5 = true;
        sub.connections = args.bridge_connections as usize;
        // The same window as the bridge's connections.
        sub.receive_maximum = args
            .bridge_receive_maximum
            .unwrap_or(crds::DEFAULT_MQTT_RECEIVE_MAXIMUM);
        sub.client_id_prefix = format!("{id}-ceil-{i}");
        sub.account = false;
        let v = verify::mqtt(
            &sub,
            Control::new(Duration::from_secs(args.step_duration + 30), MAX_DRAIN),
        )
        .await?;
        let step = run_step(&sim_for(rate, &prefix), v, None).await?;
        eprintln!("ceiling step {rate:.0}/s: {step:?}");
        let ok = step.ok;
        ceiling_steps.push(step);
        if !ok {
            break;
        }
    }
    let ceiling = ceiling_steps
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.achieved)
        .fold(0.0, f64::max);

    // The bridge, into a 10-partition topic.
    let topic = format!("sensor_data-{id}");
    let kafka = KafkaEndpoint::plain(&env.kafka);
    conn::create_topic(&kafka, &topic, 10).await?;
    let (mut bridge, _) = procs::start_bridge(
        &args.bridge_bin,
        &dir,
        &m2k_config(
            &mqtt_url,
            &env.kafka,
            &id,
            &format!("{id}/+/temperature"),
            &topic,
            qos,
            args,
        ),
    )?;
    let mut bridge_steps = Vec::new();
    for (i, &rate) in RATES.iter().enumerate() {
        let prefix = format!("b{i}");
        let v = verify::kafka(
            &kafka,
            &topic,
            StartAt::End,
            Control::new(Duration::from_secs(args.step_duration + 30), MAX_DRAIN),
        )
        .await?;
        let step = run_step(&sim_for(rate, &prefix), v, Some(bridge.pid())).await?;
        eprintln!("bridge step {rate:.0}/s: {step:?}");
        bridge.check_alive()?;
        let ok = step.ok;
        bridge_steps.push(step);
        if !ok {
            break;
        }
    }
    let mem = procs::memory(bridge.pid());
    bridge.stop(Duration::from_secs(10));
    let peak = bridge_steps
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.achieved)
        .fold(0.0, f64::max);
    let ratio = if ceiling > 0.0 { peak / ceiling } else { 0.0 };
    print_steps(
        &format!(
            "ceiling: plain subscriber (MQTT 5, Receive Maximum {}, {} connection(s)), acknowledging only",
            args.bridge_receive_maximum
                .unwrap_or(crds::DEFAULT_MQTT_RECEIVE_MAXIMUM),
            args.bridge_connections
        ),
        &ceiling_steps,
    );
    print_steps("bridge: MQTT -> Kafka", &bridge_steps);
    table(
        &format!(
            "{name}: QoS {qos}, {} s steps, {broker_note}",
            args.step_duration
        ),
        &[
            (
                "broker ceiling (plain subscriber)".into(),
                format!("{ceiling:.0} msg/s"),
            ),
            (
                "bridge peak without loss".into(),
                format!("{peak:.0} msg/s"),
            ),
            ("ratio".into(), format!("{:.0}%", ratio * 100.0)),
            (
                "bridge peak RSS".into(),
                format!("{:.1} MiB", mem.peak_rss_mib),
            ),
            (
                "target (>= 80% of ceiling)".into(),
                if ratio >= 0.8 {
                    "met".into()
                } else {
                    "NOT met".into()
                },
            ),
        ],
    );
    write_result(
        args,
        name,
        &json!({
            "scenario": name, "qos": qos, "machine": machine, "broker": broker_note,
            "bridge_connections": args.bridge_connections, "publisher_connections": args.publisher_connections,
            "step_duration_s": args.step_duration, "pass_rule": "publisher keeps 97% of offered rate, zero loss, drained within 3 s",
            "ceiling_msg_per_s": ceiling, "bridge_peak_msg_per_s": peak, "ratio": ratio,
            "ceiling_steps": ceiling_steps, "bridge_steps": bridge_steps, "bridge_memory": mem,
            "targets_met": ratio >= 0.8,
        }),
    )
}

/// Kafka→MQTT at 20,000 msg/s: readings produced to Kafka, the bridge
/// publishing them to `…/<sensor_id>` at QoS 1, a subscriber counting them.
pub async fn kafka_to_mqtt(args: &Args, env: &Env) -> Result<()> {
    let name = "kafka-to-mqtt";
    let id = format!("bench-k2m-{}", run_id());
    let topic = format!("sensor_out-{id}");
    let kafka = KafkaEndpoint::plain(&env.kafka);
    conn::create_topic(&kafka, &topic, 10).await?;
    let config = format!(
        "mqtt:\n  url: {}\n  protocolVersion: \"5\"\n  clientIdPrefix: {id}\n  sessionExpirySeconds: 30\n\
kafka:\n  bootstrapServers: {}\n  consumer:\n    groupId: {id}\n    autoOffsetReset: earliest\n\
routes:\n  - name: readings-out\n    kafkaToMqtt:\n      kafkaTopics: [{topic}]\n      mqttTopic: \"{id}/{{sensor_id}}\"\n      qos: 1\n\
log:\n  level: warn\n",
        env.mqtt, env.kafka
    );
    let machine = machine();
    let mut sub = MqttSub::new(MqttEndpoint::plain(&env.mqtt), format!("{id}/+"));
    sub.v5 = true;
    sub.client_id_prefix = format!("{id}-sub");
    let verifier = verify::mqtt(
        &sub,
        Control::new(
            Duration::from_secs(args.duration + 120),
            Duration::from_secs(20),
        ),
    )
    .await?;
    let (mut bridge, _) = procs::start_bridge(&args.bridge_bin, &args.out.join(name), &config)?;
    let sim = KafkaSim {
        fleet: Fleet::new(2000, 10.0, Duration::from_secs(args.duration)),
        endpoint: kafka,
        topic,
        drain_timeout: Duration::from_secs(30),
        progress: Some(Duration::from_secs(10)),
    };
    let cpu0 = procs::cpu_sample(bridge.pid())?;
    let summary = simulate::simulate_kafka(&sim).await?;
    verifier.control.set_expected(summary.expected.total());
    let (tracker, why) = verifier.finish().await?;
    let cpu1 = procs::cpu_sample(bridge.pid())?;
    bridge.check_alive()?;
    let usage = BridgeUse {
        cpu_cores: procs::cores(cpu0, cpu1),
        memory: procs::memory(bridge.pid()),
    };
    bridge.stop(Duration::from_secs(10));
    let r = tracker.report(Some(&summary.expected));
    let met = r.missing == 0
        && summary.achieved_rate >= 20_000.0 * KEEP_UP
        && r.throughput_per_s >= 20_000.0 * 0.95;
    table(
        &format!(
            "{name}: 2000 sensors x 10 Hz produced to Kafka (10 partitions), bridge to MQTT QoS 1, {} s",
            args.duration
        ),
        &[
            (
                "produced / acked by Kafka".into(),
                format!("{} / {}", summary.published, summary.acked),
            ),
            (
                "producer rate achieved".into(),
                format!("{:.0} msg/s", summary.achieved_rate),
            ),
            (
                "received over MQTT".into(),
                format!("{} ({why})", r.received),
            ),
            (
                "throughput".into(),
                format!("{:.0} msg/s", r.throughput_per_s),
            ),
            (
                "loss / duplicates / reordered".into(),
                format!("{} / {} / {}", r.missing, r.duplicates, r.reordered),
            ),
            (
                "latency p50 / p99 / max".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.max
                ),
            ),
            (
                "bridge CPU / peak RSS".into(),
                format!(
                    "{:.3} cores / {:.1} MiB",
                    usage.cpu_cores, usage.memory.peak_rss_mib
                ),
            ),
            (
                "target (20,000 msg/s, zero loss)".into(),
                if met { "met".into() } else { "NOT met".into() },
            ),
        ],
    );
    write_result(
        args,
        name,
        &json!({
            "scenario": name, "machine": machine, "producer": summary, "report": r, "bridge": usage, "targets_met": met,
        }),
    )
}
