//! The jobs service: accepting a `Prefer: respond-async` call (persisted, body sealed, then
//! queued — before the proxy answers 202) and reading a job back for the admin API.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use ulid::Ulid;

use super::callback::{CallbackPolicy, validate_url};
use super::model::{
    CallbackState, JOB_LOCATION_PREFIX, JobError, JobReceipt, JobResult, JobStatus, JobSubmitter,
    JobView, NewJob,
};
use super::queue::{Task, TaskKind, WorkQueue};
use super::store::{JobInsert, JobRow, JobStore};
use crate::config::JobsConfig;
use crate::db::Db;
use crate::dlq::seal::keepable_headers;
use crate::dlq::store::utc;
use crate::provider::SealedCredentials;
use crate::state::Clock;
use crate::vault::Vault;

/// The associated data binding a job's sealed request body to the job.
pub fn request_aad(id: Ulid) -> Vec<u8> {
    format!("hub/jobs/v1/request/{id}").into_bytes()
}

/// The associated data binding a job's sealed result body to the job.
pub fn result_aad(id: Ulid) -> Vec<u8> {
    format!("hub/jobs/v1/result/{id}").into_bytes()
}

/// Submits and reads jobs.
#[derive(Clone)]
pub struct Jobs {
    store: JobStore,
    queue: Arc<dyn WorkQueue>,
    vault: Arc<Vault>,
    clock: Clock,
    max_body: usize,
    callback: CallbackPolicy,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("queue", &self.queue.backend())
            .finish()
    }
}

impl Jobs {
    /// Jobs on `db`, queued on `queue`.
    pub fn new(
        db: Db,
        queue: Arc<dyn WorkQueue>,
        vault: Arc<Vault>,
        clock: Clock,
        cfg: &JobsConfig,
    ) -> Self {
        Self {
            store: JobStore::new(db),
            queue,
            vault,
            clock,
            max_body: cfg.max_body_bytes,
            callback: CallbackPolicy::from(&cfg.callback),
        }
    }

    /// One job; `None` when unknown (or deleted by retention).
    pub async fn get(&self, id: Ulid) -> Result<Option<JobView>, JobError> {
        match self.store.get(id).await? {
            Some(row) => view(&row, &self.vault).map(Some),
            None => Ok(None),
        }
    }

    /// How many jobs each status has, every status listed (zero included). One grouped query.
    pub async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, JobError> {
        let rows = self.store.count_by_status().await?;
        let all = [
            JobStatus::Pending,
            JobStatus::Processing,
            JobStatus::Completed,
            JobStatus::Failed,
        ];
        Ok(all
            .into_iter()
            .map(|status| {
                let n = rows
                    .iter()
                    .filter(|(s, _)| s == status.as_str())
                    .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
                    .sum();
                (status, n)
            })
            .collect())
    }

    /// How long the longest-waiting due job has gone without a worker taking it (zero when
    /// none waits; a job whose worker died counts from when it was due).
    pub async fn queue_lag(&self) -> Result<Duration, JobError> {
        let now = self.clock.unix_ms();
        let oldest = self.store.oldest_due(now).await?;
        Ok(crate::dlq::store::lag(now, oldest))
    }

    fn receipt(id: Ulid, status: JobStatus, created: bool) -> JobReceipt {
        JobReceipt {
            id,
            status,
            created,
            location: format!("{JOB_LOCATION_PREFIX}{id}"),
        }
    }
}

