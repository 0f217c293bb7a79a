//! Backlog drain (issue 15): a backlog waits — QoS 1 messages queued at the
//! broker for a persistent session (MQTT→Kafka), or records already in Kafka
//! (Kafka→MQTT) — then one contestant starts and moves it. Contestants, in
//! every round: the broker-alone ceiling (plain Rust clients with the same
//! windows and connections as the bridge, no Kafka), this bridge at its
//! defaults, and the peers the machine has (a Python bridge, Benthos; see
//! `bench/peers/README.md`). Third-party clients judge: rate from the first
//! to the last record (CreateTime in Kafka, arrival at an MQTT subscriber),
//! loss and duplicates by (sensor, seq); CPU (utime+stime) and peak RSS
//! (VmHWM) of the contestant's process from its start to the last record.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;

use sensor_fleet::simulate::{self, Fleet, KafkaSim, MqttSim};
use sensor_fleet::verify::{self, Clock, Control, MqttSub, StartAt};
use sensor_fleet::{KafkaEndpoint, MqttEndpoint, conn};

use crate::procs::{self, Proc};
use crate::{Args, Env, machine, run_id, table, write_result};

/// Distinct sensors (MQTT topics and Kafka keys) of the backlog.
const SENSORS: usize = 8;
/// Partitions of every Kafka topic of the scenario.
const PARTITIONS: i32 = 10;
/// Session expiry of the MQTT 5 sessions the backlog waits in.
const SESSION_EXPIRY: u32 = 600;
/// How long a contestant may take for the whole backlog.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Nothing arrived for this long: the contestant is stuck.
const IDLE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Direction {
    MqttToKafka,
    KafkaToMqtt,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::MqttToKafka => "MQTT->Kafka",
            Self::KafkaToMqtt => "Kafka->MQTT",
        }
    }
    fn peer_env(self) -> &'static str {
        match self {
            Self::MqttToKafka => "mqtt-to-kafka",
            Self::KafkaToMqtt => "kafka-to-mqtt",
        }
    }
}

/// Who moves the backlog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Contestant {
    /// The broker alone with plain clients (no Kafka): what any bridge could reach.
    Ceiling,
    /// This bridge, default settings.
    Bridge,
    /// A peer bridge started by `cmd` (program and arguments).
    Peer { name: String, cmd: Vec<String> },
}

impl Contestant {
    fn name(&self) -> &str {
        match self {
            Self::Ceiling => "ceiling",
            Self::Bridge => "this bridge",
            Self::Peer { name, .. } => name,
        }
    }
}

/// One contestant's drain of one backlog.
#[derive(Clone, Debug, Default, Serialize)]
struct Drain {
    sent: u64,
    delivered: u64,
    missing: u64,
    duplicates: u64,
    /// Per-key order broken (a later reading before an earlier one).
    reordered: u64,
    rate: f64,
    /// CPU of the contestant's process per message delivered (not for the ceiling).
    cpu_us_per_msg: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// Start of the contestant to the last record.
    wall_s: f64,
    why: String,
}

/// The peers the machine has, from `cargo xtask bench` (`bench/peers/`).
fn peers(direction: Direction) -> Vec<Contestant> {
    let mut out = Vec::new();
    let dir = std::env::var("BENCH_PEER_DIR").map(PathBuf::from);
    match (std::env::var("BENCH_PEER_PYTHON"), &dir) {
        (Ok(python), Ok(dir)) => out.push(Contestant::Peer {
            name: "Python (paho + confluent-kafka)".into(),
            cmd: vec![python, dir.join("python_bridge.py").display().to_string()],
        }),
        _ => eprintln!(
            "drain: no Python peer: {}",
            std::env::var("BENCH_PEER_PYTHON_UNAVAILABLE")
                .unwrap_or_else(|_| "not prepared (run through `cargo xtask bench drain`)".into())
        ),
    }
    match (std::env::var("BENCH_PEER_BENTHOS"), &dir) {
        (Ok(bin), Ok(dir)) => out.push(Contestant::Peer {
            name: "Benthos 4.24".into(),
            cmd: vec![
                bin,
                "-c".into(),
                dir.join("benthos")
                    .join(format!("{}.yaml", direction.peer_env()))
                    .display()
                    .to_string(),
            ],
        }),
        _ => eprintln!(
            "drain: no Benthos peer: {}",
            std::env::var("BENCH_PEER_BENTHOS_UNAVAILABLE")
                .unwrap_or_else(|_| "not prepared (run through `cargo xtask bench drain`)".into())
        ),
    }
    out
}

