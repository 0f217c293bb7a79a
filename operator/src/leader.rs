//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one of
//! several operator replicas reconciles. A replica that cannot renew its
//! lease in time stops reconciling (the process then exits and restarts).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

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

/// Holder decision for a lease observed at `now`.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(renewed)) => renewed.as_second() + duration < now.as_second(),
        None => true,
    }
}

/// One attempt to acquire or renew; `Ok(true)` when we hold the lease.
pub async fn try_acquire(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool> {
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
            if !may_take(lease.spec.as_ref(), &s.identity, now) {
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

/// Blocks until this replica leads, then keeps renewing in the background.
/// The returned receiver turns `false` once the lease is lost.
pub async fn acquire(client: Client, s: LeaseSettings) -> Result<watch::Receiver<bool>> {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let retry = s.duration / 3;
    loop {
        match try_acquire(&api, &s).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(retry).await;
    }
    tracing::info!(lease = %s.name, identity = %s.identity, "leading");
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(retry).await;
            match try_acquire(&api, &s).await {
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
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_or_own_leases_may_be_taken() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(100))),
            ..Default::default()
        };
        assert!(may_take(Some(&spec), "a", t(101)));
        assert!(!may_take(Some(&spec), "b", t(110)));
        assert!(may_take(Some(&spec), "b", t(116)));
        assert!(may_take(None, "b", t(0)));
    }
}
