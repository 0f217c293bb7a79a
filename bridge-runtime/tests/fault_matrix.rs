//! The fault matrix: every fault a user can meet, injected into the real
//! servers, with what happened to each message counted — sent, delivered,
//! dead-lettered, dropped with a reason, lost. Lost must be 0, and every
//! drop must be one the delivery semantics allow (README, "What happens to
//! a message that cannot be delivered").
//!
//! Each test prints one `fault-matrix |` line; `cargo test -p bridge-runtime
//! --test fault_matrix -- --nocapture --test-threads 1 | grep fault-matrix`
//! gives the table. Tests of this binary stop servers, so they hold
//! [`common::serial`].

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{Bridge, create_topics, distinct_payloads_at_least, header, read_topic_until};

/// One row of the matrix.
struct Row<'a> {
    case: &'a str,
    sent: usize,
    delivered: usize,
    dead_lettered: usize,
    dropped: usize,
    drop_reason: &'a str,
}

impl Row<'_> {
    fn lost(&self) -> isize {
        self.sent as isize - (self.delivered + self.dead_lettered + self.dropped) as isize
    }

    /// Prints the row and fails the test if anything was lost.
    fn check(&self) {
        println!(
            "fault-matrix | {} | sent {} | delivered {} | dead-lettered {} | dropped {} {} | lost {}",
            self.case,
            self.sent,
            self.delivered,
            self.dead_lettered,
            self.dropped,
            if self.dropped > 0 {
                format!("({})", self.drop_reason)
            } else {
                String::new()
            },
            self.lost()
        );
        assert_eq!(self.lost(), 0, "{} lost messages", self.case);
    }
}

/// An MQTT publisher that may send packets up to `max_packet` bytes and
/// counts the broker's acknowledgements.
async fn publisher(
    name: &str,
    protocol_v5: bool,
    max_packet: usize,
) -> (Publisher, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let (host, port) = common::mqtt_host_port(&testenv::var("MQTT_URL"));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let id = testenv::unique_name(name);
    if protocol_v5 {
        let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
        o.set_clean_start(false)
            .set_session_expiry_interval(Some(600))
            .set_max_packet_size(Some(max_packet as u32));
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 10_000);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(_))) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        (Publisher::V5(client), acked)
    } else {
        let mut o = rumqttc::MqttOptions::new(id, host, port);
        o.set_clean_session(false)
            .set_max_packet_size(max_packet, max_packet)
            .set_inflight(1000);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 10_000);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_))) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        (Publisher::V4(client), acked)
    }
}

enum Publisher {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Publisher {
    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        match self {
            Self::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .await
                .expect("publish"),
            Self::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                )
                .await
                .expect("publish"),
        }
    }
}

