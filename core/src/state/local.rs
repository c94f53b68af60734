//! In-process state: one short-held mutex per provider around its breaker, bucket and daily
//! count, found through a read-mostly map. Nothing here awaits; the async trait methods only
//! wrap the synchronous ones, which the Redis backend also uses as its fallback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use async_trait::async_trait;

use super::breaker::{Breaker, State, Ticket};
use super::clock::Clock;
use super::ratelimit::{DailyCount, TokenBucket};
use super::{
    Admission, BreakerSnapshot, CircuitState, Origin, Outcome, Permit, Policy, ProbeGuard,
    RateSnapshot, SharedState, Snapshot,
};
use crate::provider::{BreakerPolicy, ProviderId};

/// One provider's in-process state.
#[derive(Debug, Default)]
struct ProviderState {
    breaker: Breaker,
    bucket: TokenBucket,
    today: DailyCount,
}

type Entry = Arc<Mutex<ProviderState>>;

/// Breaker and rate limit per provider, in this process only.
#[derive(Debug, Default)]
pub struct LocalState {
    clock: Clock,
    providers: RwLock<HashMap<ProviderId, Entry>>,
}

impl LocalState {
    /// With the system clock.
    pub fn new() -> Self {
        Self::with_clock(Clock::system())
    }

    /// With a given clock (tests anchor wall time to tokio's paused clock).
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            clock,
            providers: RwLock::default(),
        }
    }

    /// [`SharedState::admit`] without the future.
    pub fn admit_now(&self, provider: ProviderId, policy: &Policy) -> Admission {
        let entry = self.entry(provider);
        let now = self.clock.now();
        let ticket = {
            let mut st = lock(&entry);
            if let Err(retry_after) = st.breaker.check(now) {
                return Admission::CircuitOpen { retry_after };
            }
            let wall = self.clock.unix_ms();
            if let Err(retry_after) = st.today.check(wall, policy.daily_quota) {
                return Admission::QuotaExhausted { retry_after };
            }
            if let Err(retry_after) = st.bucket.try_take(now, policy.rate_per_sec, policy.burst) {
                return Admission::RateLimited { retry_after };
            }
            st.today.add(wall);
            match st.breaker.admit(now, &policy.breaker) {
                Ok(ticket) => ticket,
                Err(retry_after) => return Admission::CircuitOpen { retry_after },
            }
        };
        let mut permit = Permit::new(provider, policy.breaker, ticket, Origin::Local);
        if let Ticket::Probe { .. } = ticket {
            let clock = self.clock;
            permit.guard = Some(ProbeGuard::new(move || {
                lock(&entry).breaker.release(ticket, clock.now());
            }));
        }
        Admission::Admitted(permit)
    }

    /// Counts one attempt admitted elsewhere (by Redis, for the fallback of a
    /// [`RedisState`](super::RedisState)) against this state's bucket and daily count: the
    /// bucket is left at most empty, so a switch to local admission starts from what this
    /// instance just spent, not from a full burst.
    pub(crate) fn charge(&self, provider: ProviderId, policy: &Policy) {
        let entry = self.entry(provider);
        let now = self.clock.now();
        let wall = self.clock.unix_ms();
        let mut st = lock(&entry);
        st.bucket.charge(now, policy.rate_per_sec, policy.burst);
        st.today.add(wall);
    }

    /// [`SharedState::record`] without the future.
    pub fn record_now(&self, permit: Permit, outcome: Outcome) {
        let (provider, policy, ticket, _) = permit.into_parts();
        self.record_ticket(provider, &policy, ticket, outcome);
    }

    /// Applies an outcome to a provider's breaker.
    pub(crate) fn record_ticket(
        &self,
        provider: ProviderId,
        policy: &BreakerPolicy,
        ticket: Ticket,
        outcome: Outcome,
    ) {
        let entry = self.entry(provider);
        let now = self.clock.now();
        lock(&entry).breaker.record(ticket, outcome, now, policy);
    }

    /// Applies the outcome of an attempt admitted elsewhere (by Redis) as if admitted here
    /// now: the breaker then knows this instance's streak when it has to decide on its own.
    pub(crate) fn record_elsewhere(
        &self,
        provider: ProviderId,
        policy: &BreakerPolicy,
        outcome: Outcome,
    ) {
        let entry = self.entry(provider);
        let now = self.clock.now();
        let mut st = lock(&entry);
        let ticket = Ticket::Normal {
            epoch: st.breaker.epoch(),
        };
        st.breaker.record(ticket, outcome, now, policy);
    }

    /// [`SharedState::snapshot`] without the future.
    pub fn snapshot_now(&self, provider: ProviderId, policy: &Policy) -> Snapshot {
        let entry = self.entry(provider);
        let now = self.clock.now();
        let wall = self.clock.unix_ms();
        let st = lock(&entry);
        let (state, opened_at, open_until) = match st.breaker.state() {
            State::Closed { .. } => (CircuitState::Closed, None, None),
            State::Open { opened_at, until } => (CircuitState::Open, Some(opened_at), Some(until)),
            State::HalfOpen {
                opened_at,
                lease_until,
                ..
            } => (CircuitState::HalfOpen, Some(opened_at), Some(lease_until)),
        };
        Snapshot {
            breaker: BreakerSnapshot {
                state,
                consecutive_failures: st.breaker.failures(),
                opened_at: opened_at.map(|t| self.clock.to_utc(t)),
                open_until: open_until.map(|t| self.clock.to_utc(t)),
            },
            rate: RateSnapshot {
                rate_per_sec: policy.rate_per_sec,
                burst: policy.burst,
                available: st.bucket.available(now, policy.rate_per_sec, policy.burst),
                daily_quota: policy.daily_quota,
                used_today: st.today.used(wall),
            },
        }
    }

    fn entry(&self, provider: ProviderId) -> Entry {
        if let Some(e) = self
            .providers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&provider)
        {
            return Arc::clone(e);
        }
        let mut map = self
            .providers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(provider).or_default())
    }
}

/// A poisoned lock still holds consistent numbers (every update is a few plain assignments).
fn lock(entry: &Mutex<ProviderState>) -> MutexGuard<'_, ProviderState> {
    entry.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl SharedState for LocalState {
    async fn admit(&self, provider: ProviderId, policy: &Policy) -> Admission {
        self.admit_now(provider, policy)
    }

    async fn record(&self, permit: Permit, outcome: Outcome) {
        self.record_now(permit, outcome);
    }

    async fn snapshot(&self, provider: ProviderId, policy: &Policy) -> Snapshot {
        self.snapshot_now(provider, policy)
    }
}
