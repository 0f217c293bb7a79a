//! The one error type of bridge-runtime. Every variant has a stable
//! [`BridgeError::reason`] used in the termination message and in metrics, and
//! a message that names the offending configuration field. Secret values
//! never appear in these messages.

use std::path::PathBuf;

/// Everything that can stop the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    ConfigUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML for [`bridge_core::BridgeConfig`]
    /// (syntax, unknown field, wrong type, unknown enum value).
    #[error("invalid configuration: {0}")]
    ConfigSyntax(String),
    /// A field has a value the bridge cannot use.
    #[error("invalid configuration: {field}: {message}")]
    ConfigInvalid {
        /// Path of the field, e.g. `routes[0].mqttToKafka.kafkaTopic`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A secret named by the configuration could not be read.
    #[error("cannot read secret {field}: {message}")]
    SecretUnreadable {
        /// Path of the field naming the secret.
        field: String,
        /// Why (never the value).
        message: String,
    },
    /// The MQTT broker refused our credentials.
    #[error("MQTT broker refused the connection: {0}")]
    MqttRefused(String),
    /// TLS to the MQTT broker could not be set up.
    #[error("MQTT TLS setup failed: {0}")]
    MqttTls(String),
    /// Kafka refused our credentials.
    #[error("Kafka authentication failed: {0}")]
    KafkaAuthentication(String),
    /// A Kafka client could not be created or used.
    #[error("Kafka client error: {0}")]
    Kafka(String),
    /// The HTTP endpoint could not listen.
    #[error("cannot listen on {address}: {message}")]
    HttpListen {
        /// The configured address.
        address: String,
        /// Why.
        message: String,
    },
    /// A bridge task ended unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BridgeError {
    /// A short stable identifier of the kind of error, for the termination
    /// message and alerting rules.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ConfigUnreadable { .. } => "ConfigUnreadable",
            Self::ConfigSyntax(_) => "ConfigSyntax",
            Self::ConfigInvalid { .. } => "ConfigInvalid",
            Self::SecretUnreadable { .. } => "SecretUnreadable",
            Self::MqttRefused(_) => "MqttRefused",
            Self::MqttTls(_) => "MqttTls",
            Self::KafkaAuthentication(_) => "KafkaAuthentication",
            Self::Kafka(_) => "KafkaError",
            Self::HttpListen { .. } => "HttpListen",
            Self::Internal(_) => "Internal",
        }
    }

    /// Whether the error comes from the configuration (exit code 2, before
    /// any connection is made) rather than from running.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::ConfigUnreadable { .. }
                | Self::ConfigSyntax(_)
                | Self::ConfigInvalid { .. }
                | Self::SecretUnreadable { .. }
        )
    }

    /// Shorthand for [`BridgeError::ConfigInvalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::ConfigInvalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A rule of `bridge_core` broken by the configuration file.
impl From<bridge_core::SpecError> for BridgeError {
    fn from(e: bridge_core::SpecError) -> Self {
        Self::ConfigInvalid {
            field: e.field,
            message: e.message,
        }
    }
}
