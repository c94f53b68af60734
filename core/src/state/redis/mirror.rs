//! One provider's local view of its shared state: the breaker as Redis last reported it, the
//! tokens this instance has leased, and cached rejections. Pure: it decides whether a request
//! can be answered locally or needs an `ADMIT` call, and folds replies in.

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
}

impl Mirror {
    /// Decides locally if the view allows it; otherwise asks for a fetch (and counts it in flight).
    pub fn decide(&mut self, now: Instant, lease_ttl: Duration, batch: u32) -> Decision {
        let fresh = self.synced_at.is_some_and(|t| now < t + lease_ttl);
        match self.state {
            Some((CircuitState::Open, until)) if now < until => {
                return Decision::Reject(Rejection::CircuitOpen(until - now));
            }
            Some((CircuitState::HalfOpen, until)) if fresh && now < until => {
                return Decision::Reject(Rejection::CircuitOpen(until - now));
            }
            _ => {}
        }
        if let Some((until, limit)) = self.limited
            && now < until
        {
            let wait = until - now;
            return Decision::Reject(match limit {
                Limit::Rate => Rejection::RateLimited(wait),
                Limit::Quota => Rejection::QuotaExhausted(wait),
            });
        }
        let closed = self.state.is_none_or(|(s, _)| s == CircuitState::Closed);
        if fresh && closed && self.tokens > 0 {
            self.tokens -= 1;
            return Decision::Admit { epoch: self.epoch };
        }
        let refund = if fresh {
            0
        } else {
            std::mem::take(&mut self.tokens)
        };
        let want = if self.inflight > 0 { 1 } else { batch.max(1) };
        self.inflight += 1;
        Decision::Fetch { want, refund }
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
