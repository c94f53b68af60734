//! The `dlq:` and `jobs:` sections: dead-letter retention and limits, the worker that replays
//! entries and runs asynchronous jobs, the work queue (database table or RabbitMQ), callbacks.

use serde::Deserialize;

use super::ConfigError;

/// Default DLQ retention (seed: 30 days).
pub const DEFAULT_DLQ_RETENTION_DAYS: u32 = 30;
/// Default period of the retention job.
pub const DEFAULT_DLQ_RETENTION_PERIOD_SECS: u64 = 3600;
/// Default largest body a DLQ entry keeps whole (bigger: truncated, not replayable).
pub const DEFAULT_DLQ_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default interval between attempts to flush the spool while the database is down.
pub const DEFAULT_DLQ_FLUSH_INTERVAL_MS: u64 = 2_000;
/// Default bound of the DLQ spool on disk (what a database outage can hold).
pub const DEFAULT_DLQ_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Default worker concurrency in a process that runs the worker.
pub const DEFAULT_JOBS_WORKERS: usize = 4;
/// Default attempts of an asynchronous job (each a full proxied call with its own retries).
pub const DEFAULT_JOBS_MAX_ATTEMPTS: u32 = 5;
/// Default wait after a job's first failed attempt (doubles each attempt).
pub const DEFAULT_JOBS_BACKOFF_BASE_MS: u64 = 30_000;
/// Default ceiling of that wait.
pub const DEFAULT_JOBS_BACKOFF_MAX_MS: u64 = 600_000;
/// Default lease of a claimed task: longer than the longest proxied call (120 s budget).
pub const DEFAULT_JOBS_LEASE_SECS: u64 = 180;
/// Default longest wait of an idle worker between looks at the queue when no notification came.
pub const DEFAULT_JOBS_IDLE_POLL_MS: u64 = 5_000;
/// Default largest request body of an asynchronous call.
pub const DEFAULT_JOBS_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default largest result body kept with a job (bigger: truncated).
pub const DEFAULT_JOBS_RESULT_MAX_BYTES: usize = 256 * 1024;
/// Default retention of finished jobs.
pub const DEFAULT_JOBS_RETENTION_DAYS: u32 = 7;
/// Default callback delivery attempts.
pub const DEFAULT_CALLBACK_MAX_ATTEMPTS: u32 = 8;
/// Default timeout of one callback delivery.
pub const DEFAULT_CALLBACK_TIMEOUT_MS: u64 = 10_000;
/// Default RabbitMQ queue name.
pub const DEFAULT_AMQP_QUEUE: &str = "hub.work";

/// `dlq:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// `dlq.retention_days` (env `HUB_DLQ_RETENTION_DAYS`, default 30): an entry expires this
    /// long after the call failed (resolved entries too).
    pub retention_days: u32,
    /// `dlq.retention_period_secs` (env `HUB_DLQ_RETENTION_PERIOD_SECS`, default 3600): how
    /// often the retention job deletes expired entries (and finished jobs).
    pub retention_period_secs: u64,
    /// `dlq.max_body_bytes` (env `HUB_DLQ_MAX_BODY_BYTES`, default 1 MiB): larger bodies are
    /// kept truncated and the entry is not replayable.
    pub max_body_bytes: usize,
    /// `dlq.flush_interval_ms` (default 2000): every failed call is spooled (fsync'd) to
    /// `<data_dir>/dlq-spool/` before its 502/504 leaves, then drained to the database; while
    /// the database is down, this is how often the drainer tries again.
    pub flush_interval_ms: u64,
    /// `dlq.spool_max_bytes` (env `HUB_DLQ_SPOOL_MAX_BYTES`, default 1 GiB): the most the spool
    /// holds on disk. Past it (or when the disk refuses a write) a failed call is answered
    /// `502 upstream_failed_unrecorded` without `X-Hub-DLQ-Id`: never an id that does not
    /// exist. Watch `integration_dlq_spool_bytes`.
    pub spool_max_bytes: u64,
}

