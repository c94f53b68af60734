//! `GET /providers/{id}/health`: the provider's breaker and rate-limit state as the shared
//! resilience state sees it, next to its configured policy, and its DLQ depth.
//!
//! Nothing is invented: `breaker`, `rateLimit.available` and `rateLimit.usedToday` are `null`
//! when this admin service cannot see the proxy's state (an admin deployed apart from an
//! in-process proxy, see [`crate::AdminState::with_shared_state`]). `recentOutcomes` is always
//! `null`: the shared state keeps the breaker's current streak, not a history of outcomes (the
//! proxy's `integration_upstream_attempts_total{provider,outcome}` has the counts).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use hub_core::provider::ProviderStatus;
use hub_core::state::{BreakerSnapshot, Policy};
use serde::Serialize;

use crate::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::IdPath;

/// The health report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    /// ULID.
    pub provider_id: String,
    /// Name.
    pub name: String,
    /// Active or disabled.
    pub status: ProviderStatus,
    /// The circuit breaker; `null` when the shared state is not visible from here.
    pub breaker: Option<BreakerView>,
    /// Configured limits and, when visible, their use.
    pub rate_limit: RateLimitView,
    /// Outcome history: always `null`, the shared state does not record one (kept so the
    /// field can be filled without a breaking change).
    pub recent_outcomes: Option<serde_json::Value>,
    /// Unresolved (pending or queued) DLQ entries of this provider.
    pub dlq_depth: u64,
}

/// Breaker view.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub state: &'static str,
    /// The current failure streak.
    pub consecutive_failures: u32,
    /// When it last opened (`null` while closed).
    pub opened_at: Option<DateTime<Utc>>,
    /// Open: when the next probe may go; half-open: when the probe's lease ends.
    pub open_until: Option<DateTime<Utc>>,
}

impl From<BreakerSnapshot> for BreakerView {
    fn from(b: BreakerSnapshot) -> Self {
        Self {
            state: b.state.as_str(),
            consecutive_failures: b.consecutive_failures,
            opened_at: b.opened_at,
            open_until: b.open_until,
        }
    }
}

/// Rate-limit view.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitView {
    /// Effective steady rate (the provider's or the hub default).
    pub rate_per_sec: u32,
    /// Effective burst.
    pub burst: u32,
    /// Daily quota, if any.
    pub daily_quota: Option<u64>,
    /// Requests that could go right now; `null` when not visible from here.
    pub available: Option<u32>,
    /// Requests admitted since UTC midnight; `null` when not visible from here.
    pub used_today: Option<u64>,
}

/// `GET /providers/{id}/health`.
pub async fn get(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Json<HealthView>, ApiError> {
    let record = super::providers::load(&s, &caller, id).await?;
    let policy = Policy::from_config(&record.config, s.default_rate_limit);
    let dlq_depth = s.dlq.depth(id).await?;
    let snapshot = match &s.shared_state {
        Some(state) => Some(state.snapshot(id, &policy).await),
        None => None,
    };
    let (breaker, available, used_today) = match snapshot {
        Some(snap) => (
            Some(snap.breaker.into()),
            Some(snap.rate.available),
            Some(snap.rate.used_today),
        ),
        None => (None, None, None),
    };
    Ok(Json(HealthView {
        provider_id: id.to_string(),
        name: record.name,
        status: record.status,
        breaker,
        rate_limit: RateLimitView {
            rate_per_sec: policy.rate_per_sec,
            burst: policy.burst,
            daily_quota: policy.daily_quota,
            available,
            used_today,
        },
        recent_outcomes: None,
        dlq_depth,
    }))
}
