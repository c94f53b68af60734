//! The Integration Hub admin service: the operators' REST API (providers, health, DLQ, jobs),
//! plus `/healthz`, `/readyz` and the hub CA certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hub_core::secret::SecretString;
use hub_core::store::Store;
use hub_core::vault::Vault;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler shares.
#[derive(Clone)]
pub struct AdminState {
    /// Registry and DLQ persistence.
    pub store: Arc<dyn Store>,
    /// Credential encryption.
    pub vault: Arc<Vault>,
    /// The hub CA certificate (PEM) modules must trust.
    pub ca_pem: Arc<str>,
    /// The bootstrap admin token.
    pub admin_token: SecretString,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/integrations/ca.pem", get(ca_pem))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, kind = e.kind(), "readiness: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
        }
    }
}

async fn ca_pem(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.ca_pem.to_string(),
    )
}

/// Serves the admin API on `listener` until `shutdown` flips to `true`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
