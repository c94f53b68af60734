//! The work queue as a table in the hub database (see the parent module for the design).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use tokio::sync::Mutex;
use ulid::Ulid;

use super::{Claimed, QueueError, Receipt, Task, TaskKind, WorkQueue};
use crate::db::{Db, Pool, exec, fetch, scalars};
use crate::state::Clock;

/// PostgreSQL `NOTIFY` channel announcing pushed work.
pub const WORK_CHANNEL: &str = "hub_work";
/// Rows per `INSERT` when pushing many tasks.
const PUSH_CHUNK: usize = 100;

#[derive(Debug, sqlx::FromRow)]
struct QueueRow {
    id: i64,
    kind: String,
    ref_id: String,
    deliveries: i64,
}

/// The database work queue.
#[derive(Debug)]
pub struct SqlQueue {
    db: Db,
    owner: String,
    lease: Duration,
    clock: Clock,
    listener: Mutex<Option<PgListener>>,
    /// The last claim found nothing more due: the next one starts with the cheaper look at
    /// the next due time (which also sees anything pushed since) instead of a claim.
    drained: AtomicBool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqlQueue {
    /// A queue on `db` whose claims last `lease`.
    pub fn new(db: Db, lease: Duration, clock: Clock) -> Self {
        Self {
            db,
            owner: format!("w-{}", Ulid::new()),
            lease,
            clock,
            listener: Mutex::new(None),
            drained: AtomicBool::new(false),
        }
    }

    /// Tasks waiting or leased (for tests and metrics).
    pub async fn depth(&self) -> Result<i64, QueueError> {
        let n = scalars!(i64, &self.db, "SELECT COUNT(*) FROM work_queue")?;
        Ok(n.first().copied().unwrap_or(0))
    }

    async fn claim_now(&self, max: usize) -> Result<Vec<Claimed>, QueueError> {
        let now = self.clock.unix_ms();
        let lock = match self.db.pool() {
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE work_queue SET available_at = ?, lease_owner = ?, deliveries = deliveries + 1 \
             WHERE id IN (SELECT id FROM work_queue WHERE available_at <= ? \
             ORDER BY available_at, id LIMIT ?{lock}) RETURNING id, kind, ref_id, deliveries"
        );
        let rows = fetch!(
            fetch_all,
            QueueRow,
            &self.db,
            &sql,
            now.saturating_add(ms(self.lease)),
            &self.owner,
            now,
            i64::try_from(max).unwrap_or(i64::MAX)
        )?;
        self.drained.store(rows.len() < max, Ordering::Relaxed);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (Some(kind), Ok(id)) = (TaskKind::parse(&r.kind), Ulid::from_string(&r.ref_id))
            else {
                tracing::error!(row = r.id, kind = %r.kind, "undecodable work_queue row; dropping it");
                exec!(&self.db, "DELETE FROM work_queue WHERE id = ?", r.id)?;
                continue;
            };
            out.push(Claimed {
                task: Task { kind, id },
                deliveries: u32::try_from(r.deliveries).unwrap_or(u32::MAX),
                receipt: Receipt::Row {
                    id: r.id,
                    deliveries: r.deliveries,
                },
            });
        }
        Ok(out)
    }

    async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        let v = scalars!(
            Option<i64>,
            &self.db,
            "SELECT MIN(available_at) FROM work_queue"
        )?;
        Ok(v.into_iter().flatten().next())
    }

    /// Waits for pushed work (or `max`): an in-process notification, or `LISTEN` on PostgreSQL.
    async fn wait_for_work(&self, max: Duration) {
        let local = self.db.work_pushed().notified();
        let Pool::Postgres(pool) = self.db.pool() else {
            let _ = tokio::time::timeout(max, local).await;
            return;
        };
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(pool).await {
                Ok(mut l) => match l.listen(WORK_CHANNEL).await {
                    Ok(()) => *guard = Some(l),
                    Err(e) => tracing::debug!(error = %e, "LISTEN hub_work failed"),
                },
                Err(e) => tracing::debug!(error = %e, "work queue listener cannot connect"),
            }
        }
        let Some(listener) = guard.as_mut() else {
            let _ = tokio::time::timeout(max, local).await;
            return;
        };
        tokio::select! {
            () = local => {}
            got = listener.recv() => if got.is_err() {
                *guard = None; // reconnects on the next wait
            },
            () = tokio::time::sleep(max) => {}
        }
    }

    fn row_receipt(claimed: &Claimed) -> Result<(i64, i64), QueueError> {
        match claimed.receipt {
            Receipt::Row { id, deliveries } => Ok((id, deliveries)),
            Receipt::Amqp(_) => Err(QueueError::ForeignReceipt),
        }
    }
}

