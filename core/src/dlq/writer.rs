//! The DLQ writer: the background task that persists failed calls off the request path.
//!
//! The proxy hands a [`FailedCall`] to a bounded channel ([`DlqSender`]). The writer takes what
//! is waiting (up to [`BATCH`]), seals each body, appends the batch to the spool with one
//! `fsync` (the write-ahead step: from here an entry survives SIGKILL), acknowledges durable
//! hand-offs, then inserts the batch into the database and empties the spool. While the
//! database is down (an insert fails or takes longer than [`DB_TIMEOUT`]), batches only go to
//! the spool and the writer tries to flush the whole spool every `flush_interval`; the database
//! is not asked in between, so an outage costs the request path nothing. On start, whatever a
//! crashed hub left in the spool is flushed first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::FailedCall;
use super::seal::{SealedEntry, seal_failed_call};
use super::spool::{Spool, SpoolError};
use super::store::EntryStore;
use crate::jobs::db::Db;
use crate::state::Clock;
use crate::vault::Vault;

/// Most calls sealed, spooled and inserted together.
pub const BATCH: usize = 64;
/// Longest wait for one database insert before the writer treats the database as down.
pub const DB_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed call on its way to the writer, with an optional acknowledgement once it is durable.
#[derive(Debug)]
pub struct Handoff {
    call: FailedCall,
    durable: Option<oneshot::Sender<()>>,
}

/// Why a hand-off did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The channel is full (the writer is far behind): the entry is not recorded.
    #[error("the DLQ writer's queue is full")]
    Full,
    /// The writer has stopped.
    #[error("the DLQ writer has stopped")]
    Closed,
    /// Queued, but not yet durable when the wait ended (it most likely will be).
    #[error("the DLQ entry was not durable in time")]
    NotDurableYet,
}

/// The proxy's end of the writer's channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DlqSender {
    tx: mpsc::Sender<Handoff>,
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
    /// entry that exists" hold across crashes; the wait is one group-committed fsync.
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
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(HandoffError::Closed),
            Err(_) => Err(HandoffError::NotDurableYet),
        }
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// `<data_dir>/dlq.spool`.
    pub spool_path: PathBuf,
    /// Channel bound.
    pub capacity: usize,
    /// Largest body kept whole (`dlq.max_body_bytes`).
    pub max_body_bytes: usize,
    /// `dlq.retention_days`, as milliseconds.
    pub retention_ms: i64,
    /// How often to try flushing the spool while the database is down.
    pub flush_interval: Duration,
}

/// Opens the spool and starts the writer; returns its sender and its task (which ends once
/// every sender is dropped and what was queued is spooled, and flushed if the database is up).
pub fn spawn(
    db: Db,
    vault: Arc<Vault>,
    clock: Clock,
    opts: WriterOptions,
) -> Result<(DlqSender, JoinHandle<()>), SpoolError> {
    let (spool, leftover) = Spool::open(&opts.spool_path)?;
    if !leftover.is_empty() {
        tracing::warn!(entries = leftover.len(), path = %opts.spool_path.display(),
            "DLQ spool holds entries from before the last stop; flushing them");
    }
    let (tx, rx) = mpsc::channel(opts.capacity.max(1));
    let writer = Writer {
        store: EntryStore::new(db),
        vault,
        clock,
        spool: Some(spool),
        backlog: !leftover.is_empty(),
        opts,
    };
    Ok((DlqSender { tx }, tokio::spawn(writer.run(rx))))
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
    store: EntryStore,
    vault: Arc<Vault>,
    clock: Clock,
    /// `None` only while a blocking file operation holds it.
    spool: Option<Spool>,
    /// The spool holds entries the database does not have yet.
    backlog: bool,
    opts: WriterOptions,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Handoff>) {
        if self.backlog {
            self.flush_spool().await;
        }
        let mut flush_tick = tokio::time::interval(self.opts.flush_interval);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                got = rx.recv_many(&mut batch, BATCH) => {
                    if got == 0 {
                        break;
                    }
                    self.write(batch).await;
                }
                _ = flush_tick.tick(), if self.backlog => self.flush_spool().await,
            }
        }
        if self.backlog {
            self.flush_spool().await;
        }
    }

    async fn write(&mut self, batch: Vec<Handoff>) {
        let retention = self.opts.retention_ms;
        let mut sealed = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        for h in batch {
            match seal_failed_call(&h.call, &self.vault, self.opts.max_body_bytes, retention) {
                Ok(e) => sealed.push(e),
                Err(e) => tracing::error!(request_id = %h.call.request_id, error = e.kind(),
                    "cannot seal a failed call's body: DLQ entry not recorded"),
            }
            acks.extend(h.durable);
        }
        let spooled = self.append(sealed.clone()).await;
        for ack in acks {
            let _ = ack.send(());
        }
        if !spooled {
            // Not durable on disk: insert now whatever the backlog says.
            if self.insert(&sealed).await {
                return;
            }
            tracing::error!(
                entries = sealed.len(),
                "DLQ entries lost: neither the spool nor the database took them"
            );
            return;
        }
        if self.backlog {
            return; // the database is down: the flush tick takes the whole spool later
        }
        if self.insert(&sealed).await {
            self.clear_spool().await;
        } else {
            self.backlog = true;
            tracing::warn!(
                "DLQ database unavailable: entries spool to {} until it returns",
                self.opts.spool_path.display()
            );
        }
    }

    /// Inserts entries (idempotent); `false` when the database failed or was too slow.
    async fn insert(&self, entries: &[SealedEntry]) -> bool {
        let now = self.clock.unix_ms();
        match tokio::time::timeout(DB_TIMEOUT, self.store.insert(entries, now)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "DLQ insert failed");
                false
            }
            Err(_) => false,
        }
    }

    async fn flush_spool(&mut self) {
        let Some(entries) = self.with_spool(|s| s.read_all()).await else {
            return;
        };
        for chunk in entries.chunks(BATCH) {
            if !self.insert(chunk).await {
                return; // still down; the next tick tries again
            }
        }
        if self.clear_spool().await {
            self.backlog = false;
            tracing::info!(entries = entries.len(), "DLQ spool flushed to the database");
        }
    }

    async fn append(&mut self, entries: Vec<SealedEntry>) -> bool {
        self.with_spool(move |s| s.append(&entries)).await.is_some()
    }

    async fn clear_spool(&mut self) -> bool {
        self.with_spool(|s| s.clear()).await.is_some()
    }

    /// Runs a blocking spool operation off the async threads; `None` (logged) when it failed.
    async fn with_spool<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Option<T> {
        let mut spool = self.spool.take()?;
        let (spool, result) = match tokio::task::spawn_blocking(move || {
            let r = op(&mut spool);
            (spool, r)
        })
        .await
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "DLQ spool task failed; reopening the spool");
                match Spool::open(&self.opts.spool_path) {
                    Ok((s, _)) => self.spool = Some(s),
                    Err(e) => tracing::error!(error = %e, "cannot reopen the DLQ spool"),
                }
                return None;
            }
        };
        self.spool = Some(spool);
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, kind = e.kind(), "DLQ spool operation failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
