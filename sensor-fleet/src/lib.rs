//! A sensor fleet simulator and the verifiers that check what arrived.
//!
//! - [`simulate::simulate_mqtt`]: N sensors at R Hz publishing JSON readings
//!   over pipelined MQTT connections; [`simulate::simulate_kafka`] produces the
//!   same readings straight to Kafka.
//! - [`verify::kafka`] / [`verify::mqtt`]: consume them back and, through
//!   [`accounting::Tracker`], report loss, duplicates, per-key reordering,
//!   throughput and end-to-end latency from the timestamps in the payloads.
//!
//! The binaries (`sensor-fleet`, `fleet-bench`) are thin layers over these,
//! so tests can run a simulator and a verifier in-process.

pub mod accounting;
pub mod conn;
pub mod payload;
pub mod simulate;
pub mod verify;

pub use accounting::{Expected, Report, Tracker};
pub use conn::{KafkaEndpoint, MqttEndpoint};

/// Installs the process-wide rustls crypto provider (ring, as in the rest of
/// the workspace); needed before any TLS connection. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
