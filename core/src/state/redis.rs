//! Shared state in Redis (or Valkey), for several hub instances: local admission from leased
//! tokens, Lua scripts for every shared change, and the in-process [`LocalState`] as fallback
//! while Redis is slow or down, admitting this instance's share of each limit (the live
//! instances are counted in Redis, [`instances`]). The design and its tolerances are in the
//! [`crate::state`] docs.

mod instances;
mod link;
mod mirror;
mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use ::redis::{Client, IntoConnectionInfo};
use async_trait::async_trait;

use self::instances::Instances;
use self::link::{Link, Reply, Which};
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
    /// Longest any request waits on one Redis call (default 50 ms; see the [`crate::state`]
    /// docs for why). A call still running then completes in the background.
    pub command_timeout: Duration,
    /// How long the local view and leased tokens stay valid (default 50 ms).
    pub lease_ttl: Duration,
    /// Upper bound on tokens leased per `ADMIT` call (default 64).
    pub max_batch: u32,
    /// After a Redis error, how long requests skip Redis (default 1 s).
    pub retry_interval: Duration,
    /// Per connection attempt (default 1 s); `connect` waits this long for the first one.
    pub connect_timeout: Duration,
    /// How often this instance refreshes its entry in the instance registry and reads the
    /// live count (default 1 s); an entry not refreshed for 5 intervals no longer counts.
    pub heartbeat_interval: Duration,
    /// Live instances assumed by the fallback before the registry has been read once (Redis
    /// unreachable since start). Default 1; set it to the replica count.
    pub fallback_instances: u32,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "hub:".to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            lease_ttl: Duration::from_millis(50),
            max_batch: 64,
            retry_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            fallback_instances: 1,
        }
    }
}

/// Default [`RedisOptions::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

