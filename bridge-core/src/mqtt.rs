//! The MQTT broker connection.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::*;

/// How to reach the MQTT broker. `S` names a secret: [`crate::SecretKeyRef`]
/// in the custom resource, [`crate::SecretSource`] in the runtime file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": matches_rule("url", MQTT_URL_PATTERN),
        "message": "mqtt.url must be mqtt://host[:port] or mqtts://host[:port] (port up to 65535; credentials go in mqtt.authentication)",
        "fieldPath": ".url"
    },
    {
        "rule": "!has(self.tls) || self.url.startsWith('mqtts://')",
        "message": "mqtt.tls needs an mqtts:// url",
        "fieldPath": ".tls"
    }
]))]
// `S` needs no `Default`: absent optional secrets deserialize to `None`.
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct MqttSpec<S> {
    /// Broker address: `mqtt://host:port` (plain TCP) or `mqtts://host:port` (TLS).
    #[schemars(length(min = 1, max = 512))]
    pub url: String,
    /// MQTT protocol version spoken to the broker.
    #[serde(default)]
    pub protocol_version: MqttProtocolVersion,
    /// Client ids are `<clientIdPrefix>-<slot>-<connection>`. Must stay the same
    /// across restarts so the broker keeps the persistent session and its queued messages.
    /// Letters, digits, `.`, `_` and `-`; short enough that the whole id stays within 64 characters.
    #[schemars(
        length(
            min = *CLIENT_ID_PREFIX_LENGTH.start(),
            max = *CLIENT_ID_PREFIX_LENGTH.end()
        ),
        regex(pattern = CLIENT_ID_PREFIX_PATTERN)
    )]
    pub client_id_prefix: String,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive_seconds")]
    #[schemars(range(min = *KEEP_ALIVE_SECONDS.start(), max = *KEEP_ALIVE_SECONDS.end()))]
    pub keep_alive_seconds: u16,
    /// How long the broker keeps the session (and queues QoS 1/2 messages for it)
    /// while the bridge is disconnected. MQTT 5 only; MQTT 3.1.1 sessions persist until cleaned.
    #[serde(default = "default_session_expiry_seconds")]
    pub session_expiry_seconds: u32,
    /// When set, subscriptions are shared (`$share/<group>/<filter>`) so that
    /// several connections and replicas split the messages between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(
            min = *SHARED_GROUP_LENGTH.start(),
            max = *SHARED_GROUP_LENGTH.end()
        ),
        regex(pattern = SHARED_GROUP_PATTERN)
    )]
    pub shared_subscription_group: Option<String>,
    /// MQTT connections per replica that MQTT→Kafka subscribes on. Each has its
    /// own in-flight window at the broker; with a shared subscription they
    /// split the messages.
    #[serde(default = "default_connections")]
    #[schemars(range(min = *CONNECTIONS.start(), max = *CONNECTIONS.end()))]
    pub connections: u16,
    /// MQTT connections per replica that Kafka→MQTT publishes over; each Kafka
    /// partition always goes over the same one, so its order is kept. A
    /// broker lets each connection have only a few unacknowledged QoS 1/2
    /// publishes (Mosquitto: 20), so one connection is held to that window
    /// per round trip. Absent: `connections` or
    /// [`DEFAULT_KAFKA_TO_MQTT_CONNECTIONS`], whichever is larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *CONNECTIONS.start(), max = *CONNECTIONS.end()))]
    pub publish_connections: Option<u16>,
    /// TLS settings for `mqtts://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MqttTls<S>>,
    /// How the bridge authenticates to the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<MqttAuthentication<S>>,
    /// Largest MQTT packet the bridge carries, in bytes. A received message
    /// larger than this, or a Kafka record whose publish would be larger than
    /// this or than the Maximum Packet Size the broker announced (MQTT 5), is
    /// undeliverable: it goes to the route's dead-letter topic (payload cut to
    /// fit, `x-bridge-error: too_large`) or is dropped and counted. The bridge
    /// itself accepts packets up to MQTT's maximum either way, so an oversized
    /// message never breaks the connection. Absent: only the broker's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *MAX_PACKET_BYTES.start(), max = *MAX_PACKET_BYTES.end()))]
    pub max_packet_bytes: Option<u32>,
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MqttProtocolVersion {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// TLS to the MQTT broker: the same settings as the Kafka side's.
pub type MqttTls<S> = crate::Tls<S>;

/// MQTT authentication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type == 'none' || (has(self.username) && has(self.passwordSecret))",
        "message": "mqtt.authentication.username and mqtt.authentication.passwordSecret are required for type password"
    }
]))]
// `S` needs no `Default`: absent optional secrets deserialize to `None`.
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct MqttAuthentication<S> {
    /// `none` or `password` (username and password in the CONNECT packet).
    #[serde(rename = "type")]
    pub kind: MqttAuthenticationType,
    /// User name; required for `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = *USERNAME_LENGTH.start(), max = *USERNAME_LENGTH.end()))]
    pub username: Option<String>,
    /// The password; required for `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<S>,
}

/// MQTT authentication type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MqttAuthenticationType {
    /// Anonymous.
    None,
    /// Username and password.
    Password,
}

fn default_keep_alive_seconds() -> u16 {
    30
}
fn default_session_expiry_seconds() -> u32 {
    3600
}
fn default_connections() -> u16 {
    1
}

/// Kafka→MQTT publishing connections when `mqtt.publishConnections` is absent.
/// One connection carries at most window ÷ round trip (Mosquitto's window is
/// 20, HiveMQ Cloud's 10): four multiply a remote broker's window. On
/// loopback 1 to 8 drained a backlog equally fast (bench/RESULTS.md).
pub const DEFAULT_KAFKA_TO_MQTT_CONNECTIONS: u16 = 4;

impl<S> MqttSpec<S> {
    /// The connections Kafka→MQTT publishes over.
    pub fn kafka_to_mqtt_connections(&self) -> u16 {
        self.publish_connections
            .unwrap_or(self.connections.max(DEFAULT_KAFKA_TO_MQTT_CONNECTIONS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> MqttSpec<String> {
        serde_yaml::from_str(&format!(
            "url: mqtt://broker:1883\nclientIdPrefix: b\n{yaml}"
        ))
        .expect("valid mqtt spec")
    }

    #[test]
    fn kafka_to_mqtt_publishes_over_several_connections_by_default() {
        assert_eq!(
            spec("").kafka_to_mqtt_connections(),
            DEFAULT_KAFKA_TO_MQTT_CONNECTIONS
        );
        // More subscribing connections than the default: as many publishing.
        assert_eq!(spec("connections: 6").kafka_to_mqtt_connections(), 6);
        // Set explicitly: exactly that.
        assert_eq!(
            spec("connections: 6\npublishConnections: 1").kafka_to_mqtt_connections(),
            1
        );
    }
}
