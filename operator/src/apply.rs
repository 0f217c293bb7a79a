//! Step 4: server-side apply of the children, one field manager, forced, so
//! the operator owns exactly the fields it builds and re-applying an
//! unchanged object writes nothing.
//!
//! Even an apply that changes nothing costs the apiserver a full
//! server-side-apply merge, and a bridge is reconciled on every status step
//! of its Deployment. So the operator remembers what it applied
//! ([`Applied`]) and skips the applies while the children it would build
//! are the same and the children on the server are still the versions its
//! last apply left (a hand edit changes them, and is undone).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceSpec};
use kube::api::{DeleteParams, GetParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{BRIDGE_LABEL, Children, SLOT_LABEL, mounted_config_map};
use crate::error::{Error, Result};

/// Versions of a bridge's children on the server, by `Kind/name`: the
/// resourceVersion of the ConfigMap and the Service, the generation of each
/// Deployment (its status changes all the time, its generation only when its
/// spec does).
pub type ChildVersions = BTreeMap<String, String>;

/// What the last apply of one bridge built, and what it left on the server.
#[derive(Clone, Debug)]
pub struct Applied {
    /// [`children_hash`] of what was applied.
    pub children_hash: u64,
    /// The versions the applies returned.
    pub versions: ChildVersions,
    /// When: after [`Applied::MAX_AGE`] everything is applied again anyway.
    pub at: Instant,
}

impl Applied {
    /// Even unchanged children are applied again this often.
    pub const MAX_AGE: Duration = Duration::from_secs(600);

    /// Whether applying children with `children_hash` would change nothing,
    /// given the versions now on the server.
    pub fn is_current(&self, children_hash: u64, live: &ChildVersions, now: Instant) -> bool {
        self.children_hash == children_hash
            && &self.versions == live
            && now.duration_since(self.at) < Self::MAX_AGE
    }
}

/// What was applied per bridge (by uid), kept by the controller.
#[derive(Default)]
pub struct AppliedByBridge(std::sync::Mutex<HashMap<String, Applied>>);

impl AppliedByBridge {
    /// See [`Applied::is_current`]; false for a bridge not applied yet.
    pub fn is_current(&self, uid: &str, children_hash: u64, live: &ChildVersions) -> bool {
        let now = Instant::now();
        self.0.lock().is_ok_and(|m| {
            m.get(uid)
                .is_some_and(|a| a.is_current(children_hash, live, now))
        })
    }

    /// Forgets a bridge (deleted).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }

    /// Records an apply; forgets bridges not applied for a long time (deleted ones).
    pub fn record(&self, uid: &str, children_hash: u64, versions: ChildVersions) {
        if let Ok(mut m) = self.0.lock() {
            let now = Instant::now();
            m.retain(|_, a| now.duration_since(a.at) < 2 * Applied::MAX_AGE);
            m.insert(
                uid.to_owned(),
                Applied {
                    children_hash,
                    versions,
                    at: now,
                },
            );
        }
    }
}

/// A hash of the children as built and of the slot Deployments the rollout
/// applies now (only compared within one process); `None` if they cannot be
/// serialized, and then they are always applied.
pub fn children_hash(children: &Children, to_apply: &[Deployment]) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(&children.config_map)
        .ok()?
        .hash(&mut hasher);
    serde_json::to_vec(&children.service)
        .ok()?
        .hash(&mut hasher);
    for d in to_apply {
        serde_json::to_vec(d).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

fn version_key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Adds the resourceVersion of `obj` as it is on the server (watch cache),
/// if it exists there.
async fn insert_resource_version<K>(
    client: &Client,
    namespace: &str,
    obj: &K,
    versions: &mut ChildVersions,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let live = api
        .get_metadata_opt_with(&name, &GetParams::any())
        .await
        .map_err(|e| {
            Error::step(
                "read the live version of",
                format!("{} {namespace}/{name}", K::kind(&())),
                e,
            )
        })?;
    if let Some(live) = live {
        versions.insert(
            version_key(&K::kind(&()), &name),
            live.resource_version().unwrap_or_default(),
        );
    }
    Ok(())
}

/// The versions of a bridge's children now on the server, read from the
/// apiserver's watch cache; `deployments` are the bridge's slot Deployments
/// as listed (surplus slots included, so that they make a difference).
pub async fn live_versions(
    client: &Client,
    namespace: &str,
    children: &Children,
    deployments: &[Deployment],
) -> Result<ChildVersions> {
    let mut versions = ChildVersions::new();
    insert_resource_version(client, namespace, &children.config_map, &mut versions).await?;
    insert_resource_version(client, namespace, &children.service, &mut versions).await?;
    for d in deployments {
        versions.insert(
            version_key("Deployment", &d.name_any()),
            d.metadata.generation.unwrap_or_default().to_string(),
        );
    }
    Ok(versions)
}

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
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(|e| Error::step("apply", format!("{} {namespace}/{name}", K::kind(&())), e))
}

/// Applies the metrics Service. One made by an operator version before the
/// Service became headless has a ClusterIP, which cannot be changed to
/// `None`: it is then applied without `clusterIP` and keeps its address
/// (Prometheus scrapes the pods behind it all the same). Nothing is deleted,
/// so the shipped RBAC needs no `delete` on Services; deleting such a
/// Service by hand lets the operator create it headless.
async fn apply_service(client: &Client, namespace: &str, service: &Service) -> Result<Service> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let live = api.get_opt(&service.name_any()).await.map_err(|e| {
        Error::step(
            "read Service",
            format!("{namespace}/{}", service.name_any()),
            e,
        )
    })?;
    let mut service = service.clone();
    if let (Some(live), Some(spec)) = (
        live.as_ref().and_then(|s| s.spec.as_ref()),
        service.spec.as_mut(),
    ) && keeps_cluster_ip(live)
    {
        spec.cluster_ip = None;
    }
    apply(client, namespace, &service).await
}

