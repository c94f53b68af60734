//! The worker: takes tasks from the work queue and runs them, `jobs.workers` at a time.
//!
//! - a DLQ replay ([`crate::dlq`]'s `replay`): send the entry again through the proxy;
//! - an asynchronous job (`run_job`): one attempt through the proxy, then completed, retried
//!   later on the job's own (longer) schedule, or failed to the DLQ;
//! - a callback (`deliver`): POST the job's outcome to the caller's URL.
//!
//! Each handler first takes its row with a conditional update (a lease), so a duplicate
//! message or a second worker changes nothing, and ends with an ack or "again after d". Calls
//! to one provider are paced at its rate limit (the proxy enforces the limit across hub
//! instances anyway; when it answers its own 429, the task comes back after `Retry-After`
//! without counting as an attempt). A sweeper re-queues rows whose queue message was lost.

mod deliver;
mod run_job;
mod sweep;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::callback::CallbackPolicy;
use super::exec::ProxyCaller;
use super::queue::{Claimed, TaskKind, WorkQueue};
use super::store::JobStore;
use crate::config::HubConfig;
use crate::db::Db;
use crate::dlq::store::EntryStore;
use crate::provider::{ProviderId, ProviderRecord};
use crate::state::Clock;
use crate::store::Store;
use crate::vault::Vault;

/// Wait before a task whose handler failed (database down…) is tried again.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// First pause after the queue itself failed (doubling while it keeps failing).
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Longest such pause.
const QUEUE_ERROR_PAUSE_MAX: Duration = Duration::from_secs(30);
/// How long a provider record is reused before it is read again.
const PROVIDER_TTL: Duration = Duration::from_secs(5);
/// How long a stopping worker lets running tasks finish.
const DRAIN: Duration = Duration::from_secs(10);

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Tasks run at once.
    pub concurrency: usize,
    /// How long a taken row stays taken (a dead worker's work returns after it).
    pub lease: Duration,
    /// Longest idle wait without a notification.
    pub idle_poll: Duration,
    /// Attempts of a job.
    pub max_attempts: u32,
    /// Wait after a job's first failed attempt (doubling).
    pub backoff_base: Duration,
    /// Ceiling of that wait.
    pub backoff_max: Duration,
    /// Largest result body kept.
    pub result_max_bytes: usize,
    /// Largest body a DLQ entry keeps whole.
    pub dlq_max_body_bytes: usize,
    /// DLQ retention.
    pub dlq_retention: Duration,
    /// Callback destination policy.
    pub callback: CallbackPolicy,
    /// Callback deliveries tried.
    pub callback_max_attempts: u32,
    /// Rate of providers that set none.
    pub hub_default_rate: u32,
    /// How often the sweeper looks for lost messages (and how overdue they must be).
    pub sweep_period: Duration,
}

impl WorkerOptions {
    /// From the hub configuration.
    pub fn from_config(c: &HubConfig) -> Self {
        Self {
            concurrency: c.jobs.workers.max(1),
            lease: Duration::from_secs(c.jobs.lease_secs),
            idle_poll: Duration::from_millis(c.jobs.idle_poll_ms),
            max_attempts: c.jobs.max_attempts,
            backoff_base: Duration::from_millis(c.jobs.backoff_base_ms),
            backoff_max: Duration::from_millis(c.jobs.backoff_max_ms),
            result_max_bytes: c.jobs.result_max_bytes,
            dlq_max_body_bytes: c.dlq.max_body_bytes,
            dlq_retention: Duration::from_secs(u64::from(c.dlq.retention_days) * 86_400),
            callback: CallbackPolicy::from(&c.jobs.callback),
            callback_max_attempts: c.jobs.callback.max_attempts,
            hub_default_rate: c.defaults.rate_limit_per_sec,
            sweep_period: Duration::from_secs(60),
        }
    }
}

/// What to do with a task once its handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Done (or nothing to do): remove it from the queue.
    Done,
    /// Hand it out again after this.
    Later(Duration),
}

/// What every handler shares.
pub(crate) struct Ctx {
    pub queue: Arc<dyn WorkQueue>,
    pub entries: EntryStore,
    pub jobs: JobStore,
    pub providers: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub caller: ProxyCaller,
    pub clock: Clock,
    pub opts: WorkerOptions,
    cache: Mutex<HashMap<ProviderId, (Instant, Arc<ProviderRecord>)>>,
    pacer: Pacer,
}

/// Spaces calls to each provider evenly at its rate (one slot every `1/rate`).
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    next_slot: Mutex<HashMap<ProviderId, Instant>>,
}

