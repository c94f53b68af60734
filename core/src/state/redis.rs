//! Shared state in Redis (or Valkey), for several hub instances: local admission from leased
//! tokens, Lua scripts for every shared change, and the in-process [`LocalState`] as fallback
//! while Redis is slow or down. The design and its tolerances are in the [`crate::state`] docs.

mod mirror;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, IntoConnectionInfo, Script};
use async_trait::async_trait;
use tokio::time::Instant;

use self::mirror::{Decision, Fetched, Mirror, Rejection};
use self::scripts::Scripts;
use super::breaker::Ticket;
use super::clock::{Clock, utc};
use super::{
    Admission, BackendStats, BreakerSnapshot, Origin, Outcome, Permit, Policy, ProbeGuard,
    RateSnapshot, SharedState, Snapshot, StateError,
};
use crate::provider::{BreakerPolicy, ProviderId};
use crate::state::LocalState;

/// How often a Redis problem is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Tuning for [`RedisState`]; the defaults suit production.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Key prefix (default `hub:`); tests use a random one each.
    pub prefix: String,
    /// Longest any request waits on one Redis call (default 5 ms).
    pub command_timeout: Duration,
    /// How long the local view and leased tokens stay valid (default 50 ms).
    pub lease_ttl: Duration,
    /// Upper bound on tokens leased per `ADMIT` call (default 64).
    pub max_batch: u32,
    /// After a Redis error, how long requests skip Redis (default 1 s).
    pub retry_interval: Duration,
    /// Per connection attempt (default 1 s); `connect` waits this long for the first one.
    pub connect_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "hub:".to_owned(),
            command_timeout: Duration::from_millis(5),
            lease_ttl: Duration::from_millis(50),
            max_batch: 64,
            retry_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// Breaker and rate limit shared through Redis, with in-process fallback.
#[derive(Clone)]
pub struct RedisState {
    inner: Arc<Inner>,
}