/// Whether a live Service has a virtual IP (which can never be removed).
fn keeps_cluster_ip(live: &ServiceSpec) -> bool {
    live.cluster_ip
        .as_deref()
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// Applies the ConfigMap and Service, then the slot Deployments `to_apply`
/// (the rollout's choice among `children.deployments`; the pods mount the
/// ConfigMap, so it goes first), deletes those of `existing` (the bridge's
/// slot Deployments as listed) beyond `replicas` and the ConfigMaps no slot
/// uses any more. Returns the versions the applies left.
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    bridge_uid: &str,
    children: &Children,
    to_apply: &[Deployment],
    existing: &[Deployment],
) -> Result<ChildVersions> {
    let mut versions = ChildVersions::new();
    let cm = apply(client, namespace, &children.config_map).await?;
    versions.insert(
        version_key(&ConfigMap::kind(&()), &cm.name_any()),
        cm.resource_version().unwrap_or_default(),
    );
    let svc = apply_service(client, namespace, &children.service).await?;
    versions.insert(
        version_key(&Service::kind(&()), &svc.name_any()),
        svc.resource_version().unwrap_or_default(),
    );
    for d in to_apply {
        let d = apply(client, namespace, d).await?;
        versions.insert(
            version_key("Deployment", &d.name_any()),
            d.metadata.generation.unwrap_or_default().to_string(),
        );
    }
    let desired = children.deployments.len();
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for d in existing {
        let slot = d
            .labels()
            .get(SLOT_LABEL)
            .and_then(|s| s.parse::<usize>().ok());
        let ours = d.owner_references().iter().any(|o| o.uid == bridge_uid);
        if ours && slot.is_none_or(|s| s >= desired) {
            tracing::info!(deployment = %d.name_any(), "deleting scaled-down slot");
            delete(
                &api,
                namespace,
                &d.name_any(),
                "delete scaled-down slot Deployment",
            )
            .await?;
        }
    }
    delete_unused_config_maps(client, namespace, bridge_uid, children, to_apply, existing).await?;
    Ok(versions)
}

/// Deletes a child in the background; one already gone is fine (children
/// are listed from the watch cache).
async fn delete<K>(api: &Api<K>, namespace: &str, name: &str, step: &'static str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(Error::step(step, format!("{namespace}/{name}"), e)),
    }
}