impl Pacer {
    /// Waits for the next slot of `provider` at `rate` per second.
    pub async fn wait(&self, provider: ProviderId, rate: u32) {
        let interval = Duration::from_secs(1) / rate.max(1);
        let slot = {
            let mut slots = self.next_slot.lock().await;
            let now = Instant::now();
            let next = slots.entry(provider).or_insert(now);
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

impl Ctx {
    /// Now, ms since the epoch.
    pub fn now(&self) -> i64 {
        self.clock.unix_ms()
    }

    /// The end of a lease taken now.
    pub fn lease_until(&self) -> i64 {
        self.now()
            .saturating_add(i64::try_from(self.opts.lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// A provider as stored (cached briefly); `None` once deleted.
    pub async fn provider(&self, id: ProviderId) -> anyhow::Result<Option<Arc<ProviderRecord>>> {
        if let Some((at, p)) = self.cache.lock().await.get(&id)
            && at.elapsed() < PROVIDER_TTL
        {
            return Ok(Some(p.clone()));
        }
        self.entries.db().count();
        let got = self.providers.get_provider(id).await?.map(Arc::new);
        if let Some(p) = &got {
            self.cache
                .lock()
                .await
                .insert(id, (Instant::now(), p.clone()));
        }
        Ok(got)
    }

    /// Waits for this call's slot at the provider's rate limit.
    pub async fn pace(&self, p: &ProviderRecord) {
        let rate = p.config.rate_limit(self.opts.hub_default_rate);
        self.pacer.wait(p.id, rate).await;
    }
}

/// `ms` as a duration from now (zero when past).
pub(crate) fn until(ms: i64, now: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms.saturating_sub(now)).unwrap_or(0))
}

/// The worker.
pub struct Worker {
    ctx: Arc<Ctx>,
}

impl Worker {
    /// A worker sending calls through the hub proxy at `proxy_url`.
    pub fn new(
        db: Db,
        queue: Arc<dyn WorkQueue>,
        providers: Arc<dyn Store>,
        vault: Arc<Vault>,
        proxy_url: &str,
        clock: Clock,
        opts: WorkerOptions,
    ) -> Result<Self, reqwest::Error> {
        let internal = vault.internal_caller_token();
        Ok(Self {
            ctx: Arc::new(Ctx {
                queue,
                entries: EntryStore::new(db.clone()),
                jobs: JobStore::new(db),
                providers,
                vault,
                caller: ProxyCaller::new(proxy_url, &internal)?,
                clock,
                opts,
                cache: Mutex::new(HashMap::new()),
                pacer: Pacer::default(),
            }),
        })
    }

    /// Runs until `stop` turns true; running tasks get [`DRAIN`] to finish (what is cut
    /// short comes back when its lease expires).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let ctx = self.ctx;
        let concurrency = ctx.opts.concurrency.max(1);
        let mut running = JoinSet::new();
        let sweeper = tokio::spawn(sweep::run(ctx.clone(), stop.clone()));
        tracing::info!(queue = ctx.queue.backend(), concurrency, "worker started");
        let mut pause = QUEUE_ERROR_PAUSE;
        loop {
            if *stop.borrow() {
                break;
            }
            while running.try_join_next().is_some() {}
            // Claim in batches: once half the slots are free (or none is busy), not per slot.
            if !running.is_empty() && concurrency - running.len() < concurrency.div_ceil(2) {
                tokio::select! {
                    _ = running.join_next() => continue,
                    _ = stop.changed() => break,
                }
            }
            let free = concurrency - running.len();
            let claimed = tokio::select! {
                r = ctx.queue.claim(free, ctx.opts.idle_poll) => r,
                _ = stop.changed() => break,
            };
            match claimed {
                Ok(batch) => {
                    pause = QUEUE_ERROR_PAUSE;
                    for c in batch {
                        running.spawn(handle(ctx.clone(), c));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), retry_in_ms = pause.as_millis() as u64,
                        "work queue unavailable");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => break,
                    }
                    pause = (pause * 2).min(QUEUE_ERROR_PAUSE_MAX);
                }
            }
        }
        sweeper.abort();
        let drain = async { while running.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(DRAIN, drain).await;
    }
}

async fn handle(ctx: Arc<Ctx>, claimed: Claimed) {
    let task = claimed.task;
    let outcome = match task.kind {
        TaskKind::Replay => crate::dlq::replay::run(&ctx, task.id).await,
        TaskKind::Job => run_job::run(&ctx, task.id).await,
        TaskKind::Callback => deliver::run(&ctx, task.id).await,
    };
    let disposition = outcome.unwrap_or_else(|e| {
        tracing::warn!(kind = task.kind.as_str(), id = %task.id, error = format!("{e:#}"),
            "task failed; trying again later");
        Disposition::Later(ERROR_RETRY)
    });
    let done = match disposition {
        Disposition::Done => ctx.queue.ack(claimed).await,
        Disposition::Later(d) => ctx.queue.retry_later(claimed, d).await,
    };
    if let Err(e) = done {
        tracing::warn!(kind = task.kind.as_str(), id = %task.id, error = %e,
            "could not settle a task; it returns when its lease expires");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;
    use ulid::Ulid;

    use super::Pacer;
    use super::run_job::backoff_after;

    #[tokio::test(start_paused = true)]
    async fn calls_to_one_provider_are_spaced_at_its_rate() {
        let pacer = Pacer::default();
        let (a, b) = (Ulid::new(), Ulid::new());
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..3 {
            pacer.wait(a, 4).await;
            at.push(t0.elapsed());
        }
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 250, 500]);
        let before = Instant::now();
        pacer.wait(b, 4).await;
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "providers are paced apart"
        );
    }

    #[test]
    fn job_backoff_doubles_up_to_its_ceiling() {
        let (base, max) = (Duration::from_secs(30), Duration::from_secs(600));
        let waits: Vec<u64> = (1..=7)
            .map(|n| backoff_after(base, max, n).as_secs())
            .collect();
        assert_eq!(waits, vec![30, 60, 120, 240, 480, 600, 600]);
    }
}
