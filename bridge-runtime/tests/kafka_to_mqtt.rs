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
