//! The DLQ writer: two background tasks that persist failed calls off the request path.
//!
//! The proxy hands a [`FailedCall`] to a bounded channel ([`DlqSender`]). The **writer** takes
//! what is waiting (up to [`BATCH`]), seals each body, appends the batch to the spool's active
//! segment with one `fsync` (the write-ahead step: from here an entry survives SIGKILL) and
//! answers every durable hand-off: `Ok` once on disk, an error when the spool refused the batch
//! (full, disk full, read-only). It never waits on the database, so whatever the database is
//! doing (up, down, slow, flapping) an acknowledgement costs one group-committed fsync.
//!
//! The **drainer** moves closed segments into the database, oldest first: it asks the writer to
//! close the active segment when nothing else waits, inserts the segment's entries (idempotent
//! by id), deletes it, and goes on. While the database is down (an insert fails or takes longer
//! than [`DB_TIMEOUT`]) it tries again every `flush_interval`; segments pile up on disk, bounded
//! by `dlq.spool_max_bytes`. On start, what an earlier run left in the spool is drained first.
//! A batch the spool refused is still offered to the database directly (best effort: its callers
//! were told it was *not* recorded, so an entry that lands anyway is a bonus, never a lie).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::FailedCall;
use super::seal::{SealedEntry, seal_failed_call};
use super::spool::{Closed, Spool, SpoolError, SpoolStats};
use super::store::EntryStore;
use crate::db::Db;
use crate::state::Clock;
use crate::vault::Vault;

/// Most calls sealed and spooled together, and most entries inserted per statement batch.
pub const BATCH: usize = 64;
/// Longest wait for one database insert before the drainer treats the database as down.
pub const DB_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed call on its way to the writer, with an optional acknowledgement once it is durable.
#[derive(Debug)]
pub struct Handoff {
    call: FailedCall,
    durable: Option<oneshot::Sender<Result<(), HandoffError>>>,
}

/// Why a hand-off did not happen. With any of these the call's id must not be told to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The channel is full (the writer is far behind): the entry is not recorded.
    #[error("the DLQ writer's queue is full")]
    Full,
    /// The writer has stopped.
    #[error("the DLQ writer has stopped")]
    Closed,
    /// Queued, but not yet durable when the wait ended (the disk is stalled).
    #[error("the DLQ entry was not durable in time")]
    NotDurableYet,
    /// The spool refused it: `dlq.spool_max_bytes` reached.
    #[error("the DLQ spool is full")]
    SpoolFull,
    /// The spool could not be written (disk full, read-only, I/O error).
    #[error("the DLQ spool cannot be written")]
    SpoolUnwritable,
    /// The call could not be sealed (key ring fault).
    #[error("the failed call could not be sealed")]
    Unsealable,
}

impl HandoffError {
    /// Stable label for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Full => "queue_full",
            Self::Closed => "writer_stopped",
            Self::NotDurableYet => "not_durable_in_time",
            Self::SpoolFull => "spool_full",
            Self::SpoolUnwritable => "spool_unwritable",
            Self::Unsealable => "unsealable",
        }
    }
}

/// The proxy's end of the writer's channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DlqSender {
    tx: mpsc::Sender<Handoff>,
    stats: SpoolStats,
    finish: Arc<Notify>,
}

impl DlqSender {
    /// Queues a call without waiting (the behaviour of `mpsc::Sender::try_send`).
    pub fn try_send(&self, call: FailedCall) -> Result<(), HandoffError> {
        self.tx
            .try_send(Handoff {
                call,
                durable: None,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => HandoffError::Full,
                mpsc::error::TrySendError::Closed(_) => HandoffError::Closed,
            })
    }

