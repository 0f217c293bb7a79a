//! What the bridge pods say about themselves: each running pod's
//! [`BridgeReport`] (`GET /report`; the kubelet keeps only the status code of
//! `/readyz`). It names what refuses a route's messages (an ACL not granted,
//! a missing topic) and counts undeliverable messages dropped for want of a
//! dead-letter topic, which [`crate::status`] turns into the bridge's Ready
//! message and its `MessagesDropped` condition.
//!
//! I/O at the edge: one short HTTP GET per running pod, in parallel, to the
//! pod's `http` container port; a pod that does not answer is left out.

use std::time::Duration;

use crds::report::{BridgeReport, REPORT_PATH};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;

/// How long one pod may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest report read.
const MAX_BODY: usize = 16 * 1024;

/// One pod's own account of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    /// Pod name.
    pub pod: String,
    /// What it said.
    pub report: BridgeReport,
}

/// The `http` container port and IP of a running pod.
fn address(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))?
        .container_port;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// Asks every running pod for its report.
pub async fn pod_reports(pods: &[Pod]) -> Vec<PodReport> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let asks = pods.iter().filter_map(|pod| {
        let address = address(pod)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let client = client.clone();
        Some(async move {
            let uri: hyper::Uri = format!("http://{address}{REPORT_PATH}").parse().ok()?;
            let answer = tokio::time::timeout(TIMEOUT, async {
                let response = client.get(uri).await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let body = Limited::new(response.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                serde_json::from_slice::<BridgeReport>(&body).ok()
            })
            .await
            .ok()
            .flatten();
            if answer.is_none() {
                tracing::debug!(pod = name, address, "no report");
            }
            answer.map(|report| PodReport { pod: name, report })
        })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: Option<&str>, port: Option<i32>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-0-x"},
            "spec": {"containers": [{
                "name": "bridge",
                "ports": port.map(|p| vec![serde_json::json!({"name": "http", "containerPort": p})]).unwrap_or_default(),
            }]},
            "status": {"phase": phase, "podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn only_running_pods_with_an_http_port_are_asked() {
        assert_eq!(
            address(&pod("Running", Some("10.0.0.7"), Some(8080))).as_deref(),
            Some("10.0.0.7:8080")
        );
        assert_eq!(
            address(&pod("Running", Some("fd00::7"), Some(8081))).as_deref(),
            Some("[fd00::7]:8081")
        );
        assert_eq!(address(&pod("Pending", Some("10.0.0.7"), Some(8080))), None);
        assert_eq!(address(&pod("Running", None, Some(8080))), None);
        assert_eq!(address(&pod("Running", Some("10.0.0.7"), None)), None);
    }

    /// Against a real HTTP endpoint (a local listener standing in for a pod).
    #[tokio::test]
    async fn reads_status_and_body_and_skips_silent_pods() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let said = BridgeReport {
            ready: false,
            not_ready: vec!["kafka not reachable".into()],
            refusals: Vec::new(),
            dropped: Some(crds::report::DropReport {
                count: 2,
                route: "r".into(),
                reason: "too_large".into(),
                seconds_ago: 1,
            }),
        };
        let body = serde_json::to_string(&said).unwrap();
        let app =
            axum::Router::new().route(REPORT_PATH, axum::routing::get(move || async move { body }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let reports = pod_reports(&[
            pod("Running", Some("127.0.0.1"), Some(i32::from(port))),
            pod("Running", Some("127.0.0.1"), Some(i32::from(silent_port))),
        ])
        .await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].report, said);
        drop(silent);
    }
}
