//! Replaying one DLQ entry (a worker task): take the queued entry with a lease, send it again
//! through the hub proxy with its idempotency key, request id and `X-Hub-DLQ-Replay`, and
//! record what happened. A final answer from the provider resolves the entry (kept, with its
//! outcome, until it expires); a failure records the new attempt and leaves it pending; the
//! hub's own 429 (or an unreachable proxy) is not an attempt: the entry stays queued and comes
//! back after `Retry-After`.

use ulid::Ulid;

use super::seal::{REPLAY_HEADER, open_body};
use super::store::ReplayRecord;
use crate::jobs::exec::{Answer, EXCERPT_LEN, Outgoing};
use crate::jobs::worker::{Ctx, Disposition, until};

/// Wait before a replay that could not reach the proxy is tried again.
const UNREACHABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn run(ctx: &Ctx, id: Ulid) -> anyhow::Result<Disposition> {
    let now = ctx.now();
    let Some(row) = ctx.entries.lease(id, now, ctx.lease_until()).await? else {
        // Not queued any more (resolved, deleted, expired), or another worker holds it.
        return Ok(match ctx.entries.get(id).await? {
            Some(r) if r.status == "queued" => Disposition::Later(ctx.opts.lease / 4),
            _ => Disposition::Done,
        });
    };
    let entry = row
        .to_entry()
        .map_err(|d| anyhow::anyhow!("corrupt DLQ row {id}: {d}"))?;
    let Some(provider) = ctx.provider(entry.provider_id).await? else {
        let r = ReplayRecord {
            succeeded: false,
            status: None,
            error: Some("provider_deleted"),
            excerpt: "",
        };
        ctx.entries.record_replay(id, &r, ctx.now()).await?;
        return Ok(Disposition::Done);
    };
    let body = match (&row.body, &row.body_key_id) {
        (Some(ct), Some(k)) => open_body(&ctx.vault, id, k, ct)?,
        _ => Vec::new(),
    };
    ctx.pace(&provider).await;
    let answer = ctx
        .caller
        .send(Outgoing {
            provider: &provider,
            method: &entry.method,
            path: &entry.path,
            headers: &entry.headers,
            body,
            request_id: &entry.request_id,
            idempotency_key: entry.idempotency_key.as_deref(),
            marker: (REPLAY_HEADER, id.to_string()),
            max_body: EXCERPT_LEN,
        })
        .await;
    let now = ctx.now();
    let record = |succeeded, status, error, excerpt| ReplayRecord {
        succeeded,
        status,
        error,
        excerpt,
    };
    match answer {
        Answer::Final { status, body, .. } => {
            let excerpt = crate::wire::excerpt(&body, body.len());
            let r = record(true, Some(status), None, &excerpt);
            ctx.entries.record_replay(id, &r, now).await?;
            tracing::info!(entry = %id, provider = %entry.provider, status, "DLQ entry replayed");
            Ok(Disposition::Done)
        }
        Answer::Failed {
            status,
            code,
            excerpt,
        } => {
            let error = code.unwrap_or_else(|| "status".to_owned());
            let r = record(
                false,
                (status > 0).then_some(status),
                Some(&error),
                &excerpt,
            );
            ctx.entries.record_replay(id, &r, now).await?;
            tracing::info!(entry = %id, provider = %entry.provider, status, error, "DLQ replay failed");
            Ok(Disposition::Done)
        }
        Answer::Throttled { retry_after } => {
            let due = now.saturating_add(i64::try_from(retry_after.as_millis()).unwrap_or(0));
            ctx.entries.defer(id, due, now).await?;
            Ok(Disposition::Later(until(due, now)))
        }
        Answer::Unreachable { error } => {
            tracing::warn!(entry = %id, error, "hub proxy unreachable for a DLQ replay");
            let due = now.saturating_add(5_000);
            ctx.entries.defer(id, due, now).await?;
            Ok(Disposition::Later(UNREACHABLE_RETRY))
        }
    }
}
