//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (200 while
//! the process is sound; 503 with the reason once a supervisor gave up or
//! the pipeline is wedged: no committed cycle for `wedged_after_intervals`
//! commit intervals while input waits and the database breaker is not open)
//! and `/readyz` (200 while the producer is ready and the circuit breaker is
//! not open, else 503: take no traffic, but no restart needed).
//!
//! Guarantees: the endpoints only read shared atomics; they never block the
//! pipeline.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use onceflow_actors::PipelineStatus;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Binds `addr` (port 0: any free port) and serves until `shutdown` is
/// cancelled; returns the task and the address actually bound, which the
/// caller logs (`http endpoint listening addr=…`) so that a supervisor or a
/// test harness that asked for port 0 can find the endpoint.
pub async fn serve(
    addr: SocketAddr,
    status: PipelineStatus,
    shutdown: CancellationToken,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(status);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "http server failed");
        }
    });
    Ok((task, bound))
}

async fn metrics(State(status): State<PipelineStatus>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        status.metrics().encode(),
    )
}

async fn healthz(State(status): State<PipelineStatus>) -> impl IntoResponse {
    match status.unhealthy_reason() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn readyz(State(status): State<PipelineStatus>) -> impl IntoResponse {
    if status.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
