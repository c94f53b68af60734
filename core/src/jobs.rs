//! Background work: asynchronous calls (`Prefer: respond-async`), the work queue they share
//! with DLQ replays and callbacks, and the worker that runs it all through the hub proxy.
//!
//! - `model`: [`NewJob`], [`JobReceipt`], [`JobView`], the [`JobSubmitter`] trait the proxy
//!   calls, [`JobError`].
//! - `service`: [`Jobs`], which persists a submitted job (body sealed, `hub/jobs/v1/request/<id>`)
//!   and queues it before the proxy answers 202, and reads jobs back for the admin API.
//! - `store`: the `jobs` table; a job is taken with a lease, so a worker that dies mid-job
//!   (kill -9) loses nothing: the lease expires and another worker picks it up.
//! - [`queue`]: the [`WorkQueue`] — a database table (`FOR UPDATE SKIP LOCKED` on PostgreSQL)
//!   or RabbitMQ (`HUB_AMQP_URL`).
//! - [`worker`]: the [`Worker`] and its tasks; [`exec`]: sending a stored call through the
//!   proxy; [`callback`]: `X-Hub-Callback-Url` validation (SSRF rules) and delivery.
//! - [`Db`] (`crate::db`): the database handle (both backends, statement counter), shared with
//!   the registry store.
//! - `background`: [`Background`], the parts above opened once per process from the config.
//!
//! # Cost per job (measured by `tests/tests/jobs.rs`, `queries_per_job`)
//!
//! On the database queue a job's own path is 5 statements: submit = insert job + push
//! (PostgreSQL: `INSERT … ; pg_notify` as one statement); run = take the job
//! (`UPDATE … RETURNING`), complete it, ack (delete the queue row). Claims come on top: the
//! worker claims in batches once half its slots are free, and an idle worker looks at the next
//! due time (1 statement) before it sleeps on a notification (PostgreSQL `LISTEN`, in-process
//! on SQLite) or `jobs.idle_poll_ms`. Measured with 20 jobs and 4 slots: 5.6 (PostgreSQL) and
//! 5.7 (SQLite) statements per job for a backlog, 7.0 for jobs arriving one at a time at an idle
//! worker. A provider is read once per 5 s per worker; a sweep is three statements a minute.

mod background;
pub mod callback;
pub mod exec;
mod model;
pub mod queue;
pub(crate) mod service;
pub(crate) mod store;
pub mod worker;

pub use crate::db::Db;
pub use background::{Background, WRITER_CAPACITY};
pub use model::{
    CALLBACK_URL_HEADER, CallbackState, JOB_ID_HEADER, JOB_LOCATION_PREFIX, JobError, JobReceipt,
    JobResult, JobStatus, JobSubmitter, JobView, NewJob, PREFER_ASYNC,
};
pub use queue::{AmqpOptions, AmqpQueue, QueueError, SqlQueue, Task, TaskKind, WorkQueue};
pub use service::Jobs;
pub use worker::{Worker, WorkerOptions};
