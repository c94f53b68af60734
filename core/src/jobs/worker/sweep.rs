//! The sweeper: every `sweep_period`, rows that should be in the work queue but are overdue by
//! that long and not leased (a push failed after the row was written, a broker lost a message)
//! are queued again. Three small indexed queries per period; a duplicate is harmless (the
//! database queue ignores it, the row leases absorb an AMQP one).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use ulid::Ulid;

use super::Ctx;
use crate::jobs::queue::{Task, TaskKind};

/// Rows re-queued per kind and sweep.
const SWEEP_LIMIT: u32 = 500;

pub(super) async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let period = ctx.opts.sweep_period;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = sweep_once(&ctx, period).await {
            tracing::debug!(error = format!("{e:#}"), "sweep failed");
        }
    }
}

/// One sweep; returns how many tasks were queued again.
pub(crate) async fn sweep_once(ctx: &Ctx, grace: Duration) -> anyhow::Result<usize> {
    let before = ctx
        .now()
        .saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(0));
    let mut tasks = Vec::new();
    let mut add = |kind, ids: Vec<String>| {
        tasks.extend(
            ids.iter()
                .filter_map(|i| Ulid::from_string(i).ok())
                .map(|id| Task::new(kind, id)),
        );
    };
    add(
        TaskKind::Replay,
        ctx.entries.overdue(before, SWEEP_LIMIT).await?,
    );
    add(TaskKind::Job, ctx.jobs.overdue(before, SWEEP_LIMIT).await?);
    add(
        TaskKind::Callback,
        ctx.jobs.overdue_callbacks(before, SWEEP_LIMIT).await?,
    );
    if !tasks.is_empty() {
        ctx.queue.push(&tasks, Duration::ZERO).await?;
        tracing::info!(tasks = tasks.len(), "sweeper queued overdue work again");
    }
    Ok(tasks.len())
}
