//! The reconcile loop: resolve → validate → build → apply → status, plus
//! the watches that trigger it and the per-object backoff on failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crds::MqttKafkaBridge;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::apply::{
    AppliedByBridge, FIELD_MANAGER, apply_children, children_hash, live_versions, slot_deployments,
};
use crate::build::{self, BRIDGE_LABEL, BuildSettings, MANAGER, pod_selector};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe;
use crate::resolve::{referenced_secret_names, resolve};
use crate::rollout::{self, Rollout};
use crate::status::{self, READY};
use crate::validate::validate;

/// Shared state of all reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Build settings (default image).
    pub settings: BuildSettings,
    /// Event recorder.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Consecutive transient failures per bridge, for exponential backoff.
    pub failures: Failures,
    /// What was last applied per bridge, to skip applies that change nothing.
    pub applied: AppliedByBridge,
}

impl Context {
    /// Drops what is remembered about a bridge that is deleted or being deleted.
    fn forget(&self, bridge: &MqttKafkaBridge) {
        self.failures.clear(&ObjectRef::from_obj(bridge));
        self.metrics
            .forget_bridge(&bridge.namespace().unwrap_or_default(), &bridge.name_any());
        if let Some(uid) = bridge.uid() {
            self.applied.forget(&uid);
        }
    }
}

/// Consecutive transient failures per bridge.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<ObjectRef<MqttKafkaBridge>, u32>>);

