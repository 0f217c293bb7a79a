//! Step 3: the child objects of a bridge, built as pure functions of the
//! validated spec and the resolved Secrets (one file per object kind).
//!
//! # Stable MQTT sessions: one Deployment per slot
//!
//! A bridge with `replicas: n` gets `n` Deployments `<bridge>-0` …
//! `<bridge>-<n-1>`, each with one replica, `strategy: Recreate` and the env
//! var `BRIDGE_SLOT=<slot>`. bridge-runtime names its MQTT connections
//! `<clientIdPrefix>-<slot>-<i>`, so:
//! - a restarted or replaced pod has the same slot, hence the same client
//!   ids and the broker's persistent session with its queued messages;
//! - `Recreate` stops the old pod before the new one starts, so two live
//!   pods never share a slot (a rolling update would briefly run both);
//! - scaling up adds Deployments for new slots, scaling down deletes the
//!   highest slots; surviving slots are not touched;
//! - a change reaches the slots one at a time (`rollout`): each
//!   Deployment carries the [`REVISION_ANNOTATION`] of its pod template,
//!   and each configuration its own ConfigMap `<bridge>-config-<hash>`, so
//!   slots not rolled yet keep running the previous one.

pub mod config;
pub mod deployment;
pub mod service;

use std::collections::BTreeMap;

use crds::MqttKafkaBridge;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::error::{Error, Result};
use crate::validate::ValidatedBridge;

/// Label naming the bridge a child belongs to (selector of all its pods).
pub const BRIDGE_LABEL: &str = "mqttkafka.io/bridge";
/// Label naming the slot of a Deployment and its pods.
pub const SLOT_LABEL: &str = "mqttkafka.io/slot";
/// Pod-template annotation: hash of the generated configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "mqttkafka.io/config-hash";
/// Pod-template annotation: uid and resourceVersion of each referenced
/// Secret (see `resolve`), so a changed Secret rolls the pods.
pub const SECRET_VERSIONS_ANNOTATION: &str = "mqttkafka.io/secret-versions";
/// Deployment and pod-template annotation: a hash of the slot's pod
/// template, which `rollout` compares to tell a rolled slot from one that
/// still runs the previous template.
pub const REVISION_ANNOTATION: &str = "mqttkafka.io/revision";
/// The bridge's default HTTP port (`/healthz`, `/readyz`, `/metrics`).
pub const HTTP_PORT: i32 = bridge_core::rules::DEFAULT_HTTP_PORT as i32;
/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "mqtt-kafka-operator";

/// Operator settings the build depends on.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    /// Image used when the bridge does not name one.
    pub default_image: String,
}

/// Every object a bridge owns, as the current spec wants them.
#[derive(Clone, Debug)]
pub struct Children {
    /// The bridge-runtime configuration (named by its hash).
    pub config_map: ConfigMap,
    /// One Deployment per slot, slot 0 first.
    pub deployments: Vec<Deployment>,
    /// The metrics Service.
    pub service: Service,
}

/// Builds all children of a validated bridge.
pub fn build(bridge: &ValidatedBridge, settings: &BuildSettings) -> Result<Children> {
    let owner = &bridge.owner;
    let (config_map, config_hash) = config::config_map(owner, &bridge.spec)?;
    let slots = u32::try_from(bridge.spec.replicas).unwrap_or(0);
    let deployments = (0..slots)
        .map(|slot| {
            deployment::deployment(
                owner,
                &bridge.spec,
                slot,
                &config_hash,
                &bridge.secrets,
                settings,
            )
        })
        .collect();
    Ok(Children {
        config_map,
        deployments,
        service: service::service(owner),
    })
}

/// Name, namespace and owner reference of a bridge, shared by its children.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Bridge name.
    pub name: String,
    /// Bridge namespace.
    pub namespace: String,
    /// Controller reference to the bridge (garbage collection).
    pub reference: OwnerReference,
}

impl Owner {
    /// Reads what the children need from a bridge the apiserver returned.
    pub fn of(bridge: &MqttKafkaBridge) -> Result<Self> {
        let name = bridge
            .metadata
            .name
            .clone()
            .ok_or_else(|| Error::missing(bridge, "metadata.name"))?;
        let namespace = bridge
            .metadata
            .namespace
            .clone()
            .ok_or_else(|| Error::missing(bridge, "metadata.namespace"))?;
        let reference = bridge
            .controller_owner_ref(&())
            .ok_or_else(|| Error::missing(bridge, "metadata.uid"))?;
        Ok(Self {
            name,
            namespace,
            reference,
        })
    }

    /// Labels on every child: `app.kubernetes.io/*` and the bridge label.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "mqtt-kafka-bridge".into()),
            ("app.kubernetes.io/instance".into(), self.name.clone()),
            ("app.kubernetes.io/component".into(), "bridge".into()),
            ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
            (BRIDGE_LABEL.into(), self.name.clone()),
        ])
    }

    /// Metadata of a child called `name`.
    pub fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }
}

/// The label selector of all pods of a bridge (`status.labelSelector`).
pub fn pod_selector(bridge_name: &str) -> String {
    format!("{BRIDGE_LABEL}={bridge_name}")
}

/// Name of the ConfigMap holding the configuration with `config_hash`:
/// one per configuration, so pods of slots not rolled yet keep theirs.
pub fn config_map_name(bridge_name: &str, config_hash: &str) -> String {
    let short = config_hash.get(..10).unwrap_or(config_hash);
    format!("{bridge_name}-config-{short}")
}

/// The ConfigMap a slot Deployment mounts (its configuration).
pub fn mounted_config_map(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find_map(|v| v.config_map.as_ref().map(|c| c.name.as_str()))
}

/// Name of the Deployment of a slot.
pub fn deployment_name(bridge_name: &str, slot: u32) -> String {
    format!("{bridge_name}-{slot}")
}

/// Name of the metrics Service.
pub fn service_name(bridge_name: &str) -> String {
    format!("{bridge_name}-metrics")
}
