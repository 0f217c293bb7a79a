//! Types shared by the operator and bridge-runtime.
//!
//! The connection and route types are generic over how a secret is named:
//! in a `MqttKafkaBridge` custom resource a secret is a [`SecretKeyRef`] to a
//! Kubernetes Secret, in the bridge-runtime configuration file it is a
//! [`SecretSource`] (a file or an environment variable). Everything else is
//! the same Rust type with the same field names, so the operator and the
//! runtime cannot drift.

pub mod bridge;
pub mod kafka;
pub mod mqtt;
pub mod report;
pub mod route;
pub mod secret;

pub use bridge::*;
pub use kafka::*;
pub use mqtt::*;
pub use route::*;
pub use secret::*;
pub mod config;
pub use config::*;
