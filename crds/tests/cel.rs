//! The CRD's CEL rules, evaluated client-side (kube's `cel` feature) so a
//! broken rule shows up without an apiserver. The apiserver tests in
//! `operator/tests` check the same manifests server-side.

use crds::MqttKafkaBridge;
use serde_json::{Value, json};

fn valid() -> Value {
    json!({
        "apiVersion": "mqttkafka.io/v1alpha1",
        "kind": "MqttKafkaBridge",
        "metadata": {"name": "b", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "mqtt": {
                "url": "mqtts://broker.example:8883",
                "clientIdPrefix": "bridge",
                "sharedSubscriptionGroup": "bridge",
                "tls": {},
                "authentication": {
                    "type": "password",
                    "username": "u",
                    "passwordSecret": {"secretName": "s", "key": "password"}
                }
            },
            "kafka": {
                "bootstrapServers": "kafka:9092",
                "authentication": {
                    "type": "plain",
                    "username": "u",
                    "passwordSecret": {"secretName": "s", "key": "kafka"}
                }
            },
            "routes": [
                {"name": "up", "mqttToKafka": {
                    "mqttTopicFilter": "sensors/+/temperature",
                    "kafkaTopic": "sensors.{1}",
                    "key": {"type": "topicLevel", "level": 1}
                }},
                {"name": "down", "kafkaToMqtt": {
                    "kafkaTopics": ["commands"],
                    "mqttTopic": "devices/{sensor_id}/commands"
                }}
            ]
        }
    })
}

/// Runs the CRD's rules on `obj`; returns the joined error messages.
fn check(obj: Value) -> Result<(), String> {
    let bridge: MqttKafkaBridge = serde_json::from_value(obj).map_err(|e| e.to_string())?;
    kube::core::cel::validate_cel(&bridge).map_err(|e| format!("{e:?}"))
}

fn with(mutate: impl FnOnce(&mut Value)) -> Value {
    let mut v = valid();
    mutate(&mut v);
    v
}

#[test]
fn valid_bridge_passes() {
    check(valid()).expect("valid bridge");
}

#[track_caller]
fn rejected(obj: Value, needle: &str) {
    match check(obj) {
        Ok(()) => panic!("accepted, expected a failure mentioning {needle:?}"),
        Err(e) => assert!(e.contains(needle), "{e} does not mention {needle:?}"),
    }
}

#[test]
fn mqtt_password_needs_username_and_secret() {
    rejected(
        with(|v| {
            v["spec"]["mqtt"]["authentication"]
                .as_object_mut()
                .map(|o| o.remove("username"));
        }),
        "mqtt.authentication.username",
    );
    rejected(
        with(|v| {
            v["spec"]["mqtt"]["authentication"]
                .as_object_mut()
                .map(|o| o.remove("passwordSecret"));
        }),
        "mqtt.authentication.username",
    );
}

#[test]
fn kafka_sasl_needs_username_and_secret() {
    rejected(
        with(|v| {
            v["spec"]["kafka"]["authentication"] =
                json!({"type": "scram-sha-512", "username": "u"});
        }),
        "kafka.authentication",
    );
    check(with(|v| {
        v["spec"]["kafka"]["authentication"] = json!({"type": "none"});
    }))
    .expect("none needs nothing");
}

#[test]
fn route_needs_exactly_one_direction() {
    rejected(
        with(|v| v["spec"]["routes"] = json!([{"name": "x"}])),
        "exactly one of",
    );
    rejected(
        with(|v| {
            let up = v["spec"]["routes"][0]["mqttToKafka"].clone();
            v["spec"]["routes"][1]["mqttToKafka"] = up;
        }),
        "exactly one of",
    );
}

#[test]
fn malformed_topic_filters_are_rejected() {
    for filter in ["sensors/#/x", "sensors/te+mp", "a/b#", "#/a"] {
        rejected(
            with(|v| {
                v["spec"]["routes"][0]["mqttToKafka"]["mqttTopicFilter"] = json!(filter);
                v["spec"]["routes"][0]["mqttToKafka"]["kafkaTopic"] = json!("t");
                v["spec"]["routes"][0]["mqttToKafka"]["key"] = json!({"type": "none"});
            }),
            "mqttTopicFilter is malformed",
        );
    }
    for filter in ["#", "+", "a/+/b/#", "sensors/temperature", "a//b"] {
        check(with(|v| {
            v["spec"]["routes"][0]["mqttToKafka"]["mqttTopicFilter"] = json!(filter);
            v["spec"]["routes"][0]["mqttToKafka"]["kafkaTopic"] = json!("t");
            v["spec"]["routes"][0]["mqttToKafka"]["key"] = json!({"type": "none"});
        }))
        .unwrap_or_else(|e| panic!("{filter}: {e}"));
    }
}

