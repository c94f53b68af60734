//! One provider's local view of its shared state: the breaker as Redis last reported it, the
//! tokens this instance has leased, cached rejections, and what Redis has yet to hear (tokens of
//! replies that came too late to use, admissions made by the local fallback). Pure: it decides
//! whether a request can be answered locally or needs an `ADMIT` call, and folds replies in.

use std::time::Duration;

use tokio::time::Instant;

use super::scripts::{AdmitReply, BreakerView};
use crate::state::CircuitState;

/// What to do with one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Admitted from leased tokens (a normal ticket of this epoch).
    Admit { epoch: u64 },
    /// Answered from the cached state.
    Reject(Rejection),
    /// Ask Redis for `want` tokens, handing back `refund` stale ones.
    Fetch { want: u32, refund: u32 },
}

/// A rejection and its retry-after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejection {
    RateLimited(Duration),
    QuotaExhausted(Duration),
    CircuitOpen(Duration),
}

/// What a fetch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetched {
    Admit { epoch: u64 },
    Probe,
    Reject(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Rate,
    Quota,
}

/// The local view.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    synced_at: Option<Instant>,
    state: Option<(CircuitState, Instant)>,
    failures: u32,
    epoch: u64,
    tokens: u32,
    limited: Option<(Instant, Limit)>,
    inflight: u32,
    /// Tokens leased by `ADMIT` calls answered after their request gave up: refunded next.
    late_tokens: u32,
    /// Admissions by the local fallback since Redis last heard: charged to the shared bucket
    /// and daily count by the next `ADMIT` (see [`Mirror::take_debt`]).
    debt: u32,
}

impl Mirror {
    /// Decides locally if the view allows it; otherwise asks for a fetch (and counts it in flight).
    pub fn decide(&mut self, now: Instant, lease_ttl: Duration, batch: u32) -> Decision {
        let fresh = self.fresh(now, lease_ttl);
        if let Some(r) = self.cached(now, lease_ttl) {
            return Decision::Reject(r);
        }
        let closed = self.state.is_none_or(|(s, _)| s == CircuitState::Closed);
        if fresh && closed && self.tokens > 0 {
            self.tokens -= 1;
            return Decision::Admit { epoch: self.epoch };
        }
        let stale = if fresh {
            0
        } else {
            std::mem::take(&mut self.tokens)
        };
        let refund = stale.saturating_add(std::mem::take(&mut self.late_tokens));
        let want = if self.inflight > 0 { 1 } else { batch.max(1) };
        self.inflight += 1;
        Decision::Fetch { want, refund }
    }

    /// A rejection Redis's last word still implies: an open circuit until its end, a half-open
    /// one while the view is fresh, a rate limit or exhausted quota until its retry-after. The
    /// local fallback honours these too (they only ever say no).
    pub fn cached(&self, now: Instant, lease_ttl: Duration) -> Option<Rejection> {
        match self.state {
            Some((CircuitState::Open, until)) if now < until => {
                return Some(Rejection::CircuitOpen(until - now));
            }
            Some((CircuitState::HalfOpen, until)) if self.fresh(now, lease_ttl) && now < until => {
                return Some(Rejection::CircuitOpen(until - now));
            }
            _ => {}
        }
        match self.limited {
            Some((until, limit)) if now < until => {
                let wait = until - now;
                Some(match limit {
                    Limit::Rate => Rejection::RateLimited(wait),
                    Limit::Quota => Rejection::QuotaExhausted(wait),
                })
            }
            _ => None,
        }
    }

    fn fresh(&self, now: Instant, lease_ttl: Duration) -> bool {
        self.synced_at.is_some_and(|t| now < t + lease_ttl)
    }

    /// Counts one admission by the local fallback.
    pub fn owe(&mut self) {
        self.debt = self.debt.saturating_add(1);
    }

    /// The fallback admissions to charge with the next `ADMIT`, at most `cap` (older ones are
    /// forgiven: the bucket has refilled since); the count starts over.
    pub fn take_debt(&mut self, cap: u32) -> u32 {
        std::mem::take(&mut self.debt).min(cap)
    }

