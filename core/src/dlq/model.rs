//! What the DLQ keeps and answers: an entry as the admin API shows it (never its body), its
//! status, the outcome of its last replay, list filters and pages, and the module's errors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::provider::ProviderId;
use crate::vault::VaultError;

/// Largest page [`crate::dlq::Dlq::list`] returns.
pub const MAX_PAGE: u32 = 500;

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    /// Failed; waiting for an operator (or its last replay failed too).
    Pending,
    /// A replay is in the work queue or running.
    Queued,
    /// A replay got a final answer from the provider; kept until it expires.
    Resolved,
}

impl EntryStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Resolved => "resolved",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "queued" => Some(Self::Queued),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// The last replay of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayOutcome {
    /// When it ended.
    pub at: DateTime<Utc>,
    /// Whether the provider gave a final answer (the entry is then resolved).
    pub succeeded: bool,
    /// The status that came back through the pipeline, if any.
    pub status: Option<u16>,
    /// The error kind of a failed replay (`upstream_failed`, `circuit_open`, …).
    pub error: Option<String>,
    /// Start of the answer's body.
    pub excerpt: String,
}

/// A DLQ entry as the admin API shows it. The body stays sealed: see [`crate::dlq::Dlq::body`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqEntry {
    /// ULID; the caller's 502/504 named it in `X-Hub-DLQ-Id`.
    pub id: Ulid,
    /// Provider id.
    pub provider_id: ProviderId,
    /// Provider name when the call failed.
    pub provider: String,
    /// The tenant of the call: the provider's; `null` for a call to a global provider (and for
    /// entries from before tenants).
    pub tenant: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query as the caller sent them (auth query values redacted).
    pub path: String,
    /// The caller's headers minus credentials and hop-by-hop, as `[name, value]` pairs.
    pub headers: Vec<(String, String)>,
    /// Body bytes kept.
    pub body_size: u64,
    /// The body was larger than the limit: kept truncated (or not at all).
    pub body_truncated: bool,
    /// Whether a replay can send the request as it was (the whole body is kept).
    pub replayable: bool,
    /// The idempotency key every attempt and every replay sends.
    pub idempotency_key: Option<String>,
    /// Request id of the call (replays send it again).
    pub request_id: String,
    /// Who called, when the caller named itself (`X-Hub-Caller`).
    pub caller: Option<String>,
    /// The asynchronous job whose failure this entry records.
    pub job_id: Option<Ulid>,
    /// Attempts the call made.
    pub attempts: u32,
    /// Last upstream status, if the provider answered.
    pub last_status: Option<u16>,
    /// Error kind of the last attempt (`status`, `timeout`, `connect_failed`, …).
    pub last_error: String,
    /// Why retries stopped (`attempts_exhausted`, `budget_exhausted`, `circuit_open`, …).
    pub stop: String,
    /// Start of the last upstream response body.
    pub excerpt: String,
    /// Where it stands.
    pub status: EntryStatus,
    /// Replays attempted so far.
    pub replays: u32,
    /// The last replay, if any.
    pub last_replay: Option<ReplayOutcome>,
    /// When the call failed.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the retention job deletes it (creation + `dlq.retention_days`).
    pub expires_at: DateTime<Utc>,
}

/// Filters and cursor for listing entries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DlqQuery {
    /// Only this provider.
    pub provider_id: Option<ProviderId>,
    /// Only this status.
    pub status: Option<EntryStatus>,
    /// Only entries of this tenant.
    pub tenant: Option<String>,
    /// Only entries of this caller (as recorded: the authenticated caller's name, or what an
    /// anonymous module named itself).
    pub caller: Option<String>,
    /// Only entries older than this id (the previous page's `next_cursor`).
    pub before: Option<Ulid>,
    /// Page size, clamped to 1..=[`MAX_PAGE`] (0 = 50).
    pub limit: u32,
}

/// Which pending entries `retry-all` queues.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    /// Only this provider.
    pub provider_id: Option<ProviderId>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this caller.
    pub caller: Option<String>,
}

impl DlqQuery {
    /// The page size in force.
    pub fn page_size(&self) -> u32 {
        match self.limit {
            0 => 50,
            n => n.min(MAX_PAGE),
        }
    }
}

/// One page of entries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqPage {
    /// Newest first.
    pub entries: Vec<DlqEntry>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_cursor: Option<Ulid>,
}

/// How many unresolved (pending or queued) entries one provider has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderDepth {
    /// Provider id.
    pub provider_id: ProviderId,
    /// The provider's name as its entries recorded it.
    pub provider: String,
    /// Unresolved entries.
    pub depth: u64,
}

/// What can go wrong in the DLQ. `kind()` is a stable label for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// No entry with that id.
    #[error("no DLQ entry with that id")]
    NotFound,
    /// The body was truncated: replaying would send a different request.
    #[error("the entry's body was truncated; it cannot be replayed")]
    NotReplayable,
    /// The entry was already replayed successfully.
    #[error("the entry is already resolved")]
    Resolved,
    /// A stored row does not decode (a bug or a manual edit).
    #[error("corrupt DLQ row {id}: {detail}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What failed to decode.
        detail: String,
    },
    /// Sealing or opening a body failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The work queue refused.
    #[error(transparent)]
    Queue(#[from] crate::jobs::QueueError),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl DlqError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::NotReplayable => "not_replayable",
            Self::Resolved => "resolved",
            Self::Corrupt { .. } => "corrupt",
            Self::Vault(e) => e.kind(),
            Self::Queue(e) => e.kind(),
            Self::Database(_) => "database",
        }
    }
}