#[async_trait]
impl JobSubmitter for Jobs {
    async fn submit(&self, job: NewJob) -> Result<JobReceipt, JobError> {
        if job.body.len() > self.max_body {
            return Err(JobError::BodyTooLarge {
                limit: self.max_body,
            });
        }
        if let Some(url) = &job.callback_url {
            validate_url(url, &self.callback)
                .map_err(|e| JobError::InvalidCallback(e.to_string()))?;
        }
        let id = Ulid::new();
        let key = job
            .idempotency_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let body = if job.body.is_empty() {
            None
        } else {
            let s = self.vault.seal(&request_aad(id), &job.body)?;
            Some((s.key_id, s.ciphertext))
        };
        let headers =
            serde_json::to_string(&keepable_headers(&job.headers)).unwrap_or_else(|_| "[]".into());
        let insert = JobInsert {
            id,
            provider_id: job.provider_id,
            provider: &job.provider,
            tenant: job.tenant.as_deref(),
            method: &job.method,
            path: &job.path,
            headers,
            body,
            idempotency_key: &key,
            request_id: &job.request_id,
            callback_url: job.callback_url.as_deref(),
        };
        let now = self.clock.unix_ms();
        if !self.store.insert(&insert, now).await? {
            let existing = self
                .store
                .by_key(job.provider_id, &key)
                .await?
                .ok_or_else(|| JobError::Corrupt {
                    id: key.clone(),
                    detail: "idempotency key taken by a job that cannot be read".into(),
                })?;
            let existing_id = Ulid::from_string(&existing.id).map_err(|e| JobError::Corrupt {
                id: existing.id.clone(),
                detail: e.to_string(),
            })?;
            if existing.method != job.method || existing.path != job.path {
                return Err(JobError::Conflict {
                    existing: existing_id,
                });
            }
            let status = JobStatus::parse(&existing.status).unwrap_or(JobStatus::Pending);
            return Ok(Self::receipt(existing_id, status, false));
        }
        if let Err(e) = self
            .queue
            .push(&[Task::new(TaskKind::Job, id)], Duration::ZERO)
            .await
        {
            // The job is persisted: the sweeper queues it again shortly.
            tracing::warn!(job = %id, error = e.kind(), "job persisted but not queued; the sweeper will queue it");
        }
        Ok(Self::receipt(id, JobStatus::Pending, true))
    }

    fn max_body_bytes(&self) -> usize {
        self.max_body
    }
}

/// A row as the admin API and the callback show it (the result body opened).
pub(crate) fn view(row: &JobRow, vault: &Vault) -> Result<JobView, JobError> {
    let corrupt = |detail: String| JobError::Corrupt {
        id: row.id.clone(),
        detail,
    };
    let ulid = |v: &str| Ulid::from_string(v).map_err(|e| corrupt(format!("not a ULID: {e}")));
    let id = ulid(&row.id)?;
    let status =
        JobStatus::parse(&row.status).ok_or_else(|| corrupt(format!("status {:?}", row.status)))?;
    let result = match row.result_status {
        Some(s) => {
            let body = match (&row.result_body, &row.result_key_id) {
                (Some(ct), Some(k)) => {
                    let sealed = SealedCredentials {
                        key_id: k.clone(),
                        ciphertext: ct.clone(),
                    };
                    vault.open(&result_aad(id), &sealed)?.to_vec()
                }
                _ => Vec::new(),
            };
            let headers: Vec<(String, String)> = row
                .result_headers
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt(format!("result_headers: {e}")))?
                .unwrap_or_default();
            let (body, body_encoding) = match String::from_utf8(body) {
                Ok(t) => (t, "utf8"),
                Err(e) => (
                    base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                    "base64",
                ),
            };
            Some(JobResult {
                status: u16::try_from(s).unwrap_or(0),
                headers,
                body,
                body_encoding,
                body_truncated: row.result_truncated,
            })
        }
        None => None,
    };
    Ok(JobView {
        id,
        provider_id: ulid(&row.provider_id)?,
        provider: row.provider.clone(),
        tenant: row.tenant.clone(),
        method: row.method.clone(),
        path: row.path.clone(),
        status,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        request_id: row.request_id.clone(),
        idempotency_key: row.idempotency_key.clone(),
        last_error: row.last_error.clone(),
        result,
        dlq_id: row.dlq_id.as_deref().map(ulid).transpose()?,
        callback: row.callback_url.as_ref().map(|url| CallbackState {
            url: url.clone(),
            status: row.callback_status.clone(),
            attempts: u32::try_from(row.callback_attempts).unwrap_or(0),
            error: row.callback_error.clone(),
        }),
        created_at: utc(row.created_at),
        updated_at: utc(row.updated_at),
        finished_at: row.finished_at.map(utc),
    })
}
