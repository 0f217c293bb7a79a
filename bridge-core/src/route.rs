//! Topic mappings. A route carries messages in exactly one direction.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::*;

/// One topic mapping. Exactly one of `mqttToKafka` or `kafkaToMqtt` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.mqttToKafka) != has(self.kafkaToMqtt)",
        "message": "a route needs exactly one of mqttToKafka or kafkaToMqtt"
    }
]))]
pub struct Route {
    /// Unique name of the route; used in metric labels and dead-letter headers.
    /// Lower-case letters, digits and `-`.
    #[schemars(
        length(min = *ROUTE_NAME_LENGTH.start(), max = *ROUTE_NAME_LENGTH.end()),
        regex(pattern = ROUTE_NAME_PATTERN)
    )]
    pub name: String,
    /// Carry MQTT messages matching a topic filter into Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_to_kafka: Option<MqttToKafka>,
    /// Carry Kafka records into MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_to_mqtt: Option<KafkaToMqtt>,
    /// Kafka topic receiving the messages this route can never deliver as
    /// configured (missing JSON field, payload not JSON, a topic the template
    /// cannot form, larger than the size limits, refused by the broker as
    /// malformed), with an `x-bridge-error` header saying why; the message is
    /// acknowledged or committed only after this topic holds it. Without it
    /// such messages are dropped and counted (`bridge_messages_dropped_total`).
    /// Messages refused until someone fixes something (an ACL, a missing
    /// topic) are never dead-lettered: they are held and retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = *KAFKA_TOPIC_LENGTH.start(), max = *KAFKA_TOPIC_LENGTH.end()),
        regex(pattern = KAFKA_TOPIC_PATTERN)
    )]
    pub dead_letter_topic: Option<String>,
}

/// MQTT → Kafka mapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": matches_rule("mqttTopicFilter", MQTT_TOPIC_FILTER_PATTERN),
        "message": "mqttToKafka.mqttTopicFilter is malformed: `+` and `#` must fill a whole level and `#` must be the last level",
        "fieldPath": ".mqttTopicFilter"
    },
    {
        "rule": "!self.mqttTopicFilter.startsWith('$share/')",
        "message": "mqttToKafka.mqttTopicFilter: shared subscriptions are set with mqtt.sharedSubscriptionGroup, not in the filter",
        "fieldPath": ".mqttTopicFilter"
    },
    {
        "rule": "!(self.kafkaTopic in ['.', '..'])",
        "message": "mqttToKafka.kafkaTopic must not be `.` or `..`",
        "fieldPath": ".kafkaTopic"
    },
    {
        "rule": r#"self.kafkaTopic.findAll(r'\{[0-9]+\}').all(t, int(t.substring(1, t.size() - 1)) >= 1 && int(t.substring(1, t.size() - 1)) <= self.mqttTopicFilter.findAll('[+#]').size())"#,
        "message": "mqttToKafka.kafkaTopic refers to a wildcard level {n} that mqttTopicFilter does not have",
        "fieldPath": ".kafkaTopic"
    },
    {
        "rule": r#"!has(self.key) || self.key.type != 'topicLevel' || (has(self.key.level) && self.key.level <= self.mqttTopicFilter.findAll('[+#]').size())"#,
        "message": "mqttToKafka.key.level must name a wildcard level of mqttTopicFilter (1 = first wildcard)",
        "fieldPath": ".key.level"
    },
    {
        "rule": "!has(self.key) || self.key.type != 'jsonField' || has(self.key.field)",
        "message": "mqttToKafka.key.field is required for key type jsonField",
        "fieldPath": ".key.field"
    }
]))]
pub struct MqttToKafka {
    /// MQTT topic filter, with `+` (one level) and `#` (the remaining levels) wildcards,
    /// e.g. `sensors/+/temperature`.
    #[schemars(length(
        min = *MQTT_TOPIC_FILTER_LENGTH.start(),
        max = *MQTT_TOPIC_FILTER_LENGTH.end()
    ))]
    pub mqtt_topic_filter: String,
    /// QoS of the subscription. QoS 1 and 2 are acknowledged to the broker only
    /// after Kafka acknowledged the record.
    #[serde(default = "default_qos")]
    #[schemars(range(max = *QOS.end()))]
    pub qos: u8,
    /// Kafka topic, fixed or a template over the wildcard levels of the filter:
    /// `{1}` is the level matched by the first wildcard, `{2}` by the second, …
    /// e.g. `sensors/+/temperature` → `sensors.{1}`.
    #[schemars(
        length(min = *KAFKA_TOPIC_LENGTH.start(), max = *KAFKA_TOPIC_LENGTH.end()),
        regex(pattern = KAFKA_TOPIC_TEMPLATE_PATTERN)
    )]
    pub kafka_topic: String,
    /// How the Kafka record key is chosen.
    #[serde(default)]
    pub key: KafkaKey,
    /// Copy the MQTT topic, QoS, retain flag and MQTT 5 user properties and
    /// content type into Kafka record headers.
    #[serde(default = "default_true")]
    pub headers: bool,
}

