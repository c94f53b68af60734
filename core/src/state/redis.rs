//! Shared state in Redis (or Valkey), for several hub instances: local admission from leased
//! tokens, Lua scripts for every shared change, and the in-process [`LocalState`] as fallback
//! while Redis is slow or down. The design and its tolerances are in the [`crate::state`] docs.

mod link;
mod mirror;
mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use ::redis::{Client, IntoConnectionInfo};
use async_trait::async_trait;

use self::link::Link;
use self::mirror::{Decision, Fetched, Mirror, Rejection};
use super::breaker::Ticket;
use super::clock::{Clock, utc};
use super::{
    Admission, BackendStats, BreakerSnapshot, Origin, Outcome, Permit, Policy, ProbeGuard,
    RateSnapshot, SharedState, Snapshot, StateError,
};
use crate::provider::{BreakerPolicy, ProviderId};
use crate::state::LocalState;

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
    link: Arc<Link>,
    clock: Clock,
    local: LocalState,
    mirrors: RwLock<HashMap<ProviderId, Arc<Mutex<Mirror>>>>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.inner.link.opts.prefix)
            .field("connected", &self.is_connected())
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisState {
    /// Connects to `target` (a `redis://` URL or connection info), waiting up to
    /// `connect_timeout` for the first connection. If Redis is not there, the state starts on
    /// its local fallback and keeps connecting in the background. Fails only on an invalid
    /// target. Needs a tokio runtime.
    pub async fn connect(
        target: impl IntoConnectionInfo,
        opts: RedisOptions,
    ) -> Result<Self, StateError> {
        let client = Client::open(target).map_err(StateError::InvalidUrl)?;
        let inner = Inner {
            link: Link::connect(client, opts).await,
            clock: Clock::system(),
            local: LocalState::new(),
            mirrors: RwLock::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Whether a Redis connection has been established (it reconnects by itself after that).
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }
}

impl Inner {
    fn keys(&self, provider: ProviderId, which: &[&str]) -> Vec<String> {
        let prefix = &self.link.opts.prefix;
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
        self.link.fell_back();
        self.local.admit_now(provider, policy)
    }

    /// Tokens to lease per `ADMIT`: about `lease_ttl` worth of the rate.
    fn batch(&self, policy: &Policy) -> u32 {
        let per_lease =
            u128::from(policy.rate_per_sec) * self.link.opts.lease_ttl.as_millis() / 1000;
        u32::try_from(per_lease)
            .unwrap_or(u32::MAX)
            .clamp(1, self.link.opts.max_batch.max(1))
    }

    async fn admit(self: &Arc<Self>, provider: ProviderId, policy: &Policy) -> Admission {
        let Some(conn) = self.link.available() else {
            return self.fallback(provider, policy);
        };
        let mirror = self.mirror(provider);
        let decision = lock(&mirror).decide(
            self.clock.now(),
            self.link.opts.lease_ttl,
            self.batch(policy),
        );
        let (want, refund) = match decision {
            Decision::Admit { epoch } => return self.permit(provider, policy, epoch),
            Decision::Reject(r) => return rejection(r),
            Decision::Fetch { want, refund } => (want, refund),
        };
        let _inflight = FetchDone(&mirror);
        let token = rand::random::<u64>();
        let args = [
            policy.rate_per_sec.max(1).to_string(),
            policy.burst.max(1).to_string(),
            policy.daily_quota.unwrap_or(0).to_string(),
            policy.breaker.open_ms.to_string(),
            want.to_string(),
            refund.to_string(),
            token.to_string(),
        ];
        let keys = self.keys(provider, &["br", "rl", "q"]);
        let reply = self
            .link
            .call(conn, &self.link.scripts.admit, &keys, &args)
            .await;
        let parsed =
            reply.and_then(|v| scripts::parse_admit(&v).inspect_err(|e| self.link.failed(e)));
        let (reply, view) = match parsed {
            Ok(p) => p,
            Err(_) => return self.fallback(provider, policy),
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
        let Some(conn) = self.link.available() else {
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
        let reply = self
            .link
            .call(conn, &self.link.scripts.outcome, &keys, &args)
            .await;
        let parsed =
            reply.and_then(|v| scripts::parse_outcome(&v).inspect_err(|e| self.link.failed(e)));
        if let Ok(view) = parsed {
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
        let Some(conn) = self.link.available() else {
            return self.local.snapshot_now(provider, policy);
        };
        let keys = self.keys(provider, &["br", "rl", "q"]);
        let args = [
            policy.rate_per_sec.max(1).to_string(),
            policy.burst.max(1).to_string(),
        ];
        let reply = self
            .link
            .call(conn, &self.link.scripts.snapshot, &keys, &args)
            .await;
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

/// Ends a fetch however the admission ends, cancellation included.
struct FetchDone<'a>(&'a Mutex<Mirror>);

impl Drop for FetchDone<'_> {
    fn drop(&mut self) {
        lock(self.0).fetch_done();
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
        self.inner.link.stats()
    }
}
