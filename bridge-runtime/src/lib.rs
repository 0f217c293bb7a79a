//! At-least-once MQTT ↔ Kafka bridge.
//!
//! The data's way, one module per step: [`config`] (file, secrets, and the
//! checks of `bridge_core::validate`, the operator's very rules) →
//! `bridge_core::routes` (what goes where, over `bridge_core::topic`
//! filters and templates) →
//! [`mqtt_side`] / [`kafka_side`] (the clients) → [`mqtt_to_kafka`] /
//! [`kafka_to_mqtt`] (the pipelines) with [`ack_tracker`] releasing
//! acknowledgements and commits in order, [`delivery`] judging what a side
//! did not take and [`retry_queue`] holding it for a retry. [`metrics`], [`http`] and
//! [`bridge`] (start, run, drain) around it.

pub mod ack_tracker;
pub mod bridge;
pub mod check;
pub mod config;
pub mod delivery;
pub mod error;
pub mod http;
pub mod kafka_side;
pub mod kafka_to_mqtt;
pub mod metrics;
pub mod mqtt_side;
pub mod mqtt_to_kafka;
pub mod retry_queue;

pub use error::BridgeError;
