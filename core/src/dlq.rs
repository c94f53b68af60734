//! The dead-letter queue: nothing that fails is lost.
//!
//! The proxy builds a [`FailedCall`] for every call whose attempts (or budget) ran out, assigns
//! its id (told to the caller in `X-Hub-DLQ-Id` before anything is written) and hands it to a
//! bounded channel. From there:
//!
//! - `seal`: the call becomes a [`SealedEntry`]: credentials and control headers dropped, the
//!   body cut at `dlq.max_body_bytes` (then not replayable) and sealed by the vault, bound to
//!   the entry id (`hub/dlq/v1/<id>`); `expiresAt` = creation + `dlq.retention_days`.
//! - `spool` + `writer`: the writer appends each batch to `<data_dir>/dlq-spool/` (fsync'd:
//!   from then on it survives SIGKILL) and only then lets the proxy answer; it never waits on
//!   the database. The drainer inserts closed spool segments (idempotently, by id) and deletes
//!   them; while the database is down they wait on disk (bounded by `dlq.spool_max_bytes`) and
//!   are drained in order, once each, when it returns (and on the next start). A call the spool
//!   refuses is answered without an id (`upstream_failed_unrecorded`).
//! - `store`: the `dlq_entries` table (SQLite and PostgreSQL, the same SQL).
//! - `service`: what operators do — [`Dlq::list`], [`Dlq::get`], [`Dlq::body`],
//!   [`Dlq::retry`], [`Dlq::retry_all`], [`Dlq::delete`]; and what metrics and health read:
//!   [`Dlq::depth`], [`Dlq::depth_by_provider`], [`Dlq::replay_lag`].
//! - `replay`: the worker task that re-sends an entry through the hub proxy (same pipeline as
//!   live traffic, same idempotency key and request id) and records the outcome.
//! - `retention`: the periodic job deleting expired entries (and old finished jobs).

pub mod handoff;
mod model;
pub(crate) mod replay;
pub mod retention;
pub mod seal;
mod service;
pub mod spool;
pub(crate) mod store;
pub mod writer;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ulid::Ulid;

use crate::provider::ProviderId;

pub use model::{
    DlqEntry, DlqError, DlqFilter, DlqPage, DlqQuery, EntryStatus, MAX_PAGE, ProviderDepth,
    ReplayOutcome,
};
pub use retention::{Retention, Swept};
pub use seal::{CALLER_HEADER, JOB_HEADER, REPLAY_HEADER, SealedEntry};
pub use service::Dlq;
pub use writer::{DlqSender, HandoffError, WriterOptions};

/// Response header naming the DLQ entry of a failed call.
pub const DLQ_ID_HEADER: &str = crate::wire::DLQ_ID;

/// A failed call as the proxy saw it. Never holds a credential: headers are the caller's minus
/// credentials and hop-by-hop, and query credentials are redacted from `path`.
#[derive(Debug, Clone)]
pub struct FailedCall {
    /// The DLQ entry id (ULID), already told to the caller.
    pub id: Ulid,
    /// Provider id.
    pub provider_id: ProviderId,
    /// Provider name.
    pub provider: String,
    /// The tenant of the call: the provider's (`None` for a global provider).
    pub tenant: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query as the caller sent them (auth query values redacted).
    pub path: String,
    /// The caller's headers minus credentials and hop-by-hop.
    pub headers: Vec<(String, String)>,
    /// The body, when it was kept whole (replayable).
    pub body: Option<Bytes>,
    /// Whether the body was larger than the replay limit (then `body` is `None`).
    pub body_truncated: bool,
    /// Idempotency key used for every attempt.
    pub idempotency_key: Option<String>,
    /// Request id.
    pub request_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last upstream status, if the provider answered.
    pub last_status: Option<u16>,
    /// Error kind of the last attempt (`status`, `timeout`, `connect_failed`, …).
    pub last_error: &'static str,
    /// Why retries stopped (`attempts_exhausted`, `budget_exhausted`, …).
    pub stop: &'static str,
    /// Start of the last upstream response body.
    pub excerpt: String,
    /// When the call failed.
    pub failed_at: DateTime<Utc>,
}

/// How long the proxy waits for a failed call to be durable (spooled and fsync'd) before it
/// answers the caller's 502/504; past it the answer carries no DLQ id. Only calls that already
/// failed pay it, and normally one fsync (a few ms) of it.
pub const DURABLE_HANDOFF_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Where the proxy hands failed calls. Returns once the call is as durable as the sink makes it:
/// the DLQ writer's sender waits for the spool's fsync, so a hub killed right after answering
/// 502 still has the entry after restart.
#[async_trait::async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Hands one failed call over.
    async fn hand_off(&self, call: FailedCall) -> Result<(), HandoffError>;

    /// What the sink holds on local disk, when it spools.
    fn spool_stats(&self) -> Option<spool::SpoolStats> {
        None
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for DlqSender {
    async fn hand_off(&self, call: FailedCall) -> Result<(), HandoffError> {
        self.send_durable(call, DURABLE_HANDOFF_WAIT).await
    }

    fn spool_stats(&self) -> Option<spool::SpoolStats> {
        Some(DlqSender::spool_stats(self))
    }
}

/// A plain channel (tests, and wiring that persists elsewhere): queued, not durable.
#[async_trait::async_trait]
impl DeadLetterSink for tokio::sync::mpsc::Sender<FailedCall> {
    async fn hand_off(&self, call: FailedCall) -> Result<(), HandoffError> {
        self.try_send(call).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => HandoffError::Full,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => HandoffError::Closed,
        })
    }
}
