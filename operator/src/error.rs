//! The operator's one error type. [`Error::reason`] is the stable string used
//! as condition reason, event reason and metric label.

use kube::runtime::reflector::ObjectRef;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A referenced Secret does not exist (yet).
    #[error("Secret {name} (referenced by {field}) not found")]
    SecretNotFound {
        /// Secret name.
        name: String,
        /// Spec field holding the reference.
        field: String,
    },
    /// A referenced Secret exists but lacks the key.
    #[error("Secret {name} has no key {key} (referenced by {field})")]
    SecretKeyNotFound {
        /// Secret name.
        name: String,
        /// Missing key.
        key: String,
        /// Spec field holding the reference.
        field: String,
    },
    /// The spec passed admission but cannot work (see `validate`).
    #[error("{field}: {message}")]
    InvalidSpec {
        /// Spec field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The generated configuration could not be serialized.
    #[error("serializing the bridge configuration: {0}")]
    Serialize(#[from] serde_yaml::Error),
    /// A Kubernetes API call failed (usually transient).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Kubernetes API call of a reconcile step failed: which step, on
    /// which object (usually transient; same reason as [`Error::Kube`]).
    #[error("{step} {object}: Kubernetes API: {source}")]
    Step {
        /// What the reconcile was doing, e.g. `apply Deployment`.
        step: &'static str,
        /// The object, `namespace/name` or a name.
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object lacks a field the apiserver always sets.
    #[error("{0} has no {1}")]
    MissingField(String, &'static str),
    /// The `MqttKafkaBridge` CRD is not installed.
    #[error(
        "the CustomResourceDefinition mqttkafkabridges.mqttkafka.io (kind MqttKafkaBridge, \
         version v1alpha1) is not installed on this cluster: install it with \
         `kubectl apply --server-side -f deploy/crd.yaml` or the Helm chart \
         helm/mqtt-kafka-operator, then restart the operator"
    )]
    CrdNotInstalled,
    /// RBAC does not let the operator list bridges.
    #[error(
        "not allowed to list mqttkafkabridges.mqttkafka.io ({0}): bind the operator's \
         ServiceAccount to the role in deploy/rbac.yaml or install the Helm chart"
    )]
    CrdForbidden(String),
    /// Another replica took the lease (or it could not be renewed in time).
    #[error("lost the leader election lease")]
    LeadershipLost,
    /// Leader election failed.
    #[error("leader election on Lease {0}: {1}")]
    Lease(String, #[source] kube::Error),
    /// The HTTP endpoint could not start.
    #[error("HTTP endpoint {0}: {1}")]
    Http(String, #[source] std::io::Error),
}

impl Error {
    /// Stable reason string (CamelCase, as Kubernetes condition reasons are).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::SecretNotFound { .. } => "SecretNotFound",
            Error::SecretKeyNotFound { .. } => "SecretKeyNotFound",
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::Serialize(_) => "SerializeFailed",
            Error::Kube(_) | Error::Step { .. } => "KubernetesApiError",
            Error::MissingField(..) => "MissingField",
            Error::CrdNotInstalled => "CrdNotInstalled",
            Error::CrdForbidden(_) => "CrdForbidden",
            Error::LeadershipLost => "LeadershipLost",
            Error::Lease(..) => "LeaseFailed",
            Error::Http(..) => "HttpFailed",
        }
    }

    /// Whether waiting for a change of the bridge or a Secret is the fix
    /// (as opposed to retrying with backoff).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::SecretNotFound { .. }
                | Error::SecretKeyNotFound { .. }
                | Error::InvalidSpec { .. }
        )
    }

    /// Shorthand for an [`Error::InvalidSpec`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An API error of `step` on `object`.
    pub fn step(step: &'static str, object: impl std::fmt::Display, source: kube::Error) -> Self {
        Error::Step {
            step,
            object: object.to_string(),
            source,
        }
    }

    /// Shorthand for [`Error::MissingField`] of a bridge.
    pub fn missing<K: kube::Resource<DynamicType = ()>>(obj: &K, field: &'static str) -> Self {
        Error::MissingField(ObjectRef::from_obj(obj).to_string(), field)
    }
}

/// Result of the operator's fallible steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_names_its_step_and_object_and_keeps_its_reason() {
        let e = Error::step(
            "apply",
            "Deployment ns/b-0",
            kube::Error::SerdeError(serde_json::from_str::<u8>("x").unwrap_err()),
        );
        assert_eq!(e.reason(), "KubernetesApiError");
        let text = e.to_string();
        assert!(text.starts_with("apply Deployment ns/b-0: "), "{text}");
        assert!(!e.is_user_error());
    }
}
