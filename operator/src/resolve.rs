//! Step 1: read the Secrets a bridge references (the only I/O before build).
//!
//! Only the referenced keys matter: their values feed a hash on the pod
//! template, so changing one rolls the pods and changing anything else in
//! the Secret does not. Values never leave this module.

use std::collections::{BTreeMap, BTreeSet};

use crds::{KafkaAuthenticationType, MqttAuthenticationType, MqttKafkaBridgeSpec, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One secret reference and the spec field it sits in (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse<'a> {
    /// JSON path of the field, e.g. `spec.mqtt.authentication.passwordSecret`.
    pub field: &'static str,
    /// The reference.
    pub secret: &'a SecretKeyRef,
}

/// What the build step needs to know about the referenced Secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedSecrets {
    /// Hash of the referenced keys' values (hex SHA-256).
    pub hash: String,
    /// Referenced keys per Secret name, for the volume items.
    pub keys: BTreeMap<String, BTreeSet<String>>,
}

/// Every Secret reference of the spec that the runtime will read.
/// A password of an authentication type that needs none is ignored.
pub fn secret_uses<'a>(spec: &'a MqttKafkaBridgeSpec) -> Vec<SecretUse<'a>> {
    let mut out = Vec::new();
    let mut push = |field: &'static str, secret: Option<&'a SecretKeyRef>| {
        if let Some(secret) = secret {
            out.push(SecretUse { field, secret });
        }
    };
    if let Some(tls) = &spec.mqtt.tls {
        push("spec.mqtt.tls.trustedCa", tls.trusted_ca.as_ref());
        push(
            "spec.mqtt.tls.clientCertificate",
            tls.client_certificate.as_ref(),
        );
        push("spec.mqtt.tls.clientKey", tls.client_key.as_ref());
    }
    if let Some(auth) = &spec.mqtt.authentication
        && auth.kind != MqttAuthenticationType::None
    {
        push(
            "spec.mqtt.authentication.passwordSecret",
            auth.password_secret.as_ref(),
        );
    }
    if let Some(tls) = &spec.kafka.tls {
        push("spec.kafka.tls.trustedCa", tls.trusted_ca.as_ref());
        push(
            "spec.kafka.tls.clientCertificate",
            tls.client_certificate.as_ref(),
        );
        push("spec.kafka.tls.clientKey", tls.client_key.as_ref());
    }
    if let Some(auth) = &spec.kafka.authentication
        && auth.kind != KafkaAuthenticationType::None
    {
        push(
            "spec.kafka.authentication.passwordSecret",
            auth.password_secret.as_ref(),
        );
    }
    out
}

/// Names of the Secrets a spec references (for mapping Secret events to bridges).
pub fn referenced_secret_names(spec: &MqttKafkaBridgeSpec) -> BTreeSet<String> {
    secret_uses(spec)
        .into_iter()
        .map(|u| u.secret.secret_name.clone())
        .collect()
}

/// Fetches the referenced Secrets and checks them; see [`check_secrets`].
pub async fn resolve(api: &Api<Secret>, spec: &MqttKafkaBridgeSpec) -> Result<ResolvedSecrets> {
    let mut found = BTreeMap::new();
    for name in referenced_secret_names(spec) {
        if let Some(secret) = api.get_opt(&name).await? {
            found.insert(name, secret);
        }
    }
    check_secrets(spec, &found)
}

/// Pure part of [`resolve`]: every referenced Secret and key exists; hashes
/// the referenced values in a fixed order.
pub fn check_secrets(
    spec: &MqttKafkaBridgeSpec,
    found: &BTreeMap<String, Secret>,
) -> Result<ResolvedSecrets> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for SecretUse { field, secret } in secret_uses(spec) {
        let Some(object) = found.get(&secret.secret_name) else {
            return Err(Error::SecretNotFound {
                name: secret.secret_name.clone(),
                field: field.to_string(),
            });
        };
        let has_key = object
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(&secret.key));
        if !has_key {
            return Err(Error::SecretKeyNotFound {
                name: secret.secret_name.clone(),
                key: secret.key.clone(),
                field: field.to_string(),
            });
        }
        keys.entry(secret.secret_name.clone())
            .or_default()
            .insert(secret.key.clone());
    }
    let mut hasher = Sha256::new();
    for (name, names) in &keys {
        for key in names {
            let value = found
                .get(name)
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(key))
                .map(|v| v.0.as_slice())
                .unwrap_or_default();
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            for part in [name.as_bytes(), key.as_bytes(), value] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
        }
    }
    Ok(ResolvedSecrets {
        hash: hex(&hasher.finalize()),
        keys,
    })
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::ByteString;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn missing_secret_and_key_are_named() {
        let spec = fixtures::password_spec();
        let err = check_secrets(&spec, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.reason(), "SecretNotFound");
        assert!(err.to_string().contains("mqtt-credentials"));
        assert!(
            err.to_string()
                .contains("spec.mqtt.authentication.passwordSecret")
        );

        let found = BTreeMap::from([(
            "mqtt-credentials".to_string(),
            secret("mqtt-credentials", &[("other", "x")]),
        )]);
        let err = check_secrets(&spec, &found).unwrap_err();
        assert_eq!(err.reason(), "SecretKeyNotFound");
        assert!(err.to_string().contains("password"));
    }

    #[test]
    fn hash_follows_referenced_values_only() {
        let spec = fixtures::password_spec();
        let one = |v: &str, extra: &str| {
            let found = BTreeMap::from([(
                "mqtt-credentials".to_string(),
                secret("mqtt-credentials", &[("password", v), ("unrelated", extra)]),
            )]);
            check_secrets(&spec, &found).unwrap()
        };
        assert_eq!(one("a", "x"), one("a", "y"));
        assert_ne!(one("a", "x").hash, one("b", "x").hash);
        assert!(!one("s3cr3t", "x").hash.contains("s3cr3t"));
        assert_eq!(
            one("a", "x").keys["mqtt-credentials"],
            BTreeSet::from(["password".to_string()])
        );
    }

    #[test]
    fn anonymous_auth_ignores_a_password() {
        let mut spec = fixtures::password_spec();
        if let Some(a) = spec.mqtt.authentication.as_mut() {
            a.kind = MqttAuthenticationType::None;
        }
        assert!(secret_uses(&spec).is_empty());
    }
}
