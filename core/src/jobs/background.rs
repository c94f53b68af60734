//! Everything the DLQ and jobs need, opened once per process from the configuration: the
//! database handle, the work queue (table or RabbitMQ), the [`Dlq`] and [`Jobs`] services, and
//! constructors for the three background tasks (DLQ writer, worker, retention job). The `hub`
//! binary and the end-to-end tests wire the same parts the same way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::queue::{AmqpOptions, AmqpQueue, QueueError, SqlQueue, WorkQueue};
use super::service::Jobs;
use super::worker::{Worker, WorkerOptions};
use crate::config::HubConfig;
use crate::db::Db;
use crate::dlq::spool::SpoolError;
use crate::dlq::writer::{self, DlqSender, WriterOptions};
use crate::dlq::{Dlq, FailedCall, Retention};
use crate::state::Clock;
use crate::store::Store;
use crate::vault::Vault;

/// Bound on the DLQ writer's channel (the proxy's own channel in front of it has its bound).
pub const WRITER_CAPACITY: usize = 1024;

/// The DLQ and jobs parts of one hub process.
#[derive(Clone)]
pub struct Background {
    /// The hub database.
    pub db: Db,
    /// The work queue.
    pub queue: Arc<dyn WorkQueue>,
    /// Operators' DLQ functions.
    pub dlq: Dlq,
    /// Job submission (the proxy's `Prefer: respond-async`) and reads (the admin API).
    pub jobs: Arc<Jobs>,
    vault: Arc<Vault>,
    config: HubConfig,
    clock: Clock,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("db", &self.db.backend())
            .field("queue", &self.queue.backend())
            .finish()
    }
}

impl Background {
    /// Opens the work queue `config` names (RabbitMQ with `jobs.amqp_url`, else the table).
    pub async fn open(
        db: Db,
        vault: Arc<Vault>,
        config: &HubConfig,
        clock: Clock,
    ) -> Result<Self, QueueError> {
        let queue: Arc<dyn WorkQueue> = match &config.jobs.amqp_url {
            // A RabbitMQ outage at start does not stop the hub: the queue connects on use.
            Some(url) => Arc::new(
                AmqpQueue::connect_lazy(
                    AmqpOptions {
                        url: url.clone(),
                        queue: config.jobs.amqp_queue.clone(),
                        prefetch: u16::try_from(config.jobs.workers.max(1)).unwrap_or(u16::MAX),
                        expires: None,
                    },
                    Duration::from_secs(2),
                )
                .await?,
            ),
            None => Arc::new(SqlQueue::new(
                db.clone(),
                Duration::from_secs(config.jobs.lease_secs),
                clock,
            )),
        };
        Ok(Self::with_queue(db, queue, vault, config, clock))
    }

    /// Over a queue the caller built (tests).
    pub fn with_queue(
        db: Db,
        queue: Arc<dyn WorkQueue>,
        vault: Arc<Vault>,
        config: &HubConfig,
        clock: Clock,
    ) -> Self {
        Self {
            dlq: Dlq::new(db.clone(), queue.clone(), vault.clone(), clock),
            jobs: Arc::new(Jobs::new(
                db.clone(),
                queue.clone(),
                vault.clone(),
                clock,
                &config.jobs,
            )),
            db,
            queue,
            vault,
            config: config.clone(),
            clock,
        }
    }

    /// The DLQ writer's settings from the configuration.
    pub fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            spool_dir: self.config.dlq_spool_dir(),
            legacy_spool: Some(self.config.data_dir.join(crate::dlq::spool::LEGACY_FILE)),
            spool_max_bytes: self.config.dlq.spool_max_bytes,
            handover: self.config.redis.url.as_deref().and_then(|url| {
                crate::dlq::handoff::Handover::new(url, &self.config.redis.key_prefix)
                    .inspect_err(|e| tracing::error!(error = %e, "redis.url: no DLQ hand-over"))
                    .ok()
            }),
            capacity: WRITER_CAPACITY,
            max_body_bytes: self.config.dlq.max_body_bytes,
            retention_ms: i64::from(self.config.dlq.retention_days) * 86_400_000,
            flush_interval: Duration::from_millis(self.config.dlq.flush_interval_ms),
        }
    }

    /// Starts the DLQ writer (replaying what a crash left in the spool first).
    pub fn spawn_writer(&self) -> Result<(DlqSender, JoinHandle<()>), SpoolError> {
        writer::spawn(
            self.db.clone(),
            self.vault.clone(),
            self.clock,
            self.writer_options(),
        )
    }

    /// Starts the DLQ writer fed by the proxy's `FailedCall` channel.
    pub fn spawn_writer_for(
        &self,
        exhausted: mpsc::Receiver<FailedCall>,
    ) -> Result<JoinHandle<()>, SpoolError> {
        let (sender, handle) = self.spawn_writer()?;
        writer::bridge(exhausted, sender);
        Ok(handle)
    }

    /// The worker, sending calls through the hub proxy at `proxy_url`.
    pub fn worker(
        &self,
        providers: Arc<dyn Store>,
        proxy_url: &str,
        opts: WorkerOptions,
    ) -> Result<Worker, reqwest::Error> {
        Worker::new(
            self.db.clone(),
            self.queue.clone(),
            providers,
            self.vault.clone(),
            proxy_url,
            self.clock,
            opts,
        )
    }

    /// The worker's settings from the configuration.
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions::from_config(&self.config)
    }

    /// The retention job.
    pub fn retention(&self) -> Retention {
        Retention::new(
            self.db.clone(),
            self.clock,
            Duration::from_secs(self.config.dlq.retention_period_secs),
            Duration::from_secs(u64::from(self.config.jobs.retention_days) * 86_400),
        )
    }
}
