//! `bridge-runtime check`: validate without connecting and show where a
//! sample message would go, so a user can try a configuration safely.

use std::fmt::Write as _;

use bridge_core::{BRIDGE_KIND, BridgeManifest};

use crate::config::ValidatedConfig;
use crate::error::BridgeError;
use bridge_core::routes::{Disposition, KeyRule, MqttMessage};

/// When `text` is a `MqttKafkaBridge` manifest rather than a runtime file:
/// the verdict of the operator's own rules on its spec (`Ok(None)` for a
/// runtime file, which [`crate::config::load`] checks).
pub fn check_manifest(text: &str) -> Result<Option<String>, BridgeError> {
    let is_manifest = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .is_some_and(|k| k == BRIDGE_KIND);
    if !is_manifest {
        return Ok(None);
    }
    let manifest: BridgeManifest = crate::config::parse_as(text)?;
    let spec = &manifest.spec;
    let checked = bridge_core::validate::validate_bridge(
        spec.replicas,
        &spec.mqtt,
        &spec.kafka,
        &spec.routes,
    )
    .map_err(|e| BridgeError::invalid(format!("spec.{}", e.field), e.message))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{BRIDGE_KIND} {}: spec OK ({} replica(s), {} MQTT→Kafka and {} Kafka→MQTT route(s)); \
         the Kubernetes fields (image, resources, template, http, progressDeadlineSeconds) are checked by the CRD and the operator",
        manifest.metadata.name.as_deref().unwrap_or("(unnamed)"),
        spec.replicas,
        checked.routes.mqtt_to_kafka.len(),
        checked.routes.kafka_to_mqtt.len(),
    );
    Ok(Some(out))
}

/// Text describing the resolved routes.
pub fn describe_routes(config: &ValidatedConfig) -> String {
    let mut out = String::new();
    let c = &config.config;
    // The connections the bridge opens: per direction, only for one it has.
    let mut connections = Vec::new();
    if !config.routes.mqtt_to_kafka.is_empty() {
        connections.push(format!("{} subscribing", c.mqtt.connections));
    }
    if !config.routes.kafka_to_mqtt.is_empty() {
        connections.push(format!("{} publishing", c.mqtt.kafka_to_mqtt_connections()));
    }
    let _ = writeln!(
        out,
        "configuration OK: MQTT {} (MQTT {}, {} connection(s), client ids {}), Kafka {}",
        c.mqtt.url,
        match c.mqtt.protocol_version {
            bridge_core::MqttProtocolVersion::V311 => "3.1.1",
            bridge_core::MqttProtocolVersion::V5 => "5",
        },
        connections.join(" + "),
        config.client_id("<n>"),
        c.kafka.bootstrap_servers
    );
    for r in &config.routes.mqtt_to_kafka {
        let key = match &r.key {
            KeyRule::None => "none".to_owned(),
            KeyRule::MqttTopic => "MQTT topic".to_owned(),
            KeyRule::Level(n) => format!("wildcard level {{{n}}}"),
            KeyRule::Field(f) => format!("JSON field {f}"),
        };
        let _ = writeln!(
            out,
            "route {}: MQTT {} (QoS {}) -> Kafka {} key {key}{}{}",
            r.name,
            r.filter,
            r.qos,
            template_text(c, &r.name),
            if r.headers { " with headers" } else { "" },
            r.dead_letter_topic
                .as_ref()
                .map(|d| format!(", dead letters to {d}"))
                .unwrap_or_default()
        );
    }
    for r in &config.routes.kafka_to_mqtt {
        let _ = writeln!(
            out,
            "route {}: Kafka {} -> MQTT {} (QoS {}{}){}",
            r.name,
            r.kafka_topics.join(","),
            template_text(c, &r.name),
            r.qos,
            if r.retain { ", retained" } else { "" },
            r.dead_letter_topic
                .as_ref()
                .map(|d| format!(", dead letters to {d}"))
                .unwrap_or_default()
        );
    }
    out
}

fn template_text(c: &bridge_core::BridgeConfig, name: &str) -> String {
    c.routes
        .iter()
        .find(|r| r.name == name)
        .and_then(|r| {
            r.mqtt_to_kafka
                .as_ref()
                .map(|m| m.kafka_topic.clone())
                .or_else(|| r.kafka_to_mqtt.as_ref().map(|k| k.mqtt_topic.clone()))
        })
        .unwrap_or_default()
}

/// Text describing where an MQTT message would go.
pub fn describe_mqtt_message(config: &ValidatedConfig, topic: &str, payload: &[u8]) -> String {
    let msg = MqttMessage {
        topic,
        payload,
        qos: 1,
        retain: false,
        user_properties: &[],
        content_type: None,
    };
    let plans = config.routes.plan_mqtt(&msg, false);
    let mut out = String::new();
    if plans.is_empty() {
        let _ = writeln!(out, "MQTT {topic}: no route matches");
    }
    for (i, d) in plans {
        let name = &config.routes.mqtt_to_kafka[i].name;
        match d {
            Disposition::Forward(r) => {
                let _ = writeln!(
                    out,
                    "MQTT {topic} -> route {name}: Kafka topic {} key {} headers [{}]",
                    r.topic,
                    r.key
                        .map(|k| String::from_utf8_lossy(&k).into_owned())
                        .unwrap_or_else(|| "(none)".into()),
                    headers_text(&r.headers)
                );
            }
            Disposition::DeadLetter { record, reason } => {
                let _ = writeln!(
                    out,
                    "MQTT {topic} -> route {name}: dead letter to {} ({reason}) headers [{}]",
                    record.topic,
                    headers_text(&record.headers)
                );
            }
            Disposition::Drop { reason } => {
                let _ = writeln!(out, "MQTT {topic} -> route {name}: dropped ({reason})");
            }
        }
    }
    out
}

/// Text describing where a Kafka record would go.
pub fn describe_kafka_record(
    config: &ValidatedConfig,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
) -> String {
    let plans = config.routes.plan_kafka(topic, key, payload, false);
    let mut out = String::new();
    if plans.is_empty() {
        let _ = writeln!(out, "Kafka {topic}: no route consumes it");
    }
    for (i, d) in plans {
        let name = &config.routes.kafka_to_mqtt[i].name;
        let _ = match d {
            Disposition::Forward(p) => writeln!(
                out,
                "Kafka {topic} -> route {name}: MQTT topic {} QoS {} retain {}",
                p.topic, p.qos, p.retain
            ),
            Disposition::DeadLetter { record, reason } => writeln!(
                out,
                "Kafka {topic} -> route {name}: dead letter to {} ({reason})",
                record.topic
            ),
            Disposition::Drop { reason } => {
                writeln!(out, "Kafka {topic} -> route {name}: dropped ({reason})")
            }
        };
    }
    out
}

fn headers_text(headers: &[(String, Vec<u8>)]) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
        .collect::<Vec<_>>()
        .join(", ")
}