/// `jobs:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// `jobs.workers` (env `HUB_JOBS_WORKERS`, default 4): tasks (DLQ replays, async jobs,
    /// callbacks) this process runs at once; 0 = no worker here (`hub up` and `hub proxy` run it).
    pub workers: usize,
    /// `jobs.max_attempts` (env `HUB_JOBS_MAX_ATTEMPTS`, default 5): attempts of an asynchronous
    /// job, each a full proxied call with the provider's own retries; then it fails to the DLQ.
    pub max_attempts: u32,
    /// `jobs.backoff_base_ms` (env `HUB_JOBS_BACKOFF_BASE_MS`, default 30000): wait after the
    /// first failed attempt, doubled after each one.
    pub backoff_base_ms: u64,
    /// `jobs.backoff_max_ms` (default 600000): ceiling of that wait.
    pub backoff_max_ms: u64,
    /// `jobs.lease_secs` (env `HUB_JOBS_LEASE_SECS`, default 180): a claimed task returns to
    /// the queue this long after a worker died holding it. Must exceed the longest call.
    pub lease_secs: u64,
    /// `jobs.idle_poll_ms` (default 5000): an idle worker waits for a notification (PostgreSQL
    /// `LISTEN`, in-process, AMQP delivery) at most this long before looking at the queue.
    pub idle_poll_ms: u64,
    /// `jobs.max_body_bytes` (env `HUB_JOBS_MAX_BODY_BYTES`, default 1 MiB): largest request
    /// body of a `Prefer: respond-async` call (413 above).
    pub max_body_bytes: usize,
    /// `jobs.result_max_bytes` (default 256 KiB): largest result body kept with a job.
    pub result_max_bytes: usize,
    /// `jobs.retention_days` (default 7): finished jobs are deleted this long after they end.
    pub retention_days: u32,
    /// `jobs.amqp_url` (env `HUB_AMQP_URL`): RabbitMQ for the work queue (durable queue, manual
    /// acks). Unset: a table in the hub database.
    pub amqp_url: Option<String>,
    /// `jobs.amqp_queue` (env `HUB_AMQP_QUEUE`, default `hub.work`): the queue's name.
    pub amqp_queue: String,
    /// Callback delivery (`X-Hub-Callback-Url`).
    pub callback: CallbackConfig,
}

/// `jobs.callback:` section. Callbacks go to the platform's own modules, so the hub refuses
/// destinations that are a classic SSRF target (loopback, link-local incl. cloud metadata,
/// multicast, unspecified) and pins the address it checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    /// `jobs.callback.max_attempts` (default 8): deliveries tried, with backoff, before giving up.
    pub max_attempts: u32,
    /// `jobs.callback.timeout_ms` (default 10000): one delivery.
    pub timeout_ms: u64,
    /// `jobs.callback.allow_private` (default true): RFC 1918 / ULA / CGNAT destinations (the
    /// modules' network).
    pub allow_private: bool,
    /// `jobs.callback.allow_loopback` (env `HUB_CALLBACK_ALLOW_LOOPBACK`, default false): only
    /// for tests and a laptop: the hub's own admin API is on loopback.
    pub allow_loopback: bool,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            retention_days: DEFAULT_DLQ_RETENTION_DAYS,
            retention_period_secs: DEFAULT_DLQ_RETENTION_PERIOD_SECS,
            max_body_bytes: DEFAULT_DLQ_MAX_BODY_BYTES,
            flush_interval_ms: DEFAULT_DLQ_FLUSH_INTERVAL_MS,
            spool_max_bytes: DEFAULT_DLQ_SPOOL_MAX_BYTES,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: DEFAULT_JOBS_WORKERS,
            max_attempts: DEFAULT_JOBS_MAX_ATTEMPTS,
            backoff_base_ms: DEFAULT_JOBS_BACKOFF_BASE_MS,
            backoff_max_ms: DEFAULT_JOBS_BACKOFF_MAX_MS,
            lease_secs: DEFAULT_JOBS_LEASE_SECS,
            idle_poll_ms: DEFAULT_JOBS_IDLE_POLL_MS,
            max_body_bytes: DEFAULT_JOBS_MAX_BODY_BYTES,
            result_max_bytes: DEFAULT_JOBS_RESULT_MAX_BYTES,
            retention_days: DEFAULT_JOBS_RETENTION_DAYS,
            amqp_url: None,
            amqp_queue: DEFAULT_AMQP_QUEUE.to_owned(),
            callback: CallbackConfig::default(),
        }
    }
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_CALLBACK_MAX_ATTEMPTS,
            timeout_ms: DEFAULT_CALLBACK_TIMEOUT_MS,
            allow_private: true,
            allow_loopback: false,
        }
    }
}

fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
        var,
        message: e.to_string(),
    })
}

/// Applies the `HUB_DLQ_*`, `HUB_JOBS_*`, `HUB_AMQP_*` and `HUB_CALLBACK_*` overrides.
pub(super) fn apply_env(
    dlq: &mut DlqConfig,
    jobs: &mut JobsConfig,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("HUB_DLQ_RETENTION_DAYS") {
        dlq.retention_days = parse("HUB_DLQ_RETENTION_DAYS", &v)?;
    }
    if let Some(v) = get("HUB_DLQ_RETENTION_PERIOD_SECS") {
        dlq.retention_period_secs = parse("HUB_DLQ_RETENTION_PERIOD_SECS", &v)?;
    }
    if let Some(v) = get("HUB_DLQ_MAX_BODY_BYTES") {
        dlq.max_body_bytes = parse("HUB_DLQ_MAX_BODY_BYTES", &v)?;
    }
    if let Some(v) = get("HUB_DLQ_SPOOL_MAX_BYTES") {
        dlq.spool_max_bytes = parse("HUB_DLQ_SPOOL_MAX_BYTES", &v)?;
    }
    if let Some(v) = get("HUB_JOBS_WORKERS") {
        jobs.workers = parse("HUB_JOBS_WORKERS", &v)?;
    }
    if let Some(v) = get("HUB_JOBS_MAX_ATTEMPTS") {
        jobs.max_attempts = parse("HUB_JOBS_MAX_ATTEMPTS", &v)?;
    }
    if let Some(v) = get("HUB_JOBS_BACKOFF_BASE_MS") {
        jobs.backoff_base_ms = parse("HUB_JOBS_BACKOFF_BASE_MS", &v)?;
    }
    if let Some(v) = get("HUB_JOBS_LEASE_SECS") {
        jobs.lease_secs = parse("HUB_JOBS_LEASE_SECS", &v)?;
    }
    if let Some(v) = get("HUB_JOBS_MAX_BODY_BYTES") {
        jobs.max_body_bytes = parse("HUB_JOBS_MAX_BODY_BYTES", &v)?;
    }
    if let Some(v) = get("HUB_AMQP_URL") {
        jobs.amqp_url = Some(v.trim().to_owned());
    }
    if let Some(v) = get("HUB_AMQP_QUEUE") {
        jobs.amqp_queue = v.trim().to_owned();
    }
    if let Some(v) = get("HUB_CALLBACK_ALLOW_LOOPBACK") {
        jobs.callback.allow_loopback = parse("HUB_CALLBACK_ALLOW_LOOPBACK", &v)?;
    }
    Ok(())
}

fn invalid(key: &'static str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.to_owned(),
    })
}

