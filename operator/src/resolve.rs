//! Step 1: read the Secrets a bridge references (the only I/O before build).
//!
//! Each referenced Secret is fetched by name (a `get`, never a list): only
//! its keys are looked at, to report a missing one. What goes on the pod
//! template to roll the pods when a Secret changes is the Secret's uid and
//! resourceVersion, never anything computed from a value: a hash of a
//! password on a Deployment, readable by everyone who may read Deployments,
//! ReplicaSets or Pods, would let them test password guesses offline.

use std::collections::{BTreeMap, BTreeSet};

use crds::{KafkaAuthenticationType, MqttAuthenticationType, MqttKafkaBridgeSpec, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

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
    /// `name=uid/resourceVersion` of each referenced Secret, comma-separated
    /// in name order: changes exactly when one of them is written or
    /// replaced, and says nothing about their values.
    pub versions: String,
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
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|e| Error::step("read referenced Secret", &name, e))?;
        if let Some(secret) = secret {
            found.insert(name, secret);
        }
    }
    check_secrets(spec, &found)
}

/// Pure part of [`resolve`]: every referenced Secret and key exists; lists
/// the versions of the referenced Secrets.
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
    let versions = keys
        .keys()
        .filter_map(|name| found.get(name))
        .map(|s| {
            format!(
                "{}={}/{}",
                s.name_any(),
                s.uid().unwrap_or_default(),
                s.resource_version().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok(ResolvedSecrets { versions, keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::ByteString;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        versioned(name, "1", data)
    }

    fn versioned(name: &str, resource_version: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-of-{name}")),
                resource_version: Some(resource_version.into()),
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
    fn versions_follow_the_referenced_secrets_never_their_values() {
        let spec = fixtures::password_spec();
        let one = |rv: &str, value: &str| {
            let found = BTreeMap::from([
                (
                    "mqtt-credentials".to_string(),
                    versioned("mqtt-credentials", rv, &[("password", value)]),
                ),
                (
                    "unrelated".to_string(),
                    versioned("unrelated", rv, &[("x", "y")]),
                ),
            ]);
            check_secrets(&spec, &found).unwrap()
        };
        assert_eq!(
            one("7", "s3cr3t").versions,
            "mqtt-credentials=uid-of-mqtt-credentials/7"
        );
        // The same version with another value (as only a replaced object
        // could have) gives the same string: nothing comes from the value.
        assert_eq!(one("7", "a"), one("7", "b"));
        assert_ne!(one("7", "a").versions, one("8", "a").versions);
        assert_eq!(
            one("7", "a").keys["mqtt-credentials"],
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
