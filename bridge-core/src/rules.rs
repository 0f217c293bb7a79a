//! The rules a bridge's connections and routes must pass, in one place.
//!
//! The patterns and limits below are used three ways: in the CRD schema
//! (`schemars` attributes and CEL rules built from them, so the apiserver
//! refuses a bad custom resource), by [`crate::validate`] (which the operator
//! runs on every spec and bridge-runtime on every configuration file), and
//! by the shared validation corpus that checks all three give one verdict.
//! The patterns use the syntax common to Go's RE2 (the apiserver) and
//! Rust's `regex` crate.

use std::ops::RangeInclusive;

/// Environment variable carrying a replica's stable slot (`0` when unset).
pub const SLOT_ENV: &str = "BRIDGE_SLOT";
/// Environment variable naming the configuration file of bridge-runtime.
pub const CONFIG_ENV: &str = "BRIDGE_CONFIG";
/// Port of the bridge's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`,
/// `/report`) unless configured otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// A TCP port, 0–65535, as a regular expression.
macro_rules! port {
    () => {
        r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
    };
}

/// `mqtt.url`: `mqtt://host[:port]` or `mqtts://host[:port]`; credentials go
/// in `mqtt.authentication`, never in the URL.
pub const MQTT_URL_PATTERN: &str = concat!(
    r"^mqtts?://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:",
    port!(),
    r")?/?$"
);
/// `kafka.bootstrapServers`: comma-separated `host:port`, no spaces.
pub const BOOTSTRAP_SERVERS_PATTERN: &str =
    concat!(r"^[^,\s]+:", port!(), r"(,[^,\s]+:", port!(), r")*$");
/// `mqtt.clientIdPrefix`.
pub const CLIENT_ID_PREFIX_PATTERN: &str = r"^[A-Za-z0-9._-]+$";
/// `mqtt.clientIdPrefix` length: the whole client id
/// (`<prefix>-<slot>-<connection>`) stays within 64 characters.
pub const CLIENT_ID_PREFIX_LENGTH: RangeInclusive<usize> = 1..=48;
/// `mqtt.sharedSubscriptionGroup`: one topic level, no wildcards.
pub const SHARED_GROUP_PATTERN: &str = r"^[^/+#]+$";
/// `mqtt.sharedSubscriptionGroup` length.
pub const SHARED_GROUP_LENGTH: RangeInclusive<usize> = 1..=64;
/// `kafka.consumer.groupId` length.
pub const GROUP_ID_LENGTH: RangeInclusive<usize> = 1..=255;
/// User names of `mqtt.authentication` and `kafka.authentication`.
pub const USERNAME_LENGTH: RangeInclusive<usize> = 1..=256;
/// `mqttToKafka.key.field` length.
pub const JSON_FIELD_LENGTH: RangeInclusive<usize> = 1..=256;
/// Route names: used in metric labels, headers and events.
pub const ROUTE_NAME_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";
/// Route name length.
pub const ROUTE_NAME_LENGTH: RangeInclusive<usize> = 1..=63;
/// A Kafka topic name: Kafka's characters, and neither `.` nor `..`.
pub const KAFKA_TOPIC_PATTERN: &str =
    r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)$";
/// Kafka topic name length.
pub const KAFKA_TOPIC_LENGTH: RangeInclusive<usize> = 1..=249;
/// `mqttToKafka.kafkaTopic`: Kafka's characters and `{n}` wildcard levels
/// (the level numbers and `.`/`..` are checked by rules of their own).
pub const KAFKA_TOPIC_TEMPLATE_PATTERN: &str = r"^([A-Za-z0-9._-]|\{[0-9]+\})+$";
/// `mqttToKafka.mqttTopicFilter`: `+` and `#` take a whole level, `#` only
/// the last; no NUL.
pub const MQTT_TOPIC_FILTER_PATTERN: &str = r"^(#|(\+|[^+#/\x00]*)(/(\+|[^+#/\x00]*))*(/#)?)$";
/// `mqttToKafka.mqttTopicFilter` length.
pub const MQTT_TOPIC_FILTER_LENGTH: RangeInclusive<usize> = 1..=256;
/// `kafkaToMqtt.mqttTopic`: no wildcards or NUL; placeholders `{key}` or a
/// dotted JSON field path with no empty segment (`{device.id}`).
pub const MQTT_TOPIC_TEMPLATE_PATTERN: &str = r"^([^{}+#\x00]|\{[^{}.]+(\.[^{}.]+)*\})+$";
/// `kafkaToMqtt.mqttTopic` length.
pub const MQTT_TOPIC_TEMPLATE_LENGTH: RangeInclusive<usize> = 1..=1024;
/// `mqttToKafka.key.field`: a dotted JSON path, no empty segment.
pub const JSON_FIELD_PATTERN: &str = r"^[^.]+(\.[^.]+)*$";

