//! Per-provider policy. Every number from the seed (`000_*.txt`) is a field here with the seed's
//! default, validated on write. Unknown fields are rejected.

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Default per-attempt timeout (seed: 10 s).
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// Per-attempt timeout ceiling (seed: 30 s).
pub const MAX_TIMEOUT_MS: u32 = 30_000;
/// Ceiling of `firstByteTimeoutMs` (a slow-to-start stream, e.g. a model's first token).
pub const MAX_FIRST_BYTE_TIMEOUT_MS: u32 = 300_000;
/// Ceiling of `idleTimeoutMs`: the longest silence a stream may be configured to survive.
pub const MAX_IDLE_TIMEOUT_MS: u32 = 3_600_000;
/// Default total budget per call: attempts, waits and the streamed response.
pub const DEFAULT_TOTAL_TIMEOUT_MS: u32 = 60_000;
/// Total budget ceiling (one hour: long streams must be configured for, never unbounded).
pub const MAX_TOTAL_TIMEOUT_MS: u32 = 3_600_000;
/// Hub-wide default rate limit (seed: 100 req/s; `INTEGRATION_RATE_LIMIT_PER_SEC` changes it).
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 100;
/// Default attempts per call (seed: 5).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Attempts ceiling.
pub const MAX_ATTEMPTS: u32 = 10;
/// Default first backoff wait (seed: 1 s, ×2 each attempt).
pub const DEFAULT_BACKOFF_BASE_MS: u32 = 1_000;
/// Default backoff multiplier.
pub const DEFAULT_BACKOFF_MULTIPLIER: u32 = 2;
/// Default jitter (seed: ±500 ms).
pub const DEFAULT_JITTER_MS: u32 = 500;

/// Default idle timeout of an upgraded connection (WebSocket) or a passthrough tunnel: 5 min.
pub const DEFAULT_UPGRADED_IDLE_TIMEOUT_MS: u32 = 300_000;
/// Default cap on a provider's concurrent upgraded connections and passthrough tunnels, per proxy.
pub const DEFAULT_MAX_UPGRADED_CONNECTIONS: u32 = 1_000;

/// Which HTTP version the hub speaks to the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// h2 when the provider offers it in ALPN, else HTTP/1.1 (gRPC calls always ask for h2).
    #[default]
    Auto,
    /// HTTP/1.1 only (a provider that misbehaves on h2).
    Http1,
    /// h2 only (over TLS by ALPN; prior knowledge on an `http://` base URL).
    H2,
}

/// What the hub does with the TLS inside a module's CONNECT tunnel to this provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// The hub terminates the module's TLS with a leaf of its CA and re-originates verified TLS:
    /// every request is seen, admitted and gets its credentials.
    #[default]
    Terminate,
    /// The hub checks the route and the destination, then relays the TLS bytes untouched (clients
    /// that pin the provider's certificate, mutual TLS). No credentials can be injected; the rate
    /// limit counts connections.
    Passthrough,
}

/// Circuit breaker numbers (seed: 5 consecutive failures within 30 s, 60 s open, 1 probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// The failures must fall within this window.
    pub failure_window_ms: u32,
    /// How long the circuit stays open before one probe is admitted.
    pub open_ms: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_window_ms: 30_000,
            open_ms: 60_000,
        }
    }
}