/// Rules of the two sections.
pub(super) fn validate(dlq: &DlqConfig, jobs: &JobsConfig) -> Result<(), ConfigError> {
    if !(1..=3650).contains(&dlq.retention_days) {
        return invalid("dlq.retention_days", "must be between 1 and 3650");
    }
    if !(1..=7 * 86_400).contains(&dlq.retention_period_secs) {
        return invalid("dlq.retention_period_secs", "must be between 1 and 604800");
    }
    if !(1..=64 * 1024 * 1024).contains(&dlq.max_body_bytes) {
        return invalid("dlq.max_body_bytes", "must be between 1 and 67108864");
    }
    if !(10..=600_000).contains(&dlq.flush_interval_ms) {
        return invalid("dlq.flush_interval_ms", "must be between 10 and 600000");
    }
    if dlq.spool_max_bytes < 64 * 1024 {
        return invalid("dlq.spool_max_bytes", "must be at least 65536");
    }
    if jobs.workers > 256 {
        return invalid("jobs.workers", "must be at most 256");
    }
    if !(1..=100).contains(&jobs.max_attempts) {
        return invalid("jobs.max_attempts", "must be between 1 and 100");
    }
    if jobs.backoff_base_ms == 0 || jobs.backoff_max_ms < jobs.backoff_base_ms {
        return invalid(
            "jobs.backoff_max_ms",
            "backoff_base_ms must be positive and at most backoff_max_ms",
        );
    }
    // The longest proxied call is 120 s (provider totalTimeoutMs ceiling): a shorter lease
    // would hand a live call to a second worker.
    if !(125..=86_400).contains(&jobs.lease_secs) {
        return invalid("jobs.lease_secs", "must be between 125 and 86400");
    }
    if !(10..=600_000).contains(&jobs.idle_poll_ms) {
        return invalid("jobs.idle_poll_ms", "must be between 10 and 600000");
    }
    if !(1..=64 * 1024 * 1024).contains(&jobs.max_body_bytes) {
        return invalid("jobs.max_body_bytes", "must be between 1 and 67108864");
    }
    if !(1..=64 * 1024 * 1024).contains(&jobs.result_max_bytes) {
        return invalid("jobs.result_max_bytes", "must be between 1 and 67108864");
    }
    if !(1..=3650).contains(&jobs.retention_days) {
        return invalid("jobs.retention_days", "must be between 1 and 3650");
    }
    if let Some(url) = &jobs.amqp_url
        && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
    {
        return invalid("jobs.amqp_url", "must start with amqp:// or amqps://");
    }
    if jobs.amqp_queue.is_empty() || jobs.amqp_queue.len() > 200 {
        return invalid("jobs.amqp_queue", "must be 1 to 200 characters");
    }
    if !(1..=100).contains(&jobs.callback.max_attempts) {
        return invalid("jobs.callback.max_attempts", "must be between 1 and 100");
    }
    if !(100..=120_000).contains(&jobs.callback.timeout_ms) {
        return invalid("jobs.callback.timeout_ms", "must be between 100 and 120000");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_rules() {
        let (mut dlq, mut jobs) = (DlqConfig::default(), JobsConfig::default());
        let env = |k: &str| match k {
            "HUB_DLQ_RETENTION_DAYS" => Some("7".to_owned()),
            "HUB_AMQP_URL" => Some("amqp://guest:guest@mq:5672/%2f".to_owned()),
            "HUB_JOBS_WORKERS" => Some("0".to_owned()),
            _ => None,
        };
        apply_env(&mut dlq, &mut jobs, &env).unwrap();
        assert_eq!(
            (dlq.retention_days, jobs.workers),
            (7, 0),
            "overrides apply"
        );
        validate(&dlq, &jobs).unwrap();
        jobs.amqp_url = Some("http://mq".into());
        let err = validate(&dlq, &jobs).unwrap_err();
        assert!(err.to_string().contains("jobs.amqp_url"), "{err}");
        jobs.amqp_url = None;
        jobs.lease_secs = 30;
        assert!(
            validate(&dlq, &jobs).is_err(),
            "a lease shorter than a call"
        );
        let bad = |_: &str| Some("x".to_owned());
        assert!(apply_env(&mut dlq, &mut jobs, &bad).is_err());
    }

    #[test]
    fn the_documented_file_states_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hub.yaml");
        let c = crate::config::HubConfig::from_file(&path).unwrap();
        let (d, j) = (DlqConfig::default(), JobsConfig::default());
        assert_eq!(
            (
                c.dlq.retention_days,
                c.dlq.retention_period_secs,
                c.dlq.max_body_bytes
            ),
            (d.retention_days, d.retention_period_secs, d.max_body_bytes)
        );
        assert_eq!(c.dlq.flush_interval_ms, d.flush_interval_ms);
        assert_eq!(
            (c.jobs.workers, c.jobs.max_attempts, c.jobs.lease_secs),
            (j.workers, j.max_attempts, j.lease_secs)
        );
        assert_eq!(
            (
                c.jobs.backoff_base_ms,
                c.jobs.backoff_max_ms,
                c.jobs.idle_poll_ms
            ),
            (j.backoff_base_ms, j.backoff_max_ms, j.idle_poll_ms)
        );
        assert_eq!(
            (
                c.jobs.max_body_bytes,
                c.jobs.result_max_bytes,
                c.jobs.retention_days
            ),
            (j.max_body_bytes, j.result_max_bytes, j.retention_days)
        );
        assert_eq!((c.jobs.amqp_url, c.jobs.amqp_queue), (None, j.amqp_queue));
        assert_eq!(
            (c.jobs.callback.max_attempts, c.jobs.callback.timeout_ms),
            (j.callback.max_attempts, j.callback.timeout_ms)
        );
        assert_eq!(
            (
                c.jobs.callback.allow_private,
                c.jobs.callback.allow_loopback
            ),
            (true, false)
        );
    }
}
