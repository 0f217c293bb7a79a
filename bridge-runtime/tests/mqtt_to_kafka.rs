//! MQTT→Kafka route features against the real servers.

mod common;

use std::time::Duration;

use common::{Bridge, create_topics, header, mqtt_host_port, read_topic};

fn routes(p: &str) -> String {
    format!(
        r#"routes:
  - name: temps
    mqttToKafka:
      mqttTopicFilter: {p}/+/temperature
      kafkaTopic: {p}.{{1}}
      key: {{type: jsonField, field: sensor_id}}
    deadLetterTopic: {p}.dead
  - name: raw
    mqttToKafka:
      mqttTopicFilter: {p}/raw/#
      kafkaTopic: {p}.raw
      key: {{type: mqttTopic}}
      headers: false
"#
    )
}

async fn route_features(protocol: &str) {
    testenv::install_crypto_provider();
    let p = testenv::unique_name("m2k");
    let room = format!("{p}.kitchen");
    let dead = format!("{p}.dead");
    let raw = format!("{p}.raw");
    create_topics(&[&room, &dead, &raw], 1).await;
    let mut bridge = Bridge::start(
        &p,
        &format!("{}{}", common::plain_connections(&p, protocol), routes(&p)),
    );
    bridge.wait_ready(Duration::from_secs(30));

    let (host, port) = mqtt_host_port(&testenv::var("MQTT_URL"));
    if protocol == "5" {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        let mut o = rumqttc::v5::MqttOptions::new(testenv::unique_name("pub"), host, port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        let props = PublishProperties {
            user_properties: vec![("unit".into(), "celsius".into())],
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        client
            .publish_with_properties(
                format!("{p}/kitchen/temperature"),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                br#"{"sensor_id":"s1","t":21}"#.to_vec(),
                props,
            )
            .await
            .unwrap();
        client
            .publish(
                format!("{p}/kitchen/temperature"),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                b"not json".to_vec(),
            )
            .await
            .unwrap();
        client
            .publish(
                format!("{p}/raw/a/b"),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                true,
                b"r".to_vec(),
            )
            .await
            .unwrap();
    } else {
        let (client, _) = common::mqtt_client("pub").await;
        client
            .publish(
                format!("{p}/kitchen/temperature"),
                rumqttc::QoS::AtLeastOnce,
                false,
                br#"{"sensor_id":"s1","t":21}"#.to_vec(),
            )
            .await
            .unwrap();
        client
            .publish(
                format!("{p}/kitchen/temperature"),
                rumqttc::QoS::AtLeastOnce,
                false,
                b"not json".to_vec(),
            )
            .await
            .unwrap();
        client
            .publish(
                format!("{p}/raw/a/b"),
                rumqttc::QoS::AtLeastOnce,
                true,
                b"r".to_vec(),
            )
            .await
            .unwrap();
    }

    let got = read_topic(&room, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", bridge.log());
    let r = &got[0];
    assert_eq!(r.key.as_deref(), Some(&b"s1"[..]));
    assert_eq!(
        header(r, "mqtt.topic"),
        Some(format!("{p}/kitchen/temperature").as_bytes())
    );
    assert_eq!(header(r, "mqtt.qos"), Some(&b"1"[..]));
    assert_eq!(header(r, "x-bridge-origin"), Some(p.as_bytes()));
    if protocol == "5" {
        assert_eq!(header(r, "unit"), Some(&b"celsius"[..]));
        assert_eq!(
            header(r, "mqtt.content-type"),
            Some(&b"application/json"[..])
        );
    }
    let dl = read_topic(&dead, 1, Duration::from_secs(30));
    assert_eq!(dl.len(), 1);
    assert_eq!(
        header(&dl[0], "x-bridge-error"),
        Some(&b"payload_not_json"[..])
    );
    assert_eq!(header(&dl[0], "x-bridge-route"), Some(&b"temps"[..]));
    assert_eq!(dl[0].payload, b"not json");
    let raw_records = read_topic(&raw, 1, Duration::from_secs(30));
    assert_eq!(
        raw_records[0].key.as_deref(),
        Some(format!("{p}/raw/a/b").as_bytes())
    );
    assert!(header(&raw_records[0], "mqtt.topic").is_none());

    // Metrics, then a clean SIGTERM exit.
    assert!(bridge.metric("bridge_messages_dead_lettered_total{route=\"temps\"") >= 1.0);
    assert!(bridge.metric("bridge_messages_forwarded_total{route=\"temps\"") >= 1.0);
    assert_eq!(bridge.get("/healthz").map(|r| r.0), Some(200));
    bridge.sigterm();
    let status = bridge
        .wait_exit(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}: {}", bridge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_features_mqtt_311() {
    route_features("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_features_mqtt_5() {
    route_features("5").await;
}

/// One security variant: the given `mqtt:`/`kafka:` YAML must carry a message through.
async fn carries_with(name: &str, connections: impl FnOnce(&str) -> String) {
    testenv::install_crypto_provider();
    let p = testenv::unique_name(name);
    create_topics(&[&p], 1).await;
    let config = format!(
        "{}routes:\n  - name: r\n    mqttToKafka: {{mqttTopicFilter: '{p}/#', kafkaTopic: '{p}'}}\n",
        connections(&p)
    );
    let mut bridge = Bridge::start(&p, &config);
    bridge.wait_ready(Duration::from_secs(30));
    let (client, _) = common::mqtt_client("pub").await;
    client
        .publish(
            format!("{p}/x"),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .unwrap();
    let got = read_topic(&p, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{name}: {}", bridge.log());
    assert_eq!(got[0].payload, b"hello");
}

fn mqtt_plain(p: &str) -> String {
    format!(
        "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n",
        testenv::var("MQTT_URL")
    )
}

fn kafka_sasl(
    mechanism: &str,
    user: &str,
    password_env: &str,
    bootstrap: &str,
    tls: bool,
) -> String {
    let tls = if tls {
        format!(
            "  tls:\n    trustedCa: {{file: {}}}\n",
            testenv::var("KAFKA_CA_FILE")
        )
    } else {
        String::new()
    };
    format!(
        "kafka:\n  bootstrapServers: {}\n{tls}  authentication:\n    type: {mechanism}\n    username: {}\n    passwordSecret: {{env: {password_env}}}\n",
        testenv::var(bootstrap),
        testenv::var(user)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_plain() {
    carries_with("plain", |p| {
        mqtt_plain(p)
            + &kafka_sasl(
                "plain",
                "KAFKA_PLAIN_USER",
                "KAFKA_PLAIN_PASSWORD",
                "KAFKA_SASL_BOOTSTRAP",
                false,
            )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_scram_sha_512() {
    carries_with("scram", |p| {
        mqtt_plain(p)
            + &kafka_sasl(
                "scram-sha-512",
                "KAFKA_SCRAM_USER",
                "KAFKA_SCRAM_PASSWORD",
                "KAFKA_SASL_BOOTSTRAP",
                false,
            )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_scram_sha_256() {
    carries_with("scram256", |p| {
        mqtt_plain(p)
            + &kafka_sasl(
                "scram-sha-256",
                "KAFKA_SCRAM_USER",
                "KAFKA_SCRAM_PASSWORD",
                "KAFKA_SASL_BOOTSTRAP",
                false,
            )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_ssl_and_mqtt_tls_with_client_certificate() {
    carries_with("ssl", |p| {
        format!(
            "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n  tls:\n    trustedCa: {{file: {}}}\n    clientCertificate: {{file: {}}}\n    clientKey: {{file: {}}}\n",
            testenv::var("MQTT_TLS_URL"),
            testenv::var("MQTT_CA_FILE"),
            testenv::var("MQTT_CLIENT_CERT_FILE"),
            testenv::var("MQTT_CLIENT_KEY_FILE"),
        ) + &kafka_sasl("scram-sha-512", "KAFKA_SCRAM_USER", "KAFKA_SCRAM_PASSWORD", "KAFKA_SSL_BOOTSTRAP", true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_password_v5() {
    carries_with("mqttpw", |p| {
        format!(
            "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n  protocolVersion: '5'\n  authentication:\n    type: password\n    username: {}\n    passwordSecret: {{env: MQTT_PASSWORD}}\nkafka:\n  bootstrapServers: {}\n",
            testenv::var("MQTT_AUTH_URL"),
            testenv::var("MQTT_USER"),
            testenv::var("KAFKA_BOOTSTRAP"),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mqtt_password_is_fatal_with_termination_message() {
    testenv::install_crypto_provider();
    let p = testenv::unique_name("badpw");
    let dir = common::temp_dir(&p);
    std::fs::write(dir.join("pw"), "definitely-wrong").unwrap();
    let config = format!(
        "mqtt:\n  url: {}\n  clientIdPrefix: {p}\n  authentication:\n    type: password\n    username: {}\n    passwordSecret: {{file: {}}}\nkafka:\n  bootstrapServers: {}\nroutes:\n  - name: r\n    mqttToKafka: {{mqttTopicFilter: 'x/#', kafkaTopic: x}}\n",
        testenv::var("MQTT_AUTH_URL"),
        testenv::var("MQTT_USER"),
        dir.join("pw").display(),
        testenv::var("KAFKA_BOOTSTRAP"),
    );
    let mut bridge = Bridge::start(&p, &config);
    let status = bridge
        .wait_exit(Duration::from_secs(30))
        .expect("bridge must exit");
    assert_eq!(status.code(), Some(1));
    let message = std::fs::read_to_string(dir.join("termination")).unwrap();
    assert!(message.starts_with("MqttRefused"), "{message}");
    assert!(!message.contains("definitely-wrong"));
}