struct Inner {
    opts: RedisOptions,
    clock: Clock,
    scripts: Scripts,
    conn: OnceLock<ConnectionManager>,
    local: LocalState,
    mirrors: RwLock<HashMap<ProviderId, Arc<Mutex<Mirror>>>>,
    epoch: Instant,
    down_until_ms: AtomicU64,
    last_warn_ms: AtomicU64,
    round_trips: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.inner.opts.prefix)
            .field("connected", &self.inner.conn.get().is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisState {
    /// Connects to `target` (a `redis://` URL or connection info), waiting up to `connect_timeout` for the first connection. If Redis is
    /// not there, the state starts on its local fallback and keeps connecting in the background.
    /// Fails only on an invalid URL. Needs a tokio runtime.
    pub async fn connect(
        target: impl IntoConnectionInfo,
        opts: RedisOptions,
    ) -> Result<Self, StateError> {
        let client = Client::open(target).map_err(StateError::InvalidUrl)?;
        let inner = Arc::new(Inner {
            clock: Clock::system(),
            scripts: Scripts::new(),
            conn: OnceLock::new(),
            local: LocalState::new(),
            mirrors: RwLock::default(),
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            opts,
        });
        if let Err(e) = inner.try_connect(&client).await {
            inner.failed(&e);
            tokio::spawn(reconnect(Arc::downgrade(&inner), client));
        }
        Ok(Self { inner })
    }

    /// Whether a Redis connection has been established (it reconnects by itself after that).
    pub fn is_connected(&self) -> bool {
        self.inner.conn.get().is_some()
    }
}

/// Retries the first connection every `retry_interval` until it succeeds or the state is gone.
async fn reconnect(inner: Weak<Inner>, client: Client) {
    loop {
        let Some(interval) = inner.upgrade().map(|i| i.opts.retry_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(state) = inner.upgrade() else {
            return;
        };
        match state.try_connect(&client).await {
            Ok(()) => return,
            Err(e) => state.failed(&e),
        }
    }
}

impl Inner {
    async fn try_connect(&self, client: &Client) -> Result<(), StateError> {
        let timeout = self.opts.connect_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(1_000);
        let connecting = async {
            let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
            for script in [
                &self.scripts.admit,
                &self.scripts.outcome,
                &self.scripts.snapshot,
            ] {
                script.load_async(&mut conn).await?;
            }
            Ok::<_, ::redis::RedisError>(conn)
        };
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| StateError::Timeout(timeout))??;
        let _ = self.conn.set(conn);
        tracing::info!(prefix = %self.opts.prefix, "shared state: connected to redis");
        Ok(())
    }

    fn ms_since_start(&self) -> u64 {
        u64::try_from(self.clock.now().duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A connection, unless none exists yet or Redis failed within `retry_interval`.
    fn available(&self) -> Option<ConnectionManager> {
        let conn = self.conn.get()?;
        (self.ms_since_start() >= self.down_until_ms.load(Ordering::Relaxed)).then(|| conn.clone())
    }

    /// Counts an error, skips Redis for `retry_interval`, logs at most every [`WARN_EVERY`].
    fn failed(&self, error: &StateError) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.ms_since_start();
        let retry = u64::try_from(self.opts.retry_interval.as_millis()).unwrap_or(u64::MAX);
        self.down_until_ms
            .store(now.saturating_add(retry), Ordering::Relaxed);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last_warn_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %error,
                kind = error.kind(),
                errors,
                "shared state: redis unavailable, using local state"
            );
        }
    }

    /// One script call, bounded by `command_timeout`.
    async fn call(
        &self,
        mut conn: ConnectionManager,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Vec<i64>, StateError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let timeout = self.opts.command_timeout;
        let result = tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await;
        let result = match result {
            Ok(r) => r.map_err(StateError::from),
            Err(_) => Err(StateError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    fn keys(&self, provider: ProviderId, which: &[&str]) -> Vec<String> {
        let prefix = &self.opts.prefix;
        which
            .iter()
            .map(|w| format!("{prefix}{{{provider}}}:{w}"))
            .collect()
    }

    fn mirror(&self, provider: ProviderId) -> Arc<Mutex<Mirror>> {
        if let Some(m) = self
            .mirrors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&provider)
        {
            return Arc::clone(m);
        }
        let mut map = self.mirrors.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(provider).or_default())
    }

    fn fallback(&self, provider: ProviderId, policy: &Policy) -> Admission {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.local.admit_now(provider, policy)
    }

    /// Tokens to lease per `ADMIT`: about `lease_ttl` worth of the rate.
    fn batch(&self, policy: &Policy) -> u32 {
        let per_lease = u128::from(policy.rate_per_sec) * self.opts.lease_ttl.as_millis() / 1000;
        u32::try_from(per_lease)
            .unwrap_or(u32::MAX)
            .clamp(1, self.opts.max_batch.max(1))
    }

    async fn admit(self: &Arc<Self>, provider: ProviderId, policy: &Policy) -> Admission {
        let Some(conn) = self.available() else {
            return self.fallback(provider, policy);
        };
        let mirror = self.mirror(provider);
        let decision =
            lock(&mirror).decide(self.clock.now(), self.opts.lease_ttl, self.batch(policy));
        let (want, refund) = match decision {
            Decision::Admit { epoch } => return self.permit(provider, policy, epoch),
            Decision::Reject(r) => return rejection(r),
            Decision::Fetch { want, refund } => (want, refund),
        };
        let token = rand::random::<u64>();
        let args = [
            policy.rate_per_sec.to_string(),
            policy.burst.to_string(),
            policy.daily_quota.unwrap_or(0).to_string(),
            policy.breaker.open_ms.to_string(),
            want.to_string(),
            refund.to_string(),
            token.to_string(),
        ];
        let keys = self.keys(provider, &["br", "rl", "q"]);
        let reply = self.call(conn, &self.scripts.admit, &keys, &args).await;
        let parsed = reply.and_then(|v| scripts::parse_admit(&v));
        let (reply, view) = match parsed {
            Ok(p) => p,
            Err(_) => {
                lock(&mirror).fetch_failed();
                return self.fallback(provider, policy);
            }
        };
        let fetched = lock(&mirror).fetched(self.clock.now(), reply, view);
        match fetched {
            Fetched::Admit { epoch } => self.permit(provider, policy, epoch),
            Fetched::Reject(r) => rejection(r),
            Fetched::Probe => {
                let ticket = Ticket::Probe { id: token };
                let mut permit = Permit::new(provider, policy.breaker, ticket, Origin::Redis);
                let weak = Arc::downgrade(self);
                let breaker = policy.breaker;
                permit.guard = Some(ProbeGuard::new(move || {
                    if let (Some(inner), Ok(rt)) =
                        (weak.upgrade(), tokio::runtime::Handle::try_current())
                    {
                        rt.spawn(async move {
                            inner
                                .record(provider, &breaker, ticket, Kind::Release)
                                .await;
                        });
                    }
                }));
                Admission::Admitted(permit)
            }
        }
    }

    fn permit(&self, provider: ProviderId, policy: &Policy, epoch: u64) -> Admission {
        let ticket = Ticket::Normal { epoch };
        Admission::Admitted(Permit::new(provider, policy.breaker, ticket, Origin::Redis))
    }

    /// Runs `OUTCOME` and folds the reply into the mirror.
    async fn record(
        &self,
        provider: ProviderId,
        policy: &BreakerPolicy,
        ticket: Ticket,
        kind: Kind,
    ) {
        let Some(conn) = self.available() else {
            return;
        };
        let (epoch, probe) = match ticket {
            Ticket::Normal { epoch } => (epoch, 0),
            Ticket::Probe { id } => (0, id),
        };
        let args = [
            kind.as_str().to_owned(),
            epoch.to_string(),
            probe.to_string(),
            policy.failure_threshold.to_string(),
            policy.failure_window_ms.to_string(),
            policy.open_ms.to_string(),
        ];
        let keys = self.keys(provider, &["br"]);
        let reply = self.call(conn, &self.scripts.outcome, &keys, &args).await;
        if let Ok(view) = reply.and_then(|v| scripts::parse_outcome(&v)) {
            lock(&self.mirror(provider)).observe(self.clock.now(), view);
        }
    }

    async fn outcome(&self, permit: Permit, outcome: Outcome) {
        let (provider, policy, ticket, origin) = permit.into_parts();
        if origin == Origin::Local {
            self.local.record_ticket(provider, &policy, ticket, outcome);
            return;
        }
        let kind = match (ticket, outcome) {
            (Ticket::Probe { .. }, Outcome::Failure) => Kind::ProbeFail,
            (Ticket::Probe { .. }, _) => Kind::ProbeOk,
            (Ticket::Normal { .. }, Outcome::Failure) => Kind::Fail,
            (Ticket::Normal { epoch }, _) => {
                if !lock(&self.mirror(provider)).streak_to_reset(epoch) {
                    return;
                }
                Kind::Reset
            }
        };
        self.record(provider, &policy, ticket, kind).await;
    }

    async fn snapshot(&self, provider: ProviderId, policy: &Policy) -> Snapshot {
        let Some(conn) = self.available() else {
            return self.local.snapshot_now(provider, policy);
        };
        let keys = self.keys(provider, &["br", "rl", "q"]);
        let args = [policy.rate_per_sec.to_string(), policy.burst.to_string()];
        let reply = self.call(conn, &self.scripts.snapshot, &keys, &args).await;
        let snapshot = reply.and_then(|v| match v.as_slice() {
            [sc, f, at, until, available, used] => Ok(Snapshot {
                breaker: BreakerSnapshot {
                    state: scripts::circuit(*sc)?,
                    consecutive_failures: u32::try_from(*f).unwrap_or(u32::MAX),
                    opened_at: (*at > 0).then(|| utc(*at)),
                    open_until: (*until > 0).then(|| utc(*until)),
                },
                rate: RateSnapshot {
                    rate_per_sec: policy.rate_per_sec,
                    burst: policy.burst,
                    available: u32::try_from(*available).unwrap_or(0),
                    daily_quota: policy.daily_quota,
                    used_today: u64::try_from(*used).unwrap_or(0),
                },
            }),
            _ => Err(StateError::Reply("SNAPSHOT arity")),
        });
        snapshot.unwrap_or_else(|_| self.local.snapshot_now(provider, policy))
    }
}

/// What `OUTCOME` is asked to do.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Fail,
    Reset,
    ProbeOk,
    ProbeFail,
    Release,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Reset => "reset",
            Self::ProbeOk => "probe_ok",
            Self::ProbeFail => "probe_fail",
            Self::Release => "release",
        }
    }
}

fn rejection(r: Rejection) -> Admission {
    match r {
        Rejection::RateLimited(retry_after) => Admission::RateLimited { retry_after },
        Rejection::QuotaExhausted(retry_after) => Admission::QuotaExhausted { retry_after },
        Rejection::CircuitOpen(retry_after) => Admission::CircuitOpen { retry_after },
    }
}

fn lock(m: &Mutex<Mirror>) -> MutexGuard<'_, Mirror> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SharedState for RedisState {
    async fn admit(&self, provider: ProviderId, policy: &Policy) -> Admission {
        self.inner.admit(provider, policy).await
    }

    async fn record(&self, permit: Permit, outcome: Outcome) {
        self.inner.outcome(permit, outcome).await;
    }

    async fn snapshot(&self, provider: ProviderId, policy: &Policy) -> Snapshot {
        self.inner.snapshot(provider, policy).await
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            round_trips: self.inner.round_trips.load(Ordering::Relaxed),
            errors: self.inner.errors.load(Ordering::Relaxed),
            fallbacks: self.inner.fallbacks.load(Ordering::Relaxed),
        }
    }
}