/// Per-provider policy; every field optional on input, defaults from the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Per-attempt timeout including connect and TLS (≤ 30 000); the default of
    /// `connectTimeoutMs`, `firstByteTimeoutMs` and `idleTimeoutMs`.
    pub timeout_ms: u32,
    /// TCP connect plus TLS handshake, per attempt (≤ `timeoutMs`'s ceiling); default `timeoutMs`.
    pub connect_timeout_ms: Option<u32>,
    /// From the start of an attempt to the provider's response head (≤ 300 000); default
    /// `timeoutMs`. An attempt that gets no head in time is a timeout (retried within the rules).
    pub first_byte_timeout_ms: Option<u32>,
    /// Longest silence while a body streams, either direction (≤ 3 600 000); default `timeoutMs`.
    /// A stream silent for longer is cut: the module sees the connection end, the access line
    /// says `idle_timeout`.
    pub idle_timeout_ms: Option<u32>,
    /// Budget for the whole call: attempts, waits and the streamed response (≤ 3 600 000).
    pub total_timeout_ms: u32,
    /// Requests per second across all hub instances; `None` = the hub default.
    pub rate_limit_per_sec: Option<u32>,
    /// Burst size above the steady rate; `None` = one second's worth.
    pub burst: Option<u32>,
    /// Requests per UTC day; `None` = unlimited.
    pub daily_quota: Option<u64>,
    /// Attempts per call, the first included (≤ 10).
    pub max_attempts: u32,
    /// First backoff wait.
    pub backoff_base_ms: u32,
    /// Backoff growth per attempt.
    pub backoff_multiplier: u32,
    /// ± jitter on every wait.
    pub jitter_ms: u32,
    /// Header carrying the idempotency key (e.g. `Idempotency-Key`); the hub adds a UUID when the
    /// caller sent none.
    pub idempotency_header: Option<String>,
    /// Allow the base URL to resolve to loopback/private/link-local addresses.
    pub allow_private_network: bool,
    /// Allow an `http://` base URL.
    pub allow_insecure_upstream: bool,
    /// Circuit breaker numbers.
    pub breaker: BreakerPolicy,
    /// HTTP version towards the provider: `auto` (ALPN), `http1` or `h2`.
    pub http_version: HttpVersion,
    /// `terminate` (default) or `passthrough` (relay the module's TLS untouched; no auth type).
    pub tls: TlsMode,
    /// Longest silence on an upgraded connection (WebSocket) or a passthrough tunnel, either
    /// direction (≤ 3 600 000); it is then closed.
    pub upgraded_idle_timeout_ms: u32,
    /// Concurrent upgraded connections and passthrough tunnels to this provider, per proxy
    /// instance (≤ 100 000); one more is refused with `429`.
    pub max_upgraded_connections: u32,
    /// Refuse (`403 foreign_credential`) a call that carries its own credential where the hub
    /// injects the provider's (its auth header or query parameter), instead of silently
    /// replacing it. Off by default: SDKs often insist on a dummy key.
    pub refuse_foreign_credential: bool,
    /// Mask the provider's credential (and the forms the hub sends it in) in everything the
    /// provider answers before a module or the DLQ sees it: header values, bodies, trailers,
    /// excerpts (`hub_core::scrub`). The hub then asks for uncompressed answers
    /// (`Accept-Encoding: identity`), since compressed bytes cannot be scrubbed. On by default;
    /// turn it off only for a provider whose answers are huge, compressible and known never to
    /// echo the credential.
    pub scrub_responses: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            connect_timeout_ms: None,
            first_byte_timeout_ms: None,
            idle_timeout_ms: None,
            total_timeout_ms: DEFAULT_TOTAL_TIMEOUT_MS,
            rate_limit_per_sec: None,
            burst: None,
            daily_quota: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            backoff_multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            jitter_ms: DEFAULT_JITTER_MS,
            idempotency_header: None,
            allow_private_network: false,
            allow_insecure_upstream: false,
            breaker: BreakerPolicy::default(),
            http_version: HttpVersion::Auto,
            tls: TlsMode::Terminate,
            upgraded_idle_timeout_ms: DEFAULT_UPGRADED_IDLE_TIMEOUT_MS,
            max_upgraded_connections: DEFAULT_MAX_UPGRADED_CONNECTIONS,
            refuse_foreign_credential: false,
            scrub_responses: true,
        }
    }
}

fn within(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), ValidationError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ValidationError::new(
            format!("config.{field}"),
            format!("must be between {lo} and {hi}"),
        ))
    }
}

