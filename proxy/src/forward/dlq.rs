//! The hand-off of a call that still failed to the DLQ writer.

use hub_core::dlq::{DeadLetterSink, FailedCall, REPLAY_HEADER};
use hub_core::state::AttemptEnd;
use pingora::http::RequestHeader;

use super::body::Body;
use super::rewrite::caller_headers;
use super::verdict::end_kind;
use crate::inject;
use crate::metrics::METRICS;
use crate::registry::Provider;

/// What became of a failed call's DLQ entry.
pub(crate) enum Recorded {
    /// Durable under this id: the caller is told it.
    Durable(ulid::Ulid),
    /// The DLQ could not take it: no one may be told an id.
    Refused,
    /// This proxy has no DLQ (logged only).
    Nowhere,
}

/// How a call ended when no attempt succeeded: what the DLQ entry and the problem report.
pub(crate) struct CallFailure {
    pub(crate) idempotency_key: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) end: AttemptEnd,
    /// Why the attempts stopped (`attempts_exhausted`, `body_streamed`, …).
    pub(crate) stop: &'static str,
    pub(crate) excerpt: String,
}

/// Records a failed call with the DLQ and waits until it is durable (bounded), so the caller's
/// 502/504 is only sent for an entry that survives a crash.
pub(crate) async fn hand_off(
    sink: Option<&dyn DeadLetterSink>,
    req: &RequestHeader,
    provider: &Provider,
    path_and_query: &str,
    request_id: &str,
    body: &Body,
    failure: CallFailure,
) -> Recorded {
    // A DLQ replay that fails again is recorded on its own entry, not as a new one.
    let replayed = req
        .headers
        .get(REPLAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<ulid::Ulid>().ok());
    let call = FailedCall {
        // (Not `unwrap_or_default`: the default ULID is the nil id, not a fresh one.)
        id: match replayed {
            Some(id) => id,
            None => ulid::Ulid::new(),
        },
        provider_id: provider.id,
        provider: provider.name.clone(),
        // A global provider's entry belongs to the calling caller's tenant (set by the hub).
        tenant: provider.tenant.clone().or_else(|| {
            req.headers
                .get(hub_core::wire::TENANT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }),
        method: req.method.as_str().to_owned(),
        path: inject::loggable_path(provider.auth.as_ref(), path_and_query),
        headers: caller_headers(req, provider),
        body: match body {
            Body::Full(b) => Some(b.clone()),
            Body::Streaming(_) => None,
        },
        body_truncated: !body.replayable(),
        idempotency_key: failure.idempotency_key,
        request_id: request_id.to_owned(),
        attempts: failure.attempts,
        last_status: match failure.end {
            AttemptEnd::Status(s) => Some(s),
            _ => None,
        },
        last_error: end_kind(failure.end),
        stop: failure.stop,
        excerpt: failure.excerpt,
        failed_at: chrono::Utc::now(),
    };
    let id = call.id;
    METRICS
        .dlq_handoffs
        .with_label_values(&[&provider.name])
        .inc();
    tracing::warn!(target: "hub::exhausted", request_id, provider = %call.provider,
        attempts = call.attempts, last_error = call.last_error, last_status = ?call.last_status,
        stop = call.stop, "call failed after retries");
    let Some(sink) = sink else {
        return Recorded::Nowhere;
    };
    let waited = std::time::Instant::now();
    let handed = sink.hand_off(call).await;
    METRICS
        .dlq_handoff_duration
        .observe(waited.elapsed().as_secs_f64());
    match handed {
        Ok(()) => Recorded::Durable(id),
        Err(e) => {
            METRICS.dlq_unrecorded.with_label_values(&[e.kind()]).inc();
            tracing::error!(request_id, reason = e.kind(), error = %e,
                "failed call NOT recorded in the DLQ: answered without an id");
            Recorded::Refused
        }
    }
}
