//! Delivering a finished job's callback: POST its [`JobView`](crate::jobs::JobView) as JSON to
//! `X-Hub-Callback-Url`, with `X-Hub-Job-Id`; retried with the job backoff (capped) until
//! `jobs.callback.max_attempts`. At-least-once: a receiver should treat the job id as the key.

use ulid::Ulid;

use super::run_job::backoff;
use super::{Ctx, Disposition};
use crate::jobs::callback::deliver;
use crate::jobs::model::JOB_ID_HEADER;
use crate::jobs::service::view;

pub(crate) async fn run(ctx: &Ctx, id: Ulid) -> anyhow::Result<Disposition> {
    let Some(row) = ctx.jobs.get(id).await? else {
        return Ok(Disposition::Done);
    };
    let (Some(url), Some("pending")) =
        (row.callback_url.as_deref(), row.callback_status.as_deref())
    else {
        return Ok(Disposition::Done);
    };
    let payload = serde_json::to_vec(&view(&row, &ctx.vault)?)?;
    let headers = [(JOB_ID_HEADER, id.to_string())];
    let result = deliver(url, payload, &headers, &ctx.opts.callback).await;
    let now = ctx.now();
    let attempts = u32::try_from(row.callback_attempts).unwrap_or(u32::MAX) + 1;
    match result {
        Ok(status) => {
            ctx.jobs
                .callback_attempt(id, "delivered", None, now, now)
                .await?;
            tracing::info!(job = %id, status, attempts, "job callback delivered");
            Ok(Disposition::Done)
        }
        Err(e) if attempts >= ctx.opts.callback_max_attempts => {
            let error = e.to_string();
            ctx.jobs
                .callback_attempt(id, "failed", Some(&error), now, now)
                .await?;
            tracing::warn!(job = %id, attempts, error, "job callback abandoned");
            Ok(Disposition::Done)
        }
        Err(e) => {
            let wait = backoff(ctx, attempts);
            let due = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
            let error = e.to_string();
            ctx.jobs
                .callback_attempt(id, "pending", Some(&error), due, now)
                .await?;
            tracing::info!(job = %id, attempts, error, "job callback failed; retrying later");
            Ok(Disposition::Later(wait))
        }
    }
}