    /// Queues a call and waits (at most `wait`) until it is in the fsync'd spool: after `Ok`, a
    /// SIGKILL cannot lose it. Answer the caller's 502 after this to make "the 502 names an
    /// entry that exists" hold across crashes; the wait is one group-committed fsync, whatever
    /// the database is doing.
    pub async fn send_durable(&self, call: FailedCall, wait: Duration) -> Result<(), HandoffError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .try_send(Handoff {
                call,
                durable: Some(ack),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => HandoffError::Full,
                mpsc::error::TrySendError::Closed(_) => HandoffError::Closed,
            })?;
        match tokio::time::timeout(wait, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HandoffError::Closed),
            Err(_) => Err(HandoffError::NotDurableYet),
        }
    }

    /// What the spool holds (gauges, readiness).
    pub fn spool_stats(&self) -> SpoolStats {
        self.stats.clone()
    }

    /// Stops the writer for a clean exit, once nothing hands calls over any more (the proxy
    /// has drained): it takes what is queued, the drainer moves what it can to the database,
    /// and with Valkey configured the rest is handed over there ([`super::handoff`]) rather than
    /// left on a disk that may not outlive this process. Await the writer's task after this.
    pub fn finish(&self) {
        self.finish.notify_one();
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// `<data_dir>/dlq-spool`.
    pub spool_dir: PathBuf,
    /// `<data_dir>/dlq.spool`, the single-file spool of older hubs (drained first when present).
    pub legacy_spool: Option<PathBuf>,
    /// `dlq.spool_max_bytes`.
    pub spool_max_bytes: u64,
    /// Channel bound.
    pub capacity: usize,
    /// Largest body kept whole (`dlq.max_body_bytes`).
    pub max_body_bytes: usize,
    /// `dlq.retention_days`, as milliseconds.
    pub retention_ms: i64,
    /// How often the drainer tries again while the database is down.
    pub flush_interval: Duration,
    /// Valkey's hand-over list (with `redis.url`): undrained entries go there on a clean stop,
    /// and this drainer takes other proxies' hand-overs.
    pub handover: Option<super::handoff::Handover>,
}

/// Opens the spool and starts the writer and the drainer; returns the sender and a task that
/// ends once every sender is dropped, what was queued is spooled, and (if the database is up)
/// drained.
pub fn spawn(
    db: Db,
    vault: Arc<Vault>,
    clock: Clock,
    opts: WriterOptions,
) -> Result<(DlqSender, JoinHandle<()>), SpoolError> {
    let spool = Spool::open(
        &opts.spool_dir,
        opts.legacy_spool.as_deref(),
        opts.spool_max_bytes,
    )?;
    let stats = spool.stats();
    if stats.entries() > 0 {
        tracing::warn!(entries = stats.entries(), path = %opts.spool_dir.display(),
            "DLQ spool holds entries from before the last stop; draining them to the database");
    }
    let (tx, rx) = mpsc::channel(opts.capacity.max(1));
    let wake = Arc::new(Notify::new());
    let rotate = Arc::new(Notify::new());
    let finish = Arc::new(Notify::new());
    let (direct_tx, direct_rx) = mpsc::channel(opts.capacity.max(1));
    let drainer = Drainer {
        store: EntryStore::new(db),
        clock,
        closed: spool.closed(),
        stats: stats.clone(),
        wake: wake.clone(),
        rotate: rotate.clone(),
        direct: direct_rx,
        flush_interval: opts.flush_interval,
        spool_dir: opts.spool_dir.clone(),
        handover: opts.handover.clone(),
        reading: None,
    };
    let writer = Writer {
        vault,
        spool: Some(spool),
        wake,
        rotate,
        finish: finish.clone(),
        direct: direct_tx,
        opts,
    };
    let (writer_done_tx, writer_done) = oneshot::channel();
    // Aborting the returned task (a test's SIGKILL) stops the drainer too.
    let mut drain = AbortOnDrop(tokio::spawn(drainer.run(writer_done)));
    let task = tokio::spawn(async move {
        writer.run(rx).await;
        let _ = writer_done_tx.send(());
        if let Ok(drainer) = (&mut drain.0).await {
            drainer.hand_over().await;
        }
    });
    Ok((DlqSender { tx, stats, finish }, task))
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forwards a plain `FailedCall` channel (the proxy's current hand-off) into the writer.
pub fn bridge(mut rx: mpsc::Receiver<FailedCall>, to: DlqSender) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            let handoff = Handoff {
                call,
                durable: None,
            };
            if to.tx.send(handoff).await.is_err() {
                tracing::error!("DLQ writer stopped: failed call not recorded");
            }
        }
    })
}

