//! The simulator and verifiers against the real test servers: a small fleet
//! straight to MQTT and straight to Kafka, every reading accounted for.

use std::time::Duration;

use sensor_fleet::simulate::{self, Fleet, KafkaSim, MqttSim};
use sensor_fleet::verify::{self, Control, MqttSub, StartAt};
use sensor_fleet::{KafkaEndpoint, MqttEndpoint, conn};

/// 20 sensors × 20 Hz × 2 s = 800 readings: small enough for a loaded 2-core machine.
fn fleet(prefix: &str) -> Fleet {
    let mut f = Fleet::new(20, 20.0, Duration::from_secs(2));
    f.id_prefix = prefix.to_owned();
    f.topic_template = format!("{prefix}/{{id}}/temperature");
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_fleet_is_received_completely_at_qos1() {
    sensor_fleet::install_crypto_provider();
    let endpoint = MqttEndpoint::plain(testenv::var("MQTT_URL"));
    let prefix = testenv::unique_name("fleet");
    let f = fleet(&prefix);

    let mut sub = MqttSub::new(endpoint.clone(), format!("{prefix}/+/temperature"));
    sub.client_id_prefix = format!("{prefix}-v");
    let verifier = verify::mqtt(
        &sub,
        Control::new(Duration::from_secs(60), Duration::from_secs(15)),
    )
    .await
    .expect("subscribe");

    let mut sim = MqttSim::new(f, endpoint);
    sim.connections = 3;
    sim.client_id_prefix = format!("{prefix}-p");
    let summary = simulate::simulate_mqtt(&sim).await.expect("simulate");
    assert_eq!(summary.published, 800, "{}", summary.line());
    assert_eq!(summary.acked, 800, "{}", summary.line());
    assert_eq!(summary.expected.total(), 800);

    verifier.control.set_expected(summary.expected.total());
    let (tracker, why) = verifier.finish().await.expect("verify");
    let r = tracker.report(Some(&summary.expected));
    assert_eq!(why, "expected count reached", "{}", r.summary());
    assert!(r.lossless(), "{}", r.summary());
    assert_eq!((r.duplicates, r.malformed, r.sensors_seen), (0, 0, 20));
    assert!(r.latency_ms.max > 0.0 && r.latency_ms.p50 <= r.latency_ms.p99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_fleet_is_received_completely_and_keyed() {
    let endpoint = KafkaEndpoint::plain(testenv::var("KAFKA_BOOTSTRAP"));
    let prefix = testenv::unique_name("fleet");
    let topic = format!("{prefix}-readings");
    conn::create_topic(&endpoint, &topic, 3)
        .await
        .expect("create topic");

    let verifier = verify::kafka(
        &endpoint,
        &topic,
        StartAt::Beginning,
        Control::new(Duration::from_secs(60), Duration::from_secs(20)),
    )
    .await
    .expect("assign");
    let sim = KafkaSim {
        fleet: fleet(&prefix),
        endpoint,
        topic,
        drain_timeout: Duration::from_secs(30),
        progress: None,
    };
    let summary = simulate::simulate_kafka(&sim).await.expect("produce");
    assert_eq!(
        (summary.published, summary.acked),
        (800, 800),
        "{}",
        summary.line()
    );

    verifier.control.set_expected(800);
    let (tracker, why) = verifier.finish().await.expect("verify");
    let r = tracker.report(Some(&summary.expected));
    assert_eq!(why, "expected count reached", "{}", r.summary());
    assert!(r.lossless(), "{}", r.summary());
    assert_eq!((r.duplicates, r.reordered), (0, 0), "{}", r.summary());
    // Keyed by sensor id: each sensor stays on one partition; 20 keys cover all 3.
    assert_eq!(r.keys_on_several_partitions, 0);
    assert_eq!(r.partitions, vec![0, 1, 2]);
}