    /// An `ADMIT` carrying `debt` failed: charge it with the next one instead (it may have
    /// been applied after all; charging twice errs on the side of the limit).
    pub fn restore_debt(&mut self, debt: u32) {
        self.debt = self.debt.saturating_add(debt);
    }

    /// Folds in an `ADMIT` reply that came after its request had given up (and been decided by
    /// the fallback): the breaker view and rate-limit answers are kept, granted tokens are
    /// refunded by the next `ADMIT` rather than lost. Returns whether the reply made this
    /// instance the probe, which the caller must release.
    pub fn late(&mut self, now: Instant, reply: AdmitReply, view: BreakerView) -> bool {
        self.observe(now, view);
        match reply {
            AdmitReply::Granted { probe: true, .. } => return true,
            AdmitReply::Granted { granted, .. } => {
                self.late_tokens = self.late_tokens.saturating_add(granted);
            }
            AdmitReply::RateLimited(wait) => self.limited = Some((now + wait, Limit::Rate)),
            AdmitReply::QuotaExhausted(wait) => self.limited = Some((now + wait, Limit::Quota)),
            AdmitReply::CircuitOpen(_) => {}
        }
        false
    }

    /// Folds in an `ADMIT` reply for a fetch started by [`Mirror::decide`].
    pub fn fetched(&mut self, now: Instant, reply: AdmitReply, view: BreakerView) -> Fetched {
        self.synced_at = Some(now);
        self.observe(now, view);
        match reply {
            AdmitReply::Granted { probe: true, .. } => {
                self.limited = None;
                Fetched::Probe
            }
            AdmitReply::Granted { granted, .. } => {
                self.limited = None;
                self.tokens += granted.saturating_sub(1);
                Fetched::Admit { epoch: self.epoch }
            }
            AdmitReply::RateLimited(wait) => {
                self.limited = Some((now + wait, Limit::Rate));
                Fetched::Reject(Rejection::RateLimited(wait))
            }
            AdmitReply::QuotaExhausted(wait) => {
                self.limited = Some((now + wait, Limit::Quota));
                Fetched::Reject(Rejection::QuotaExhausted(wait))
            }
            AdmitReply::CircuitOpen(wait) => Fetched::Reject(Rejection::CircuitOpen(wait)),
        }
    }