struct Writer {
    vault: Arc<Vault>,
    /// `None` only while a blocking file operation holds it.
    spool: Option<Spool>,
    /// Tells the drainer something was appended or closed.
    wake: Arc<Notify>,
    /// The drainer asks for the active segment to be closed.
    rotate: Arc<Notify>,
    /// A clean stop was asked for ([`DlqSender::finish`]).
    finish: Arc<Notify>,
    /// Batches the spool refused, offered to the database directly.
    direct: mpsc::Sender<Vec<SealedEntry>>,
    opts: WriterOptions,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Handoff>) {
        let rotate = self.rotate.clone();
        let finish = self.finish.clone();
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                got = rx.recv_many(&mut batch, BATCH) => {
                    if got == 0 {
                        break;
                    }
                    self.write(batch).await;
                }
                // No new hand-offs; what is queued is still written.
                () = finish.notified() => rx.close(),
                () = rotate.notified() => {
                    if self.with_spool(Spool::rotate).await.is_ok() {
                        self.wake.notify_one();
                    }
                }
            }
        }
        // Closing what is left lets the drainer take it before the task ends.
        if self.with_spool(Spool::rotate).await.is_ok() {
            self.wake.notify_one();
        }
    }

    async fn write(&mut self, batch: Vec<Handoff>) {
        let retention = self.opts.retention_ms;
        let mut sealed = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        for h in batch {
            match seal_failed_call(&h.call, &self.vault, self.opts.max_body_bytes, retention) {
                Ok(e) => {
                    sealed.push(e);
                    acks.push(h.durable);
                }
                Err(e) => {
                    tracing::error!(request_id = %h.call.request_id, error = e.kind(),
                        "cannot seal a failed call's body: DLQ entry not recorded");
                    if let Some(ack) = h.durable {
                        let _ = ack.send(Err(HandoffError::Unsealable));
                    }
                }
            }
        }
        if sealed.is_empty() {
            return;
        }
        // The batch goes to the blocking thread and comes back (bodies are not copied).
        let (appended, sealed) = match self
            .with_spool(move |s| Ok((s.append(&sealed), sealed)))
            .await
        {
            Ok(pair) => pair,
            Err(e) => (Err(e), Vec::new()),
        };
        let result = match appended {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, kind = e.kind(), "DLQ spool append failed");
                Err(match e {
                    SpoolError::Full { .. } => HandoffError::SpoolFull,
                    _ => HandoffError::SpoolUnwritable,
                })
            }
        };
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(result);
        }
        match result {
            Ok(()) => self.wake.notify_one(),
            Err(e) => {
                tracing::error!(
                    entries = sealed.len(),
                    reason = e.kind(),
                    "DLQ spool refused failed calls: their callers got no DLQ id; \
                     offering them to the database directly"
                );
                if self.direct.try_send(sealed).is_err() {
                    tracing::error!(
                        "DLQ entries lost: the spool refused them and the database queue is full"
                    );
                }
                self.wake.notify_one();
            }
        }
    }

    /// Runs a blocking spool operation off the async threads; the error is logged.
    async fn with_spool<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let Some(mut spool) = self.spool.take() else {
            return Err(SpoolError::Io {
                path: self.opts.spool_dir.clone(),
                source: std::io::Error::other("the spool could not be reopened"),
            });
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = op(&mut spool);
            (spool, r)
        })
        .await;
        let (spool, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "DLQ spool task failed; reopening the spool");
                match Spool::open(&self.opts.spool_dir, None, self.opts.spool_max_bytes) {
                    Ok(s) => self.spool = Some(s),
                    Err(e) => tracing::error!(error = %e, "cannot reopen the DLQ spool"),
                }
                return Err(SpoolError::Io {
                    path: self.opts.spool_dir.clone(),
                    source: std::io::Error::other("the spool task failed"),
                });
            }
        };
        self.spool = Some(spool);
        if let Err(e) = &result {
            tracing::error!(error = %e, kind = e.kind(), "DLQ spool operation failed");
        }
        result
    }
}

struct Drainer {
    store: EntryStore,
    clock: Clock,
    closed: Closed,
    stats: SpoolStats,
    wake: Arc<Notify>,
    rotate: Arc<Notify>,
    direct: mpsc::Receiver<Vec<SealedEntry>>,
    flush_interval: Duration,
    spool_dir: PathBuf,
    handover: Option<super::handoff::Handover>,
    /// The front segment's entries while the database refuses them, and how many are in.
    reading: Option<(PathBuf, Vec<SealedEntry>, usize)>,
}

