//! The per-provider circuit breaker as an explicit state machine (after linkerd2-proxy's
//! `consecutive_failures` breaker), pure: the caller passes `now` and the policy, so the same
//! rules run in-process and, transcribed, in the Redis scripts.
//!
//! ```text
//! Closed{streak} ──threshold failures, first within window──▶ Open{until}
//! Open{until}    ──first admission at/after until──────────▶ HalfOpen{probe, lease}
//! HalfOpen       ──probe success / neutral─────────────────▶ Closed (streak reset)
//! HalfOpen       ──probe failure───────────────────────────▶ Open{now + open_ms}
//! HalfOpen       ──probe dropped───────────────────────────▶ Open{now} (next admission probes)
//! HalfOpen       ──lease (open_ms) over, admission─────────▶ HalfOpen{new probe}
//! ```
//!
//! A streak counts consecutive failures from its first one: a failure more than
//! `failure_window_ms` after the streak's first failure starts a new streak of one. Success and
//! neutral outcomes (4xx: the provider answered) end the streak. Outcomes of attempts admitted
//! in an earlier closed period (the `epoch` moves on every opening) and of normal attempts that
//! finish while open are ignored: only the probe decides a half-open circuit.

use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use crate::provider::BreakerPolicy;

/// What admission handed out: a normal attempt of a closed period, or the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Admitted while closed in this epoch.
    Normal {
        /// The closed period it belongs to.
        epoch: u64,
    },
    /// The half-open probe.
    Probe {
        /// Identifies the probe (a later probe supersedes it).
        id: u64,
    },
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow; `streak_started` is the first failure of the current streak.
    Closed {
        /// When the current streak began (`None`: no streak).
        streak_started: Option<Instant>,
    },
    /// Calls are rejected until `until`.
    Open {
        /// When it opened.
        opened_at: Instant,
        /// When the next admission becomes the probe.
        until: Instant,
    },
    /// One probe is in flight.
    HalfOpen {
        /// When it last opened.
        opened_at: Instant,
        /// The probe in flight.
        probe: u64,
        /// When another admission may take over as the probe.
        lease_until: Instant,
    },
}

/// One provider's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    failures: u32,
    epoch: u64,
    next_probe: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
        Self {
            state: State::Closed {
                streak_started: None,
            },
            failures: 0,
            epoch: 0,
            next_probe: 1,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Consecutive failures in the current streak (kept while open, probe failures added).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The current closed period: normal tickets admitted now carry it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether an admission now would pass; `Err` carries the time until it might.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until, .. } if now < until => Err(until - now),
            State::HalfOpen { lease_until, .. } if now < lease_until => Err(lease_until - now),
            State::Open { .. } | State::HalfOpen { .. } => Ok(()),
        }
    }

    /// Admits one attempt: a normal ticket while closed, the probe once the open time is over.
    pub fn admit(&mut self, now: Instant, policy: &BreakerPolicy) -> Result<Ticket, Duration> {
        self.check(now)?;
        match self.state {
            State::Closed { .. } => Ok(Ticket::Normal { epoch: self.epoch }),
            State::Open { opened_at, .. } | State::HalfOpen { opened_at, .. } => {
                let id = self.next_probe;
                self.next_probe += 1;
                self.state = State::HalfOpen {
                    opened_at,
                    probe: id,
                    lease_until: now + open_for(policy),
                };
                Ok(Ticket::Probe { id })
            }
        }
    }

    /// Applies an attempt's outcome.
    pub fn record(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        now: Instant,
        policy: &BreakerPolicy,
    ) {
        match (self.state, ticket) {
            (State::Closed { streak_started }, Ticket::Normal { epoch }) if epoch == self.epoch => {
                if outcome != Outcome::Failure {
                    self.failures = 0;
                    self.state = State::Closed {
                        streak_started: None,
                    };
                    return;
                }
                let window = Duration::from_millis(policy.failure_window_ms.into());
                let started = match streak_started {
                    Some(s) if self.failures > 0 && now.duration_since(s) < window => {
                        self.failures += 1;
                        s
                    }
                    _ => {
                        self.failures = 1;
                        now
                    }
                };
                if self.failures >= policy.failure_threshold {
                    self.open(now, policy);
                    self.epoch += 1;
                } else {
                    self.state = State::Closed {
                        streak_started: Some(started),
                    };
                }
            }
            (State::HalfOpen { probe, .. }, Ticket::Probe { id }) if probe == id => {
                if outcome == Outcome::Failure {
                    self.failures = self.failures.saturating_add(1);
                    self.open(now, policy);
                } else {
                    self.failures = 0;
                    self.state = State::Closed {
                        streak_started: None,
                    };
                }
            }
            _ => {}
        }
    }

    /// An abandoned probe: frees the slot so the next admission probes.
    pub fn release(&mut self, ticket: Ticket, now: Instant) {
        if let (
            State::HalfOpen {
                probe, opened_at, ..
            },
            Ticket::Probe { id },
        ) = (self.state, ticket)
            && probe == id
        {
            self.state = State::Open {
                opened_at,
                until: now,
            };
        }
    }

    fn open(&mut self, now: Instant, policy: &BreakerPolicy) {
        self.state = State::Open {
            opened_at: now,
            until: now + open_for(policy),
        };
    }
}

fn open_for(policy: &BreakerPolicy) -> Duration {
    Duration::from_millis(policy.open_ms.into())
}
