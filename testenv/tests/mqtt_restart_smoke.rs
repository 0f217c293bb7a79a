//! Persistent sessions and their queued QoS 1 messages survive a Mosquitto
//! restart. Its own test binary: restarting the broker would disturb the
//! other MQTT smoke tests running in parallel.

mod common;

#[tokio::test]
async fn persistent_session_survives_a_broker_restart() {
    let topic = format!("smoke/{}", testenv::unique_name("restart"));
    let id = common::subscribe_then_go_offline("MQTT_URL", &topic).await;
    let payloads: Vec<String> = (0..5).map(|i| format!("before-restart-{i}")).collect();
    common::publish_acked("MQTT_URL", &topic, &payloads).await;
    testenv::control("restart", "mqtt");
    let (present, got) = common::come_back_online("MQTT_URL", &id, 5).await;
    assert!(present, "the broker lost the session across its restart");
    assert_eq!(
        got, payloads,
        "queued messages were lost across the restart"
    );
}