impl Failures {
    /// Counts one more failure; returns how many in a row.
    pub fn record(&self, bridge: &ObjectRef<MqttKafkaBridge>) -> u32 {
        let Ok(mut f) = self.0.lock() else { return 1 };
        let n = f.entry(bridge.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of a bridge (it reconciled, or is gone).
    pub fn clear(&self, bridge: &ObjectRef<MqttKafkaBridge>) {
        if let Ok(mut f) = self.0.lock() {
            f.remove(bridge);
        }
    }

    /// Keeps only the bridges `exists` knows (after a re-list, deletions
    /// missed while the watch was down).
    pub fn retain(&self, exists: impl Fn(&ObjectRef<MqttKafkaBridge>) -> bool) {
        if let Ok(mut f) = self.0.lock() {
            f.retain(|k, _| exists(k));
        }
    }

    /// How many bridges have failures on record.
    pub fn len(&self) -> usize {
        self.0.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Whether no bridge has failures on record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Requeue interval of a bridge that is not Ready yet (a pod's termination
/// message does not change any watched object).
const NOT_READY_REQUEUE: Duration = Duration::from_secs(15);
/// Periodic resync of a bridge with a user error (a fix triggers a reconcile).
const RESYNC: Duration = Duration::from_secs(600);
/// A Ready bridge's pods are asked for their reports this often: messages
/// dropped or refused change no watched object.
const SELF_REPORT_REQUEUE: Duration = Duration::from_secs(60);
/// Triggers of one bridge within this window make one reconcile: creating a
/// bridge sets off a burst (its ConfigMap, Deployment and every Deployment
/// status step, its own status patch), and with 500 bridges reconciling each
/// of those separately kept the apiserver busy for over a minute.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Reconciles one bridge.
#[tracing::instrument(skip_all, fields(bridge = %bridge.name_any(), namespace = bridge.namespace().unwrap_or_default()))]
pub async fn reconcile(bridge: Arc<MqttKafkaBridge>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&bridge, &ctx).await;
    // A bridge left not Ready by a user error failed too, with its reason.
    let failure = match &result {
        Ok((_, user_error)) => *user_error,
        Err(e) => Some(e.reason()),
    };
    ctx.metrics.observe(started.elapsed(), failure);
    if result.is_ok() {
        ctx.failures.clear(&ObjectRef::from_obj(bridge.as_ref()));
    }
    result.map(|(action, _)| action)
}

/// The next action, and the reason of a user error that keeps the bridge
/// from being reconciled as specified.
async fn reconcile_inner(
    bridge: &MqttKafkaBridge,
    ctx: &Context,
) -> Result<(Action, Option<&'static str>)> {
    let ns = bridge
        .namespace()
        .ok_or_else(|| Error::missing(bridge, "metadata.namespace"))?;
    let name = bridge.name_any();
    let client = &ctx.client;

    // Being deleted: its children go with it (owner references); applying
    // them again would only recreate what the garbage collector removes.
    if bridge.metadata.deletion_timestamp.is_some() {
        ctx.forget(bridge);
        return Ok((Action::await_change(), None));
    }

    // Resolve and validate; a user error leaves the running children alone.
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let outcome = match resolve(&secrets_api, &bridge.spec).await {
        Ok(secrets) => validate(bridge, secrets),
        Err(e) => Err(e),
    };
    let deployments_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list_pods = || async {
        let params = ListParams::default()
            .labels(&pod_selector(&name))
            .match_any();
        pods_api
            .list(&params)
            .await
            .map(|l| l.items)
            .map_err(|e| Error::step("list the bridge's pods", &name, e))
    };
    let mut pods = None;
    // The slot Deployments as listed, still current for the status unless
    // this reconcile applied something.
    let mut listed = None;
    let mut rollout = Rollout::Complete;
    let user_error = match outcome {
        Ok(validated) => {
            let children = build::build(&validated, &ctx.settings)?;
            let uid = bridge
                .uid()
                .ok_or_else(|| Error::missing(bridge, "metadata.uid"))?;
            let existing = slot_deployments(&deployments_api, &name).await?;
            let slot_pods = list_pods().await?;
            let plan = rollout::plan(&children.deployments, &existing, &slot_pods);
            rollout = plan.state;
            let hash = children_hash(&children, &plan.apply);
            let live = live_versions(client, &ns, &children, &existing).await?;
            if hash.is_some_and(|h| ctx.applied.is_current(&uid, h, &live)) {
                listed = Some(existing);
                pods = Some(slot_pods);
            } else {
                let versions =
                    apply_children(client, &ns, &uid, &children, &plan.apply, &existing).await?;
                if let Some(h) = hash {
                    ctx.applied.record(&uid, h, versions);
                }
            }
            None
        }
        Err(e) if e.is_user_error() => Some(e),
        Err(e) => return Err(e),
    };

    let deployments = match listed {
        Some(d) => d,
        None => slot_deployments(&deployments_api, &name).await?,
    };
    let pods = match pods {
        Some(p) => p,
        None => list_pods().await?,
    };
    let reports = observe::pod_reports(&pods).await;
    let new = status::compute(
        bridge,
        &deployments,
        &pods,
        &reports,
        user_error.as_ref(),
        &rollout,
        status::now(),
    );
    let ready_condition = new.condition(READY);
    ctx.metrics.set_bridge_status(
        &ns,
        &name,
        ready_condition.is_some_and(|c| c.status == "True"),
        ready_condition.is_some_and(|c| c.reason == status::ROLLOUT_HALTED),
    );
    if bridge.status.as_ref() != Some(&new) {
        let api: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
        let patch = json!({
            "apiVersion": MqttKafkaBridge::api_version(&()),
            "kind": MqttKafkaBridge::kind(&()),
            "status": new,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::step("write the status of bridge", format!("{ns}/{name}"), e))?;
        publish_transition(bridge, &new, ctx).await;
    }

    let ready = new.condition(READY).is_some_and(|c| c.status == "True");
    let action = match (&user_error, ready) {
        // Secrets and the bridge are watched: a fix triggers a reconcile.
        (Some(_), _) => Action::requeue(RESYNC),
        (None, false) => Action::requeue(NOT_READY_REQUEUE),
        (None, true) => Action::requeue(SELF_REPORT_REQUEUE),
    };
    Ok((action, user_error.as_ref().map(Error::reason)))
}

/// Emits an event when the Ready condition's status or reason changed.
async fn publish_transition(
    bridge: &MqttKafkaBridge,
    new: &crds::MqttKafkaBridgeStatus,
    ctx: &Context,
) {
    let Some(now) = new.condition(READY) else {
        return;
    };
    let before = bridge.status.as_ref().and_then(|s| s.condition(READY));
    if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
        return;
    }
    let event = Event {
        type_: if now.status == "True" || now.reason == "Progressing" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: now.reason.clone(),
        note: Some(truncate(&now.message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &bridge.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// Exponential backoff per bridge: 2 s, 4 s, … up to 5 minutes.
pub fn error_policy(bridge: Arc<MqttKafkaBridge>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = ctx.failures.record(&ObjectRef::from_obj(bridge.as_ref()));
    let delay = backoff(attempts);
    tracing::warn!(bridge = %bridge.name_any(), reason = error.reason(), error = %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay after the `attempts`-th consecutive failure.
pub fn backoff(attempts: u32) -> Duration {
    let secs = 2u64.saturating_pow(attempts.clamp(1, 16));
    Duration::from_secs(secs.min(300))
}

/// Maps a Secret (its metadata) to the bridges in its namespace that reference it.
fn bridges_using(
    store: &Store<MqttKafkaBridge>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<MqttKafkaBridge>> {
    let (Some(ns), Some(name)) = (secret.namespace(), secret.metadata.name.as_ref()) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|b| b.namespace().as_deref() == Some(ns.as_str()))
        .filter(|b| referenced_secret_names(&b.spec).contains(name))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// Runs the controller until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let api = |c: &Client| -> Api<MqttKafkaBridge> {
        match namespace {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    };
    fn scoped<K>(c: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    }
    let managed = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={MANAGER},{BRIDGE_LABEL}"
    ));
    // The controller's reflector is built here so that readiness comes from
    // its InitDone: kube's `Store::wait_until_ready` keeps only the last
    // poller's waker, and the controller polls it too.
    let (store, writer) = reflector::store();
    let mut ready = Some(ready);
    let known = store.clone();
    let forgetting = ctx.clone();
    let bridges = reflector(writer, watcher(api(&client), watcher::Config::default()))
        .inspect(move |event| match event {
            Ok(watcher::Event::InitDone) => {
                forgetting.failures.retain(|b| known.get(b).is_some());
                if let Some(ready) = ready.take() {
                    ready();
                }
            }
            Ok(watcher::Event::Delete(bridge)) => forgetting.forget(bridge),
            _ => {}
        })
        .applied_objects();
    let controller = Controller::for_stream(bridges, store.clone())
        .with_config(controller::Config::default().debounce(DEBOUNCE));
    // Secrets: metadata only. A change of any Secret in scope only needs to
    // name the bridges to reconcile; each reconcile then reads just the
    // Secrets its bridge references. A full watch would stream every value
    // of every Secret in scope into the operator.
    // (`Api<PartialObjectMeta<_>>` makes metadata-only list and watch requests.)
    let secrets = watcher(
        scoped::<PartialObjectMeta<Secret>>(&client, namespace),
        watcher::Config::default(),
    )
    .touched_objects();
    controller
        .owns(scoped::<Deployment>(&client, namespace), managed.clone())
        .owns(scoped::<ConfigMap>(&client, namespace), managed)
        .watches_stream(secrets, move |secret| bridges_using(&store, &secret))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(bridge = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }

    #[test]
    fn failures_count_up_and_forget_gone_bridges() {
        let failures = Failures::default();
        let a = ObjectRef::<MqttKafkaBridge>::new("a").within("ns");
        let b = ObjectRef::<MqttKafkaBridge>::new("b").within("ns");
        assert_eq!(failures.record(&a), 1);
        assert_eq!(failures.record(&a), 2);
        assert_eq!(failures.record(&b), 1);
        failures.clear(&a);
        assert_eq!(failures.record(&a), 1);
        failures.retain(|r| r == &a);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures.record(&b), 1, "b was forgotten");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
