//! Kafka→MQTT against the real servers: templates, dead letters, loop
//! prevention, and offsets committed only after the broker acknowledged.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Bridge, create_topics, header, produce, read_topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

async fn received(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    want: usize,
    timeout: Duration,
) -> Vec<rumqttc::Publish> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && start.elapsed() < timeout {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            out.push(p);
        }
    }
    out
}

async fn templates_and_dead_letters(protocol: &str) {
    testenv::install_crypto_provider();
    let p = testenv::unique_name("k2m");
    let cmds = format!("{p}.cmds");
    let dead = format!("{p}.dead");
    create_topics(&[&cmds, &dead], 2).await;
    let config = format!(
        "{}routes:\n  - name: cmds\n    kafkaToMqtt:\n      kafkaTopics: ['{cmds}']\n      mqttTopic: '{p}/{{key}}/{{target.room}}'\n      qos: 1\n    deadLetterTopic: '{dead}'\n  - name: loop\n    mqttToKafka:\n      mqttTopicFilter: '{p}/+/loop'\n      kafkaTopic: '{cmds}'\n",
        common::plain_connections(&p, protocol)
    );
    let mut bridge = Bridge::start(&p, &config);
    bridge.wait_ready(Duration::from_secs(30));
    let (client, mut rx) = common::mqtt_client("sub").await;
    client
        .subscribe(format!("{p}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The consumer group may still be joining; records wait for it (earliest).
    produce(
        &cmds,
        Some("dev1"),
        r#"{"target":{"room":"hall"},"on":true}"#,
    )
    .await;
    produce(&cmds, Some("dev2"), "not json").await;
    // A record this bridge produced itself is not carried to `{p}/dev3/loop`:
    // the `loop` route would bring it straight back into Kafka.
    let producer: FutureProducer = common::kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&cmds)
                .key("dev3")
                .payload(r#"{"target":{"room":"loop"}}"#)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "x-bridge-origin",
                    value: Some(p.as_bytes()),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let got = received(&mut rx, 1, Duration::from_secs(40)).await;
    assert_eq!(got.len(), 1, "{}", bridge.log());
    assert_eq!(got[0].topic, format!("{p}/dev1/hall"));
    assert_eq!(
        &got[0].payload[..],
        br#"{"target":{"room":"hall"},"on":true}"#
    );
    let dl = read_topic(&dead, 1, Duration::from_secs(30));
    assert_eq!(dl.len(), 1);
    assert_eq!(
        header(&dl[0], "x-bridge-error"),
        Some(&b"payload_not_json"[..])
    );
    // Nothing else (the loop record) arrives.
    let more = received(&mut rx, 1, Duration::from_secs(2)).await;
    assert!(
        more.is_empty(),
        "{:?}",
        more.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );
    // Counted: three records in, one carried to MQTT (the broker acknowledged it).
    assert_eq!(
        bridge.metric("bridge_messages_received_total{route=\"cmds\""),
        3.0
    );
    assert_eq!(
        bridge.metric("bridge_messages_forwarded_total{route=\"cmds\""),
        1.0
    );
    // Its time from Kafka to the broker's acknowledgement is in the histogram.
    assert_eq!(
        bridge.metric("bridge_forward_latency_seconds_count{direction=\"kafka_to_mqtt\"}"),
        1.0
    );

    // Committed: after a clean restart nothing is published again.
    bridge.sigterm();
    let status = bridge.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(status.success());
    bridge.restart();
    bridge.wait_ready(Duration::from_secs(30));
    produce(&cmds, Some("dev4"), r#"{"target":{"room":"attic"}}"#).await;
    let after: BTreeSet<String> = received(&mut rx, 1, Duration::from_secs(40))
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(
        after,
        BTreeSet::from([format!("{p}/dev4/attic")]),
        "{}",
        bridge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_dead_letters_loops_commits_mqtt_311() {
    templates_and_dead_letters("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_dead_letters_loops_commits_mqtt_5() {
    templates_and_dead_letters("5").await;
}

/// Kafka→MQTT publishes over several connections by default (Mosquitto lets
/// each only 20 unacknowledged publishes), each partition over one of them:
/// every record of a key arrives, in order, though the connections race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_publishing_connections_keep_each_keys_order() {
    testenv::install_crypto_provider();
    let p = testenv::unique_name("k2m-conns");
    let topic = format!("{p}.readings");
    create_topics(&[&topic], 10).await;
    let config = format!(
        "{}routes:\n  - name: readings\n    kafkaToMqtt:\n      kafkaTopics: ['{topic}']\n      mqttTopic: '{p}/{{key}}'\n      qos: 1\n",
        common::plain_connections(&p, "5")
    );
    let (client, mut rx) = common::mqtt_client("k2m-conns-sub").await;
    client
        .subscribe(format!("{p}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 8 keys × 500 records, each payload its key's sequence number.
    const KEYS: usize = 8;
    const PER_KEY: usize = 500;
    let producer: FutureProducer = common::kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let key = format!("key{k}");
            let payload = seq.to_string();
            let delivery = producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap();
            sends.push(delivery);
        }
    }
    for s in sends {
        s.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let mut bridge = Bridge::start(&p, &config);
    bridge.wait_ready(Duration::from_secs(30));

    let got = received(&mut rx, KEYS * PER_KEY, Duration::from_secs(60)).await;
    assert_eq!(got.len(), KEYS * PER_KEY, "{}", bridge.log());
    let mut next = std::collections::BTreeMap::<String, usize>::new();
    for publish in &got {
        let seq: usize = std::str::from_utf8(&publish.payload)
            .unwrap()
            .parse()
            .unwrap();
        let expected = next.entry(publish.topic.clone()).or_insert(0);
        assert_eq!(seq, *expected, "{} out of order", publish.topic);
        *expected += 1;
    }
    assert_eq!(next.len(), KEYS);
    // The four publishing connections a user sees in /metrics.
    let body = bridge.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let publishers: BTreeSet<&str> = body
        .lines()
        .filter(|l| {
            l.starts_with("bridge_connection_up{") && l.contains("-out-") && l.ends_with(" 1")
        })
        .collect();
    assert_eq!(publishers.len(), 4, "{body}");
}
