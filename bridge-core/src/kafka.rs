//! The Kafka cluster connection.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::*;

/// How to reach Kafka. `S` names a secret: [`crate::SecretKeyRef`] in the
/// custom resource, [`crate::SecretSource`] in the runtime file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// `S` needs no `Default`: absent optional secrets deserialize to `None`.
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct KafkaSpec<S> {
    /// Comma-separated `host:port` list of bootstrap brokers.
    #[schemars(length(min = 1, max = 1024), regex(pattern = BOOTSTRAP_SERVERS_PATTERN))]
    pub bootstrap_servers: String,
    /// TLS to the brokers (security protocol SSL or SASL_SSL). Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls<S>>,
    /// SASL authentication (security protocol SASL_PLAINTEXT or SASL_SSL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<KafkaAuthentication<S>>,
    /// Producer settings for MQTT→Kafka routes.
    #[serde(default)]
    pub producer: ProducerSettings,
    /// Consumer settings for Kafka→MQTT routes.
    #[serde(default)]
    pub consumer: ConsumerSettings,
    /// Further librdkafka properties passed through as they are. Keys that carry
    /// secrets (`sasl.password`, `ssl.key.password`, …) are refused here: use the secret fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_PROPERTIES,
        "x-kubernetes-validations" = [{
            "rule": secret_property_rule(),
            "message": "kafka.properties must not carry a secret (sasl.password, ssl.key.password, ssl.key.pem, sasl.oauthbearer.config, any key containing password, secret or passphrase, …): use kafka.authentication.passwordSecret or kafka.tls instead"
        }, {
            "rule": managed_property_rule(),
            "message": "kafka.properties must not set what the bridge manages (acks, enable.idempotence, linger.ms, compression.type, group.id, enable.auto.commit, message.max.bytes, …): use kafka.producer, kafka.consumer, kafka.authentication or kafka.tls"
        }]
    ))]
    pub properties: BTreeMap<String, String>,
}

/// librdkafka properties whose value is a secret (or can hold one, as
/// `sasl.oauthbearer.config` holds `clientSecret=…`). They are refused in
/// `kafka.properties`, where a value would land in a plain ConfigMap: the
/// CRD rule, the operator and bridge-runtime all use [`is_secret_property`].
/// Paths to secret files (`ssl.key.location`, `ssl.keystore.location`) are
/// not secrets and stay allowed.
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.jaas.config",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
    "ssl.truststore.password",
];

/// Words that mark any other property as secret-bearing.
pub const SECRET_PROPERTY_WORDS: &[&str] = &["password", "secret", "passphrase"];

/// Whether a librdkafka property (any case) carries a secret.
pub fn is_secret_property(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&lower.as_str())
        || SECRET_PROPERTY_WORDS.iter().any(|w| lower.contains(w))
}

/// The CEL form of [`is_secret_property`], on the `properties` map.
pub fn secret_property_rule() -> String {
    let quoted = |words: &[&str]| {
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let words = SECRET_PROPERTY_WORDS
        .iter()
        .map(|w| format!(" || k.lowerAscii().contains('{w}')"))
        .collect::<String>();
    format!(
        "!self.exists(k, k.lowerAscii() in [{}]{words})",
        quoted(SECRET_PROPERTIES)
    )
}

/// TLS to Kafka: the same settings as the MQTT side's.
pub type KafkaTls<S> = crate::Tls<S>;

/// Kafka SASL authentication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type == 'none' || (has(self.username) && has(self.passwordSecret))",
        "message": "kafka.authentication.username and kafka.authentication.passwordSecret are required unless type is none"
    }
]))]
// `S` needs no `Default`: absent optional secrets deserialize to `None`.
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct KafkaAuthentication<S> {
    /// SASL mechanism, or `none`.
    #[serde(rename = "type")]
    pub kind: KafkaAuthenticationType,
    /// SASL user name; required unless `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = *USERNAME_LENGTH.start(), max = *USERNAME_LENGTH.end()))]
    pub username: Option<String>,
    /// SASL password; required unless `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<S>,
}

/// Kafka SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KafkaAuthenticationType {
    /// No SASL.
    #[serde(rename = "none")]
    None,
    /// SASL PLAIN (e.g. Confluent Cloud API keys).
    #[serde(rename = "plain")]
    Plain,
    /// SASL SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SASL SCRAM-SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

