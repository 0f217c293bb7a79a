//! How a secret value is named, in the custom resource and in the runtime file.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key of a Secret in the bridge's own namespace (custom resource form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of a Secret in the same namespace as the bridge.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where bridge-runtime reads a secret value from (configuration-file form).
/// Exactly one of `file` or `env` is set; the value itself never appears in
/// the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    /// Path of a file holding the value (e.g. a mounted Secret key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<std::path::PathBuf>,
    /// Name of an environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}
