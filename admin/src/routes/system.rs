//! The open endpoints: liveness, readiness (database and, when configured, Redis), Prometheus
//! metrics, the hub CA certificate and the OpenAPI document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use crate::AdminState;
use crate::openapi::OPENAPI_YAML;

/// How long readiness waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether every dependency answered.
    pub ready: bool,
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// `ok`, `unreachable` or `not_configured`.
    pub redis: &'static str,
}

/// `GET /readyz`: 200 when the database (and Redis, when configured) answer, else 503.
pub async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let database = match tokio::time::timeout(READY_TIMEOUT, s.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, kind = e.kind(), "readiness: database unreachable");
            "unreachable"
        }
        Err(_) => {
            tracing::warn!("readiness: database did not answer in time");
            "unreachable"
        }
    };
    let redis = match &s.redis {
        None => "not_configured",
        Some(client) => match tokio::time::timeout(READY_TIMEOUT, ping_redis(client)).await {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: redis unreachable");
                "unreachable"
            }
            Err(_) => {
                tracing::warn!("readiness: redis did not answer in time");
                "unreachable"
            }
        },
    };
    let ready = database == "ok" && redis != "unreachable";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            database,
            redis,
        }),
    )
}

async fn ping_redis(client: &redis::Client) -> redis::RedisResult<()> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async::<()>(&mut conn).await
}

/// `GET /metrics`: the admin's own metrics (see [`crate::metrics`]). No token, as Prometheus
/// scrapes it: the admin's NetworkPolicy admits only operators and the monitoring namespace.
pub async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.render(),
    )
}

/// `GET /api/v1/integrations/ca.pem`: the CA modules must trust.
pub async fn ca_pem(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.ca_pem.to_string(),
    )
}

/// `GET /api/v1/openapi.yaml`: the contract this service is tested against.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}
