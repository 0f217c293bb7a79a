//! The `MqttKafkaBridge` custom resource: the Kubernetes shell around the
//! domain types and rules of `bridge-core` (re-exported here), which the
//! operator and bridge-runtime share so they cannot drift.

pub mod bridge;

pub use bridge::*;
pub use bridge_core::*;
