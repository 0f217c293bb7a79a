//! MQTT helpers shared by the MQTT smoke tests.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};

/// Options for the listener named by `url_var` (`MQTT_URL`, `MQTT_AUTH_URL`, `MQTT_TLS_URL`).
pub fn options(url_var: &str, client_id: &str) -> MqttOptions {
    testenv::install_crypto_provider();
    let (host, port) = testenv::mqtt_host_port(url_var);
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(10));
    if testenv::var(url_var).starts_with("mqtts://") {
        let ca = std::fs::read(testenv::var("MQTT_CA_FILE")).unwrap();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    o
}

/// Polls until the CONNACK; returns whether the broker had a session for us.
pub async fn connect(eventloop: &mut EventLoop) -> Result<bool, ConnectionError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = eventloop.poll().await? {
            return Ok(ack.session_present);
        }
    }
}

/// Subscribes and waits for the SUBACK.
pub async fn subscribe(client: &AsyncClient, eventloop: &mut EventLoop, topic: &str) {
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("no SUBACK");
}

/// Publishes QoS 1 messages and waits until the broker acknowledged all of them.
pub async fn publish_acked(url_var: &str, topic: &str, payloads: &[String]) {
    let mut o = options(url_var, &testenv::unique_name("pub"));
    if url_var == "MQTT_AUTH_URL" {
        o.set_credentials(testenv::var("MQTT_USER"), testenv::var("MQTT_PASSWORD"));
    }
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    connect(&mut eventloop).await.unwrap();
    for p in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, p.clone())
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while acked < payloads.len() {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                acked += 1;
            }
        }
    })
    .await
    .expect("not every publish was acknowledged");
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// Receives `n` publishes (acknowledging them), in order of arrival.
pub async fn receive(eventloop: &mut EventLoop, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while got.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.unwrap() {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("received only {got:?} of {n}"));
    got
}

/// A persistent-session subscriber: subscribes, goes offline, and returns its client id.
pub async fn subscribe_then_go_offline(url_var: &str, topic: &str) -> String {
    let id = testenv::unique_name("persistent");
    let mut o = options(url_var, &id);
    o.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    connect(&mut eventloop).await.unwrap();
    subscribe(&client, &mut eventloop, topic).await;
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    id
}

/// Reconnects the persistent session and returns (session_present, messages).
pub async fn come_back_online(url_var: &str, id: &str, n: usize) -> (bool, Vec<String>) {
    let mut o = options(url_var, id);
    o.set_clean_session(false);
    let (_client, mut eventloop) = AsyncClient::new(o, 10);
    let present = connect(&mut eventloop).await.unwrap();
    (present, receive(&mut eventloop, n).await)
}
