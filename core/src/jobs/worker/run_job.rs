//! One attempt of an asynchronous job: Pending → Processing, the call through the proxy, then
//! Completed (the provider answered; result kept, body sealed), Pending again after the job's
//! backoff, or — attempts exhausted — Failed with a DLQ entry recording the call.

use std::time::Duration;

use ulid::Ulid;

use super::{Ctx, Disposition, until};
use crate::dlq::seal::EntryDraft;
use crate::jobs::exec::{Answer, Outgoing};
use crate::jobs::model::{JOB_ID_HEADER, JobStatus};
use crate::jobs::queue::{Task, TaskKind};
use crate::jobs::service::{request_aad, result_aad};
use crate::jobs::store::{JobOutcome, JobRow};
use crate::provider::SealedCredentials;

/// Wait before an attempt that could not reach the proxy is made.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(5);

/// The wait after `attempts` failed attempts: base × 2^(attempts−1), capped at `max`.
pub(crate) fn backoff_after(base: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    base.saturating_mul(factor).min(max)
}

/// The job's wait after `attempts` failed attempts.
pub(crate) fn backoff(ctx: &Ctx, attempts: u32) -> Duration {
    backoff_after(ctx.opts.backoff_base, ctx.opts.backoff_max, attempts)
}

pub(crate) async fn run(ctx: &Ctx, id: Ulid) -> anyhow::Result<Disposition> {
    let now = ctx.now();
    let Some(row) = ctx.jobs.lease(id, now, ctx.lease_until()).await? else {
        return Ok(match ctx.jobs.get(id).await? {
            None => Disposition::Done,
            Some(r) if JobStatus::parse(&r.status).is_some_and(JobStatus::is_final) => {
                Disposition::Done
            }
            // Not due yet, or another worker holds it: look again when that changes.
            Some(r) => Disposition::Later(until(r.due_at.max(r.lease_until.unwrap_or(0)), now)),
        });
    };
    let attempt = row.attempts;
    let provider_id = Ulid::from_string(&row.provider_id)?;
    let Some(provider) = ctx.provider(provider_id).await? else {
        return fail(ctx, &row, "provider_deleted", None, "").await;
    };
    let body = match (&row.body, &row.body_key_id) {
        (Some(ct), Some(k)) => {
            let sealed = SealedCredentials {
                key_id: k.clone(),
                ciphertext: ct.clone(),
            };
            ctx.vault.open(&request_aad(id), &sealed)?.to_vec()
        }
        _ => Vec::new(),
    };
    let headers: Vec<(String, String)> = serde_json::from_str(&row.headers)?;
    ctx.pace(&provider).await;
    let answer = ctx
        .caller
        .send(Outgoing {
            provider: &provider,
            method: &row.method,
            path: &row.path,
            headers: &headers,
            body,
            request_id: &row.request_id,
            idempotency_key: Some(&row.idempotency_key),
            marker: (JOB_ID_HEADER, id.to_string()),
            max_body: ctx.opts.result_max_bytes,
        })
        .await;
    let now = ctx.now();
    match answer {
        Answer::Final {
            status,
            headers,
            body,
            truncated,
        } => {
            let sealed = if body.is_empty() {
                None
            } else {
                let s = ctx.vault.seal(&result_aad(id), &body)?;
                Some((s.key_id, s.ciphertext))
            };
            let out = JobOutcome {
                status,
                headers: serde_json::to_string(&headers)?,
                body: sealed,
                truncated,
            };
            if ctx.jobs.complete(id, attempt, &out, now).await? {
                tracing::info!(job = %id, provider = %provider.name, status, attempt, "job completed");
                queue_callback(ctx, &row).await;
            }
            Ok(Disposition::Done)
        }
        Answer::Throttled { retry_after } => {
            let due = now.saturating_add(i64::try_from(retry_after.as_millis()).unwrap_or(0));
            ctx.jobs
                .reschedule(id, attempt, None, due, false, now)
                .await?;
            Ok(Disposition::Later(retry_after))
        }
        Answer::Unreachable { error } => {
            tracing::warn!(job = %id, error, "hub proxy unreachable for a job");
            let due = now.saturating_add(5_000);
            ctx.jobs
                .reschedule(id, attempt, Some(error), due, false, now)
                .await?;
            Ok(Disposition::Later(UNREACHABLE_RETRY))
        }
        Answer::Failed {
            status,
            code,
            excerpt,
        } => {
            let error = code.unwrap_or_else(|| format!("status_{status}"));
            let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
            if attempts < ctx.opts.max_attempts {
                let wait = backoff(ctx, attempts);
                let due = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                ctx.jobs
                    .reschedule(id, attempt, Some(&error), due, true, now)
                    .await?;
                tracing::info!(job = %id, attempt, error, next_in_ms = wait.as_millis() as u64,
                    "job attempt failed; retrying later");
                return Ok(Disposition::Later(wait));
            }
            fail(ctx, &row, &error, (status > 0).then_some(status), &excerpt).await
        }
    }
}

/// Attempts exhausted (or the provider is gone): a DLQ entry, then Failed.
async fn fail(
    ctx: &Ctx,
    row: &JobRow,
    error: &str,
    status: Option<u16>,
    excerpt: &str,
) -> anyhow::Result<Disposition> {
    let id = Ulid::from_string(&row.id)?;
    let headers: Vec<(String, String)> = serde_json::from_str(&row.headers)?;
    let body = match (&row.body, &row.body_key_id) {
        (Some(ct), Some(k)) => {
            let sealed = SealedCredentials {
                key_id: k.clone(),
                ciphertext: ct.clone(),
            };
            Some(ctx.vault.open(&request_aad(id), &sealed)?.to_vec())
        }
        _ => Some(Vec::new()),
    };
    let dlq_id = Ulid::new();
    let now = ctx.now();
    let retention = i64::try_from(ctx.opts.dlq_retention.as_millis()).unwrap_or(i64::MAX);
    let entry = EntryDraft {
        id: dlq_id,
        provider_id: Ulid::from_string(&row.provider_id)?,
        provider: &row.provider,
        tenant: row.tenant.as_deref(),
        method: &row.method,
        path: &row.path,
        headers: &headers,
        body: body.as_deref(),
        idempotency_key: Some(&row.idempotency_key),
        request_id: &row.request_id,
        job_id: Some(id),
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        last_status: status,
        last_error: error,
        stop: "job_attempts_exhausted",
        excerpt,
        failed_at_ms: now,
    }
    .seal(&ctx.vault, ctx.opts.dlq_max_body_bytes, retention)?;
    ctx.entries.insert(&[entry], now).await?;
    if ctx.jobs.fail(id, row.attempts, error, dlq_id, now).await? {
        tracing::warn!(job = %id, provider = %row.provider, attempts = row.attempts, error,
            dlq_id = %dlq_id, "job failed; recorded in the DLQ");
        queue_callback(ctx, row).await;
    }
    Ok(Disposition::Done)
}

async fn queue_callback(ctx: &Ctx, row: &JobRow) {
    if row.callback_url.is_none() {
        return;
    }
    let Ok(id) = Ulid::from_string(&row.id) else {
        return;
    };
    if let Err(e) = ctx
        .queue
        .push(&[Task::new(TaskKind::Callback, id)], Duration::ZERO)
        .await
    {
        tracing::warn!(job = %id, error = e.kind(), "callback not queued; the sweeper will queue it");
    }
}