#[async_trait]
impl WorkQueue for SqlQueue {
    fn backend(&self) -> &'static str {
        "database"
    }

    async fn push(&self, tasks: &[Task], delay: Duration) -> Result<(), QueueError> {
        let now = self.clock.unix_ms();
        let due = now.saturating_add(ms(delay));
        for chunk in tasks.chunks(PUSH_CHUNK) {
            let values = vec!["(?, ?, ?, 0, ?)"; chunk.len()].join(", ");
            let insert = format!(
                "INSERT INTO work_queue (kind, ref_id, available_at, deliveries, created_at) \
                 VALUES {values} ON CONFLICT (kind, ref_id) DO NOTHING"
            );
            self.db.count();
            match self.db.pool() {
                Pool::Sqlite(p) => {
                    let mut q = sqlx::query(&insert);
                    for t in chunk {
                        q = q
                            .bind(t.kind.as_str())
                            .bind(t.id.to_string())
                            .bind(due)
                            .bind(now);
                    }
                    q.execute(p).await?;
                }
                Pool::Postgres(p) => {
                    // One statement: the insert and the notification of listening workers.
                    let sql = format!(
                        "WITH ins AS ({} RETURNING 1) SELECT pg_notify('{WORK_CHANNEL}', '')",
                        crate::db::pg(&insert)
                    );
                    let mut q = sqlx::query(&sql);
                    for t in chunk {
                        q = q
                            .bind(t.kind.as_str())
                            .bind(t.id.to_string())
                            .bind(due)
                            .bind(now);
                    }
                    q.execute(p).await?;
                }
            }
        }
        if let Pool::Sqlite(_) = self.db.pool() {
            // PostgreSQL's NOTIFY reaches this process's listener too; SQLite has only this.
            self.db.work_pushed().notify_one();
        }
        Ok(())
    }

    async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Claimed>, QueueError> {
        if !self.drained.load(Ordering::Relaxed) || wait.is_zero() {
            let got = self.claim_now(max).await?;
            if !got.is_empty() || wait.is_zero() {
                return Ok(got);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Sleep until the next due task, a notification, or the deadline; then claim.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let now = self.clock.unix_ms();
            let nap = match self.next_due().await? {
                Some(due) => left.min(Duration::from_millis(
                    u64::try_from(due.saturating_sub(now)).unwrap_or(0),
                )),
                None => left,
            };
            if !nap.is_zero() {
                self.wait_for_work(nap).await;
            }
            let got = self.claim_now(max).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
        }
    }

    async fn ack(&self, claimed: Claimed) -> Result<(), QueueError> {
        let (id, deliveries) = Self::row_receipt(&claimed)?;
        exec!(
            &self.db,
            "DELETE FROM work_queue WHERE id = ? AND deliveries = ?",
            id,
            deliveries
        )?;
        Ok(())
    }

    async fn retry_later(&self, claimed: Claimed, delay: Duration) -> Result<(), QueueError> {
        let (id, deliveries) = Self::row_receipt(&claimed)?;
        let due = self.clock.unix_ms().saturating_add(ms(delay));
        exec!(
            &self.db,
            "UPDATE work_queue SET available_at = ?, lease_owner = NULL \
             WHERE id = ? AND deliveries = ?",
            due,
            id,
            deliveries
        )?;
        // Our own idle claimer recomputes its wake-up time.
        self.db.work_pushed().notify_one();
        Ok(())
    }
}
