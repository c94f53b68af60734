//! The Integration Hub admin service: the operators' REST API under `/api/v1/integrations`
//! (providers, health, explicit calls, the DLQ, asynchronous jobs, API tokens, the audit
//! trail), plus `/healthz`, `/readyz`, `/metrics`, the hub CA certificate and the OpenAPI
//! document.
//!
//! - [`routes`]: the route table (one constant drives the router, the docs and the drift test)
//!   and the handlers, one module per resource.
//! - [`auth`]: bearer tokens, roles, the per-route access check.
//! - [`scope`]: what a token scoped to one tenant sees and changes (the one rule).
//! - [`error`]: [`ApiError`], answered as `application/problem+json`.
//! - [`extract`]: request extractors that turn bad input into 4xx problems, never 5xx.
//! - [`metrics`]: the service's own Prometheus registry: request counts and latency by route
//!   template, and the DLQ/jobs gauges refreshed from the database in the background.
//! - [`openapi`]: the contract, `api/openapi.yaml`, served as is.

pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod scope;
#[cfg(test)]
mod testkit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hub_core::dlq::Dlq;
use hub_core::jobs::Jobs;
use hub_core::secret::SecretString;
use hub_core::state::SharedState;
use hub_core::store::Store;
use hub_core::vault::Vault;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use routes::{ROUTES, Route, router};

/// Largest request body accepted (413 above it).
pub const BODY_LIMIT: usize = 256 * 1024;

/// A problem setting up the admin service.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The proxy URL for `POST /call` is unusable.
    #[error("invalid admin proxy url {url:?}: {message}")]
    ProxyUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The Redis URL does not parse.
    #[error("invalid redis url: {0}")]
    RedisUrl(#[source] redis::RedisError),
}

/// What every handler shares. Cheap to clone (handles and `Arc`s).
#[derive(Clone)]
pub struct AdminState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) vault: Arc<Vault>,
    pub(crate) ca_pem: Arc<str>,
    /// SHA-256 of the bootstrap token (the token itself is not kept).
    pub(crate) bootstrap_hash: Option<[u8; 32]>,
    pub(crate) shared_state: Option<Arc<dyn SharedState>>,
    /// Where the proxy records OAuth2 token statuses (Redis, or the proxy in this process).
    pub(crate) token_share: Option<Arc<dyn hub_core::oauth::share::TokenShare>>,
    pub(crate) default_rate_limit: u32,
    pub(crate) redis: Option<redis::Client>,
    pub(crate) proxy: Option<routes::call::ProxyClient>,
    pub(crate) dlq: Dlq,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) metrics: Arc<metrics::AdminMetrics>,
    pub(crate) gauge_period: Duration,
}

impl AdminState {
    /// The state for a store, vault, CA certificate (PEM), bootstrap admin token (an empty
    /// token authenticates nothing), and the DLQ and jobs services of the hub database
    /// (`hub_core::jobs::Background` has both). `POST /call` answers 503 until
    /// [`Self::with_proxy`], health reports no breaker until [`Self::with_shared_state`].
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        ca_pem: impl Into<Arc<str>>,
        admin_token: &SecretString,
        dlq: Dlq,
        jobs: Arc<Jobs>,
    ) -> Self {
        Self {
            store,
            vault,
            ca_pem: ca_pem.into(),
            bootstrap_hash: auth::bootstrap_hash(admin_token),
            shared_state: None,
            token_share: None,
            default_rate_limit: hub_core::provider::DEFAULT_RATE_LIMIT_PER_SEC,
            redis: None,
            proxy: None,
            dlq,
            jobs,
            metrics: Arc::new(metrics::AdminMetrics::new()),
            gauge_period: metrics::GAUGE_PERIOD,
        }
    }

    /// The breaker and rate-limit state the proxy writes. Give it only when it is really the
    /// proxy's: the same in-process object (`hub up`) or Redis-backed. An admin service running
    /// apart from an in-process proxy cannot see its breakers and should report none.
    pub fn with_shared_state(mut self, state: Arc<dyn SharedState>) -> Self {
        self.shared_state = Some(state);
        self
    }

    /// Where OAuth2 token statuses are read from (`GET /providers/{id}`: `auth.token`).
    pub fn with_token_share(mut self, share: Arc<dyn hub_core::oauth::share::TokenShare>) -> Self {
        self.token_share = Some(share);
        self
    }

    /// The hub-wide default rate limit (`defaults.rate_limit_per_sec`), for health reports.
    pub fn with_default_rate_limit(mut self, per_sec: u32) -> Self {
        self.default_rate_limit = per_sec;
        self
    }

    /// Redis to check in `/readyz` (when the hub is configured with one).
    pub fn with_redis(mut self, url: &str) -> Result<Self, SetupError> {
        self.redis = Some(redis::Client::open(url).map_err(SetupError::RedisUrl)?);
        Ok(self)
    }

    /// How often [`serve`] refreshes the DLQ and jobs gauges from the database (default
    /// [`metrics::GAUGE_PERIOD`]; tests shorten it).
    pub fn with_gauge_period(mut self, period: Duration) -> Self {
        self.gauge_period = period;
        self
    }

    /// The hub proxy `POST /call` goes through (`http://host:port`).
    pub fn with_proxy(mut self, proxy_url: &str) -> Result<Self, SetupError> {
        let internal = self.vault.internal_caller_token();
        self.proxy = Some(routes::call::ProxyClient::new(proxy_url, &internal)?);
        Ok(self)
    }
}

/// Serves the admin API on `listener` until `shutdown` flips to `true`, and refreshes the
/// `/metrics` gauges from the database meanwhile ([`metrics::run_gauges`]).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tokio::spawn(metrics::run_gauges(state.clone(), shutdown.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
