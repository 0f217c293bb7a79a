//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::error::BridgeError;
use crate::metrics::Observability;

/// Binds the listener (so a bad address fails at start) and serves until shutdown.
pub async fn serve(
    address: &str,
    observability: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, BridgeError> {
    let listener =
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| BridgeError::HttpListen {
                address: address.to_owned(),
                message: e.to_string(),
            })?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(bridge_core::report::REPORT_PATH, get(report))
        .route("/metrics", get(metrics))
        .with_state(observability);
    Ok(tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP endpoint failed");
        }
    }))
}

async fn healthz(State(o): State<Arc<Observability>>) -> impl IntoResponse {
    if o.health.alive(Duration::from_secs(30)) {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "an event loop stopped turning\n".to_owned(),
        )
    }
}

/// 200 `ready` or 503 `not ready: <what>, <what>`; a second line says how
/// many undeliverable messages were dropped (routes without a dead-letter
/// topic). For people; the operator reads the same from `/report`.
async fn readyz(State(o): State<Arc<Observability>>) -> impl IntoResponse {
    let missing = o.health.not_ready();
    let drops = o
        .health
        .drops()
        .map(|d| format!("{d}\n"))
        .unwrap_or_default();
    if missing.is_empty() {
        (StatusCode::OK, format!("ready\n{drops}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n{drops}", missing.join(", ")),
        )
    }
}

/// The bridge's own account of itself, as JSON, for the operator.
async fn report(State(o): State<Arc<Observability>>) -> impl IntoResponse {
    let body = serde_json::to_string(&o.health.report()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(o): State<Arc<Observability>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        o.metrics.encode(),
    )
}
