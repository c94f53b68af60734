//! The work queue: what the worker does next. Three kinds of task flow through it, each naming
//! a row that holds the truth: a DLQ replay (entry id), an asynchronous job (job id), a callback
//! delivery (job id).
//!
//! Two implementations behind one object-safe trait, and the same tests run on both:
//! - [`SqlQueue`] (default): table `work_queue` in the hub database. Claimed in batches — on
//!   PostgreSQL with `FOR UPDATE SKIP LOCKED`, so concurrent workers never take the same row; on
//!   SQLite by the single writer's `UPDATE … RETURNING`. A claim is a lease: the row's
//!   `available_at` moves to the end of the lease, so a crashed worker's task comes back by
//!   itself; `deliveries` fences a late ack from an expired lease. Idle workers wait on
//!   `LISTEN hub_work` (PostgreSQL) or an in-process notification, bounded by the next due time
//!   and `jobs.idle_poll_ms` — never a tight poll.
//! - [`AmqpQueue`] (`HUB_AMQP_URL`): a durable RabbitMQ queue, persistent messages, publisher
//!   confirms, manual acks (an unacked message is redelivered when its worker's connection
//!   dies), delays through per-delay TTL queues that dead-letter back into the work queue.

mod amqp;
mod sql;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use amqp::{AmqpOptions, AmqpQueue};
pub use sql::SqlQueue;

/// What a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Replay DLQ entry `id`.
    Replay,
    /// Run asynchronous job `id`.
    Job,
    /// Deliver the callback of job `id`.
    Callback,
}

impl TaskKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Job => "job",
            Self::Callback => "callback",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "replay" => Some(Self::Replay),
            "job" => Some(Self::Job),
            "callback" => Some(Self::Callback),
            _ => None,
        }
    }
}

/// One unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Task {
    /// What to do.
    pub kind: TaskKind,
    /// The row it is about.
    pub id: Ulid,
}

impl Task {
    /// A task.
    pub fn new(kind: TaskKind, id: Ulid) -> Self {
        Self { kind, id }
    }
}

/// How a claimed task is acknowledged (private to the implementations).
#[derive(Debug)]
pub(crate) enum Receipt {
    Row { id: i64, deliveries: i64 },
    Amqp(lapin::Acker),
}

/// A task a worker holds until it acks it or asks for it later.
#[derive(Debug)]
pub struct Claimed {
    /// The task.
    pub task: Task,
    /// How many times it has been handed out (1 = first time; AMQP knows only 1 or 2+).
    pub deliveries: u32,
    pub(crate) receipt: Receipt,
}

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database failed or is unreachable.
    #[error("work queue database error: {0}")]
    Database(#[from] sqlx::Error),
    /// RabbitMQ failed or is unreachable.
    #[error("work queue broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// RabbitMQ did not confirm a publish.
    #[error("the broker did not confirm a message")]
    NotConfirmed,
    /// A receipt of the other implementation (a bug).
    #[error("receipt from another queue implementation")]
    ForeignReceipt,
}

impl QueueError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Database(_) => "queue_database",
            Self::Broker(_) => "queue_broker",
            Self::NotConfirmed => "queue_not_confirmed",
            Self::ForeignReceipt => "queue_foreign_receipt",
        }
    }
}

/// The work queue the worker consumes. Object safe: the hub holds an `Arc<dyn WorkQueue>`.
#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// `"database"` or `"amqp"`.
    fn backend(&self) -> &'static str;

    /// Adds tasks, due after `delay`. A task already waiting (same kind and id) is not doubled
    /// (database queue; RabbitMQ may hold a duplicate, which the worker's row lease absorbs).
    async fn push(&self, tasks: &[Task], delay: Duration) -> Result<(), QueueError>;

    /// Up to `max` due tasks; when none is due, waits for one at most `wait` (on a
    /// notification, not by polling) and may then return an empty batch.
    async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Claimed>, QueueError>;

    /// The task is done: it leaves the queue.
    async fn ack(&self, claimed: Claimed) -> Result<(), QueueError>;

    /// The task is not done: hand it out again after `delay`.
    async fn retry_later(&self, claimed: Claimed, delay: Duration) -> Result<(), QueueError>;
}
