//! The one error of the domain core: a field of a configuration or spec
//! that cannot work, and why. The operator reports it as `InvalidSpec`
//! (with `spec.` before the path), bridge-runtime as `ConfigInvalid`.

/// A field that cannot work as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the field within the spec (or the runtime file, which has the
    /// same shape): e.g. `routes[0].mqttToKafka.kafkaTopic`.
    pub field: String,
    /// What is wrong and how to fix it. Never a secret value.
    pub message: String,
}

impl SpecError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