/// Breaker and rate limit shared through Redis, with in-process fallback.
#[derive(Clone)]
pub struct RedisState {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<Link>,
    instances: Arc<Instances>,
    clock: Clock,
    /// The fallback, and this instance's share buckets: every admission (by Redis too) is
    /// charged to them, see [`LocalState::charge`].
    local: LocalState,
    mirrors: RwLock<HashMap<ProviderId, Arc<Mutex<Mirror>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.instances.leave(&self.link);
    }
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
        let instances = Arc::new(Instances::new(&opts));
        let link = Link::connect(client, opts).await;
        tokio::spawn(instances::heartbeat(
            Arc::clone(&instances),
            Arc::clone(&link),
        ));
        let inner = Inner {
            link,
            instances,
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

    /// Admission while Redis is skipped or failed: what Redis last said no to still stands
    /// (an open circuit, an empty bucket), then this instance's share of the limits decides,
    /// and the admission is owed to the shared bucket.
    fn fallback(&self, provider: ProviderId, policy: &Policy, mirror: &Mutex<Mirror>) -> Admission {
        self.link.fell_back();
        let mut m = lock(mirror);
        if let Some(r) = m.cached(self.clock.now(), self.link.opts.lease_ttl) {
            return rejection(r);
        }
        let admission = self.local.admit_now(provider, &self.share(policy));
        if matches!(admission, Admission::Admitted(_)) {
            m.owe();
        }
        admission
    }

    /// This instance's share of `policy`.
    fn share(&self, policy: &Policy) -> Policy {
        policy.share(self.instances.sharing())
    }

    /// Fallback admissions charged with one `ADMIT` at most: what this instance may admit at its
    /// share in one `retry_interval` (older ones are forgiven).
    fn debt_cap(&self, policy: &Policy) -> u32 {
        let share = self.share(policy);
        let per_retry =
            u128::from(share.rate_per_sec) * self.link.opts.retry_interval.as_millis() / 1000;
        u32::try_from(per_retry)
            .unwrap_or(u32::MAX)
            .saturating_add(share.burst)
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
        self.instances.activate();
        let mirror = self.mirror(provider);
        let Some(conn) = self.link.available() else {
            return self.fallback(provider, policy, &mirror);
        };
        let (decision, debt) = {
            let mut m = lock(&mirror);
            let decision = m.decide(
                self.clock.now(),
                self.link.opts.lease_ttl,
                self.batch(policy),
            );
            let debt = match decision {
                Decision::Fetch { .. } => m.take_debt(self.debt_cap(policy)),
                _ => 0,
            };
            (decision, debt)
        };
        let (want, refund) = match decision {
            Decision::Admit { epoch } => return self.permit(provider, policy, epoch),
            Decision::Reject(r) => return rejection(r),
            Decision::Fetch { want, refund } => (want, refund),
        };
        // The fetch stays in flight until its reply is folded in, here or late.
        let inflight = FetchDone(Arc::clone(&mirror));
        let token = rand::random::<u64>();
        let args = vec![
            policy.rate_per_sec.max(1).to_string(),
            policy.burst.max(1).to_string(),
            policy.daily_quota.unwrap_or(0).to_string(),
            policy.breaker.open_ms.to_string(),
            want.to_string(),
            refund.to_string(),
            token.to_string(),
            debt.to_string(),
        ];
        let keys = self.keys(provider, &["br", "rl", "q"]);
        let late = {
            let weak = Arc::downgrade(self);
            let breaker = policy.breaker;
            move |reply: Result<Vec<i64>, StateError>| {
                let mirror = &inflight.0;
                let Ok((reply, view)) = reply.and_then(|v| scripts::parse_admit(&v)) else {
                    lock(mirror).restore_debt(debt);
                    return;
                };
                let Some(inner) = weak.upgrade() else { return };
                if lock(mirror).late(inner.clock.now(), reply, view) {
                    inner.release_probe(provider, breaker, Ticket::Probe { id: token });
                }
            }
        };
        // `_unused_late` keeps the fetch in flight until its reply is folded in below: other
        // requests must not start a full fetch in between.
        let (reply, _unused_late) = self
            .link
            .call_or_late(conn, Which::Admit, keys, args, late)
            .await;
        let parsed = match reply {
            Reply::Now(r) => {
                r.and_then(|v| scripts::parse_admit(&v).inspect_err(|e| self.link.failed(e)))
            }
            Reply::Late => return self.fallback(provider, policy, &mirror),
        };
        let (reply, view) = match parsed {
            Ok(p) => p,
            Err(_) => {
                lock(&mirror).restore_debt(debt);
                return self.fallback(provider, policy, &mirror);
            }
        };
        let fetched = lock(&mirror).fetched(self.clock.now(), reply, view);
        match fetched {
            Fetched::Admit { epoch } => self.permit(provider, policy, epoch),
            Fetched::Reject(r) => rejection(r),
            Fetched::Probe => {
                self.local.charge(provider, &self.share(policy));
                let ticket = Ticket::Probe { id: token };
                let mut permit = Permit::new(provider, policy.breaker, ticket, Origin::Redis);
                let weak = Arc::downgrade(self);
                let breaker = policy.breaker;
                permit.guard = Some(ProbeGuard::new(move || {
                    if let Some(inner) = weak.upgrade() {
                        inner.release_probe(provider, breaker, ticket);
                    }
                }));
                Admission::Admitted(permit)
            }
        }
    }

    /// Hands a probe nobody will report back to Redis, in the background.
    fn release_probe(
        self: &Arc<Self>,
        provider: ProviderId,
        breaker: BreakerPolicy,
        ticket: Ticket,
    ) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(self);
            rt.spawn(async move {
                inner
                    .record(provider, &breaker, ticket, Kind::Release)
                    .await;
            });
        }
    }

    /// An admission from leased tokens; it is charged to this instance's share bucket too.
    fn permit(&self, provider: ProviderId, policy: &Policy, epoch: u64) -> Admission {
        self.local.charge(provider, &self.share(policy));
        let ticket = Ticket::Normal { epoch };
        Admission::Admitted(Permit::new(provider, policy.breaker, ticket, Origin::Redis))
    }

    /// Runs `OUTCOME` and folds the reply into the mirror (a late reply too).
    async fn record(
        self: &Arc<Self>,
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
        let args = vec![
            kind.as_str().to_owned(),
            epoch.to_string(),
            probe.to_string(),
            policy.failure_threshold.to_string(),
            policy.failure_window_ms.to_string(),
            policy.open_ms.to_string(),
        ];
        let keys = self.keys(provider, &["br"]);
        let mirror = self.mirror(provider);
        let late = {
            let mirror = Arc::clone(&mirror);
            let clock = self.clock;
            move |reply: Result<Vec<i64>, StateError>| {
                if let Ok(view) = reply.and_then(|v| scripts::parse_outcome(&v)) {
                    lock(&mirror).observe(clock.now(), view);
                }
            }
        };
        let (reply, _unused_late) = self
            .link
            .call_or_late(conn, Which::Outcome, keys, args, late)
            .await;
        if let Reply::Now(r) = reply
            && let Ok(view) =
                r.and_then(|v| scripts::parse_outcome(&v).inspect_err(|e| self.link.failed(e)))
        {
            lock(&mirror).observe(self.clock.now(), view);
        }
    }

    async fn outcome(self: &Arc<Self>, permit: Permit, outcome: Outcome) {
        let (provider, policy, ticket, origin) = permit.into_parts();
        if origin == Origin::Local {
            self.local.record_ticket(provider, &policy, ticket, outcome);
            return;
        }
        // The fallback's breaker follows this instance's outcomes, so it opens at the same
        // threshold when Redis goes away mid-streak (the outcome may not reach Redis).
        self.local.record_elsewhere(provider, &policy, outcome);
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
            return self.local.snapshot_now(provider, &self.share(policy));
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
        snapshot.unwrap_or_else(|_| self.local.snapshot_now(provider, &self.share(policy)))
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

/// Ends a fetch once its reply is folded in (or lost), cancellation included.
struct FetchDone(Arc<Mutex<Mirror>>);

impl Drop for FetchDone {
    fn drop(&mut self) {
        lock(&self.0).fetch_done();
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
            instances: self.inner.instances.live(),
            ..self.inner.link.stats()
        }
    }
}
