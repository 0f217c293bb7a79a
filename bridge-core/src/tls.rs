//! TLS settings, the same for the MQTT broker and the Kafka brokers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS to a broker (`mqtt.tls`, `kafka.tls`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.clientCertificate) == has(self.clientKey)",
        "message": "tls.clientCertificate and tls.clientKey go together",
        "fieldPath": ".clientKey"
    }
]))]
// `S` needs no `Default`: absent optional secrets deserialize to `None`.
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct Tls<S> {
    /// PEM CA certificate(s) the broker's certificate must chain to. Without it the system roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<S>,
    /// PEM client certificate, for brokers that require mutual TLS (needs `clientKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<S>,
    /// PEM private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<S>,
}