    /// A fetch started by [`Mirror::decide`] is over (answered, failed or cancelled). A failed
    /// fetch's refund is lost: those tokens stay spent.
    pub fn fetch_done(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// Folds in the breaker as a script reported it.
    pub fn observe(&mut self, now: Instant, view: BreakerView) {
        self.failures = view.failures;
        self.epoch = view.epoch;
        self.state = Some((view.state, now + view.remaining));
    }

    /// Whether Redis's streak (as last seen) is non-zero in `epoch`: a success must reset it.
    pub fn streak_to_reset(&self, epoch: u64) -> bool {
        self.failures > 0
            && self.epoch == epoch
            && self.state.is_none_or(|(s, _)| s == CircuitState::Closed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, advance};

    use super::{Decision, Fetched, Mirror, Rejection};
    use crate::state::CircuitState;
    use crate::state::redis::scripts::{AdmitReply, BreakerView};

    const TTL: Duration = Duration::from_millis(50);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn view(state: CircuitState, remaining: Duration) -> BreakerView {
        BreakerView {
            state,
            failures: 0,
            epoch: 7,
            remaining,
        }
    }

    fn closed() -> BreakerView {
        view(CircuitState::Closed, Duration::ZERO)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_admits_locally_while_fresh_then_refunds() {
        let mut m = Mirror::default();
        assert_eq!(
            m.decide(Instant::now(), TTL, 5),
            Decision::Fetch { want: 5, refund: 0 }
        );
        let granted = AdmitReply::Granted {
            granted: 5,
            probe: false,
        };
        assert_eq!(
            m.fetched(Instant::now(), granted, closed()),
            Fetched::Admit { epoch: 7 }
        );
        m.fetch_done();
        for _ in 0..2 {
            assert_eq!(
                m.decide(Instant::now(), TTL, 5),
                Decision::Admit { epoch: 7 }
            );
        }
        advance(TTL).await;
        assert_eq!(
            m.decide(Instant::now(), TTL, 5),
            Decision::Fetch { want: 5, refund: 2 }
        );
        assert_eq!(
            m.decide(Instant::now(), TTL, 5),
            Decision::Fetch { want: 1, refund: 0 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_is_cached_until_its_end_half_open_only_while_fresh() {
        let mut m = Mirror::default();
        let _ = m.decide(Instant::now(), TTL, 5);
        let open = AdmitReply::CircuitOpen(ms(200));
        m.fetched(Instant::now(), open, view(CircuitState::Open, ms(200)));
        m.fetch_done();
        advance(ms(150)).await;
        let reject = Decision::Reject(Rejection::CircuitOpen(ms(50)));
        assert_eq!(m.decide(Instant::now(), TTL, 5), reject);
        advance(ms(50)).await;
        assert!(matches!(
            m.decide(Instant::now(), TTL, 5),
            Decision::Fetch { .. }
        ));
        m.fetched(Instant::now(), open, view(CircuitState::HalfOpen, ms(200)));
        m.fetch_done();
        let reject = Decision::Reject(Rejection::CircuitOpen(ms(200)));
        assert_eq!(m.decide(Instant::now(), TTL, 5), reject);
        advance(TTL).await;
        assert!(
            matches!(m.decide(Instant::now(), TTL, 5), Decision::Fetch { .. }),
            "another instance's probe may have closed it: ask again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_admissions_are_owed_once_and_capped() {
        let mut m = Mirror::default();
        for _ in 0..7 {
            m.owe();
        }
        assert_eq!(m.take_debt(5), 5, "capped: older ones are forgiven");
        assert_eq!(m.take_debt(5), 0, "charged once");
        m.owe();
        let debt = m.take_debt(5);
        m.restore_debt(debt);
        m.owe();
        assert_eq!(
            m.take_debt(5),
            2,
            "a failed charge is charged with the next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_is_folded_in_and_its_tokens_refunded() {
        let mut m = Mirror::default();
        let Decision::Fetch { want: 5, refund: 0 } = m.decide(Instant::now(), TTL, 5) else {
            panic!()
        };
        let granted = AdmitReply::Granted {
            granted: 5,
            probe: false,
        };
        assert!(!m.late(Instant::now(), granted, closed()));
        m.fetch_done();
        assert_eq!(
            m.decide(Instant::now(), TTL, 5),
            Decision::Fetch { want: 5, refund: 5 },
            "late tokens are handed back, not spent"
        );
        m.fetch_done();
        // A late open circuit and a late rate limit still say no, to the fallback too.
        let open = view(CircuitState::Open, ms(300));
        assert!(!m.late(Instant::now(), AdmitReply::CircuitOpen(ms(300)), open));
        assert_eq!(
            m.cached(Instant::now(), TTL),
            Some(Rejection::CircuitOpen(ms(300)))
        );
        advance(ms(300)).await;
        assert_eq!(m.cached(Instant::now(), TTL), None);
        m.late(Instant::now(), AdmitReply::RateLimited(ms(40)), closed());
        assert_eq!(
            m.cached(Instant::now(), TTL),
            Some(Rejection::RateLimited(ms(40)))
        );
        // A late probe must be released by the caller.
        let probe = AdmitReply::Granted {
            granted: 1,
            probe: true,
        };
        assert!(m.late(Instant::now(), probe, view(CircuitState::HalfOpen, ms(300))));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_is_cached_for_its_retry_after() {
        let mut m = Mirror::default();
        let _ = m.decide(Instant::now(), TTL, 5);
        m.fetched(Instant::now(), AdmitReply::RateLimited(ms(30)), closed());
        m.fetch_done();
        advance(ms(10)).await;
        let reject = Decision::Reject(Rejection::RateLimited(ms(20)));
        assert_eq!(m.decide(Instant::now(), TTL, 5), reject);
        advance(ms(20)).await;
        assert!(matches!(
            m.decide(Instant::now(), TTL, 5),
            Decision::Fetch { .. }
        ));
    }
}
