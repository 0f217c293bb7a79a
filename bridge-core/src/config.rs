//! The bridge-runtime configuration file. The operator generates it from a
//! `MqttKafkaBridge`; its `mqtt`, `kafka` and `routes` sections are the very
//! types of the custom resource spec, with secrets named by [`SecretSource`].

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{KafkaSpec, MqttSpec, Route, SecretSource};

/// The runtime YAML file (`bridge-runtime run --config bridge.yaml`).
///
/// Client ids: connection `i` of a replica uses `<clientIdPrefix>-<slot>-<i>`,
/// where `slot` comes from the environment variable `BRIDGE_SLOT` (the
/// operator assigns each pod a stable slot; `0` when unset). A stable id keeps
/// the broker's persistent session, and with it the messages queued while the
/// bridge was away.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgeConfig {
    /// The MQTT broker.
    pub mqtt: MqttSpec<SecretSource>,
    /// The Kafka cluster.
    pub kafka: KafkaSpec<SecretSource>,
    /// Topic mappings, in both directions.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Health, readiness and metrics endpoint.
    #[serde(default)]
    pub http: HttpSettings,
    /// How long SIGTERM waits for in-flight records before exiting.
    #[serde(default = "default_shutdown_grace_period_seconds")]
    pub shutdown_grace_period_seconds: u32,
    /// File receiving a one-line reason on a fatal error (Kubernetes shows it
    /// in the pod status). Absent: nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<PathBuf>,
    /// Log output.
    #[serde(default)]
    pub log: LogSettings,
    /// MQTT 5 Receive Maximum asked of the broker per connection (how many
    /// unacknowledged QoS 1/2 messages it may send at once). MQTT 3.1.1 has no
    /// such field: the broker's own limit applies (Mosquitto `max_inflight_messages`).
    /// Default [`DEFAULT_MQTT_RECEIVE_MAXIMUM`].
    #[serde(default = "default_receive_maximum")]
    pub mqtt_receive_maximum: u16,
    /// Upper bound of Kafka→MQTT publishes waiting for the broker's acknowledgement.
    #[serde(default = "default_max_in_flight_publishes")]
    pub max_in_flight_publishes: u32,
}

/// The HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_http_address")]
    pub address: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            address: default_http_address(),
        }
    }
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,bridge_runtime=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_http_address() -> String {
    format!("0.0.0.0:{}", crate::rules::DEFAULT_HTTP_PORT)
}
fn default_shutdown_grace_period_seconds() -> u32 {
    30
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_receive_maximum() -> u16 {
    DEFAULT_MQTT_RECEIVE_MAXIMUM
}

/// A connection carries at most Receive Maximum ÷ Kafka acknowledgement time
/// messages per second, since each PUBACK waits for Kafka: with 1000 and the
/// 40 ms Kafka took under load, one connection stopped at 25,000 msg/s and
/// the broker dropped the rest (peak benchmark); 10,000 carried 35,000.
/// Memory: up to this many messages per connection held by the bridge.
pub const DEFAULT_MQTT_RECEIVE_MAXIMUM: u16 = 10_000;
fn default_max_in_flight_publishes() -> u32 {
    1000
}

/// A `MqttKafkaBridge` custom resource as a file (`kubectl apply -f` form),
/// read by `bridge-runtime check` so a user can try a manifest before
/// applying it, with the very rules the operator runs. Only the
/// Kubernetes-free part of the spec is read; the rest (`image`,
/// `resources`, `template`, `http`, `progressDeadlineSeconds`) is the
/// CRD's and the operator's to check.
#[derive(Clone, Debug, Deserialize)]
pub struct BridgeManifest {
    /// Must be `MqttKafkaBridge`.
    pub kind: String,
    /// `metadata.name`, when given.
    #[serde(default)]
    pub metadata: ManifestMetadata,
    /// The spec.
    pub spec: ManifestSpec,
}

/// The name of a [`BridgeManifest`].
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ManifestMetadata {
    /// `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
}

/// The Kubernetes-free part of a `MqttKafkaBridge` spec.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSpec {
    /// Number of bridge pods.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// The MQTT broker.
    pub mqtt: crate::MqttSpec<crate::SecretKeyRef>,
    /// The Kafka cluster.
    pub kafka: crate::KafkaSpec<crate::SecretKeyRef>,
    /// The routes.
    pub routes: Vec<Route>,
}

fn default_replicas() -> i32 {
    1
}

/// Kind of the custom resource.
pub const BRIDGE_KIND: &str = "MqttKafkaBridge";
