//! The admin service's Prometheus metrics, in a registry of its own, served at `/metrics`.
//!
//! - `integration_admin_requests_total{route,method,code}` and
//!   `integration_admin_request_duration_seconds{route,method}`: every answer, labelled by the
//!   route template from [`ROUTES`] (`unmatched` for anything else), a fixed set of methods and
//!   the status code — never a concrete path, id or token, so the series stay bounded.
//! - `integration_dlq_depth{provider}` (unresolved entries: pending or queued),
//!   `integration_jobs{state}` and `integration_queue_lag_seconds` (how long the longest-waiting
//!   due DLQ replay or job has gone without a worker): read from the database by
//!   [`run_gauges`] every [`GAUGE_PERIOD`] — three aggregate queries — never per scrape.
//! - `integration_admin_gauge_refresh_errors_total` and
//!   `integration_admin_gauges_refreshed_timestamp_seconds`: whether those gauges are current
//!   (a failed refresh keeps the last values).
//!
//! `/metrics` needs no token (Prometheus scrapes it as it is): it must only be reachable from
//! the monitoring namespace and operators, which the admin's NetworkPolicy enforces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hub_core::dlq::{Dlq, DlqError};
use hub_core::jobs::{JobError, Jobs};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::watch;

use crate::AdminState;
use crate::routes::ROUTES;

/// How often [`run_gauges`] reads the DLQ and jobs gauges from the database.
pub const GAUGE_PERIOD: Duration = Duration::from_secs(10);
/// Longest a refresh may take before it counts as failed.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// The `route` label of requests no row of [`ROUTES`] matched.
pub const UNMATCHED: &str = "unmatched";
/// The media type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why the gauges could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Reading the DLQ failed.
    #[error("dlq: {0}")]
    Dlq(#[from] DlqError),
    /// Reading the jobs failed.
    #[error("jobs: {0}")]
    Jobs(#[from] JobError),
    /// The database did not answer within the refresh timeout.
    #[error("the database did not answer in time")]
    Timeout,
}

impl RefreshError {
    /// Stable label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dlq(e) => e.kind(),
            Self::Jobs(e) => e.kind(),
            Self::Timeout => "timeout",
        }
    }
}

/// Every admin metric, in the admin's own registry.
pub struct AdminMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    dlq_depth: IntGaugeVec,
    jobs: IntGaugeVec,
    queue_lag: Gauge,
    refresh_errors: IntCounter,
    refreshed_at: Gauge,
    /// Providers the depth gauge has shown: one whose entries are all gone drops to 0 rather
    /// than keeping its last value.
    shown: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for AdminMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminMetrics").finish_non_exhaustive()
    }
}

impl Default for AdminMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl AdminMetrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        let opts = Opts::new;
        Self {
            requests: register(
                &r,
                IntCounterVec::new(
                    opts(
                        "integration_admin_requests_total",
                        "Admin API answers by route template, method and status code",
                    ),
                    &["route", "method", "code"],
                )
                .expect("valid metric"),
            ),
            duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "integration_admin_request_duration_seconds",
                        "Admin API answer time by route template and method",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route", "method"],
                )
                .expect("valid metric"),
            ),
            dlq_depth: register(
                &r,
                IntGaugeVec::new(
                    opts(
                        "integration_dlq_depth",
                        "Unresolved (pending or queued) DLQ entries per provider",
                    ),
                    &["provider"],
                )
                .expect("valid metric"),
            ),
            jobs: register(
                &r,
                IntGaugeVec::new(
                    opts("integration_jobs", "Asynchronous jobs by state"),
                    &["state"],
                )
                .expect("valid metric"),
            ),
            queue_lag: register(
                &r,
                Gauge::new(
                    "integration_queue_lag_seconds",
                    "How long the longest-waiting due DLQ replay or job has gone without a worker",
                )
                .expect("valid metric"),
            ),
            refresh_errors: register(
                &r,
                IntCounter::new(
                    "integration_admin_gauge_refresh_errors_total",
                    "Failed refreshes of the DLQ and jobs gauges (the last values are kept)",
                )
                .expect("valid metric"),
            ),
            refreshed_at: register(
                &r,
                Gauge::new(
                    "integration_admin_gauges_refreshed_timestamp_seconds",
                    "When the DLQ and jobs gauges were last read from the database (Unix time)",
                )
                .expect("valid metric"),
            ),
            shown: Mutex::new(BTreeSet::new()),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn observe(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let method = method_label(method);
        self.requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Reads the DLQ depth per provider, the jobs per state and the queue lag (three aggregate
    /// queries) and sets the gauges.
    pub async fn refresh(&self, dlq: &Dlq, jobs: &Jobs) -> Result<(), RefreshError> {
        let depths = dlq.depth_by_provider().await?;
        let states = jobs.count_by_status().await?;
        let lag = dlq.replay_lag().await?.max(jobs.queue_lag().await?);

        // A renamed or re-created provider may have entries under two ids: one series per name.
        let mut by_name = BTreeMap::<String, u64>::new();
        for d in depths {
            *by_name.entry(d.provider).or_default() += d.depth;
        }
        {
            let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
            for gone in shown.iter().filter(|p| !by_name.contains_key(*p)) {
                self.dlq_depth.with_label_values(&[gone.as_str()]).set(0);
            }
            for (provider, depth) in &by_name {
                self.dlq_depth
                    .with_label_values(&[provider.as_str()])
                    .set(i64::try_from(*depth).unwrap_or(i64::MAX));
                shown.insert(provider.clone());
            }
        }
        for (state, n) in states {
            self.jobs
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.queue_lag.set(lag.as_secs_f64());
        self.refreshed_at
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        Ok(())
    }
}

/// The method label: the standard methods, else `OTHER` (a bounded set whatever clients send).
fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// The route label: the template of the [`ROUTES`] row axum matched, else [`UNMATCHED`].
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|m| ROUTES.iter().find(|r| r.path == m.as_str()))
        .map_or(UNMATCHED, |r| r.path)
}

/// Middleware: counts and times every answer (401, 403, 404 and 405 included).
pub async fn track(State(m): State<Arc<AdminMetrics>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.observe(route, &method, resp.status(), start.elapsed());
    resp
}

/// Refreshes the gauges every `state`'s gauge period until `shutdown` flips to `true`. A
/// failed refresh keeps the last values, counts an error and is logged once per outage.
pub async fn run_gauges(state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        let refreshed = tokio::time::timeout(
            REFRESH_TIMEOUT,
            state.metrics.refresh(&state.dlq, &state.jobs),
        )
        .await
        .unwrap_or(Err(RefreshError::Timeout));
        match refreshed {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("metrics gauges refreshed again");
            }
            Ok(()) => {}
            Err(e) => {
                state.metrics.refresh_errors.inc();
                if !failing {
                    tracing::warn!(error = %e, kind = e.kind(),
                        "metrics gauges not refreshed; /metrics keeps the last values");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(state.gauge_period) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
        assert_eq!(route_label(None), UNMATCHED);
    }

    #[test]
    fn requests_render_by_route_template() {
        let m = AdminMetrics::new();
        m.observe(
            "/api/v1/integrations/dlq/{id}",
            &Method::GET,
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(
            text.contains(
                r#"integration_admin_requests_total{code="404",method="GET",route="/api/v1/integrations/dlq/{id}"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("integration_admin_request_duration_seconds_bucket"));
    }
}
