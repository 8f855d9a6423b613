//! The status endpoint: `GET /status` (JSON, what `sluice-edge status` shows), `GET /metrics`
//! (Prometheus / OpenMetrics text) and `GET /health`. Read-only; it serves the agent's
//! [`Metrics`] and nothing else. Bind it to loopback unless a firewall protects it.

use crate::error::EdgeError;
use crate::metrics::{Metrics, Status};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

async fn status(State(metrics): State<Arc<Metrics>>) -> Json<Status> {
    Json(metrics.status())
}

async fn prometheus(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.prometheus(),
    )
}

async fn health() -> &'static str {
    "ok\n"
}

/// Binds `listen` and serves the endpoint on a task; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, JoinHandle<()>), EdgeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| EdgeError::Setup {
            what: format!("status endpoint on {listen}"),
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| EdgeError::Setup {
        what: format!("status endpoint on {listen}"),
        reason: e.to_string(),
    })?;
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(prometheus))
        .route("/health", get(health))
        .with_state(metrics);
    info!(%addr, "status endpoint listening");
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "status endpoint stopped");
        }
    });
    Ok((addr, task))
}

/// Fetches `/status` from a running agent at `addr` (for `sluice-edge status`).
pub fn fetch(addr: SocketAddr, timeout_ms: u64) -> Result<Status, String> {
    let url = format!("http://{addr}/status");
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_millis(timeout_ms)))
        .build()
        .new_agent();
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| format!("cannot reach the agent at {url}: {e}"))?;
    let body = response
        .body_mut()
        .with_config()
        .limit(4 << 20)
        .read_to_string()
        .map_err(|e| format!("reading {url}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{url} did not return a status: {e}"))
}