#[test]
fn template_levels_must_exist_in_the_filter() {
    rejected(
        with(|v| v["spec"]["routes"][0]["mqttToKafka"]["kafkaTopic"] = json!("sensors.{2}")),
        "wildcard level {n}",
    );
    rejected(
        with(|v| v["spec"]["routes"][0]["mqttToKafka"]["kafkaTopic"] = json!("sensors.{0}")),
        "wildcard level {n}",
    );
    rejected(
        with(|v| v["spec"]["routes"][0]["mqttToKafka"]["key"]["level"] = json!(2)),
        "key.level",
    );
    rejected(
        with(|v| v["spec"]["routes"][0]["mqttToKafka"]["key"] = json!({"type": "jsonField"})),
        "key.field",
    );
}

#[test]
fn tls_needs_mqtts_and_url_is_checked() {
    rejected(
        with(|v| v["spec"]["mqtt"]["url"] = json!("mqtt://broker:1883")),
        "mqtt.tls needs",
    );
    rejected(
        with(|v| v["spec"]["mqtt"]["url"] = json!("http://broker:1883")),
        "mqtt.url must be",
    );
    rejected(
        with(|v| {
            v["spec"]["mqtt"]["tls"] =
                json!({"clientCertificate": {"secretName": "c", "key": "tls.crt"}})
        }),
        "clientKey go together",
    );
}

#[test]
fn secret_bearing_kafka_properties_are_rejected_and_key_paths_are_not() {
    for key in [
        "sasl.password",
        "SASL.OAUTHBEARER.CONFIG",
        "ssl.key.pem",
        "ssl.keystore.password",
        "some.client.secret",
    ] {
        rejected(
            with(|v| v["spec"]["kafka"]["properties"] = json!({key: "x"})),
            "kafka.properties must not carry a secret",
        );
    }
    for key in crds::SECRET_PROPERTIES {
        assert!(
            check(with(
                |v| v["spec"]["kafka"]["properties"] = json!({*key: "x"})
            ))
            .is_err(),
            "{key} accepted"
        );
    }
    check(with(|v| {
        v["spec"]["kafka"]["properties"] = json!({
            "ssl.keystore.location": "/etc/kafka/keystore.p12",
            "ssl.key.location": "/etc/kafka/client.key",
            "client.rack": "a",
        })
    }))
    .expect("key file locations are not secrets");
}

#[test]
fn pod_template_dns_policy_must_match_host_network() {
    let pod = |p: Value| with(move |v| v["spec"]["template"] = json!({"pod": p}));
    check(pod(json!({"hostNetwork": true}))).expect("hostNetwork alone");
    check(pod(
        json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
    ))
    .expect("the matching policy");
    check(pod(json!({"hostNetwork": true, "dnsPolicy": "Default"}))).expect("the node's DNS");
    rejected(
        pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirst"})),
        "use ClusterFirstWithHostNet",
    );
    rejected(
        pod(json!({"dnsPolicy": "ClusterFirstWithHostNet"})),
        "only applies with hostNetwork",
    );
}

#[test]
fn pod_template_labels_leave_the_operators_alone() {
    check(with(|v| {
        v["spec"]["template"] = json!({"pod": {"metadata": {"labels": {"team": "iot"}}}});
    }))
    .expect("a label of the user's own");
    rejected(
        with(|v| {
            v["spec"]["template"] =
                json!({"pod": {"metadata": {"labels": {"mqttkafka.io/slot": "7"}}}});
        }),
        "are the operator's",
    );
}

#[test]
fn host_network_ports_stay_in_range() {
    let host = |port: i64, replicas: i64| {
        with(move |v| {
            v["spec"]["replicas"] = json!(replicas);
            v["spec"]["http"] = json!({"port": port});
            v["spec"]["template"] = json!({"pod": {"hostNetwork": true}});
        })
    };
    check(host(65534, 2)).expect("65534 and 65535");
    rejected(host(65535, 2), "within 65536");
}
