//! Manifests that cannot work are rejected by the apiserver itself (schema
//! bounds, enums, CEL rules, list-map keys) with a message naming the field.

mod common;

use crds::MqttKafkaBridge;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

fn valid(name: &str) -> Value {
    json!({
        "apiVersion": "mqttkafka.io/v1alpha1",
        "kind": "MqttKafkaBridge",
        "metadata": {"name": name},
        "spec": {
            "mqtt": {
                "url": "mqtts://broker:8883",
                "clientIdPrefix": "b",
                "tls": {},
                "authentication": {"type": "password", "username": "u",
                    "passwordSecret": {"secretName": "s", "key": "k"}}
            },
            "kafka": {"bootstrapServers": "kafka:9092"},
            "routes": [
                {"name": "up", "mqttToKafka": {"mqttTopicFilter": "sensors/+/t", "kafkaTopic": "t.{1}"}},
                {"name": "down", "kafkaToMqtt": {"kafkaTopics": ["cmd"], "mqttTopic": "cmd/{id}"}}
            ]
        }
    })
}

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let client = common::client().await;
    let ns = common::namespace(&client, "admission").await;
    let api: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = |v: Value| {
        let api = api.clone();
        let dry_run = dry_run.clone();
        async move {
            let bridge: MqttKafkaBridge = serde_json::from_value(v).expect("typed manifest");
            api.create(&dry_run, &bridge).await
        }
    };
    create(valid("ok"))
        .await
        .expect("the valid manifest is accepted");
    // Paths to key material are not secrets.
    let mut with_paths = valid("paths");
    with_paths["spec"]["kafka"]["properties"] = json!({
        "ssl.keystore.location": "/etc/kafka/keystore.p12",
        "ssl.key.location": "/etc/kafka/client.key",
    });
    create(with_paths)
        .await
        .expect("key file locations are accepted");

    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "password without username",
            |v| {
                v["spec"]["mqtt"]["authentication"] = json!({"type": "password",
                "passwordSecret": {"secretName": "s", "key": "k"}})
            },
            "mqtt.authentication.username",
        ),
        (
            "password without secret",
            |v| v["spec"]["mqtt"]["authentication"] = json!({"type": "password", "username": "u"}),
            "mqtt.authentication",
        ),
        (
            "SASL without secret",
            |v| {
                v["spec"]["kafka"]["authentication"] =
                    json!({"type": "scram-sha-512", "username": "u"})
            },
            "kafka.authentication",
        ),
        (
            "route without direction",
            |v| v["spec"]["routes"][1] = json!({"name": "down"}),
            "spec.routes[1]",
        ),
        (
            "route with two directions",
            |v| {
                v["spec"]["routes"][1]["mqttToKafka"] =
                    json!({"mqttTopicFilter": "a", "kafkaTopic": "b"})
            },
            "exactly one of mqttToKafka or kafkaToMqtt",
        ),
        (
            "# not last",
            |v| v["spec"]["routes"][0]["mqttToKafka"]["mqttTopicFilter"] = json!("a/#/b"),
            "mqttTopicFilter",
        ),
        (
            "+ inside a level",
            |v| v["spec"]["routes"][0]["mqttToKafka"]["mqttTopicFilter"] = json!("a/b+/c"),
            "mqttTopicFilter",
        ),
        (
            "template level the filter lacks",
            |v| v["spec"]["routes"][0]["mqttToKafka"]["kafkaTopic"] = json!("t.{2}"),
            "kafkaTopic",
        ),
        (
            "key level the filter lacks",
            |v| {
                v["spec"]["routes"][0]["mqttToKafka"]["key"] =
                    json!({"type": "topicLevel", "level": 3})
            },
            "key.level",
        ),
        (
            "jsonField key without field",
            |v| v["spec"]["routes"][0]["mqttToKafka"]["key"] = json!({"type": "jsonField"}),
            "key.field",
        ),
        (
            "duplicate route names",
            |v| v["spec"]["routes"][1]["name"] = json!("up"),
            "spec.routes[1]",
        ),
        (
            "hostNetwork with dnsPolicy ClusterFirst",
            |v| {
                v["spec"]["template"] =
                    json!({"pod": {"hostNetwork": true, "dnsPolicy": "ClusterFirst"}})
            },
            "spec.template.pod",
        ),
        (
            "dnsPolicy ClusterFirstWithHostNet without hostNetwork",
            |v| v["spec"]["template"] = json!({"pod": {"dnsPolicy": "ClusterFirstWithHostNet"}}),
            "only applies with hostNetwork",
        ),
        (
            "a label of the operator's",
            |v| {
                v["spec"]["template"] =
                    json!({"pod": {"metadata": {"labels": {"mqttkafka.io/bridge": "other"}}}})
            },
            "spec.template.pod.metadata",
        ),
        (
            "HTTP port out of range",
            |v| v["spec"]["http"] = json!({"port": 70000}),
            "spec.http.port",
        ),
        (
            "a progress deadline of 5 s",
            |v| v["spec"]["progressDeadlineSeconds"] = json!(5),
            "spec.progressDeadlineSeconds",
        ),
        (
            "negative replicas",
            |v| v["spec"]["replicas"] = json!(-1),
            "spec.replicas",
        ),
        (
            "QoS 3",
            |v| v["spec"]["routes"][0]["mqttToKafka"]["qos"] = json!(3),
            "qos",
        ),
        (
            "not an MQTT url",
            |v| v["spec"]["mqtt"]["url"] = json!("http://broker:80"),
            "mqtt.url",
        ),
        (
            "TLS on mqtt://",
            |v| v["spec"]["mqtt"]["url"] = json!("mqtt://broker:1883"),
            "mqtt.tls",
        ),
        (
            "client id with a space",
            |v| v["spec"]["mqtt"]["clientIdPrefix"] = json!("a b"),
            "clientIdPrefix",
        ),
        (
            "no routes",
            |v| v["spec"]["routes"] = json!([]),
            "spec.routes",
        ),
        (
            "no Kafka topics",
            |v| v["spec"]["routes"][1]["kafkaToMqtt"]["kafkaTopics"] = json!([]),
            "kafkaTopics",
        ),
        (
            "wildcard in publish topic",
            |v| v["spec"]["routes"][1]["kafkaToMqtt"]["mqttTopic"] = json!("cmd/+"),
            "mqttTopic",
        ),
        (
            "bootstrap without port",
            |v| v["spec"]["kafka"]["bootstrapServers"] = json!("kafka"),
            "bootstrapServers",
        ),
        (
            "client certificate without key",
            |v| {
                v["spec"]["mqtt"]["tls"] =
                    json!({"clientCertificate": {"secretName": "c", "key": "crt"}})
            },
            "mqtt.tls.clientKey",
        ),
        (
            "name too long",
            |v| v["metadata"]["name"] = json!("x".repeat(56)),
            "metadata.name",
        ),
        (
            "zero connections",
            |v| v["spec"]["mqtt"]["connections"] = json!(0),
            "connections",
        ),
        (
            "OAUTHBEARER client secret in kafka.properties",
            |v| {
                v["spec"]["kafka"]["properties"] =
                    json!({"sasl.oauthbearer.config": "clientId=a clientSecret=b"})
            },
            "kafka.properties must not carry a secret",
        ),
        (
            "SSL key password in kafka.properties, any case",
            |v| v["spec"]["kafka"]["properties"] = json!({"SSL.Key.Password": "x"}),
            "kafka.properties must not carry a secret",
        ),
    ];
    // Unknown enum values cannot be expressed in the typed struct: send raw JSON.
    let raw_cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "unknown SASL mechanism",
            |v| v["spec"]["kafka"]["authentication"] = json!({"type": "kerberos"}),
            "spec.kafka.authentication.type",
        ),
        (
            "unknown MQTT version",
            |v| v["spec"]["mqtt"]["protocolVersion"] = json!("4"),
            "spec.mqtt.protocolVersion",
        ),
    ];
    let mut rejected = 0;
    for (what, mutate, needle) in cases {
        let mut v = valid("bad");
        mutate(&mut v);
        match create(v).await {
            Ok(_) => panic!("{what}: accepted"),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{what}: {e:?}");
                assert!(
                    e.message.contains(needle),
                    "{what}: {:?} lacks {needle:?}",
                    e.message
                );
                rejected += 1;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    for (what, mutate, needle) in raw_cases {
        let mut v = valid("bad");
        mutate(&mut v);
        let request = kube::core::Request::new(format!(
            "/apis/mqttkafka.io/v1alpha1/namespaces/{ns}/mqttkafkabridges"
        ))
        .create(&dry_run, serde_json::to_vec(&v).unwrap())
        .unwrap();
        match client.request::<Value>(request.map(Into::into)).await {
            Ok(_) => panic!("{what}: accepted"),
            Err(kube::Error::Api(e)) => {
                assert!(
                    e.message.contains(needle),
                    "{what}: {:?} lacks {needle:?}",
                    e.message
                );
                rejected += 1;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    assert!(rejected >= 15);
    common::drop_namespace(&client, &ns).await;
}
