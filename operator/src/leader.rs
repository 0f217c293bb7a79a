//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one of
//! several operator replicas reconciles. A replica that cannot renew its
//! lease in time stops reconciling (the process then exits and restarts);
//! one that shuts down releases the lease so a standby takes over at once.
//!
//! Expiry is judged as client-go does: by this replica's own clock since it
//! last saw the lease record change, never by comparing the holder's
//! `renewTime` with the local time, so clocks that disagree between nodes
//! cannot make two replicas lead at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};

/// Lease parameters.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// The lease record as this replica last saw it, and when by its own
/// monotonic clock (client-go's `observedRecord` and `observedTime`).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// resourceVersion of the lease last seen: it changes with every write
    /// of the record (a renewal, a new holder, a release).
    resource_version: Option<String>,
    /// When that version was first seen.
    at: Option<Instant>,
}

impl Observed {
    /// Notes the lease as seen at `now`; returns when its record last changed.
    pub fn see(&mut self, resource_version: Option<&str>, now: Instant) -> Instant {
        match self.at {
            Some(at) if self.resource_version.as_deref() == resource_version => at,
            _ => {
                self.resource_version = resource_version.map(str::to_owned);
                self.at = Some(now);
                now
            }
        }
    }
}

/// Whether `identity` may take or renew a lease whose record last changed
/// at `changed` (local clock), at `now`.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, changed: Instant, now: Instant) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
    now.saturating_duration_since(changed) > Duration::from_secs(duration)
}

/// One attempt to acquire or renew; `Ok(true)` when we hold the lease.
pub async fn try_acquire(
    api: &Api<Lease>,
    s: &LeaseSettings,
    observed: &mut Observed,
) -> Result<bool> {
    // Written into the lease for humans and other tools; never compared.
    let now = Timestamp::now();
    let seconds = i32::try_from(s.duration.as_secs()).unwrap_or(15);
    let lease_error = |e| Error::Lease(s.name.clone(), e);
    match api.get_opt(&s.name).await.map_err(lease_error)? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(lease_error(e)),
            }
        }
        Some(mut lease) => {
            let seen_at = Instant::now();
            let changed = observed.see(lease.metadata.resource_version.as_deref(), seen_at);
            if !may_take(lease.spec.as_ref(), &s.identity, changed, seen_at) {
                return Ok(false);
            }
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
                spec.holder_identity = Some(s.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            // The resourceVersion makes this a compare-and-swap.
            match api.replace(&s.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(lease_error(e)),
            }
        }
    }
}

/// The lease, held: renewed in the background until lost or released.
pub struct Leadership {
    held: watch::Receiver<bool>,
    release: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves once the lease is lost (never while it is held).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut held = self.held.clone();
        async move {
            // An error means the renewal task ended: the lease is gone.
            while *held.borrow_and_update() {
                if held.changed().await.is_err() {
                    break;
                }
            }
        }
    }

    /// Stops renewing and hands the lease back, so a standby takes over at
    /// its next attempt instead of waiting for the lease to expire.
    pub async fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("releasing the lease timed out");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Dropped without release (e.g. the future running the operator was
        // cancelled): stop renewing, or a dead operator would keep the lease.
        self.task.abort();
    }
}

/// Blocks until this replica leads, then keeps renewing in the background.
pub async fn acquire(client: Client, s: LeaseSettings) -> Result<Leadership> {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let retry = s.duration / 3;
    let mut observed = Observed::default();
    loop {
        match try_acquire(&api, &s, &mut observed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(retry).await;
    }
    tracing::info!(lease = %s.name, identity = %s.identity, "leading");
    let (tx, rx) = watch::channel(true);
    let (release_tx, mut release_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                _ = &mut release_rx => {
                    let _ = tx.send(false);
                    match release(&api, &s).await {
                        Ok(()) => tracing::info!(lease = %s.name, "released the lease"),
                        Err(e) => tracing::warn!(error = %e, "releasing the lease failed"),
                    }
                    return;
                }
            }
            match try_acquire(&api, &s, &mut observed).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
            // Stop before another replica may take over.
            if last_renewal.elapsed() > s.duration.saturating_sub(retry) {
                break;
            }
        }
        tracing::error!(lease = %s.name, "lost leadership");
        let _ = tx.send(false);
    });
    Ok(Leadership {
        held: rx,
        release: Some(release_tx),
        task,
    })
}

/// Empties the holder of a lease we hold (as client-go's ReleaseOnCancel).
async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<()> {
    let lease_error = |e| Error::Lease(s.name.clone(), e);
    let Some(mut lease) = api.get_opt(&s.name).await.map_err(lease_error)? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    // A conflict means someone else wrote it after us: nothing to release.
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(lease_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_counts_from_the_last_change_seen_locally() {
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            // The holder's clock may be anywhere: it is never compared.
            renew_time: Some(MicroTime(Timestamp::from_second(0).unwrap())),
            ..Default::default()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut observed = Observed::default();
        let changed = observed.see(Some("10"), t0);
        assert_eq!(changed, t0);
        assert!(may_take(Some(&spec), "a", changed, t0 + s(1)), "own lease");
        assert!(!may_take(Some(&spec), "b", changed, t0 + s(10)));
        // Renewed (a new resourceVersion) at t0+10: the 15 s start again.
        let changed = observed.see(Some("11"), t0 + s(10));
        assert!(!may_take(Some(&spec), "b", changed, t0 + s(20)));
        // Seen unchanged later: still counted from t0+10.
        let changed = observed.see(Some("11"), t0 + s(24));
        assert_eq!(changed, t0 + s(10));
        assert!(may_take(Some(&spec), "b", changed, t0 + s(26)));
        assert!(may_take(None, "b", t0, t0));
        let released = LeaseSpec {
            holder_identity: None,
            ..spec
        };
        assert!(may_take(Some(&released), "b", t0, t0));
    }
}