/// Replicas of a bridge (custom resource only).
pub const REPLICAS: RangeInclusive<i64> = 0..=64;
/// `progressDeadlineSeconds` (custom resource only): how long a rolled slot
/// may take to become Ready before its rollout halts. Below 10 s a bridge
/// still connecting to a remote Kafka would halt every rollout.
pub const PROGRESS_DEADLINE_SECONDS: RangeInclusive<i64> = 10..=86_400;
/// Default of `progressDeadlineSeconds`: room for a TLS handshake, a SASL
/// exchange and a consumer group join against a slow remote cluster.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 180;
/// MQTT connections per replica.
pub const CONNECTIONS: RangeInclusive<u16> = 1..=64;
/// MQTT keep-alive in seconds.
pub const KEEP_ALIVE_SECONDS: RangeInclusive<u16> = 5..=3600;
/// `mqtt.maxPacketBytes`: MQTT's smallest useful and largest packet.
pub const MAX_PACKET_BYTES: RangeInclusive<u32> = 128..=268_435_455;
/// QoS of subscriptions and publishes.
pub const QOS: RangeInclusive<u8> = 0..=2;
/// `key.level`: a wildcard level, 1-based.
pub const KEY_LEVEL: RangeInclusive<u8> = 1..=32;
/// Routes of one bridge.
pub const ROUTES: RangeInclusive<usize> = 1..=64;
/// Kafka topics one Kafka→MQTT route consumes.
pub const KAFKA_TOPICS_PER_ROUTE: RangeInclusive<usize> = 1..=32;
/// `kafka.producer.lingerMs`.
pub const LINGER_MS: RangeInclusive<u32> = 0..=60_000;
/// `kafka.producer.maxInFlightRecords`.
pub const MAX_IN_FLIGHT_RECORDS: RangeInclusive<u32> = 1..=1_000_000;
/// `kafka.producer.queueMaxKbytes` (librdkafka's own limit).
pub const QUEUE_MAX_KBYTES: RangeInclusive<u32> = 1..=2_097_151;
/// `kafka.producer.deliveryTimeoutMs`.
pub const DELIVERY_TIMEOUT_MS: RangeInclusive<u32> = 1000..=2_147_483_647;
/// `kafka.producer.maxMessageBytes` (librdkafka's own limits).
pub const MAX_MESSAGE_BYTES: RangeInclusive<u32> = 1000..=1_000_000_000;
/// `kafka.properties` entries.
pub const MAX_PROPERTIES: usize = 64;

/// librdkafka properties the bridge sets itself, for its delivery guarantees
/// or because a typed field exists. Refused in `kafka.properties` by the
/// CRD ([`managed_property_rule`]), the operator and bridge-runtime.
pub const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "delivery.timeout.ms",
    "message.timeout.ms",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
    "message.max.bytes",
    "auto.offset.reset",
];

/// Whether the bridge sets a librdkafka property (any case) itself.
pub fn is_managed_property(key: &str) -> bool {
    MANAGED_PROPERTIES.contains(&key.to_ascii_lowercase().as_str())
}

/// The CEL form of [`is_managed_property`], on the `properties` map.
pub fn managed_property_rule() -> String {
    let list = MANAGED_PROPERTIES
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("!self.exists(k, k.lowerAscii() in [{list}])")
}

/// The CEL rule of a string field that must match `pattern` (for rules
/// whose message says more than the apiserver's "should match").
pub fn matches_rule(field: &str, pattern: &str) -> String {
    format!("self.{field}.matches(r'{pattern}')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn patterns_compile_and_say_what_they_mean() {
        let re = |p: &str| Regex::new(p).unwrap();
        let url = re(MQTT_URL_PATTERN);
        for ok in ["mqtt://h", "mqtts://h.example:8883", "mqtt://[::1]:1883/"] {
            assert!(url.is_match(ok), "{ok}");
        }
        for bad in ["http://h", "mqtt://u:p@h", "mqtt://h:65536", "mqtt://h/x"] {
            assert!(!url.is_match(bad), "{bad}");
        }
        let servers = re(BOOTSTRAP_SERVERS_PATTERN);
        assert!(servers.is_match("a:9092,b:9093"));
        assert!(!servers.is_match("a:9092, b:9093"));
        assert!(!servers.is_match("a:99999"));
        let topic = re(KAFKA_TOPIC_PATTERN);
        for ok in ["a", ".a", "..a", "...", "a.b-c_d"] {
            assert!(topic.is_match(ok), "{ok}");
        }
        for bad in [".", "..", "a/b", ""] {
            assert!(!topic.is_match(bad), "{bad}");
        }
        let mqtt = re(MQTT_TOPIC_TEMPLATE_PATTERN);
        for ok in ["sensors/{sensor_id}", "d/{key}/c", "{a.b}", "x"] {
            assert!(mqtt.is_match(ok), "{ok}");
        }
        for bad in ["a/{}/b", "a}b", "a/{x..y}", "a/+", "a/{b", "{.a}"] {
            assert!(!mqtt.is_match(bad), "{bad}");
        }
        let filter = re(MQTT_TOPIC_FILTER_PATTERN);
        assert!(filter.is_match("sensors/+/t/#"));
        assert!(!filter.is_match("a/#/b"));
        assert!(!filter.is_match("a+/b"));
        assert!(re(JSON_FIELD_PATTERN).is_match("device.id"));
        assert!(!re(JSON_FIELD_PATTERN).is_match("a..b"));
    }

    #[test]
    fn the_kafka_topic_pattern_and_the_per_message_check_agree() {
        // `topic::validate_kafka_topic` checks templated topics per message
        // without a regex; it must say what the CRD's pattern says.
        let re = Regex::new(KAFKA_TOPIC_PATTERN).unwrap();
        let long = "a".repeat(250);
        for name in [
            "a", ".a", "..a", "...", ".", "..", "", "a/b", "a b", "a.b-c_D9", "ü", &long,
        ] {
            let by_pattern = re.is_match(name) && KAFKA_TOPIC_LENGTH.contains(&name.len());
            assert_eq!(
                crate::topic::validate_kafka_topic(name).is_ok(),
                by_pattern,
                "{name:?}"
            );
        }
    }

    #[test]
    fn managed_properties_any_case_and_the_cel_rule_names_them() {
        assert!(is_managed_property("Linger.MS"));
        assert!(!is_managed_property("socket.keepalive.enable"));
        let rule = managed_property_rule();
        for p in MANAGED_PROPERTIES {
            assert!(rule.contains(&format!("'{p}'")), "{rule}");
        }
    }
}