/// Runs both directions, `args.rounds` rounds each, and prints the medians.
pub async fn drain(args: &Args, env: &Env) -> Result<()> {
    let name = "drain";
    let dir = args.out.join(name);
    std::fs::create_dir_all(&dir)?;
    // A private broker: the test environment's persists every queued message
    // to disk, which would measure the disk; this one keeps the backlog in
    // memory and has Mosquitto's defaults otherwise (in-flight window 20).
    let (_broker, mqtt_url) = procs::start_mosquitto(
        &dir,
        &format!("max_queued_messages {}\n", args.drain_messages * 2),
    )?;
    let machine = machine();
    let mut results = Vec::new();
    for direction in [Direction::MqttToKafka, Direction::KafkaToMqtt] {
        if args
            .direction
            .as_ref()
            .is_some_and(|d| d != direction.peer_env())
        {
            continue;
        }
        let mut contestants = vec![Contestant::Ceiling, Contestant::Bridge];
        contestants.extend(peers(direction));
        let wanted = |c: &Contestant| {
            let name = c.name().to_lowercase();
            args.only.is_empty() || args.only.iter().any(|o| name.contains(&o.to_lowercase()))
        };
        contestants.retain(|c| wanted(c));
        let mut rounds: Vec<Vec<Drain>> = vec![Vec::new(); contestants.len()];
        for round in 0..args.rounds {
            for (i, c) in contestants.iter().enumerate() {
                let d = match direction {
                    Direction::MqttToKafka => m2k(args, env, &mqtt_url, c, round).await,
                    Direction::KafkaToMqtt => k2m(args, env, &mqtt_url, c, round).await,
                };
                let d = d.unwrap_or_else(|e| {
                    eprintln!(
                        "drain: {} {} round {round}: {e:#}",
                        direction.label(),
                        c.name()
                    );
                    Drain {
                        why: format!("failed: {e:#}"),
                        ..Drain::default()
                    }
                });
                eprintln!(
                    "drain: {} {} round {round}: {:.0} msg/s, {}/{} delivered, cpu {} us/msg, rss {} MiB ({})",
                    direction.label(),
                    c.name(),
                    d.rate,
                    d.delivered,
                    d.sent,
                    d.cpu_us_per_msg.map_or("-".into(), |v| format!("{v:.1}")),
                    d.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
                    d.why
                );
                rounds[i].push(d);
            }
        }
        results.push((direction, contestants, rounds));
    }
    report(args, name, &machine, &mqtt_url, &results)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of one contestant's rounds.
#[derive(Debug, Default, Serialize)]
struct Summary {
    rate: f64,
    rate_min: f64,
    rate_max: f64,
    cpu_us_per_msg: Option<f64>,
    peak_rss_mib: Option<f64>,
    lost: u64,
    duplicates: u64,
    reordered: u64,
}

fn summarize(rounds: &[Drain]) -> Summary {
    let rates: Vec<f64> = rounds.iter().map(|d| d.rate).collect();
    let opt = |f: fn(&Drain) -> Option<f64>| {
        let v: Vec<f64> = rounds.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Summary {
        rate: median(rates.clone()),
        rate_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        rate_max: rates.iter().copied().fold(0.0, f64::max),
        cpu_us_per_msg: opt(|d| d.cpu_us_per_msg),
        peak_rss_mib: opt(|d| d.peak_rss_mib),
        lost: rounds.iter().map(|d| d.missing).sum(),
        duplicates: rounds.iter().map(|d| d.duplicates).sum(),
        reordered: rounds.iter().map(|d| d.reordered).sum(),
    }
}

type Results = Vec<(Direction, Vec<Contestant>, Vec<Vec<Drain>>)>;

fn report(
    args: &Args,
    name: &str,
    machine: &serde_json::Value,
    mqtt_url: &str,
    results: &Results,
) -> Result<()> {
    let mut json_dirs = Vec::new();
    for (direction, contestants, rounds) in results {
        let sums: Vec<Summary> = rounds.iter().map(|r| summarize(r)).collect();
        let of = |want: &Contestant| contestants.iter().position(|c| c == want).map(|i| &sums[i]);
        let ceiling = of(&Contestant::Ceiling).map_or(0.0, |s| s.rate);
        let none = Summary::default();
        let ours = of(&Contestant::Bridge).unwrap_or(&none);
        let best_peer = contestants
            .iter()
            .zip(&sums)
            .filter(|(c, _)| matches!(c, Contestant::Peer { .. }))
            .max_by(|a, b| a.1.rate.total_cmp(&b.1.rate));
        println!(
            "\n== drain {}: {} QoS 1 messages, {SENSORS} keys, {PARTITIONS} partitions, median of {} rounds ==",
            direction.label(),
            args.drain_messages,
            args.rounds
        );
        println!(
            "  {:<34} {:>10} {:>19} {:>10} {:>9} {:>6} {:>5} {:>6}",
            "contestant", "msg/s", "(min-max)", "CPU us/msg", "peak RSS", "lost", "dup", "reord"
        );
        for (c, s) in contestants.iter().zip(&sums) {
            println!(
                "  {:<34} {:>10.0} {:>19} {:>10} {:>9} {:>6} {:>5} {:>6}",
                c.name(),
                s.rate,
                format!("({:.0}-{:.0})", s.rate_min, s.rate_max),
                s.cpu_us_per_msg.map_or("-".into(), |v| format!("{v:.1}")),
                s.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1} MiB")),
                s.lost,
                s.duplicates,
                s.reordered,
            );
        }
        let ratio_ceiling = if ceiling > 0.0 {
            ours.rate / ceiling
        } else {
            0.0
        };
        let ratio_peer = best_peer.map(|(_, p)| {
            if p.rate > 0.0 {
                ours.rate / p.rate
            } else {
                0.0
            }
        });
        let mut rows = vec![
            (
                "this bridge / ceiling".to_owned(),
                format!("{:.0}%", ratio_ceiling * 100.0),
            ),
            (
                "this bridge / best peer".to_owned(),
                match (best_peer, ratio_peer) {
                    (Some((c, _)), Some(r)) => format!("{r:.1}x ({})", c.name()),
                    _ => "no peer ran".into(),
                },
            ),
        ];
        rows.push((
            "this bridge CPU per message".into(),
            ours.cpu_us_per_msg
                .map_or("-".into(), |v| format!("{v:.1} us")),
        ));
        rows.push((
            "this bridge peak RSS".into(),
            ours.peak_rss_mib
                .map_or("-".into(), |v| format!("{v:.1} MiB")),
        ));
        table(&format!("drain {} ratios", direction.label()), &rows);
        json_dirs.push(json!({
            "direction": direction,
            "contestants": contestants.iter().zip(&sums).zip(rounds).map(|((c, s), r)| json!({
                "contestant": c.name(), "median": s, "rounds": r,
            })).collect::<Vec<_>>(),
            "bridge_over_ceiling": ratio_ceiling,
            "bridge_over_best_peer": ratio_peer,
        }));
    }
    write_result(
        args,
        name,
        &json!({
            "scenario": name, "machine": machine, "broker": format!("private Mosquitto at {mqtt_url}: defaults but max_queued_messages"),
            "messages": args.drain_messages, "rounds": args.rounds, "sensors": SENSORS, "partitions": PARTITIONS,
            "directions": json_dirs,
        }),
    )
}

/// The bridge's configuration: its defaults, but MQTT 5 (the protocol it
/// is fastest with; the peers speak 3.1.1, the only one they support).
/// `--bridge-receive-maximum`, `--bridge-linger-ms` and
/// `--bridge-publish-connections` change those settings for experiments;
/// the published figures leave them unset.
fn bridge_config(args: &Args, mqtt: &str, kafka: &str, id: &str, route: &str) -> String {
    let receive_maximum = args
        .bridge_receive_maximum
        .map_or(String::new(), |n| format!("mqttReceiveMaximum: {n}\n"));
    let linger = args.bridge_linger_ms.map_or(String::new(), |ms| {
        format!("  producer:\n    lingerMs: {ms}\n")
    });
    let publishers = args
        .bridge_publish_connections
        .map_or(String::new(), |n| format!("  publishConnections: {n}\n"));
    format!(
        "mqtt:\n  url: {mqtt}\n  protocolVersion: \"5\"\n  clientIdPrefix: {id}\n  sessionExpirySeconds: {SESSION_EXPIRY}\n{publishers}\
kafka:\n  bootstrapServers: {kafka}\n{linger}  consumer:\n    groupId: {id}\n    autoOffsetReset: earliest\n\
{receive_maximum}routes:\n{route}log:\n  level: warn\n"
    )
}

/// The backlog's publishers: as fast as the broker takes them.
fn backlog_fleet(args: &Args, prefix: &str, topic_template: String) -> Fleet {
    // A schedule far above any broker's pace: the publishers never wait for it.
    let rate_hz = 1_000_000.0 / SENSORS as f64;
    let mut f = Fleet::new(
        SENSORS,
        rate_hz,
        Duration::from_secs_f64(args.drain_messages as f64 / 1_000_000.0),
    );
    f.id_prefix = prefix.to_owned();
    f.topic_template = topic_template;
    f
}

/// Where and how a peer runs: the contract of `bench/peers/README.md`.
struct PeerRun<'a> {
    direction: Direction,
    mqtt_url: &'a str,
    kafka: &'a str,
    client_id: String,
    /// Direction-specific variables (`PEER_MQTT_FILTER`, `PEER_KAFKA_GROUP`, …).
    more: Vec<(&'static str, String)>,
}

/// Starts a peer with the environment of the contract.
fn start_peer(cmd: &[String], log: &std::path::Path, run: PeerRun<'_>) -> Result<Proc> {
    let (program, rest) = cmd.split_first().context("empty peer command")?;
    let (host, port) = mqtt_host_port(run.mqtt_url)?;
    let mut c = Command::new(program);
    c.args(rest)
        .env("PEER_DIRECTION", run.direction.peer_env())
        .env("PEER_MQTT_HOST", host)
        .env("PEER_MQTT_PORT", port)
        .env("PEER_MQTT_CLIENT_ID", run.client_id)
        .env("PEER_QOS", "1")
        .env("PEER_KAFKA_BOOTSTRAP", run.kafka);
    for (k, v) in run.more {
        c.env(k, v);
    }
    Proc::spawn(program, &mut c, log)
}

fn mqtt_host_port(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("mqtt://")
        .context("plain mqtt:// URL expected")?;
    let (h, p) = rest.rsplit_once(':').context("URL without port")?;
    Ok((h.to_owned(), p.to_owned()))
}

/// Creates the persistent session a contestant resumes: subscribed at QoS 1,
/// then disconnected, so what is published next waits in it.
async fn create_session(session: &MqttSub) -> Result<()> {
    let v = verify::mqtt(session, Control::new(Duration::from_secs(30), IDLE)).await?;
    v.control.cancel();
    v.finish().await?;
    Ok(())
}

/// MQTT→Kafka: the backlog waits at the broker for the contestant's session.
async fn m2k(
    args: &Args,
    env: &Env,
    mqtt_url: &str,
    who: &Contestant,
    round: usize,
) -> Result<Drain> {
    let id = format!("drain-m2k-{}-{round}", run_id());
    let filter = format!("{id}/+/temperature");
    let mqtt = MqttEndpoint::plain(mqtt_url);
    let kafka = KafkaEndpoint::plain(&env.kafka);
    let log_dir = args.out.join("drain");
    let log = log_dir.join(format!("{id}.log"));
    // The ceiling gets the bridge's window, whatever the flags make it.
    let receive_maximum = args
        .bridge_receive_maximum
        .unwrap_or(crds::DEFAULT_MQTT_RECEIVE_MAXIMUM);
    // Client ids: the bridge's is `<prefix>-<slot>-<connection>`.
    let (session_prefix, v5) = match who {
        Contestant::Ceiling => (format!("{id}-ceiling"), true),
        Contestant::Bridge => (format!("{id}-0"), true),
        Contestant::Peer { .. } => (format!("{id}-peer"), false),
    };
    let mut session = MqttSub::new(mqtt.clone(), filter.as_str());
    session.v5 = v5;
    session.client_id_prefix = session_prefix.clone();
    session.session_expiry = Some(SESSION_EXPIRY);
    session.receive_maximum = receive_maximum;
    create_session(&session).await?;
    if *who != Contestant::Ceiling {
        conn::create_topic(&kafka, &id, PARTITIONS).await?;
    }

    let mut sim = MqttSim::new(
        backlog_fleet(args, &id, format!("{id}/{{id}}/temperature")),
        mqtt.clone(),
    );
    sim.client_id_prefix = format!("{id}-pub");
    sim.drain_timeout = Duration::from_secs(60);
    let backlog = simulate::simulate_mqtt(&sim).await?;
    let sent = backlog.expected.total();
    if backlog.acked < sent {
        bail!(
            "the broker acknowledged {} of {sent} backlog messages",
            backlog.acked
        );
    }

    let control = Control::new(DRAIN_TIMEOUT, IDLE);
    control.set_expected(sent);
    let started = Instant::now();
    let (verifier, mut process) = match who {
        Contestant::Ceiling => {
            // The plain subscriber resumes the session and is its own judge.
            (verify::mqtt(&session, control).await?, None)
        }
        Contestant::Bridge => {
            let route = format!(
                "  - name: drain\n    mqttToKafka:\n      mqttTopicFilter: \"{filter}\"\n      kafkaTopic: {id}\n      qos: 1\n      key:\n        type: jsonField\n        field: sensor_id\n"
            );
            let v = verify::kafka_clocked(&kafka, &id, StartAt::Beginning, control, Clock::Record)
                .await?;
            let p = procs::spawn_bridge(
                &args.bridge_bin,
                &log_dir.join(&id),
                &bridge_config(args, mqtt_url, &env.kafka, &id, &route),
            )?;
            (v, Some(p))
        }
        Contestant::Peer { cmd, .. } => {
            let v = verify::kafka_clocked(&kafka, &id, StartAt::Beginning, control, Clock::Record)
                .await?;
            let p = start_peer(
                cmd,
                &log,
                PeerRun {
                    direction: Direction::MqttToKafka,
                    mqtt_url,
                    kafka: &env.kafka,
                    client_id: format!("{session_prefix}-0"),
                    more: vec![
                        ("PEER_MQTT_FILTER", filter.clone()),
                        ("PEER_KAFKA_TOPIC", id.clone()),
                    ],
                },
            )?;
            (v, Some(p))
        }
    };
    finish(verifier, process.as_mut(), started, &backlog.expected).await
}

/// Kafka→MQTT: the backlog waits in Kafka; a subscriber that connected
/// first judges what reaches MQTT.
async fn k2m(
    args: &Args,
    env: &Env,
    mqtt_url: &str,
    who: &Contestant,
    round: usize,
) -> Result<Drain> {
    let id = format!("drain-k2m-{}-{round}", run_id());
    let mqtt = MqttEndpoint::plain(mqtt_url);
    let kafka = KafkaEndpoint::plain(&env.kafka);
    let log_dir = args.out.join("drain");
    let log = log_dir.join(format!("{id}.log"));

    let mut backlog = None;
    if *who != Contestant::Ceiling {
        conn::create_topic(&kafka, &id, PARTITIONS).await?;
        let sim = KafkaSim {
            fleet: backlog_fleet(args, &id, String::new()),
            endpoint: kafka.clone(),
            topic: id.clone(),
            drain_timeout: Duration::from_secs(60),
            progress: None,
        };
        let summary = simulate::simulate_kafka(&sim).await?;
        if summary.acked < summary.expected.total() {
            bail!(
                "Kafka acknowledged {} of {} backlog records",
                summary.acked,
                summary.expected.total()
            );
        }
        backlog = Some(summary);
    }

    // The judge: QoS 1, a window far larger than the broker's outgoing one.
    let mut judge = MqttSub::new(mqtt.clone(), format!("{id}/+"));
    judge.v5 = true;
    judge.receive_maximum = u16::MAX;
    judge.client_id_prefix = format!("{id}-judge");
    let control = Control::new(DRAIN_TIMEOUT, IDLE);
    let verifier = verify::mqtt(&judge, control.clone()).await?;
    let started = Instant::now();
    let mut process = None;
    let expected = match who {
        Contestant::Ceiling => {
            // Plain publishers with the bridge's connections and window,
            // publishing the same payloads to the same topics from memory.
            let mut sim = MqttSim::new(backlog_fleet(args, &id, format!("{id}/{{id}}")), mqtt);
            sim.connections = usize::from(
                args.bridge_publish_connections
                    .unwrap_or(crds::DEFAULT_KAFKA_TO_MQTT_CONNECTIONS),
            );
            sim.client_id_prefix = format!("{id}-ceiling");
            sim.drain_timeout = Duration::from_secs(60);
            let s = simulate::simulate_mqtt(&sim).await?;
            s.expected
        }
        Contestant::Bridge => {
            let route = format!(
                "  - name: drain\n    kafkaToMqtt:\n      kafkaTopics: [{id}]\n      mqttTopic: \"{id}/{{sensor_id}}\"\n      qos: 1\n"
            );
            process = Some(procs::spawn_bridge(
                &args.bridge_bin,
                &log_dir.join(&id),
                &bridge_config(args, mqtt_url, &env.kafka, &id, &route),
            )?);
            backlog.map(|b| b.expected).unwrap_or_default()
        }
        Contestant::Peer { cmd, .. } => {
            process = Some(start_peer(
                cmd,
                &log,
                PeerRun {
                    direction: Direction::KafkaToMqtt,
                    mqtt_url,
                    kafka: &env.kafka,
                    client_id: format!("{id}-peer"),
                    more: vec![
                        ("PEER_MQTT_TOPIC_PREFIX", id.clone()),
                        ("PEER_KAFKA_TOPIC", id.clone()),
                        ("PEER_KAFKA_GROUP", id.clone()),
                    ],
                },
            )?);
            backlog.map(|b| b.expected).unwrap_or_default()
        }
    };
    let sent = expected.total();
    control.set_expected(sent);
    finish(verifier, process.as_mut(), started, &expected).await
}

/// Waits for the judge, then measures and stops the contestant's process.
async fn finish(
    verifier: verify::Verifier,
    mut process: Option<&mut Proc>,
    started: Instant,
    expected: &sensor_fleet::Expected,
) -> Result<Drain> {
    let (tracker, why) = verifier.finish().await?;
    let wall_s = started.elapsed().as_secs_f64();
    let mut cpu_us_per_msg = None;
    let mut peak_rss_mib = None;
    if let Some(p) = process.as_mut() {
        // CPU from the process's start: /proc counts it from 0.
        let cpu = procs::cpu_sample(p.pid())?;
        peak_rss_mib = Some(procs::memory(p.pid()).peak_rss_mib);
        p.check_alive()?;
        p.stop(Duration::from_secs(10));
        let delivered = tracker.unique().max(1);
        cpu_us_per_msg = Some(cpu.cpu_s * 1e6 / delivered as f64);
    }
    let r = tracker.report(Some(expected));
    Ok(Drain {
        sent: expected.total(),
        delivered: r.unique,
        missing: r.missing,
        duplicates: r.duplicates,
        reordered: r.reordered,
        rate: r.throughput_per_s,
        cpu_us_per_msg,
        peak_rss_mib,
        wall_s,
        why: why.into(),
    })
}