impl ProviderConfig {
    /// Checks every bound and the rules that span fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        within(
            "timeoutMs",
            self.timeout_ms.into(),
            1,
            MAX_TIMEOUT_MS.into(),
        )?;
        within(
            "totalTimeoutMs",
            self.total_timeout_ms.into(),
            1,
            MAX_TOTAL_TIMEOUT_MS.into(),
        )?;
        if let Some(v) = self.connect_timeout_ms {
            within("connectTimeoutMs", v.into(), 1, MAX_TIMEOUT_MS.into())?;
        }
        if let Some(v) = self.first_byte_timeout_ms {
            within(
                "firstByteTimeoutMs",
                v.into(),
                1,
                MAX_FIRST_BYTE_TIMEOUT_MS.into(),
            )?;
        }
        if let Some(v) = self.idle_timeout_ms {
            within("idleTimeoutMs", v.into(), 1, MAX_IDLE_TIMEOUT_MS.into())?;
        }
        if self.total_timeout_ms < self.timeout_ms {
            return Err(ValidationError::new(
                "config.totalTimeoutMs",
                "must be at least config.timeoutMs",
            ));
        }
        if let Some(r) = self.rate_limit_per_sec {
            within("rateLimitPerSec", r.into(), 1, 1_000_000)?;
        }
        if let Some(b) = self.burst {
            within("burst", b.into(), 1, 1_000_000)?;
        }
        if let Some(q) = self.daily_quota {
            within("dailyQuota", q, 1, 1_000_000_000_000)?;
        }
        within(
            "maxAttempts",
            self.max_attempts.into(),
            1,
            MAX_ATTEMPTS.into(),
        )?;
        within("backoffBaseMs", self.backoff_base_ms.into(), 0, 60_000)?;
        within("backoffMultiplier", self.backoff_multiplier.into(), 1, 10)?;
        within("jitterMs", self.jitter_ms.into(), 0, 10_000)?;
        if let Some(h) = &self.idempotency_header {
            let ok = !h.is_empty()
                && h.len() <= 128
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                return Err(ValidationError::new(
                    "config.idempotencyHeader",
                    "must be a header name of A-Z a-z 0-9 - _",
                ));
            }
        }
        within(
            "breaker.failureThreshold",
            self.breaker.failure_threshold.into(),
            1,
            1_000,
        )?;
        within(
            "breaker.failureWindowMs",
            self.breaker.failure_window_ms.into(),
            1,
            3_600_000,
        )?;
        within("breaker.openMs", self.breaker.open_ms.into(), 1, 3_600_000)?;
        within(
            "upgradedIdleTimeoutMs",
            self.upgraded_idle_timeout_ms.into(),
            1,
            MAX_IDLE_TIMEOUT_MS.into(),
        )?;
        within(
            "maxUpgradedConnections",
            self.max_upgraded_connections.into(),
            1,
            100_000,
        )?;
        Ok(())
    }

    /// TCP connect plus TLS handshake, per attempt.
    pub fn connect_timeout(&self) -> std::time::Duration {
        ms(self.connect_timeout_ms.unwrap_or(self.timeout_ms))
    }

    /// From the start of an attempt to the response head.
    pub fn first_byte_timeout(&self) -> std::time::Duration {
        ms(self.first_byte_timeout_ms.unwrap_or(self.timeout_ms))
    }

    /// Longest silence while a body streams.
    pub fn idle_timeout(&self) -> std::time::Duration {
        ms(self.idle_timeout_ms.unwrap_or(self.timeout_ms))
    }

    /// Longest silence on an upgraded connection or a passthrough tunnel.
    pub fn upgraded_idle_timeout(&self) -> std::time::Duration {
        ms(self.upgraded_idle_timeout_ms)
    }

    /// The effective rate limit given the hub default.
    pub fn rate_limit(&self, hub_default: u32) -> u32 {
        self.rate_limit_per_sec.unwrap_or(hub_default)
    }
}

fn ms(v: u32) -> std::time::Duration {
    std::time::Duration::from_millis(v.into())
}
