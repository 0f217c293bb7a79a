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
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use bridge_core::rules::{DEFAULT_PROGRESS_DEADLINE_SECONDS, PROGRESS_DEADLINE_SECONDS, REPLICAS};

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
    validation = kube::core::Rule::new("!has(self.spec.http) || !has(self.spec.template) || !has(self.spec.template.pod) || !has(self.spec.template.pod.hostNetwork) || !self.spec.template.pod.hostNetwork || self.spec.http.port + self.spec.replicas <= 65536")
        .message("spec.http.port + spec.replicas must stay within 65536: with hostNetwork slot N listens on port + N"),
    // bridge_core::validate's rule for replicas × connections subscribers.
    validation = kube::core::Rule::new("(has(self.spec.replicas) ? self.spec.replicas : 1) * (has(self.spec.mqtt.connections) ? self.spec.mqtt.connections : 1) <= 1 || has(self.spec.mqtt.sharedSubscriptionGroup) || !self.spec.routes.exists(r, has(r.mqttToKafka))")
        .message("spec.mqtt.sharedSubscriptionGroup: required with more than one MQTT connection in all (spec.replicas × spec.mqtt.connections) when a route subscribes (mqttToKafka): without it every connection receives every message and Kafka gets duplicates")
        .field_path(".spec.mqtt.sharedSubscriptionGroup"),
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
    #[schemars(range(min = *REPLICAS.start(), max = *REPLICAS.end()))]
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
    /// The bridge's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// Seconds a slot given a change may take to become Ready (its
    /// `/readyz`) before the rollout halts with `RolloutHalted` and the other
    /// slots keep the previous configuration (each slot Deployment's
    /// `progressDeadlineSeconds`; a crash-looping pod halts it at once).
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(
        min = *PROGRESS_DEADLINE_SECONDS.start(),
        max = *PROGRESS_DEADLINE_SECONDS.end()
    ))]
    pub progress_deadline_seconds: i32,
    /// How the bridge pods are made (Strimzi's `template` vocabulary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<BridgeTemplate>,
}

fn default_replicas() -> i32 {
    1
}

fn default_progress_deadline_seconds() -> i32 {
    DEFAULT_PROGRESS_DEADLINE_SECONDS
}

/// The bridge's HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// Port of the HTTP endpoint (default 8080). With `template.pod.hostNetwork`
    /// the pods share the node's ports, so slot N listens on `port + N`.
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            port: default_http_port(),
        }
    }
}

fn default_http_port() -> i32 {
    i32::from(bridge_core::rules::DEFAULT_HTTP_PORT)
}

/// Templates of what the operator creates for a bridge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeTemplate {
    /// The bridge pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodTemplate>,
}

/// What users may set on the bridge pods. Operator-owned labels
/// (`mqttkafka.io/…`) and the security settings are not theirs to change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.hostNetwork) && self.hostNetwork) || !has(self.dnsPolicy) || self.dnsPolicy != 'ClusterFirst'",
        "message": "template.pod.dnsPolicy ClusterFirst with hostNetwork: true resolves names with the node's DNS, not the cluster's: use ClusterFirstWithHostNet (the default with hostNetwork) or Default"
    },
    {
        "rule": "(has(self.hostNetwork) && self.hostNetwork) || !has(self.dnsPolicy) || self.dnsPolicy != 'ClusterFirstWithHostNet'",
        "message": "template.pod.dnsPolicy ClusterFirstWithHostNet only applies with hostNetwork: true; leave dnsPolicy unset or use ClusterFirst or Default"
    }
]))]
pub struct PodTemplate {
    /// Extra labels and annotations of the pods (service meshes, cost tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataTemplate>,
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
    /// Run the pods in the node's network namespace, for brokers only
    /// reachable from the node. Slot N's HTTP endpoint then listens on the
    /// node's loopback only (`127.0.0.1`, port `http.port + N`, probed there),
    /// so it is not exposed on the node's network; the metrics Service cannot
    /// reach it. Needs a namespace whose Pod Security level allows host
    /// networking (privileged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// DNS policy of the pods; default ClusterFirst, or ClusterFirstWithHostNet
    /// with hostNetwork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<DnsPolicy>,
}

/// Extra pod metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.labels) || self.labels.all(k, !k.startsWith('mqttkafka.io/'))",
        "message": "template.pod.metadata.labels under mqttkafka.io/ are the operator's (they select the bridge's pods): use another prefix"
    }
]))]
pub struct MetadataTemplate {
    /// Extra pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
}

/// A pod's DNS policy (`None` is left out: it needs a `dnsConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DnsPolicy {
    ClusterFirst,
    ClusterFirstWithHostNet,
    Default,
}

impl DnsPolicy {
    /// The value of a pod spec's `dnsPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterFirst => "ClusterFirst",
            Self::ClusterFirstWithHostNet => "ClusterFirstWithHostNet",
            Self::Default => "Default",
        }
    }
}

impl PodTemplate {
    /// The pods' DNS policy: as set, or the one matching `hostNetwork`.
    pub fn effective_dns_policy(&self) -> DnsPolicy {
        self.dns_policy.unwrap_or(if self.host_network {
            DnsPolicy::ClusterFirstWithHostNet
        } else {
            DnsPolicy::ClusterFirst
        })
    }
}

impl MqttKafkaBridgeSpec {
    /// The pod template, empty when not given.
    pub fn pod_template(&self) -> PodTemplate {
        self.template
            .as_ref()
            .and_then(|t| t.pod.clone())
            .unwrap_or_default()
    }

    /// Port of the HTTP endpoint of `slot`: `http.port`, plus the slot with
    /// host networking (the pods share the node's ports).
    pub fn http_port(&self, slot: u32) -> i32 {
        let base = self
            .http
            .as_ref()
            .map_or_else(default_http_port, |h| h.port);
        if self.pod_template().host_network {
            base.saturating_add(i32::try_from(slot).unwrap_or(i32::MAX))
        } else {
            base
        }
    }
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