/// How the Kafka record key of an MQTT message is chosen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaKey {
    /// `none`, `mqttTopic`, `topicLevel` (the wildcard level given by `level`)
    /// or `jsonField` (the payload field given by `field`).
    #[serde(rename = "type", default)]
    pub kind: KafkaKeyType,
    /// Wildcard level (1-based, as in `{1}`) for `topicLevel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *KEY_LEVEL.start(), max = *KEY_LEVEL.end()))]
    pub level: Option<u8>,
    /// JSON payload field for `jsonField`; dots reach into nested objects (`device.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = *JSON_FIELD_LENGTH.start(), max = *JSON_FIELD_LENGTH.end()),
        regex(pattern = JSON_FIELD_PATTERN)
    )]
    pub field: Option<String>,
}

/// Kind of Kafka record key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KafkaKeyType {
    /// No key: the producer spreads records over partitions.
    #[default]
    None,
    /// The full MQTT topic.
    MqttTopic,
    /// One wildcard level of the MQTT topic.
    TopicLevel,
    /// A field of the JSON payload.
    JsonField,
}

/// Kafka → MQTT mapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaToMqtt {
    /// Kafka topics to consume.
    #[schemars(
        length(
            min = *KAFKA_TOPICS_PER_ROUTE.start(),
            max = *KAFKA_TOPICS_PER_ROUTE.end()
        ),
        inner(
            length(min = *KAFKA_TOPIC_LENGTH.start(), max = *KAFKA_TOPIC_LENGTH.end()),
            regex(pattern = KAFKA_TOPIC_PATTERN)
        )
    )]
    pub kafka_topics: Vec<String>,
    /// MQTT topic, fixed or a template: `{key}` is the record key, any other
    /// `{name}` a field of the JSON payload (dots reach into nested objects),
    /// e.g. `sensors/{sensor_id}`. No `+` or `#` wildcards. A key or field
    /// containing `/`, `+` or `#` would change the topic's levels: such a
    /// record is undeliverable (dead-lettered or dropped and counted).
    #[schemars(
        length(
            min = *MQTT_TOPIC_TEMPLATE_LENGTH.start(),
            max = *MQTT_TOPIC_TEMPLATE_LENGTH.end()
        ),
        regex(pattern = MQTT_TOPIC_TEMPLATE_PATTERN)
    )]
    pub mqtt_topic: String,
    /// QoS of the publishes. With QoS 1 or 2 a Kafka offset is committed only
    /// after the broker acknowledged every publish before it.
    #[serde(default = "default_qos")]
    #[schemars(range(max = *QOS.end()))]
    pub qos: u8,
    /// Publish with the retain flag. A tombstone (null value) is then published
    /// with an empty payload, which deletes the broker's retained message.
    #[serde(default)]
    pub retain: bool,
}

fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
