//! Kafka→MQTT delivery against the real servers: no loss while the bridge
//! is SIGKILLed and Kafka and Mosquitto restart, per-partition order, and
//! QoS 2. A separate test binary from `delivery.rs` so its server outages do
//! not overlap with the MQTT→Kafka fault test.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{Bridge, create_topics};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Keyed records per number: `k<i % KEYS>`.
const KEYS: u32 = 10;

/// `connections` publishing connections: the partitions are spread over them.
fn config(p: &str, qos: u8, connections: u16) -> String {
    // A short session timeout: a SIGKILLed member otherwise holds its
    // partitions for librdkafka's default 45 s before the group rebalances.
    format!(
        "{}  properties:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '1000'\nroutes:\n  - name: out\n    kafkaToMqtt:\n      kafkaTopics: ['{p}']\n      mqttTopic: '{p}/{{key}}'\n      qos: {qos}\n",
        common::plain_connections(p, "3.1.1").replacen(
            "kafka:\n",
            &format!("  publishConnections: {connections}\nkafka:\n"),
            1
        )
    )
}

/// Produces `count` numbered records keyed `k<i % KEYS>`, pipelined, at
/// about `per_second`. Idempotent, so Kafka restarts add no duplicates and
/// keep each key's order; librdkafka retries through the outage.
async fn produce_numbered(topic: String, count: u32, per_second: u32) {
    let producer: FutureProducer = common::kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(count as usize);
    for i in 0..count {
        let payload = i.to_string();
        let key = format!("k{}", i % KEYS);
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(d) => {
                    deliveries.push(d);
                    break;
                }
                // Queue full: let deliveries drain.
                Err((e, _)) => {
                    assert_eq!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "{e}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if i % 100 == 0 {
            let due = Duration::from_secs_f64(f64::from(i) / f64::from(per_second));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    for d in deliveries {
        d.await
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("Kafka took every record");
    }
}

/// A persistent-session subscriber to `{p}/#` at `qos`: messages the broker
/// queued while it was away (Mosquitto restart) are delivered when it is back.
async fn subscriber(
    p: &str,
    qos: rumqttc::QoS,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
) {
    let (client, rx) = common::mqtt_client_with_session("k2msub", true).await;
    client.subscribe(format!("{p}/#"), qos).await.unwrap();
    // No SUBACK event is exposed by the helper; the bridge needs longer than
    // this to join its consumer group anyway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (client, rx)
}

/// What arrived, checked: every number at least once, per key the first
/// arrivals in order. Returns (messages, duplicates, order violations).
#[derive(Default)]
struct Tally {
    seen: Vec<u32>,
    distinct: usize,
    total: usize,
    last_first: HashMap<String, i64>,
    order_violations: usize,
    qos: BTreeSet<u8>,
}

impl Tally {
    fn new(count: u32) -> Self {
        Self {
            seen: vec![0; count as usize],
            ..Self::default()
        }
    }

    fn add(&mut self, p: &rumqttc::Publish) {
        let n: usize = String::from_utf8_lossy(&p.payload).parse().unwrap();
        self.total += 1;
        self.seen[n] += 1;
        self.qos.insert(p.qos as u8);
        if self.seen[n] == 1 {
            self.distinct += 1;
            let last = self.last_first.entry(p.topic.clone()).or_insert(-1);
            if (n as i64) < *last {
                self.order_violations += 1;
            }
            *last = n as i64;
            assert!(
                p.topic.ends_with(&format!("/k{}", n as u32 % KEYS)),
                "{n} on {}",
                p.topic
            );
        }
    }

    fn missing(&self) -> Vec<usize> {
        (0..self.seen.len())
            .filter(|n| self.seen[*n] == 0)
            .collect()
    }
}

/// The bridge's counters and log tail, for a failure message.
fn diagnostics(bridge: &Bridge) -> String {
    let metrics = bridge.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let counters: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("bridge_messages") || l.starts_with("bridge_in_flight"))
        .collect();
    format!("{}\n{}", counters.join("\n"), bridge.log())
}

/// Receives until every number arrived or `timeout` passed.
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    tally: &mut Tally,
    timeout: Duration,
) {
    let start = Instant::now();
    while tally.distinct < tally.seen.len() && start.elapsed() < timeout {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            tally.add(&p);
            while let Ok(p) = rx.try_recv() {
                tally.add(&p);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_kafka_to_mqtt_through_kills_and_server_restarts() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    const COUNT: u32 = 50_000;
    let p = testenv::unique_name("k2mnoloss");
    create_topics(&[&p], 4).await;
    let (_client, mut rx) = subscriber(&p, rumqttc::QoS::AtLeastOnce).await;
    // Two publishing connections: order per partition and no loss must hold
    // while partitions are spread over connections that drop together.
    let mut bridge = Bridge::start(&p, &config(&p, 1, 2));
    bridge.wait_ready(Duration::from_secs(30));
    assert_eq!(
        bridge.metric("bridge_connection_up{side=\"mqtt\""),
        2.0,
        "{}",
        diagnostics(&bridge)
    );
    let started = Instant::now();
    let producer = tokio::spawn(produce_numbered(p.clone(), COUNT, 2_500));
    let mut tally = Tally::new(COUNT);

    collect(&mut rx, &mut tally, Duration::from_secs(3)).await;
    for _ in 0..2 {
        bridge.child.kill().unwrap(); // SIGKILL
        collect(&mut rx, &mut tally, Duration::from_millis(500)).await;
        bridge.restart();
        collect(&mut rx, &mut tally, Duration::from_secs(3)).await;
    }
    // stop + start: a few seconds of outage each, kept short for the other
    // tests sharing these servers.
    let outage = tokio::task::spawn_blocking(|| {
        testenv::control("stop", "kafka");
        std::thread::sleep(Duration::from_secs(3));
        testenv::control("start", "kafka");
    });
    while !outage.is_finished() {
        collect(&mut rx, &mut tally, Duration::from_millis(200)).await;
    }
    outage.await.unwrap();
    collect(&mut rx, &mut tally, Duration::from_secs(2)).await;
    let outage = tokio::task::spawn_blocking(|| {
        testenv::control("stop", "mqtt");
        std::thread::sleep(Duration::from_secs(2));
        testenv::control("start", "mqtt");
    });
    while !outage.is_finished() {
        collect(&mut rx, &mut tally, Duration::from_millis(200)).await;
    }
    outage.await.unwrap();
    collect(&mut rx, &mut tally, Duration::from_secs(2)).await;
    bridge.child.kill().unwrap();
    bridge.restart();
    let produced = tokio::time::timeout(Duration::from_secs(120), producer);
    tokio::pin!(produced);
    loop {
        tokio::select! {
            done = &mut produced => {
                done.expect("producer finished").unwrap();
                break;
            }
            () = collect(&mut rx, &mut tally, Duration::from_millis(500)) => {}
        }
    }
    collect(&mut rx, &mut tally, Duration::from_secs(150)).await;
    let missing = tally.missing();
    assert!(
        missing.is_empty(),
        "{} numbers missing, first {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        diagnostics(&bridge)
    );
    let duplicates = tally.total - COUNT as usize;
    println!(
        "no-loss Kafka->MQTT: {COUNT} numbers all arrived in {:?}, {duplicates} duplicates, {} per-key order violations among first arrivals",
        started.elapsed(),
        tally.order_violations
    );
    assert_eq!(tally.order_violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_kafka_to_mqtt() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    const COUNT: u32 = 5_000;
    let p = testenv::unique_name("k2mqos2");
    create_topics(&[&p], 2).await;
    let (_client, mut rx) = subscriber(&p, rumqttc::QoS::ExactlyOnce).await;
    let mut bridge = Bridge::start(&p, &config(&p, 2, 1));
    bridge.wait_ready(Duration::from_secs(30));
    produce_numbered(p.clone(), COUNT, 10_000).await;
    let mut tally = Tally::new(COUNT);
    collect(&mut rx, &mut tally, Duration::from_secs(90)).await;
    let missing = tally.missing();
    assert!(
        missing.is_empty(),
        "{} numbers missing, first {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        diagnostics(&bridge)
    );
    // The broker forwards at min(publish QoS, subscription QoS): 2 only if the bridge published at 2.
    assert_eq!(tally.qos, BTreeSet::from([2]));
    let duplicates = tally.total - COUNT as usize;
    println!(
        "Kafka->MQTT QoS 2: {COUNT} numbers, {duplicates} duplicates, {} order violations",
        tally.order_violations
    );
    assert_eq!(tally.order_violations, 0);
    // Offsets were committed once the broker completed each QoS 2 exchange
    // (PUBCOMP): a clean restart publishes nothing again.
    bridge.sigterm();
    assert!(
        bridge
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    bridge.restart();
    bridge.wait_ready(Duration::from_secs(30));
    let mut again = Tally::new(COUNT);
    collect(&mut rx, &mut again, Duration::from_secs(8)).await;
    assert_eq!(again.total, 0, "republished after a clean restart");
}

/// SIGTERM while Kafka is down: the consumer cannot leave its group and
/// nothing can be committed, yet the bridge exits 0 within its grace period
/// and the bounded steps after it, instead of waiting for Kafka. (The last
/// commit waiting for a coordinator that does not answer is bounded too:
/// `kafka_side::commit_within`, unit-tested; what it did not commit comes
/// again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_kafka_outage_exits_after_the_grace_period() {
    const COUNT: u32 = 1_000;
    /// `shutdownGracePeriodSeconds` of the tests' bridges (`common::Bridge`).
    const GRACE: u64 = 10;
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("k2mterm");
    create_topics(&[&p], 4).await;
    let (_client, mut rx) = subscriber(&p, rumqttc::QoS::AtLeastOnce).await;
    let mut bridge = Bridge::start(&p, &config(&p, 1, 2));
    bridge.wait_ready(Duration::from_secs(30));
    produce_numbered(p.clone(), COUNT, 5_000).await;
    let mut tally = Tally::new(COUNT);
    collect(&mut rx, &mut tally, Duration::from_secs(60)).await;
    assert!(tally.missing().is_empty(), "{}", diagnostics(&bridge));

    tokio::task::spawn_blocking(|| testenv::control("stop", "kafka"))
        .await
        .unwrap();
    // Let the consumer notice: its group coordinator is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bridge.sigterm();
    let sent = Instant::now();
    // The grace period, the HTTP and flush steps after it, the teardown bound.
    let status = bridge.wait_exit(Duration::from_secs(GRACE + 5 + 5 + 5 + 10));
    let took = sent.elapsed();
    let log = bridge.log();
    tokio::task::spawn_blocking(|| testenv::control("start", "kafka"))
        .await
        .unwrap();
    let status = status
        .unwrap_or_else(|| panic!("still running {took:?} after SIGTERM with Kafka down:\n{log}"));
    println!("SIGTERM with Kafka down: exited with {status} after {took:?}");
    assert!(status.success(), "{status}: {log}");
}
