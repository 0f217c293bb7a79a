//! The `MqttKafkaBridge` custom resource (`mqttkafka.io/v1alpha1`).
//!
//! Rules that need only the fields of one shared type (authentication,
//! topic filters, route directions) live on that type in `mqtt.rs`,
//! `kafka.rs` and `route.rs`, so the apiserver reports the exact field path.
//! Rules spanning the whole list of routes live here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{KafkaSpec, MqttSpec, Route, SecretKeyRef};

/// A bridge between one MQTT broker and one Kafka cluster, run by the operator
/// as bridge-runtime pods.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mqttkafka.io",
    version = "v1alpha1",
    kind = "MqttKafkaBridge",
    plural = "mqttkafkabridges",
    shortname = "mkb",
    namespaced,
    status = "MqttKafkaBridgeStatus",
    derive = "PartialEq",
    // The name is a label value and prefixes Service names (63-character DNS labels).
    validation = kube::core::Rule::new("self.metadata.name.size() <= 55")
        .message("metadata.name must be at most 55 characters: it names the bridge's Deployments and Service"),
    doc = "MqttKafkaBridge carries messages between an MQTT broker and a Kafka cluster along its routes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every replica is connected and the current spec is rolled out"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "string",
        json_path = ".status.replicasSummary",
        description = "Ready/desired replicas"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the bridge is (not) ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MqttKafkaBridgeSpec {
    /// Number of bridge pods. Each replica owns one stable slot (0..replicas-1),
    /// so its MQTT client ids survive restarts and rollouts.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// bridge-runtime container image; defaults to the operator's configured image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// The MQTT broker connection.
    pub mqtt: MqttSpec<SecretKeyRef>,
    /// The Kafka cluster connection.
    pub kafka: KafkaSpec<SecretKeyRef>,
    /// Topic mappings, each in one direction. Route names are unique.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub routes: Vec<Route>,
    /// Compute resources of the bridge container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and metadata of the bridge pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate>,
}

fn default_replicas() -> i32 {
    1
}

/// What users may set on the bridge pods. Operator-owned labels win over these.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Extra pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}

/// What the operator observed. Written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttKafkaBridgeStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Bridge pods that exist (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Bridge pods that are ready, i.e. connected to both sides.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_summary: Option<String>,
    /// Label selector of the bridge pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Standard conditions; `Ready` summarises the bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl MqttKafkaBridgeStatus {
    /// The condition of the given type, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CRD as YAML, exactly as committed in `crds/mqttkafkabridges.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&MqttKafkaBridge::crd())
}