/// Waits until the broker acknowledged `count` publishes.
async fn wait_acked(acked: &std::sync::atomic::AtomicU64, count: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while acked.load(std::sync::atomic::Ordering::Relaxed) < count {
        assert!(
            Instant::now() < deadline,
            "the broker acknowledged only {} of {count} publishes",
            acked.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` answers 503 naming `what`; returns the body.
async fn readyz_naming(bridge: &Bridge, what: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = bridge.get("/readyz");
        if let Some((503, body)) = &r
            && body.contains(what)
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named {what}: {r:?}\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `/readyz` answers 200 again.
async fn ready_again(bridge: &Bridge, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while bridge.get("/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready again: {:?}",
            bridge.get("/readyz")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bridge's `/report`, which the operator reads into the bridge's status.
fn bridge_report(bridge: &Bridge) -> bridge_core::report::BridgeReport {
    let (status, body) = bridge
        .get(bridge_core::report::REPORT_PATH)
        .expect("/report");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/report is a BridgeReport")
}

/// The numbers (payloads) of records, counted.
fn numbers(records: &[common::Record]) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        if let Ok(n) = String::from_utf8_lossy(&r.payload).parse::<u32>() {
            *out.entry(n).or_insert(0) += 1;
        }
    }
    out
}

fn m2k_config(p: &str, protocol: &str, extra_kafka: &str, routes: &str) -> String {
    format!(
        "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n  protocolVersion: '{protocol}'\nkafka:\n  bootstrapServers: {}\n  producer:\n    lingerMs: 2\n{extra_kafka}routes:\n{routes}",
        testenv::var("MQTT_URL"),
        testenv::var("KAFKA_BOOTSTRAP"),
    )
}

/// A 2 MiB MQTT message is larger than Kafka takes (`maxMessageBytes`,
/// librdkafka's 1,000,000 by default): it goes to the dead-letter topic with
/// `x-bridge-error: too_large` (payload cut to fit), or, on a route without
/// one, is dropped and counted; either way it is acknowledged, so the
/// persistent session does not redeliver it in a loop, and the messages
/// around it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_mqtt_message_is_dead_lettered_not_looped() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("big-m2k");
    let (topic, dl) = (p.clone(), format!("{p}-dl"));
    let nodl = format!("{p}-nodl");
    create_topics(&[&topic, &dl, &nodl], 1).await;
    let routes = format!(
        "  - name: with-dl\n    mqttToKafka: {{mqttTopicFilter: '{p}/a/+', kafkaTopic: '{topic}', headers: false}}\n    deadLetterTopic: '{dl}'\n  - name: without-dl\n    mqttToKafka: {{mqttTopicFilter: '{p}/b/+', kafkaTopic: '{nodl}', headers: false}}\n"
    );
    // MQTT 3.1.1: where an oversized packet used to break the connection.
    let mut bridge = Bridge::start(&p, &m2k_config(&p, "3.1.1", "", &routes));
    bridge.wait_ready(Duration::from_secs(30));
    let (publisher, acked) = publisher("bigpub", false, 4 << 20).await;
    const EACH: u32 = 100;
    let big = vec![b'x'; 2 << 20];
    for i in 0..EACH {
        for route in ["a", "b"] {
            if i == EACH / 2 {
                publisher
                    .publish(&format!("{p}/{route}/big"), big.clone(), false)
                    .await;
            }
            publisher
                .publish(&format!("{p}/{route}/n"), i.to_string().into_bytes(), false)
                .await;
        }
    }
    wait_acked(&acked, u64::from(EACH * 2 + 2), Duration::from_secs(30)).await;
    let delivered = read_topic_until(&topic, Duration::from_secs(30), |r| {
        r.len() >= EACH as usize
    });
    let delivered_nodl =
        read_topic_until(&nodl, Duration::from_secs(30), |r| r.len() >= EACH as usize);
    let dead = read_topic_until(&dl, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(numbers(&delivered).len(), EACH as usize, "{}", bridge.log());
    assert_eq!(
        numbers(&delivered_nodl).len(),
        EACH as usize,
        "{}",
        bridge.log()
    );
    assert_eq!(dead.len(), 1, "one dead letter");
    let d = &dead[0];
    assert_eq!(header(d, "x-bridge-error"), Some(&b"too_large"[..]));
    assert_eq!(header(d, "x-bridge-route"), Some(&b"with-dl"[..]));
    assert_eq!(
        header(d, "source.topic"),
        Some(format!("{p}/a/big").as_bytes())
    );
    assert!(
        !d.payload.is_empty() && d.payload.len() < 1_000_000,
        "payload cut to fit: {}",
        d.payload.len()
    );
    let dropped =
        bridge.metric("bridge_messages_dropped_total{route=\"without-dl\",reason=\"too_large\"}");
    assert_eq!(dropped, 1.0, "{}", bridge.log());
    // Visible beyond the metric: `/readyz` (which the operator reads into the
    // bridge's status) says so while staying ready.
    let (status, body) = bridge.get("/readyz").expect("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("dropped 1 undeliverable messages; last: route without-dl, reason too_large"),
        "{body}"
    );
    let report = bridge_report(&bridge);
    assert!(report.ready, "{report:?}");
    let reported = report.dropped.expect("dropped messages reported");
    assert_eq!(
        (
            reported.count,
            reported.route.as_str(),
            reported.reason.as_str()
        ),
        (1, "without-dl", "too_large")
    );
    // Acknowledged, not redelivered: no reconnect, nothing held back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bridge.metric("bridge_reconnects_total"),
        0.0,
        "{}",
        bridge.log()
    );
    assert_eq!(
        bridge.metric("bridge_in_flight_messages{side=\"mqtt\""),
        0.0
    );
    Row {
        case: "MQTT->Kafka 2 MiB message, Kafka limit 1,000,000 (route with / without dead-letter topic)",
        sent: (EACH as usize + 1) * 2,
        delivered: numbers(&delivered).len() + numbers(&delivered_nodl).len(),
        dead_lettered: dead.len(),
        dropped: dropped as usize,
        drop_reason: "too_large",
    }
    .check();
}

/// A Kafka record larger than the MQTT packet limit (`mqtt.maxPacketBytes`
/// here; the broker's announced Maximum Packet Size counts the same way)
/// goes to the dead-letter topic; it used to break the publisher
/// connection, rewind every partition and repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_kafka_record_is_dead_lettered_not_looped() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("big-k2m");
    let dl = format!("{p}-dl");
    create_topics(&[&p, &dl], 2).await;
    let (_client, mut rx) = common::mqtt_client_with_session("bigsub", true).await;
    _client
        .subscribe(format!("{p}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let config = format!(
        "{}  properties:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '1000'\nroutes:\n  - name: out\n    kafkaToMqtt: {{kafkaTopics: ['{p}'], mqttTopic: '{p}/{{key}}'}}\n    deadLetterTopic: '{dl}'\n",
        common::plain_connections(&p, "5").replacen(
            "kafka:\n",
            "  maxPacketBytes: 100000\nkafka:\n",
            1
        )
    );
    let mut bridge = Bridge::start(&p, &config);
    bridge.wait_ready(Duration::from_secs(30));
    const COUNT: u32 = 200;
    for i in 0..COUNT {
        let key = format!("k{}", i % 4);
        common::produce(&p, Some(&key), &i.to_string()).await;
        if i == COUNT / 2 {
            common::produce(&p, Some(&key), &"y".repeat(500_000)).await;
        }
    }
    let mut got: HashMap<u32, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < COUNT as usize && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            if let Ok(n) = String::from_utf8_lossy(&m.payload).parse::<u32>() {
                *got.entry(n).or_insert(0) += 1;
            } else {
                panic!(
                    "the oversized record reached MQTT ({} bytes)",
                    m.payload.len()
                );
            }
        }
    }
    let dead = read_topic_until(&dl, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(got.len(), COUNT as usize, "{}", bridge.log());
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "x-bridge-error"), Some(&b"too_large"[..]));
    assert_eq!(header(&dead[0], "source.topic"), Some(p.as_bytes()));
    assert_eq!(dead[0].payload.len(), 500_000, "fits Kafka: kept whole");
    assert_eq!(
        bridge.metric("bridge_reconnects_total"),
        0.0,
        "{}",
        bridge.log()
    );
    Row {
        case: "Kafka->MQTT 500 kB record, MQTT limit 100,000",
        sent: COUNT as usize + 1,
        delivered: got.len(),
        dead_lettered: dead.len(),
        dropped: 0,
        drop_reason: "",
    }
    .check();
}

/// `kafkaTopic: {p}.{1}` with a new level value on a cluster without
/// auto-create: the records are held (not acknowledged), `/readyz` names the
/// topic, the other topic's records keep reaching Kafka, and once the topic
/// is created everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_templated_topic_is_held_visible_then_delivered() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("tmpl");
    let (present, missing) = (format!("{p}.a"), format!("{p}.b"));
    create_topics(&[&present], 1).await;
    let routes = format!(
        "  - name: by-level\n    mqttToKafka: {{mqttTopicFilter: '{p}/+', kafkaTopic: '{p}.{{1}}', headers: false}}\n"
    );
    // librdkafka holds records for an unknown topic this long before failing them.
    let kafka = "  properties:\n    topic.metadata.propagation.max.ms: '3000'\n";
    let mut bridge = Bridge::start(&p, &m2k_config(&p, "5", kafka, &routes));
    bridge.wait_ready(Duration::from_secs(30));
    let (publisher, acked) = publisher("tmplpub", true, 1 << 20).await;
    const EACH: u32 = 200;
    for i in 0..EACH {
        publisher
            .publish(&format!("{p}/a"), i.to_string().into_bytes(), false)
            .await;
        publisher
            .publish(&format!("{p}/b"), i.to_string().into_bytes(), false)
            .await;
    }
    wait_acked(&acked, u64::from(EACH * 2), Duration::from_secs(30)).await;
    // Held and visible.
    let readyz = readyz_naming(&bridge, &missing, Duration::from_secs(30)).await;
    assert!(
        readyz.contains("kafka_topic_missing") && readyz.contains("by-level"),
        "{readyz}"
    );
    // The other topic's records flow meanwhile (acknowledgements wait: in order per connection).
    let flowing = read_topic_until(&present, Duration::from_secs(30), |r| {
        r.len() >= EACH as usize
    });
    assert_eq!(numbers(&flowing).len(), EACH as usize);
    assert!(
        bridge.metric("bridge_in_flight_messages{side=\"mqtt\"") > 0.0,
        "nothing acknowledged past the held records"
    );
    assert!(bridge.metric("bridge_held_for_retry_messages") > 0.0);
    println!("fault-matrix | (held) /readyz: {}", readyz.trim());
    create_topics(&[&missing], 1).await;
    let arrived = read_topic_until(
        &missing,
        Duration::from_secs(60),
        distinct_payloads_at_least(EACH as usize),
    );
    assert_eq!(numbers(&arrived).len(), EACH as usize, "{}", bridge.log());
    // Order of first arrivals kept through the retries.
    let firsts: Vec<u32> = {
        let mut seen = std::collections::HashSet::new();
        arrived
            .iter()
            .filter_map(|r| String::from_utf8_lossy(&r.payload).parse::<u32>().ok())
            .filter(|n| seen.insert(*n))
            .collect()
    };
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "order kept: {firsts:?}"
    );
    ready_again(&bridge, Duration::from_secs(30)).await;
    Row {
        case: "MQTT->Kafka templated topic missing, created later",
        sent: EACH as usize * 2,
        delivered: numbers(&flowing).len() + numbers(&arrived).len(),
        dead_lettered: 0,
        dropped: 0,
        drop_reason: "",
    }
    .check();
}

/// Kafka stopped for 90 s under load, with a delivery timeout (5 s) far
/// shorter than the outage: `/healthz` stays 200 throughout (backpressure is
/// not a hang, so the liveness probe does not restart the bridge),
/// `/readyz` says why it is not ready, every message arrives once Kafka is
/// back, and per key the first arrivals keep their order across the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_of_90_s_keeps_liveness_loses_nothing_keeps_order() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("outage");
    create_topics(&[&p], 3).await;
    let routes = format!(
        "  - name: seq\n    mqttToKafka: {{mqttTopicFilter: '{p}/+', kafkaTopic: '{p}', key: {{type: topicLevel, level: 1}}, headers: false}}\n"
    );
    // A small producer window and a short delivery timeout: the outage
    // fills the queue (backpressure) and times records out (retries).
    let kafka = "    maxInFlightRecords: 2000\n    deliveryTimeoutMs: 5000\n";
    let mut bridge = Bridge::start(&p, &m2k_config(&p, "5", kafka, &routes));
    bridge.wait_ready(Duration::from_secs(30));
    const RATE: u32 = 300;
    const SECONDS: u32 = 100;
    const COUNT: u32 = RATE * SECONDS;
    let publishing = tokio::spawn(publish_numbered(p.clone(), COUNT, RATE));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut health_failures = Vec::new();
    let mut not_ready_said = None;
    let outage = tokio::task::spawn_blocking(|| {
        testenv::control("stop", "kafka");
        let stopped = Instant::now();
        std::thread::sleep(Duration::from_secs(90));
        testenv::control("start", "kafka");
        stopped.elapsed()
    });
    while !outage.is_finished() {
        match bridge.get("/healthz") {
            Some((200, _)) => {}
            other => health_failures.push(format!("{other:?}")),
        }
        if let Some((503, body)) = bridge.get("/readyz") {
            not_ready_said.get_or_insert(body);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outage_length = outage.await.unwrap();
    // Until everything is through, liveness must hold too.
    let publisher_acked = tokio::time::timeout(Duration::from_secs(180), publishing);
    tokio::pin!(publisher_acked);
    loop {
        tokio::select! {
            done = &mut publisher_acked => { done.expect("publisher finished").unwrap(); break; }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if bridge.get("/healthz").map(|r| r.0) != Some(200) {
                    health_failures.push("after the outage".into());
                }
            }
        }
    }
    let records = read_topic_until(
        &p,
        Duration::from_secs(180),
        distinct_payloads_at_least(COUNT as usize),
    );
    let counted = numbers(&records);
    let missing: Vec<u32> = (0..COUNT).filter(|n| !counted.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        bridge.log()
    );
    let mut last_first: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut order_violations = 0;
    for r in &records {
        let n: u32 = String::from_utf8_lossy(&r.payload).parse().unwrap();
        if seen.insert(n) {
            let last = last_first
                .entry(r.key.clone().unwrap_or_default())
                .or_insert(-1);
            if i64::from(n) < *last {
                order_violations += 1;
            }
            *last = i64::from(n);
        }
    }
    assert!(
        health_failures.is_empty(),
        "/healthz failed: {health_failures:?}\n{}",
        bridge.log()
    );
    let said = not_ready_said.unwrap_or_default();
    assert!(
        said.contains("kafka not reachable"),
        "/readyz during the outage: {said:?}"
    );
    assert_eq!(order_violations, 0, "per-key order of first arrivals");
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge kept running"
    );
    println!(
        "fault-matrix | (outage {outage_length:?}) /healthz 200 every second; /readyz said {:?}; {} duplicates; {} records timed out and were retried",
        said.trim(),
        records.len() - COUNT as usize,
        bridge.metric("bridge_messages_failed_total")
    );
    Row {
        case: "MQTT->Kafka Kafka stopped 90 s under 300 msg/s, deliveryTimeoutMs 5000 (per-key order kept)",
        sent: COUNT as usize,
        delivered: counted.len(),
        dead_lettered: 0,
        dropped: 0,
        drop_reason: "",
    }
    .check();
}

/// Publishes `count` numbered QoS 1 messages over `{p}/k<i % 10>` at `rate`
/// per second and waits until the broker acknowledged them all.
async fn publish_numbered(p: String, count: u32, rate: u32) {
    let (publisher, acked) = publisher("numpub", true, 1 << 20).await;
    let start = Instant::now();
    for i in 0..count {
        publisher
            .publish(
                &format!("{p}/k{}", i % 10),
                i.to_string().into_bytes(),
                false,
            )
            .await;
        if i % 30 == 0 {
            let due = Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    wait_acked(&acked, u64::from(count), Duration::from_secs(300)).await;
}

/// Retained messages at the broker, the bridge killed and restarted three
/// times: each retained message reaches Kafka once per publish, not once per
/// reconnect (MQTT 5: Retain Handling 1; MQTT 3.1.1: the resumed session's
/// replays are acknowledged and counted as `retained_replay`).
async fn retained_once(protocol: &str) {
    let p = testenv::unique_name(&format!("retained{}", protocol.replace('.', "")));
    create_topics(&[&p], 1).await;
    let (publisher, acked) = publisher("retpub", protocol == "5", 1 << 20).await;
    const RETAINED: u32 = 20;
    for i in 0..RETAINED {
        publisher
            .publish(&format!("{p}/r{i}"), i.to_string().into_bytes(), true)
            .await;
    }
    wait_acked(&acked, u64::from(RETAINED), Duration::from_secs(10)).await;
    let routes = format!(
        "  - name: all\n    mqttToKafka: {{mqttTopicFilter: '{p}/#', kafkaTopic: '{p}', headers: false}}\n"
    );
    let mut bridge = Bridge::start(&p, &m2k_config(&p, protocol, "", &routes));
    bridge.wait_ready(Duration::from_secs(30));
    read_topic_until(&p, Duration::from_secs(20), |r| {
        r.len() >= RETAINED as usize
    });
    for _ in 0..3 {
        bridge.child.kill().unwrap();
        bridge.restart();
        bridge.wait_ready(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // One more retained publish while running: once too.
    publisher
        .publish(
            &format!("{p}/late"),
            RETAINED.to_string().into_bytes(),
            true,
        )
        .await;
    wait_acked(&acked, u64::from(RETAINED + 1), Duration::from_secs(10)).await;
    // Replays, if any, came with the restarts; the late one comes now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = read_topic_until(&p, Duration::from_secs(5), |_| false);
    let counted = numbers(&records);
    let replays = bridge
        .metric("bridge_messages_dropped_total{route=\"\",reason=\"retained_replay\"}")
        as u64;
    assert_eq!(counted.len(), RETAINED as usize + 1, "{counted:?}");
    // Over 3.1.1 the broker replays all retained messages on the resumed
    // session's re-subscription (and the bridge acknowledges them unproduced);
    // over MQTT 5 Retain Handling 1 means it does not send them at all.
    let expected_replays = if protocol == "5" {
        0
    } else {
        u64::from(RETAINED)
    };
    assert_eq!(replays, expected_replays, "{}", bridge.log());
    assert!(
        counted.values().all(|&c| c == 1),
        "each retained message once: {counted:?}\n{}",
        bridge.log()
    );
    Row {
        case: &format!(
            "MQTT {protocol} retained messages, bridge SIGKILLed and restarted 3 times ({replays} replays acknowledged, not produced)"
        ),
        sent: RETAINED as usize + 1,
        delivered: records.len(),
        dead_lettered: 0,
        dropped: 0,
        drop_reason: "",
    }
    .check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_kafka_once_mqtt_5() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    retained_once("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_kafka_once_mqtt_311() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    retained_once("3.1.1").await;
}

/// Kafka→MQTT with the MQTT broker stopped longer than `max.poll.interval.ms`
/// (shortened to 10 s): the consumer keeps being polled with its partitions
/// paused, so the group does not evict the bridge (no partition revoked),
/// and every record arrives once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_outage_longer_than_max_poll_interval_keeps_the_group() {
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("pollint");
    create_topics(&[&p], 2).await;
    let (client, mut rx) = common::mqtt_client_with_session("pollsub", true).await;
    client
        .subscribe(format!("{p}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let config = format!(
        "{}  properties:\n    max.poll.interval.ms: '10000'\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '1000'\nroutes:\n  - name: out\n    kafkaToMqtt: {{kafkaTopics: ['{p}'], mqttTopic: '{p}/{{key}}'}}\n",
        common::plain_connections(&p, "3.1.1")
    );
    let mut bridge = Bridge::start(&p, &config);
    bridge.wait_ready(Duration::from_secs(30));
    const COUNT: u32 = 600;
    let mut got: HashMap<u32, usize> = HashMap::new();
    let drain = |rx: &mut common::Received, got: &mut HashMap<u32, usize>| {
        while let Ok(m) = rx.try_recv() {
            if let Ok(n) = String::from_utf8_lossy(&m.payload).parse::<u32>() {
                *got.entry(n).or_insert(0) += 1;
            }
        }
    };
    for i in 0..COUNT / 3 {
        common::produce(&p, Some(&format!("k{}", i % 4)), &i.to_string()).await;
    }
    let outage = tokio::task::spawn_blocking(|| {
        testenv::control("stop", "mqtt");
        std::thread::sleep(Duration::from_secs(25));
        testenv::control("start", "mqtt");
    });
    for i in COUNT / 3..COUNT {
        common::produce(&p, Some(&format!("k{}", i % 4)), &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outage.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while got.len() < COUNT as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain(&mut rx, &mut got);
    }
    assert_eq!(got.len(), COUNT as usize, "{}", bridge.log());
    let revoked = bridge.metric("bridge_kafka_partitions_revoked_total");
    assert_eq!(
        revoked,
        0.0,
        "the group evicted the bridge\n{}",
        bridge.log()
    );
    let log = std::fs::read_to_string(&bridge.log_path).unwrap_or_default();
    // librdkafka's words when the application stopped polling for too long.
    assert!(
        !log.contains("maximum poll interval"),
        "librdkafka reported a poll-interval breach\n{}",
        bridge.log()
    );
    Row {
        case: "Kafka->MQTT broker stopped 25 s, max.poll.interval.ms 10 s (0 partitions revoked)",
        sent: COUNT as usize,
        delivered: got.len(),
        dead_lettered: 0,
        dropped: 0,
        drop_reason: "",
    }
    .check();
}

/// The bridge's Kafka user may write to one topic but lacks WRITE on another
/// (an ACL not granted yet): nothing for the refused topic is acknowledged,
/// `/readyz` names the topic and the reason, the other topic's records keep
/// reaching Kafka; once the ACL is granted everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_acl_missing_holds_until_granted() {
    use testenv::{KafkaOperation as Op, KafkaResource, kafka_grant, kafka_limited_principal};
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("acl");
    let (ok, denied) = (format!("{p}-ok"), format!("{p}-denied"));
    create_topics(&[&ok, &denied], 1).await;
    let principal = kafka_limited_principal();
    // Write on one topic: the idempotent producer's InitProducerId needs it.
    let _ok_grant = tokio::task::block_in_place(|| {
        kafka_grant(
            &principal,
            KafkaResource::Topic(&ok),
            &[Op::Describe, Op::Write],
        )
    });
    let config = format!(
        "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n  protocolVersion: '5'\nkafka:\n  bootstrapServers: {}\n  authentication:\n    type: scram-sha-512\n    username: {}\n    passwordSecret: {{env: KAFKA_LIMITED_PASSWORD}}\n  producer:\n    lingerMs: 2\nroutes:\n  - name: granted\n    mqttToKafka: {{mqttTopicFilter: '{p}/ok/+', kafkaTopic: '{ok}', headers: false}}\n  - name: refused\n    mqttToKafka: {{mqttTopicFilter: '{p}/denied/+', kafkaTopic: '{denied}', headers: false}}\n",
        testenv::var("MQTT_URL"),
        testenv::var("KAFKA_SASL_BOOTSTRAP"),
        testenv::var("KAFKA_LIMITED_USER"),
    );
    let bridge = Bridge::start(&p, &config);
    // Not ready from the start: the fixed topic `{denied}` cannot be produced to.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bridge.get("/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "no /healthz\n{}", bridge.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (publisher, acked) = publisher("aclpub", true, 1 << 20).await;
    const EACH: u32 = 200;
    for i in 0..EACH {
        for t in ["ok", "denied"] {
            publisher
                .publish(&format!("{p}/{t}/n"), i.to_string().into_bytes(), false)
                .await;
        }
    }
    wait_acked(&acked, u64::from(EACH * 2), Duration::from_secs(30)).await;
    let readyz = readyz_naming(&bridge, &denied, Duration::from_secs(60)).await;
    assert!(
        readyz.contains("kafka_topic_authorization_failed"),
        "{readyz}"
    );
    assert!(readyz.contains("route refused"), "{readyz}");
    let flowing = read_topic_until(
        &ok,
        Duration::from_secs(30),
        distinct_payloads_at_least(EACH as usize),
    );
    assert_eq!(numbers(&flowing).len(), EACH as usize, "{}", bridge.log());
    assert!(
        bridge.metric("bridge_in_flight_messages{side=\"mqtt\"") > 0.0,
        "nothing acknowledged past the refused records"
    );
    // The same, for the operator, as JSON.
    let report = bridge_report(&bridge);
    assert!(!report.ready);
    assert!(
        report.refusals.iter().any(|r| r.route == "refused"
            && r.target == format!("Kafka topic {denied}")
            && r.reason == "kafka_topic_authorization_failed"),
        "{report:?}"
    );
    println!("fault-matrix | (refused) /readyz: {}", readyz.trim());
    let granted_at = Instant::now();
    let _denied_grant = tokio::task::block_in_place(|| {
        kafka_grant(
            &principal,
            KafkaResource::Topic(&denied),
            &[Op::Describe, Op::Write],
        )
    });
    let arrived = read_topic_until(
        &denied,
        Duration::from_secs(60),
        distinct_payloads_at_least(EACH as usize),
    );
    let took = granted_at.elapsed();
    assert_eq!(numbers(&arrived).len(), EACH as usize, "{}", bridge.log());
    ready_again(&bridge, Duration::from_secs(30)).await;
    assert_eq!(
        bridge.metric("bridge_in_flight_messages{side=\"mqtt\""),
        0.0
    );
    println!("fault-matrix | (granted) all {EACH} held records in Kafka {took:?} after the grant");
    Row {
        case: "MQTT->Kafka Kafka user lacks WRITE on one topic, granted later",
        sent: EACH as usize * 2,
        delivered: numbers(&flowing).len() + numbers(&arrived).len(),
        dead_lettered: 0,
        dropped: 0,
        drop_reason: "",
    }
    .check();
}

/// Kafka→MQTT over MQTT 5 into a broker whose ACL denies the bridge's user
/// one topic: the broker answers PUBACK 0x87, the partition's offsets are
/// not committed, `/readyz` names the topic; the other partition flows.
/// Once the ACL allows it (broker reloaded with SIGHUP) everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_acl_denied_publish_is_not_committed_until_allowed() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let _serial = common::serial().await;
    testenv::install_crypto_provider();
    let p = testenv::unique_name("macl");
    create_topics(&[&p], 2).await;
    let (bridge_user, test_user) = (testenv::var("MQTT_USER"), testenv::var("MQTT_TEST_USER"));
    tokio::task::block_in_place(|| {
        testenv::mqtt_acl_set(&format!(
            "user {bridge_user}\ntopic readwrite {p}/open-a\n\nuser {test_user}\ntopic readwrite #\n"
        ))
    });
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            testenv::mqtt_acl_reset();
        }
    }
    let _reset = Reset;
    // The subscriber on the ACL listener, as the test user.
    let (host, port) = common::mqtt_host_port(&testenv::var("MQTT_ACL_URL"));
    let mut o = rumqttc::MqttOptions::new(testenv::unique_name("aclsub"), host, port);
    o.set_credentials(test_user.clone(), testenv::var("MQTT_TEST_PASSWORD"))
        .set_clean_session(false);
    let (sub, mut el) = rumqttc::AsyncClient::new(o, 10_000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(m))) => {
                    let _ = tx.send(m);
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    sub.subscribe(format!("{p}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let group = format!("{p}-group");
    let config = format!(
        "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n  protocolVersion: '5'\n  authentication:\n    type: password\n    username: {bridge_user}\n    passwordSecret: {{env: MQTT_PASSWORD}}\nkafka:\n  bootstrapServers: {}\n  consumer:\n    groupId: {group}\n    autoOffsetReset: earliest\n  properties:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '1000'\nroutes:\n  - name: out\n    kafkaToMqtt: {{kafkaTopics: ['{p}'], mqttTopic: '{p}/{{key}}'}}\n",
        testenv::var("MQTT_ACL_URL"),
        testenv::var("KAFKA_BOOTSTRAP"),
    );
    let mut bridge = Bridge::start(&p, &config);
    bridge.wait_ready(Duration::from_secs(30));
    // Partition 0 carries the allowed topic, partition 1 the denied one.
    const EACH: u32 = 100;
    let producer: rdkafka::producer::FutureProducer =
        common::kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
            .create()
            .expect("producer");
    for i in 0..EACH {
        for (partition, key, text) in [(0, "open-a", "open"), (1, "closed-b", "closed")] {
            let payload = format!("{text}-{i}");
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&p)
                        .partition(partition)
                        .key(key)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    }
    // Open records arrive; closed ones are refused (PUBACK 0x87) and held.
    let mut got: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let readyz = loop {
        while let Ok(m) = rx.try_recv() {
            *got.entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_insert(0) += 1;
        }
        let r = bridge.get("/readyz");
        let open = got.keys().filter(|k| k.starts_with("open-")).count();
        if let Some((503, body)) = &r
            && body.contains(&format!("MQTT topic {p}/closed-b"))
            && open == EACH as usize
        {
            break body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "open {open}/{EACH}, /readyz {r:?}\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(readyz.contains("mqtt_not_authorized"), "{readyz}");
    assert!(
        !got.keys().any(|k| k.starts_with("closed-")),
        "the broker took nothing of the denied topic"
    );
    // The open partition is committed (every 500 ms), nothing of the refused one.
    let committed_offsets = || {
        tokio::task::block_in_place(|| {
            let c: BaseConsumer = common::kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
                .set("group.id", &group)
                .create()
                .expect("consumer");
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(&p, 0);
            tpl.add_partition(&p, 1);
            c.committed_offsets(tpl, Duration::from_secs(10))
                .expect("committed offsets")
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(-1))
                .collect::<Vec<i64>>()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let offsets = loop {
        let offsets = committed_offsets();
        if offsets[0] == i64::from(EACH) || Instant::now() > deadline {
            break offsets;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        offsets[0],
        i64::from(EACH),
        "the open partition is committed: {offsets:?}"
    );
    assert!(
        offsets[1] <= 0,
        "nothing of the refused partition is committed: {offsets:?}"
    );
    println!(
        "fault-matrix | (refused) /readyz: {}; committed offsets {offsets:?}",
        readyz.trim()
    );
    let allowed_at = Instant::now();
    tokio::task::block_in_place(|| {
        testenv::mqtt_acl_set(&format!(
            "user {bridge_user}\ntopic readwrite {p}/#\n\nuser {test_user}\ntopic readwrite #\n"
        ))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 2 * EACH as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(m) = rx.try_recv() {
            *got.entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_insert(0) += 1;
        }
    }
    assert_eq!(got.len(), 2 * EACH as usize, "{}", bridge.log());
    println!(
        "fault-matrix | (allowed) everything arrived {:?} after the ACL reload",
        allowed_at.elapsed()
    );
    Row {
        case: "Kafka->MQTT MQTT 5 broker ACL denies one topic, allowed later (SIGHUP)",
        sent: 2 * EACH as usize,
        delivered: got.len(),
        dead_lettered: 0,
        dropped: 0,
        drop_reason: "",
    }
    .check();
}
