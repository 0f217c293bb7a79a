//! What a running bridge says about itself at [`REPORT_PATH`] (JSON): why it
//! is not ready, which destinations refuse a route's messages, what it
//! dropped. bridge-runtime writes it, the operator reads it into the
//! bridge's status (the kubelet keeps only the status code of `/readyz`).

use serde::{Deserialize, Serialize};

/// The HTTP path of the report on the bridge's `http.address`.
pub const REPORT_PATH: &str = "/report";

/// A bridge pod's own account of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeReport {
    /// What `/readyz` answers.
    pub ready: bool,
    /// What is not ready, in words (`kafka not reachable`, …).
    #[serde(default)]
    pub not_ready: Vec<String>,
    /// Destinations refusing a route's messages until someone fixes something.
    #[serde(default)]
    pub refusals: Vec<RefusalReport>,
    /// Undeliverable messages dropped since the bridge started (routes without
    /// a dead-letter topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<DropReport>,
}

/// A destination refusing a route's messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalReport {
    /// The route.
    pub route: String,
    /// The destination, e.g. ``Kafka topic sensors.s7``.
    pub target: String,
    /// The reason label, e.g. `kafka_topic_authorization_failed`.
    pub reason: String,
    /// Messages held for it.
    pub held: u64,
    /// For how long, in seconds.
    pub seconds: u64,
}

impl RefusalReport {
    /// The refusal without its changing figures (what a status message may
    /// carry without changing on every look).
    pub fn summary(&self) -> String {
        format!(
            "route {}: {} refuses messages ({})",
            self.route, self.target, self.reason
        )
    }
}

/// Undeliverable messages dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropReport {
    /// How many since the bridge started.
    pub count: u64,
    /// The route of the last one.
    pub route: String,
    /// Why the last one was dropped, e.g. `too_large`.
    pub reason: String,
    /// How long ago, in seconds.
    pub seconds_ago: u64,
}