/// Producer settings. The producer is always idempotent with `acks=all`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProducerSettings {
    /// Compression codec for produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    /// Default 20: at 20,000 msg/s it cost 7 ms of median latency against 5 ms
    /// and saved the bridge and the Kafka broker a sixth of their CPU, which
    /// lowered the p99 on a busy machine (63 → 31 ms in the reference benchmark).
    #[serde(default = "default_linger_ms")]
    #[schemars(range(min = *LINGER_MS.start(), max = *LINGER_MS.end()))]
    pub linger_ms: u32,
    /// Upper bound of records held by the producer (sent or waiting); the bridge
    /// stops taking MQTT messages while it is reached.
    #[serde(default = "default_max_in_flight_records")]
    #[schemars(range(min = *MAX_IN_FLIGHT_RECORDS.start(), max = *MAX_IN_FLIGHT_RECORDS.end()))]
    pub max_in_flight_records: u32,
    /// Upper bound of the producer queue in KiB (librdkafka `queue.buffering.max.kbytes`).
    #[serde(default = "default_queue_max_kbytes")]
    #[schemars(range(min = *QUEUE_MAX_KBYTES.start(), max = *QUEUE_MAX_KBYTES.end()))]
    pub queue_max_kbytes: u32,
    /// How long a record may take to be acknowledged before it counts as failed
    /// (librdkafka `delivery.timeout.ms`); a failed record is held and sent
    /// again, before any later record of its topic (per-key order), never
    /// acknowledged to MQTT meanwhile.
    #[serde(default = "default_delivery_timeout_ms")]
    #[schemars(range(min = *DELIVERY_TIMEOUT_MS.start(), max = *DELIVERY_TIMEOUT_MS.end()))]
    pub delivery_timeout_ms: u32,
    /// Largest record the bridge produces, in bytes (librdkafka
    /// `message.max.bytes`; keep it at or below the topics' `max.message.bytes`).
    /// A larger record is undeliverable: it goes to the route's dead-letter
    /// topic (payload cut to fit, `x-bridge-error: too_large`) or is dropped
    /// and counted — never retried, never blocking the messages behind it.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = *MAX_MESSAGE_BYTES.start(), max = *MAX_MESSAGE_BYTES.end()))]
    pub max_message_bytes: u32,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            compression: Compression::default(),
            linger_ms: default_linger_ms(),
            max_in_flight_records: default_max_in_flight_records(),
            queue_max_kbytes: default_queue_max_kbytes(),
            delivery_timeout_ms: default_delivery_timeout_ms(),
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

/// Compression codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

/// Consumer settings for Kafka→MQTT routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Consumer group id. Defaults to the MQTT `clientIdPrefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = *GROUP_ID_LENGTH.start(), max = *GROUP_ID_LENGTH.end()))]
    pub group_id: Option<String>,
    /// Where a group with no committed offset starts.
    #[serde(default)]
    pub auto_offset_reset: AutoOffsetReset,
}

/// Where a new consumer group starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoOffsetReset {
    /// The oldest retained record.
    Earliest,
    /// Only records produced from now on.
    #[default]
    Latest,
}

fn default_linger_ms() -> u32 {
    20
}
fn default_max_in_flight_records() -> u32 {
    10_000
}
fn default_queue_max_kbytes() -> u32 {
    32 * 1024
}
fn default_delivery_timeout_ms() -> u32 {
    120_000
}
fn default_max_message_bytes() -> u32 {
    1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised_in_any_case() {
        for key in [
            "sasl.password",
            "SASL.PASSWORD",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "ssl.keystore.password",
            "some.future.secret.thing",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in [
            "ssl.keystore.location",
            "ssl.key.location",
            "ssl.certificate.location",
            "client.rack",
            "sasl.oauthbearer.method",
        ] {
            assert!(!is_secret_property(key), "{key}");
        }
    }

    #[test]
    fn the_cel_rule_names_every_property_and_word() {
        let rule = secret_property_rule();
        for p in SECRET_PROPERTIES.iter().chain(SECRET_PROPERTY_WORDS) {
            assert!(rule.contains(&format!("'{p}'")), "{rule}");
        }
    }
}