/// How often a drainer looks for other proxies' hand-overs in Valkey.
const HANDOVER_POLL: Duration = Duration::from_secs(5);

impl Drainer {
    async fn run(mut self, mut writer_done: oneshot::Receiver<()>) -> Self {
        let mut down = false;
        let mut finishing = false;
        let mut handover_tick = tokio::time::interval(HANDOVER_POLL);
        handover_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Ok(batch) = self.direct.try_recv() {
                if !self.insert(&batch).await {
                    tracing::error!(
                        entries = batch.len(),
                        "DLQ entries lost: neither the spool nor the database took them"
                    );
                }
            }
            if let Some(segment) = self.closed.front() {
                match self.drain(segment).await {
                    Ok(()) => {
                        if down {
                            down = false;
                            tracing::info!("DLQ database reachable again: spool drained");
                        }
                        continue;
                    }
                    Err(()) => {
                        if !down {
                            down = true;
                            tracing::warn!(
                                entries = self.stats.entries(),
                                "DLQ database unavailable: failed calls stay in the spool until it returns"
                            );
                        }
                        if finishing {
                            return self; // leave the rest for the hand-over or the next start
                        }
                        tokio::select! {
                            () = tokio::time::sleep(self.flush_interval) => {}
                            _ = &mut writer_done => finishing = true,
                        }
                        continue;
                    }
                }
            }
            if finishing {
                return self;
            }
            if self.stats.entries() > 0 {
                // Only the active segment holds entries: have the writer close it.
                self.rotate.notify_one();
            }
            tokio::select! {
                () = self.wake.notified() => {}
                Some(batch) = self.direct.recv() => {
                    if !self.insert(&batch).await {
                        tracing::error!(entries = batch.len(),
                            "DLQ entries lost: neither the spool nor the database took them");
                    }
                }
                _ = &mut writer_done => finishing = true,
                _ = handover_tick.tick(), if self.handover.is_some() => self.take_over().await,
            }
        }
    }

    /// Takes other proxies' hand-overs from Valkey into the database (when it is reachable).
    async fn take_over(&self) {
        let Some(handover) = &self.handover else {
            return;
        };
        if handover.waiting().await == 0 {
            return;
        }
        let taken = handover
            .take(|batch| async move { self.insert(&batch).await })
            .await;
        if taken > 0 {
            self.stats.add_taken_over(taken);
            tracing::info!(
                entries = taken,
                "DLQ entries another proxy handed over through Valkey are in the database"
            );
        }
    }

    /// On a clean stop: hands what the database did not take to Valkey, oldest first, and
    /// deletes each segment handed.
    async fn hand_over(self) {
        if self.stats.entries() == 0 {
            return;
        }
        let Some(handover) = &self.handover else {
            tracing::warn!(entries = self.stats.entries(), path = %self.spool_dir.display(),
                "stopping with DLQ entries not yet in the database: they stay in the spool \
                 (drained on the next start over this data dir)");
            return;
        };
        let mut handed = 0;
        while let Some(segment) = self.closed.front() {
            let read = segment.clone();
            let Ok(Ok(entries)) = tokio::task::spawn_blocking(move || read.read()).await else {
                break;
            };
            match handover.push(&entries).await {
                Ok(n) => handed += n,
                Err(e) => {
                    tracing::error!(error = %e, entries = self.stats.entries(),
                        "cannot hand DLQ entries over to Valkey: they stay in the spool");
                    break;
                }
            }
            let stats = self.stats.clone();
            let done = segment.clone();
            if !matches!(
                tokio::task::spawn_blocking(move || done.remove(&stats)).await,
                Ok(Ok(()))
            ) {
                break; // pushed and still on disk: inserted twice at worst, which is a no-op
            }
            self.closed.pop();
        }
        self.stats.add_handed_over(handed);
        if handed == 0 {
            return;
        }
        tracing::warn!(
            handed,
            left = self.stats.entries(),
            "stopping with the database down: DLQ entries handed over to Valkey for another \
             proxy to store"
        );
    }

    /// Inserts one closed segment and deletes it; `Err` while the database is unavailable.
    async fn drain(&mut self, segment: super::spool::Segment) -> Result<(), ()> {
        // A segment is read once, however many tries the database needs; chunks already in
        // are not sent again.
        let (entries, mut done) = match self.reading.take() {
            Some((path, entries, done)) if path == segment.path => (entries, done),
            _ => {
                let read = segment.clone();
                match tokio::task::spawn_blocking(move || read.read()).await {
                    Ok(Ok(e)) => (e, 0),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot read a DLQ spool segment; will retry");
                        return Err(());
                    }
                    Err(_) => return Err(()),
                }
            }
        };
        let inserted = self.insert_from(&entries, &mut done).await;
        let count = entries.len();
        if inserted.is_err() {
            self.reading = Some((segment.path.clone(), entries, done));
            return Err(());
        }
        let stats = self.stats.clone();
        let done = segment.clone();
        match tokio::task::spawn_blocking(move || done.remove(&stats)).await {
            Ok(Ok(())) => {
                self.closed.pop();
                tracing::debug!(entries = count, "DLQ spool segment drained");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot delete a drained DLQ spool segment");
                Err(())
            }
            Err(_) => Err(()),
        }
    }

    /// Inserts `entries[*done..]` chunk by chunk, moving `done` past each chunk that is in.
    async fn insert_from(&self, entries: &[SealedEntry], done: &mut usize) -> Result<(), ()> {
        while *done < entries.len() {
            let chunk = &entries[*done..entries.len().min(*done + BATCH)];
            match self.try_insert(chunk).await {
                Ok(()) => {}
                Err(Refusal::Unavailable) => return Err(()),
                // The database answered and refused: find the entries it cannot hold, one by
                // one, and set them aside, so they do not block everything behind them.
                Err(Refusal::Rejected(_)) => {
                    for e in chunk {
                        match self.try_insert(std::slice::from_ref(e)).await {
                            Ok(()) => {}
                            Err(Refusal::Unavailable) => return Err(()),
                            Err(Refusal::Rejected(code)) => self.set_aside(e, &code).await?,
                        }
                    }
                }
            }
            *done += chunk.len();
        }
        Ok(())
    }

    /// Inserts entries (idempotent); `false` when the database failed or was too slow.
    async fn insert(&self, entries: &[SealedEntry]) -> bool {
        self.try_insert(entries).await.is_ok()
    }

    /// Inserts entries (idempotent), saying why not.
    async fn try_insert(&self, entries: &[SealedEntry]) -> Result<(), Refusal> {
        let now = self.clock.unix_ms();
        match tokio::time::timeout(DB_TIMEOUT, self.store.insert(entries, now)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "DLQ insert failed");
                Err(Refusal::of(&e))
            }
            Err(_) => Err(Refusal::Unavailable),
        }
    }

    /// Moves one entry the database refuses to the spool's rejected file.
    async fn set_aside(&self, e: &SealedEntry, code: &str) -> Result<(), ()> {
        let dir = self.spool_dir.clone();
        let entry = e.clone();
        let written =
            tokio::task::spawn_blocking(move || super::spool::set_aside(&dir, &[entry])).await;
        match written {
            Ok(Ok(())) => {
                self.stats.add_rejected(1);
                tracing::error!(entry = %e.id, provider = %e.provider, code,
                    "the database refuses this DLQ entry; set aside in {}/{}",
                    self.spool_dir.display(), super::spool::REJECTED_FILE);
                Ok(())
            }
            Ok(Err(err)) => {
                tracing::error!(entry = %e.id, error = %err, "cannot set aside a refused DLQ entry");
                Err(())
            }
            Err(_) => Err(()),
        }
    }
}

/// Why an insert did not happen.
enum Refusal {
    /// The database is down, slow, or answered with an error that may pass.
    Unavailable,
    /// The database refused these rows for what they hold (SQLSTATE), and will again.
    Rejected(String),
}

impl Refusal {
    fn of(e: &sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let constraint = matches!(
                    db.kind(),
                    ErrorKind::UniqueViolation
                        | ErrorKind::ForeignKeyViolation
                        | ErrorKind::NotNullViolation
                        | ErrorKind::CheckViolation
                );
                // PostgreSQL class 22: data exceptions (a value the column cannot hold).
                let data = code.len() == 5 && code.starts_with("22");
                if constraint || data {
                    Self::Rejected(code)
                } else {
                    Self::Unavailable
                }
            }
            sqlx::Error::Encode(_) => Self::Rejected("encode".to_owned()),
            _ => Self::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests;
