//! The test Mosquitto is a real broker with anonymous, password and TLS
//! listeners and persistent sessions, reached through rumqttc as the product reaches it.

mod common;

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError};

async fn pub_sub(url_var: &str, credentials: bool) {
    let topic = format!("smoke/{}", testenv::unique_name("t"));
    let mut o = common::options(url_var, &testenv::unique_name("sub"));
    if credentials {
        o.set_credentials(testenv::var("MQTT_USER"), testenv::var("MQTT_PASSWORD"));
    }
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    common::connect(&mut eventloop).await.unwrap();
    common::subscribe(&client, &mut eventloop, &topic).await;
    let payloads: Vec<String> = (0..10)
        .map(|i| format!("{{\"current_a\":12.{i}}}"))
        .collect();
    let publisher = common::publish_acked(url_var, &topic, &payloads);
    let (_, got) = tokio::join!(publisher, common::receive(&mut eventloop, 10));
    assert_eq!(got, payloads, "QoS 1 messages arrive complete and in order");
}

#[tokio::test]
async fn qos1_publish_subscribe_anonymously() {
    pub_sub("MQTT_URL", false).await;
}

#[tokio::test]
async fn qos1_publish_subscribe_with_password() {
    pub_sub("MQTT_AUTH_URL", true).await;
}

#[tokio::test]
async fn qos1_publish_subscribe_over_tls() {
    pub_sub("MQTT_TLS_URL", false).await;
}

#[tokio::test]
async fn wrong_password_is_refused() {
    for url in ["MQTT_AUTH_URL", "MQTT_TLS_URL"] {
        let mut o = common::options(url, &testenv::unique_name("intruder"));
        o.set_credentials(testenv::var("MQTT_USER"), "not-the-password");
        let (_client, mut eventloop) = AsyncClient::new(o, 10);
        let result = tokio::time::timeout(Duration::from_secs(10), common::connect(&mut eventloop))
            .await
            .expect("no answer to CONNECT");
        match result {
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
            )) => {}
            other => panic!("{url}: expected a refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn anonymous_client_is_refused_on_the_password_listener() {
    let o = common::options("MQTT_AUTH_URL", &testenv::unique_name("anon"));
    let (_client, mut eventloop) = AsyncClient::new(o, 10);
    let result = tokio::time::timeout(Duration::from_secs(10), common::connect(&mut eventloop))
        .await
        .expect("no answer to CONNECT");
    assert!(
        matches!(result, Err(ConnectionError::ConnectionRefused(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn persistent_session_receives_what_was_published_while_offline() {
    let topic = format!("smoke/{}", testenv::unique_name("offline"));
    let id = common::subscribe_then_go_offline("MQTT_URL", &topic).await;
    let payloads: Vec<String> = (0..5).map(|i| format!("while-offline-{i}")).collect();
    common::publish_acked("MQTT_URL", &topic, &payloads).await;
    let (present, got) = common::come_back_online("MQTT_URL", &id, 5).await;
    assert!(present, "the broker kept the session");
    assert_eq!(got, payloads);
}
