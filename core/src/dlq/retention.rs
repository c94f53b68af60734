//! The retention job: every `dlq.retention_period_secs`, delete DLQ entries past their
//! `expiresAt` (creation + `dlq.retention_days`) and jobs finished more than
//! `jobs.retention_days` ago (once their callback is settled). Deletes go in batches so a
//! large backlog never holds a long lock.

use std::time::Duration;

use tokio::sync::watch;

use super::store::EntryStore;
use crate::db::Db;
use crate::jobs::store::JobStore;
use crate::state::Clock;

/// Rows deleted per statement.
const BATCH: u32 = 1000;
/// Batches per table and sweep (the next sweep continues).
const MAX_BATCHES: usize = 100;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired DLQ entries.
    pub entries: u64,
    /// Old finished jobs.
    pub jobs: u64,
}

/// The retention job.
#[derive(Debug, Clone)]
pub struct Retention {
    entries: EntryStore,
    jobs: JobStore,
    clock: Clock,
    period: Duration,
    job_retention: Duration,
}

impl Retention {
    /// Over `db`, every `period`; finished jobs are kept `job_retention`.
    pub fn new(db: Db, clock: Clock, period: Duration, job_retention: Duration) -> Self {
        Self {
            entries: EntryStore::new(db.clone()),
            jobs: JobStore::new(db),
            clock,
            period,
            job_retention,
        }
    }

    /// One sweep at the clock's now.
    pub async fn sweep(&self) -> Result<Swept, sqlx::Error> {
        let now = self.clock.unix_ms();
        let mut swept = Swept::default();
        for _ in 0..MAX_BATCHES {
            let n = self.entries.delete_expired(now, BATCH).await?;
            swept.entries += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        let before =
            now.saturating_sub(i64::try_from(self.job_retention.as_millis()).unwrap_or(i64::MAX));
        for _ in 0..MAX_BATCHES {
            let n = self.jobs.delete_finished(before, BATCH).await?;
            swept.jobs += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        Ok(swept)
    }

    /// Sweeps now and then every period until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match self.sweep().await {
                Ok(s) if s != Swept::default() => {
                    tracing::info!(
                        entries = s.entries,
                        jobs = s.jobs,
                        "retention: expired rows deleted"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; next period retries"),
            }
        }
    }
}
