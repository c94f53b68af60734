//! Asynchronous jobs as callers and the admin API see them: what the proxy submits
//! ([`NewJob`]), what it answers with ([`JobReceipt`]), what `GET /jobs/{id}` and the callback
//! show ([`JobView`]), and the module's errors.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::provider::ProviderId;
use crate::vault::VaultError;

/// Request header value asking for asynchronous processing (`Prefer: respond-async`, RFC 7240).
pub const PREFER_ASYNC: &str = "respond-async";
/// Response header of the 202: the job id. (Also the request header a job's attempts carry.)
pub const JOB_ID_HEADER: &str = crate::wire::JOB_ID;
/// Request header naming where to POST the job's outcome.
pub const CALLBACK_URL_HEADER: &str = crate::wire::CALLBACK_URL;
/// Where the job resource lives on the admin API: `Location: /api/v1/integrations/jobs/{id}`.
pub const JOB_LOCATION_PREFIX: &str = "/api/v1/integrations/jobs/";

/// A job's lifecycle: Pending → Processing → Completed | Failed (Processing → Pending between
/// attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, waiting for a worker (or for its next attempt).
    Pending,
    /// A worker is calling the provider.
    Processing,
    /// The provider answered (any status it chose); the result is kept.
    Completed,
    /// Every attempt failed; a DLQ entry records the call.
    Failed,
}

impl JobStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "processing" => Some(Self::Processing),
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Completed or Failed.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// A call to run asynchronously, as the proxy read it. Like a [`crate::dlq::FailedCall`] it
/// never holds a credential: headers are the caller's minus credentials and hop-by-hop.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The routed provider.
    pub provider_id: ProviderId,
    /// Its name.
    pub provider: String,
    /// The tenant of the call: the provider's (`None` for a global provider).
    pub tenant: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query as the caller sent them (auth query values redacted).
    pub path: String,
    /// The caller's headers minus credentials, hop-by-hop, `Prefer` and `X-Hub-Callback-Url`.
    pub headers: Vec<(String, String)>,
    /// The whole body (at most [`JobSubmitter::max_body_bytes`]).
    pub body: Bytes,
    /// The caller's idempotency key (the provider's `idempotencyHeader`), if it sent one.
    pub idempotency_key: Option<String>,
    /// Request id.
    pub request_id: String,
    /// `X-Hub-Callback-Url`, if sent.
    pub callback_url: Option<String>,
}

/// The answer to a submission: 202 with `X-Hub-Job-Id: id` and `Location: location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReceipt {
    /// Job id.
    pub id: Ulid,
    /// Its status now (a repeated submission may find it finished).
    pub status: JobStatus,
    /// `false` when the idempotency key named an existing job (returned as is).
    pub created: bool,
    /// `/api/v1/integrations/jobs/{id}`.
    pub location: String,
}

/// Accepts `Prefer: respond-async` calls. Object safe: the proxy holds an
/// `Arc<dyn JobSubmitter>`.
#[async_trait]
pub trait JobSubmitter: Send + Sync + 'static {
    /// Persists the job (body sealed) and queues it; returns once it is durable.
    async fn submit(&self, job: NewJob) -> Result<JobReceipt, JobError>;

    /// Largest body accepted (413 above).
    fn max_body_bytes(&self) -> usize;
}

/// A job's result: the provider's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// Status.
    pub status: u16,
    /// Headers (hop-by-hop dropped), as `[name, value]` pairs.
    pub headers: Vec<(String, String)>,
    /// UTF-8 text, or base64 (see `body_encoding`).
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: &'static str,
    /// The body was longer than `jobs.result_max_bytes` and is cut.
    pub body_truncated: bool,
}

/// Callback delivery state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackState {
    /// Where it goes.
    pub url: String,
    /// `pending`, `delivered` or `failed` (`None` until the job ends).
    pub status: Option<String>,
    /// Deliveries tried.
    pub attempts: u32,
    /// Why the last one failed.
    pub error: Option<String>,
}

/// A job as `GET /api/v1/integrations/jobs/{id}` shows it; also the callback's body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// Job id.
    pub id: Ulid,
    /// Provider id.
    pub provider_id: ProviderId,
    /// Provider name.
    pub provider: String,
    /// The tenant of the call: the provider's; `null` for a global provider (and for jobs from
    /// before tenants).
    pub tenant: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Where it stands.
    pub status: JobStatus,
    /// Attempts made (each a full proxied call).
    pub attempts: u32,
    /// Request id every attempt sends.
    pub request_id: String,
    /// Idempotency key every attempt sends.
    pub idempotency_key: String,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The provider's answer, once Completed.
    pub result: Option<JobResult>,
    /// The DLQ entry of a Failed job.
    pub dlq_id: Option<Ulid>,
    /// Callback delivery, when `X-Hub-Callback-Url` was sent.
    pub callback: Option<CallbackState>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Completed or failed at.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What can go wrong with jobs. `kind()` is a stable label; the proxy maps `InvalidCallback` to
/// 400, `BodyTooLarge` to 413, `Conflict` to 409 and the rest to 503.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `X-Hub-Callback-Url` is not an acceptable URL (the message says why).
    #[error("invalid X-Hub-Callback-Url: {0}")]
    InvalidCallback(String),
    /// The body exceeds `jobs.max_body_bytes`.
    #[error("the body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The idempotency key names a job with a different method or path.
    #[error("idempotency key already used by job {existing} for another request")]
    Conflict {
        /// The job holding the key.
        existing: Ulid,
    },
    /// A stored row does not decode.
    #[error("corrupt job row {id}: {detail}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What failed.
        detail: String,
    },
    /// Sealing or opening a body failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl JobError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidCallback(_) => "invalid_callback",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Conflict { .. } => "conflict",
            Self::Corrupt { .. } => "corrupt",
            Self::Vault(e) => e.kind(),
            Self::Database(_) => "database",
        }
    }
}