/// Deletes the bridge's ConfigMaps that neither the current configuration
/// nor any slot (rolled now, or still on a previous configuration) uses.
async fn delete_unused_config_maps(
    client: &Client,
    namespace: &str,
    bridge_uid: &str,
    children: &Children,
    to_apply: &[Deployment],
    existing: &[Deployment],
) -> Result<()> {
    let slots = children.deployments.len();
    let rolled: BTreeSet<String> = to_apply.iter().map(ResourceExt::name_any).collect();
    let mut used: BTreeSet<String> = to_apply
        .iter()
        .chain(existing.iter().filter(|d| {
            !rolled.contains(&d.name_any())
                && crate::rollout::slot_of(*d).is_some_and(|s| (s as usize) < slots)
        }))
        .filter_map(|d| mounted_config_map(d).map(str::to_owned))
        .collect();
    used.insert(children.config_map.name_any());
    let Some(bridge) = children.config_map.labels().get(BRIDGE_LABEL).cloned() else {
        return Ok(());
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default()
        .labels(&format!("{BRIDGE_LABEL}={bridge}"))
        .match_any();
    let listed = api.list_metadata(&params).await.map_err(|e| {
        Error::step(
            "list ConfigMaps of bridge",
            format!("{namespace}/{bridge}"),
            e,
        )
    })?;
    for cm in listed.items {
        let ours = cm.owner_references().iter().any(|o| o.uid == bridge_uid);
        let name = cm.name_any();
        if ours && !used.contains(&name) {
            tracing::info!(config_map = %name, "deleting a configuration no slot uses");
            delete(&api, namespace, &name, "delete unused ConfigMap").await?;
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
    api.list(&params)
        .await
        .map(|l| l.items)
        .map_err(|e| Error::step("list slot Deployments of bridge", bridge_name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(pairs: &[(&str, &str)]) -> ChildVersions {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn applied() -> (Applied, Instant) {
        let at = Instant::now();
        let applied = Applied {
            children_hash: 42,
            versions: versions(&[
                ("ConfigMap/b-config", "100"),
                ("Service/b", "101"),
                ("Deployment/b-0", "1"),
            ]),
            at,
        };
        (applied, at)
    }

    #[test]
    fn nothing_changed_is_current() {
        let (a, at) = applied();
        assert!(a.is_current(42, &a.versions.clone(), at + Duration::from_secs(1)));
    }

    #[test]
    fn a_new_build_is_applied() {
        let (a, at) = applied();
        assert!(!a.is_current(43, &a.versions.clone(), at));
    }

    #[test]
    fn a_hand_edit_is_undone() {
        let (a, at) = applied();
        let mut edited_deployment = a.versions.clone();
        edited_deployment.insert("Deployment/b-0".into(), "2".into());
        assert!(!a.is_current(42, &edited_deployment, at));
        let mut edited_cm = a.versions.clone();
        edited_cm.insert("ConfigMap/b-config".into(), "130".into());
        assert!(!a.is_current(42, &edited_cm, at));
        let mut deleted = a.versions.clone();
        deleted.remove("Service/b");
        assert!(!a.is_current(42, &deleted, at));
    }

    #[test]
    fn a_surplus_slot_is_not_current() {
        let (a, at) = applied();
        let mut surplus = a.versions.clone();
        surplus.insert("Deployment/b-1".into(), "1".into());
        assert!(!a.is_current(42, &surplus, at));
    }

    #[test]
    fn everything_is_applied_again_after_a_while() {
        let (a, at) = applied();
        assert!(!a.is_current(42, &a.versions.clone(), at + Applied::MAX_AGE));
    }

    #[test]
    fn only_an_allocated_cluster_ip_is_kept() {
        let spec = |ip: Option<&str>| ServiceSpec {
            cluster_ip: ip.map(str::to_owned),
            ..Default::default()
        };
        assert!(keeps_cluster_ip(&spec(Some("10.0.0.12"))));
        assert!(!keeps_cluster_ip(&spec(Some("None"))));
        assert!(!keeps_cluster_ip(&spec(None)));
    }

    #[test]
    fn unknown_bridges_are_applied() {
        let by_bridge = AppliedByBridge::default();
        assert!(!by_bridge.is_current("uid-1", 42, &ChildVersions::new()));
        by_bridge.record("uid-1", 42, ChildVersions::new());
        assert!(by_bridge.is_current("uid-1", 42, &ChildVersions::new()));
        assert!(!by_bridge.is_current("uid-2", 42, &ChildVersions::new()));
    }
}
