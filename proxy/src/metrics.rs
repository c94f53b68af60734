//! The proxy's Prometheus metrics (`prometheus` crate), served on the admin-only metrics
//! listener. Labels are bounded: provider names (one per registered provider), method (the
//! standard ones, else `OTHER`), status code, outcome kind. Never paths, ids or hosts.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Counter, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Leaf certificates minted (also exported as a counter).
pub static LEAVES_MINTED: AtomicU64 = AtomicU64::new(0);
/// CONNECT tunnels currently open.
pub static OPEN_TUNNELS: AtomicU64 = AtomicU64::new(0);

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Every proxy metric, registered in one registry.
pub struct Metrics {
    /// The registry `/metrics` gathers.
    pub registry: Registry,
    /// `integration_requests_total{provider,method,code}`.
    pub requests: IntCounterVec,
    /// `integration_caller_requests_total{caller,tenant,provider,code}`: calls by who made them
    /// (`caller` is a registered caller's name, `anonymous` without one: bounded by the
    /// registry, never by what modules send). Refusals before routing count as provider
    /// `unrouted`.
    pub caller_requests: IntCounterVec,
    /// `integration_request_duration_seconds{provider}`: whole call as the caller saw it.
    pub request_duration: HistogramVec,
    /// `integration_upstream_duration_seconds{provider}`: time spent on upstream attempts.
    pub upstream_duration: HistogramVec,
    /// `integration_upstream_attempts_total{provider,outcome}`.
    pub attempts: IntCounterVec,
    /// `integration_retries_total{provider}`.
    pub retries: IntCounterVec,
    /// `integration_token_rejections_total{provider}`: an OAuth2 provider answered 401 to an
    /// access token the hub injected (the call got a new token and one more attempt).
    pub token_rejections: IntCounterVec,
    /// `integration_token_requests_total{provider,outcome}`: OAuth2 token requests the hub made
    /// (`ok`, `unreachable`, `refused`, `invalid_grant`, `invalid_client`, `malformed`, `key`,
    /// `store_unavailable`) or did not make because the endpoint's breaker was open
    /// (`circuit_open`).
    pub token_requests: IntCounterVec,
    /// `integration_rate_limited_total{provider}` (the hub's own limiter or quota said no).
    pub rate_limited: IntCounterVec,
    /// `integration_circuit_rejected_total{provider}`.
    pub circuit_rejected: IntCounterVec,
    /// `integration_circuit_state{provider}`: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// `integration_circuit_open{provider}`: 1 while not closed.
    pub circuit_open: IntGaugeVec,
    /// `integration_dlq_handoffs_total{provider}`: failed calls handed to the DLQ writer.
    pub dlq_handoffs: IntCounterVec,
    /// `integration_responses_unscrubbed_total{provider}`: answers of a provider whose
    /// credentials are masked that came compressed anyway (`Content-Encoding`, despite the
    /// hub's `Accept-Encoding: identity`), so their body was relayed unscrubbed.
    pub responses_unscrubbed: IntCounterVec,
    /// `integration_dlq_unrecorded_total{reason}`: failed calls answered without a DLQ id
    /// because the spool refused them (`spool_full`, `spool_unwritable`, …).
    pub dlq_unrecorded: IntCounterVec,
    /// `integration_dlq_handoff_duration_seconds`: how long a failed call's answer waited for
    /// its DLQ entry to be durable (one fsync of the spool, normally).
    pub dlq_handoff_duration: prometheus::Histogram,
    /// `integration_dlq_spool_bytes`: bytes in the local spool not yet in the database.
    pub dlq_spool_bytes: IntGauge,
    /// `integration_dlq_spool_entries`: entries in the local spool not yet in the database.
    pub dlq_spool_entries: IntGauge,
    /// `integration_dlq_spool_max_bytes`: the bound (`dlq.spool_max_bytes`).
    pub dlq_spool_max_bytes: IntGauge,
    /// `integration_dlq_rejected_total`: spooled entries the database refused outright, set
    /// aside in `<data_dir>/dlq-spool/rejected.records`.
    pub dlq_rejected: IntCounter,
    /// `integration_dlq_handed_over_total`: entries handed to Valkey on a stop with the
    /// database down.
    pub dlq_handed_over: IntCounter,
    /// `integration_dlq_taken_over_total`: other proxies' hand-overs stored by this one.
    pub dlq_taken_over: IntCounter,
    /// `integration_state_backend_errors_total`.
    pub state_errors: IntCounter,
    /// `integration_state_backend_round_trips_total`.
    pub state_round_trips: IntCounter,
    /// `integration_state_backend_fallbacks_total`.
    pub state_fallbacks: IntCounter,
    /// `integration_state_backend_fallback_seconds_total`: time admissions were decided by the
    /// local fallback (Redis slow, failing or not connected).
    pub state_fallback_seconds: Counter,
    /// `integration_state_backend_in_fallback`: 1 while admissions go to the local fallback.
    pub state_in_fallback: IntGauge,
    /// `integration_state_backend_instances`: live hub instances sharing the limits, as last
    /// counted in Redis (the fallback admits 1/n of each limit); 0 = not counted.
    pub state_instances: IntGauge,
    /// `integration_certificates_minted_total`.
    pub certificates_minted: IntCounter,
    /// `integration_open_tunnels`.
    pub open_tunnels: IntGauge,
    /// `integration_registry_providers`.
    pub providers: IntGauge,
    /// `integration_registry_age_seconds`: since the store last confirmed the routes in force.
    pub registry_age: IntGauge,
    /// `integration_registry_from_snapshot`: 1 while routing from the last-known-good file.
    pub registry_from_snapshot: IntGauge,
    /// `integration_store_available`: 1 when the registry's last store check answered.
    pub store_available: IntGauge,
    /// `integration_connections_refused_total{reason}`: connections closed at accept because a
    /// cap was reached (`total` or `per_source`).
    pub connections_refused: IntCounterVec,
    /// `integration_upgraded_open{provider,kind}`: WebSocket connections (`websocket`) and
    /// passthrough tunnels (`passthrough`) open now.
    pub upgraded_open: IntGaugeVec,
    /// `integration_upgraded_total{provider,kind,outcome}`: upgraded connections and passthrough
    /// tunnels ended (`closed`, `idle_timeout`, `error`) or refused (`refused`).
    pub upgraded_total: IntCounterVec,
    /// `integration_upgraded_bytes_total{provider,kind,direction}`: bytes relayed on them
    /// (`to_provider`, `to_module`).
    pub upgraded_bytes: IntCounterVec,
    /// `integration_h2_streams_refused_total{reason}`: HTTP/2 streams from modules refused
    /// (`concurrency`: over the per-connection cap of streams in flight).
    pub h2_streams_refused: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Raises a seconds `counter` to `total_ms` milliseconds (kept elsewhere); never lowers it.
pub fn catch_up_ms(counter: &Counter, total_ms: u64) {
    let total = total_ms as f64 / 1000.0; // exact below 2^53 ms
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Raises `counter` to `total` (a monotonic count kept elsewhere); never lowers it.
pub fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

fn histogram(r: &Registry, name: &str, help: &str) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        &["provider"],
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let certificates_minted = IntCounter::new(
            "integration_certificates_minted_total",
            "Leaf certificates minted for intercepted TLS",
        )
        .expect("valid metric");
        r.register(Box::new(certificates_minted.clone()))
            .expect("unique metric");
        Self {
            requests: counter(
                &r,
                "integration_requests_total",
                "Calls answered, by provider, method and status code",
                &["provider", "method", "code"],
            ),
            caller_requests: counter(
                &r,
                "integration_caller_requests_total",
                "Calls answered, by caller, its tenant, provider and status code",
                &["caller", "tenant", "provider", "code"],
            ),
            request_duration: histogram(
                &r,
                "integration_request_duration_seconds",
                "Call duration as the caller saw it",
            ),
            upstream_duration: histogram(
                &r,
                "integration_upstream_duration_seconds",
                "Time spent in upstream attempts (waits excluded)",
            ),
            attempts: counter(
                &r,
                "integration_upstream_attempts_total",
                "Upstream attempts by outcome",
                &["provider", "outcome"],
            ),
            retries: counter(
                &r,
                "integration_retries_total",
                "Attempts beyond the first",
                &["provider"],
            ),
            token_rejections: counter(
                &r,
                "integration_token_rejections_total",
                "OAuth2 access tokens a provider answered 401 to",
                &["provider"],
            ),
            token_requests: counter(
                &r,
                "integration_token_requests_total",
                "OAuth2 token requests by outcome",
                &["provider", "outcome"],
            ),
            rate_limited: counter(
                &r,
                "integration_rate_limited_total",
                "Calls refused by the hub's rate limit or daily quota",
                &["provider"],
            ),
            circuit_rejected: counter(
                &r,
                "integration_circuit_rejected_total",
                "Calls refused because the circuit was open",
                &["provider"],
            ),
            circuit_state: gauge_vec(
                &r,
                "integration_circuit_state",
                "Breaker state: 0 closed, 1 half-open, 2 open",
                &["provider"],
            ),
            circuit_open: gauge_vec(
                &r,
                "integration_circuit_open",
                "1 while the provider's circuit is not closed",
                &["provider"],
            ),
            responses_unscrubbed: counter(
                &r,
                "integration_responses_unscrubbed_total",
                "Compressed answers of scrubbed providers, relayed without scrubbing their body",
                &["provider"],
            ),
            dlq_handoffs: counter(
                &r,
                "integration_dlq_handoffs_total",
                "Failed calls handed to the dead-letter queue",
                &["provider"],
            ),
            dlq_unrecorded: counter(
                &r,
                "integration_dlq_unrecorded_total",
                "Failed calls answered without a DLQ id: the spool refused them",
                &["reason"],
            ),
            dlq_handoff_duration: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "integration_dlq_handoff_duration_seconds",
                        "Wait for a failed call's DLQ entry to be durable before its answer",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    ]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            dlq_spool_bytes: gauge(
                &r,
                "integration_dlq_spool_bytes",
                "Bytes in the local DLQ spool not yet in the database",
            ),
            dlq_spool_entries: gauge(
                &r,
                "integration_dlq_spool_entries",
                "Entries in the local DLQ spool not yet in the database",
            ),
            dlq_spool_max_bytes: gauge(
                &r,
                "integration_dlq_spool_max_bytes",
                "Bound of the local DLQ spool (dlq.spool_max_bytes)",
            ),
            dlq_rejected: plain_counter(
                &r,
                "integration_dlq_rejected_total",
                "Spooled DLQ entries the database refused outright, set aside on disk",
            ),
            dlq_handed_over: plain_counter(
                &r,
                "integration_dlq_handed_over_total",
                "DLQ entries handed over to Valkey on a stop with the database down",
            ),
            dlq_taken_over: plain_counter(
                &r,
                "integration_dlq_taken_over_total",
                "DLQ entries another proxy handed over, stored by this one",
            ),
            state_errors: plain_counter(
                &r,
                "integration_state_backend_errors_total",
                "Shared-state backend (Redis) errors",
            ),
            state_round_trips: plain_counter(
                &r,
                "integration_state_backend_round_trips_total",
                "Shared-state backend (Redis) round trips",
            ),
            state_fallbacks: plain_counter(
                &r,
                "integration_state_backend_fallbacks_total",
                "Admissions decided locally because Redis was unavailable",
            ),
            state_fallback_seconds: {
                let c = Counter::new(
                    "integration_state_backend_fallback_seconds_total",
                    "Time admissions were decided locally because Redis was slow or unavailable",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            state_in_fallback: gauge(
                &r,
                "integration_state_backend_in_fallback",
                "1 while admissions are decided locally (each instance at its share of the limits)",
            ),
            state_instances: gauge(
                &r,
                "integration_state_backend_instances",
                "Live hub instances sharing the limits, as last counted in Redis",
            ),
            certificates_minted,
            open_tunnels: gauge(
                &r,
                "integration_open_tunnels",
                "CONNECT tunnels currently open",
            ),
            providers: gauge(
                &r,
                "integration_registry_providers",
                "Live providers in the proxy's registry snapshot",
            ),
            registry_age: gauge(
                &r,
                "integration_registry_age_seconds",
                "Seconds since the store last confirmed the registry in force",
            ),
            registry_from_snapshot: gauge(
                &r,
                "integration_registry_from_snapshot",
                "1 while the proxy routes from its last-known-good snapshot file",
            ),
            store_available: gauge(
                &r,
                "integration_store_available",
                "1 when the registry's last check of the store answered",
            ),
            connections_refused: counter(
                &r,
                "integration_connections_refused_total",
                "Connections closed at accept because a connection cap was reached",
                &["reason"],
            ),
            upgraded_open: gauge_vec(
                &r,
                "integration_upgraded_open",
                "WebSocket connections and passthrough tunnels open now",
                &["provider", "kind"],
            ),
            upgraded_total: counter(
                &r,
                "integration_upgraded_total",
                "WebSocket connections and passthrough tunnels ended or refused",
                &["provider", "kind", "outcome"],
            ),
            upgraded_bytes: counter(
                &r,
                "integration_upgraded_bytes_total",
                "Bytes relayed on WebSocket connections and passthrough tunnels",
                &["provider", "kind", "direction"],
            ),
            h2_streams_refused: counter(
                &r,
                "integration_h2_streams_refused_total",
                "HTTP/2 streams from modules refused",
                &["reason"],
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        catch_up(
            &self.certificates_minted,
            LEAVES_MINTED.load(Ordering::Relaxed),
        );
        self.open_tunnels
            .set(i64::try_from(OPEN_TUNNELS.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

/// The process-wide proxy metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// A method label: the standard methods as they are, anything else `OTHER` (bounded).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}
