//! Reconciles `MqttKafkaBridge` resources into running bridge-runtime pods.
//!
//! One file per step of a reconcile: [`resolve`] (read referenced Secrets) →
//! [`validate`] (`bridge_core`'s rules, into a `ValidatedBridge`) → [`build`]
//! (pure child objects) → [`rollout`] (which slots get the change now) →
//! [`apply`] (server-side apply) → [`observe`] (what the pods say of
//! themselves) → [`status`] (conditions). [`controller`]
//! wires them to the watches; [`run`] is the whole operator process minus
//! argument parsing, so tests can run it in-process with any client.

#![forbid(unsafe_code)]

pub mod apply;
pub mod build;
pub mod controller;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod resolve;
pub mod rollout;
pub mod status;
pub mod validate;

#[cfg(test)]
mod fixtures;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crds::MqttKafkaBridge;
use futures::FutureExt;
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};

pub use error::{Error, Result};

/// Operator settings (from flags or environment in `main.rs`).
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Image of bridges that do not name one.
    pub default_image: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`; none when `None`.
    pub http_address: Option<SocketAddr>,
    /// Lease to lead on before reconciling; `None` runs without election.
    pub leader_election: Option<leader::LeaseSettings>,
    /// Name reported on events.
    pub instance: String,
}

/// Fails with [`Error::CrdNotInstalled`] unless the CRD is served, or with
/// [`Error::CrdForbidden`] when RBAC does not let the operator list bridges.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<()> {
    let api: Api<MqttKafkaBridge> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        // An unknown group or version is a bare 404 (not a Status object).
        Err(kube::Error::Api(e)) if e.code == 404 => Err(Error::CrdNotInstalled),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(Error::CrdForbidden(e.message.clone())),
        Err(e) => Err(e.into()),
    }
}

/// Runs the operator until `shutdown` resolves or leadership is lost.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_crd(&client, config.namespace.as_deref()).await?;
    let metrics = metrics::Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown.shared();

    let http_task = match config.http_address {
        Some(address) => {
            let (bound, task) =
                http::serve(address, ready.clone(), metrics.clone(), shutdown.clone()).await?;
            tracing::info!(%bound, "serving /healthz, /readyz, /metrics");
            Some(task)
        }
        None => None,
    };

    let mut leadership = None;
    if let Some(lease) = config.leader_election.clone() {
        tokio::select! {
            held = leader::acquire(client.clone(), lease) => leadership = Some(held?),
            () = shutdown.clone() => return Ok(()),
        }
    }
    let lost_flag = Arc::new(AtomicBool::new(false));
    let lost = leadership.as_ref().map(leader::Leadership::lost);
    let stop = {
        let shutdown = shutdown.clone();
        let lost_flag = lost_flag.clone();
        async move {
            let lost = async move {
                match lost {
                    Some(lost) => lost.await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = shutdown => {},
                () = lost => {
                    tracing::error!("stopping: leadership lost");
                    lost_flag.store(true, Ordering::Relaxed);
                }
            }
        }
    };

    let ctx = Arc::new(controller::Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "mqtt-kafka-operator".into(),
                instance: Some(config.instance.clone()),
            },
        ),
        client,
        settings: build::BuildSettings {
            default_image: config.default_image.clone(),
        },
        metrics,
        failures: Default::default(),
        applied: Default::default(),
    });
    let ready_flag = ready.clone();
    controller::run_controller(
        ctx,
        config.namespace.as_deref(),
        move || ready_flag.store(true, Ordering::Relaxed),
        stop,
    )
    .await;
    ready.store(false, Ordering::Relaxed);
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    if let Some(task) = http_task {
        task.abort();
    }
    if lost_flag.load(Ordering::Relaxed) {
        // Exit non-zero so the pod restarts and campaigns again.
        return Err(Error::LeadershipLost);
    }
    Ok(())
}
