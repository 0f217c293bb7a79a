//! Step 4: server-side apply of the children, one field manager, forced, so
//! the operator owns exactly the fields it builds and re-applying an
//! unchanged object writes nothing.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{BRIDGE_LABEL, Children, SLOT_LABEL};
use crate::error::{Error, Result};

/// The operator's field manager.
pub const FIELD_MANAGER: &str = "mqtt-kafka-operator";

/// Server-side applies one namespaced object.
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = obj.meta().name.clone().ok_or(Error::MissingField(
        K::kind(&()).into_owned(),
        "metadata.name",
    ))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// Applies the ConfigMap and Service, then the slot Deployments (the pods
/// mount the ConfigMap, so it goes first), and deletes the Deployments of
/// slots beyond `replicas`.
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    bridge_name: &str,
    bridge_uid: &str,
    children: &Children,
) -> Result<()> {
    apply(client, namespace, &children.config_map).await?;
    apply(client, namespace, &children.service).await?;
    for d in &children.deployments {
        apply(client, namespace, d).await?;
    }
    let desired = children.deployments.len();
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for d in slot_deployments(&api, bridge_name).await? {
        let slot = d
            .labels()
            .get(SLOT_LABEL)
            .and_then(|s| s.parse::<usize>().ok());
        let ours = d.owner_references().iter().any(|o| o.uid == bridge_uid);
        if ours && slot.is_none_or(|s| s >= desired) {
            tracing::info!(deployment = %d.name_any(), "deleting scaled-down slot");
            api.delete(&d.name_any(), &DeleteParams::background())
                .await?;
        }
    }
    Ok(())
}

/// The slot Deployments of a bridge (by label).
pub async fn slot_deployments(api: &Api<Deployment>, bridge_name: &str) -> Result<Vec<Deployment>> {
    // From the apiserver's watch cache, not etcd: a reconcile runs after a
    // watch event the cache has already seen, and a quorum read per reconcile
    // made etcd the bottleneck with hundreds of bridges.
    let params = ListParams::default()
        .labels(&format!("{BRIDGE_LABEL}={bridge_name}"))
        .match_any();
    Ok(api.list(&params).await?.items)
}
