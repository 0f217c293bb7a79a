//! Step 2: what CEL cannot express, checked before anything is changed, so a
//! bad edit leaves the running Deployments untouched (reason `InvalidSpec`).

use crds::{MqttKafkaBridgeSpec, Route};

use crate::error::{Error, Result};

/// Checks a spec that passed admission.
pub fn validate(spec: &MqttKafkaBridgeSpec) -> Result<()> {
    for key in spec.kafka.properties.keys() {
        // Also checked by the CRD rule; a CRD installed before that rule
        // existed would let such a key through to the plain ConfigMap.
        if crds::is_secret_property(key) {
            return Err(Error::invalid(
                format!("spec.kafka.properties.{key}"),
                "carries a secret: use kafka.authentication.passwordSecret or kafka.tls instead",
            ));
        }
    }
    let connections = i32::from(spec.mqtt.connections) * spec.replicas;
    let subscribes = spec.routes.iter().any(|r| r.mqtt_to_kafka.is_some());
    if subscribes && connections > 1 && spec.mqtt.shared_subscription_group.is_none() {
        return Err(Error::invalid(
            "spec.mqtt.sharedSubscriptionGroup",
            format!(
                "required with {connections} MQTT connections (replicas × connections): \
                 without it every connection receives every message and Kafka gets duplicates"
            ),
        ));
    }
    check_loops(&spec.routes)
}

/// Rejects a pair of routes that would carry a message back and forth
/// forever: A takes MQTT into a Kafka topic that B consumes, and B publishes
/// to an MQTT topic that A's filter matches.
pub fn check_loops(routes: &[Route]) -> Result<()> {
    for a in routes {
        let Some(up) = &a.mqtt_to_kafka else { continue };
        for b in routes {
            let Some(down) = &b.kafka_to_mqtt else {
                continue;
            };
            let feeds_down = down
                .kafka_topics
                .iter()
                .any(|t| template_matches(&up.kafka_topic, t));
            if feeds_down && filter_may_match(&up.mqtt_topic_filter, &down.mqtt_topic) {
                return Err(Error::invalid(
                    format!("spec.routes[{}]", b.name),
                    format!(
                        "would loop with route {}: it publishes to {} which {} matches, and {} \
                         produces to {} which it consumes",
                        a.name, down.mqtt_topic, up.mqtt_topic_filter, a.name, up.kafka_topic
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether some value of `template` (each `{…}` standing for one or more
/// characters other than `/`) equals `literal`.
pub fn template_matches(template: &str, literal: &str) -> bool {
    match template.find('{') {
        None => template == literal,
        Some(open) => {
            let Some(close) = template[open..].find('}').map(|c| open + c) else {
                return template == literal;
            };
            let (prefix, rest) = (&template[..open], &template[close + 1..]);
            let Some(tail) = literal.strip_prefix(prefix) else {
                return false;
            };
            // The placeholder takes 1..n characters, never crossing a level.
            (1..=tail.len()).any(|n| {
                tail.is_char_boundary(n)
                    && !tail[..n].contains('/')
                    && template_matches(rest, &tail[n..])
            })
        }
    }
}

/// Whether an MQTT topic produced by `template` may match `filter`.
pub fn filter_may_match(filter: &str, template: &str) -> bool {
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = template.split('/').collect();
    for (i, f) in filter.iter().enumerate() {
        match *f {
            "#" => return true,
            "+" if i < topic.len() => continue,
            _ if i < topic.len() && template_matches(topic[i], f) => continue,
            _ => return false,
        }
    }
    filter.len() == topic.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn examples_are_valid() {
        for b in [
            fixtures::current_sensor(),
            fixtures::hivemq_confluent(),
            fixtures::sensor_fleet(),
        ] {
            validate(&b.spec).unwrap_or_else(|e| panic!("{:?}: {e}", b.metadata.name));
        }
    }

    #[test]
    fn templates_and_filters() {
        assert!(template_matches("sensors.{1}", "sensors.a1"));
        assert!(!template_matches("sensors.{1}", "sensors."));
        assert!(template_matches("{1}.{2}", "a.b.c"));
        assert!(!template_matches("x", "y"));
        assert!(filter_may_match(
            "sensors/+/temperature",
            "sensors/{id}/temperature"
        ));
        assert!(!filter_may_match(
            "sensors/+/temperature",
            "sensors/{sensor_id}"
        ));
        assert!(filter_may_match("sensors/#", "sensors/{sensor_id}"));
        assert!(filter_may_match("sensors/#", "sensors"));
        assert!(filter_may_match("#", "anything/{x}"));
        assert!(filter_may_match("devices/d-7", "devices/d-{id}"));
        assert!(!filter_may_match("devices/e-7", "devices/d-{id}"));
    }

    #[test]
    fn a_route_pair_that_loops_is_rejected() {
        let mut bridge = fixtures::sensor_fleet();
        if let Some(down) = bridge.spec.routes[1].kafka_to_mqtt.as_mut() {
            down.mqtt_topic = "sensors/{sensor_id}/temperature".into();
        }
        let err = validate(&bridge.spec).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(
            err.to_string().contains("spec.routes[readings-out]"),
            "{err}"
        );
    }

    #[test]
    fn secret_properties_and_unshared_subscriptions_are_rejected() {
        let mut bridge = fixtures::current_sensor();
        bridge
            .spec
            .kafka
            .properties
            .insert("sasl.password".into(), "x".into());
        let err = validate(&bridge.spec).unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.kafka.properties.sasl.password")
        );
        let mut bridge = fixtures::current_sensor();
        bridge.spec.kafka.properties.insert(
            "sasl.oauthbearer.config".into(),
            "clientId=a clientSecret=b".into(),
        );
        let err = validate(&bridge.spec).unwrap_err();
        assert!(err.to_string().contains("sasl.oauthbearer.config"), "{err}");

        // A path to a keystore is not a secret.
        let mut bridge = fixtures::current_sensor();
        bridge
            .spec
            .kafka
            .properties
            .insert("ssl.keystore.location".into(), "/etc/ks.p12".into());
        validate(&bridge.spec).unwrap();

        let mut bridge = fixtures::current_sensor();
        bridge.spec.replicas = 2;
        let err = validate(&bridge.spec).unwrap_err();
        assert!(err.to_string().contains("sharedSubscriptionGroup"), "{err}");
    }
}
