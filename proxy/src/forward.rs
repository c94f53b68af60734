//! Escape: sending one call to its provider under the provider's policy.
//!
//! Pingora 0.9 retries only connect errors and replays at most 64 KiB of body, while the hub
//! must retry 5xx/429 responses with backoff inside a total budget and replay bodies up to a
//! configurable size. So the hub runs the attempt loop itself (this file), over:
//!
//! - [`body`]: the request body, buffered for replay or streamed once, framed exactly;
//! - [`upstream`]: connections (pooled per thread in [`pool`], or dialled), one attempt's
//!   request and response head, the relay of the final response under idle/total timeouts;
//! - [`rewrite`]: the request as the provider gets it;
//! - [`verdict`]: what admissions and attempts mean for the caller (problems, labels);
//! - [`dlq`]: the hand-off of a call that still failed.
//!
//! Every attempt is admitted by the shared state (rate limit + breaker), its outcome recorded,
//! and only the final attempt's response is streamed to the caller.

pub(crate) mod body;
mod dlq;
mod grpc;
mod pool;
mod rewrite;
mod scrub;
mod sign;
#[cfg(test)]
mod tests;
mod upgrade;
mod upstream;
pub(crate) mod verdict;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hub_core::dlq::DeadLetterSink;
use hub_core::state::retry::may_retry;
use hub_core::state::{
    Admission, AttemptEnd, Jitter, Outcome, Permit, Policy, RetryPlan, SharedState, Stop,
};
use hub_core::wire::problem;
use pingora::proxy::Session;
use tokio::time::Instant;

use crate::metrics::METRICS;
use crate::problem::Problem;
use crate::registry::Provider;

use body::{Body, Expectation};
use dlq::CallFailure;
pub use rewrite::{caller_headers, upstream_header};
pub use upgrade::is_websocket;
pub use upstream::{Cut, Dial, PingoraDial};
use upstream::{Upstream, attempt, excerpt_of, relay, retry_after_of};

/// Default largest request body kept for replay (bigger bodies are sent once, streamed).
pub const DEFAULT_REPLAY_LIMIT: usize = 1024 * 1024;
/// Request header a caller may use to ask for a smaller total budget, in milliseconds.
pub const TIMEOUT_HEADER: &str = hub_core::wire::TIMEOUT_MS;

/// Sends calls under each provider's policy.
pub struct Forwarder {
    dial: Arc<dyn Dial>,
    state: Arc<dyn SharedState>,
    jitter: Arc<dyn Jitter>,
    hub_default_rate: u32,
    replay_limit: usize,
    exhausted: Option<Arc<dyn DeadLetterSink>>,
    /// The proxy's drain signal: upgraded connections end after its grace.
    drain: crate::upgraded::Drain,
    /// OAuth2 access tokens (`None`: OAuth2 providers' calls get 503).
    tokens: Option<Arc<crate::oauth::Tokens>>,
}

/// Settings for a [`Forwarder`].
pub struct ForwarderOptions {
    /// Shared breaker + rate-limit state.
    pub state: Arc<dyn SharedState>,
    /// Backoff jitter source (injectable for tests).
    pub jitter: Arc<dyn Jitter>,
    /// `INTEGRATION_RATE_LIMIT_PER_SEC`.
    pub hub_default_rate: u32,
    /// Largest replayable body.
    pub replay_limit: usize,
    /// Where exhausted calls go (the DLQ writer); `None` = logged only.
    pub exhausted: Option<Arc<dyn DeadLetterSink>>,
    /// The proxy's drain signal (see [`crate::upgraded::Drain`]).
    pub drain: crate::upgraded::Drain,
    /// OAuth2 access tokens.
    pub tokens: Option<Arc<crate::oauth::Tokens>>,
}

/// One call as routed: the provider, the address the destination check pinned, the path and
/// query as the caller sent them, and the request id.
pub struct Call<'a> {
    /// The provider the Host routed to.
    pub provider: &'a Arc<Provider>,
    /// The checked, pinned upstream address.
    pub addr: SocketAddr,
    /// Origin-form path and query as the caller sent them.
    pub path_and_query: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// Watches the caller, for a connection that outlives the request (a WebSocket).
    pub revoker: Option<crate::callers::Revoker>,
}

/// What a call did, for the access line and the span.
#[derive(Debug, Default)]
pub struct CallReport {
    /// Attempts made.
    pub attempts: u32,
    /// The idempotency key sent, if any.
    pub idempotency_key: Option<String>,
    /// Why the relayed response was cut short, if it was.
    pub cut: Option<Cut>,
    /// The long-lived connection the request became (a WebSocket), if it asked for one.
    pub kind: Option<crate::upgraded::Kind>,
}

impl Forwarder {
    /// A forwarder dialling with Pingora's connector configured by `conf`.
    pub fn new(conf: &pingora::server::configuration::ServerConf, opts: ForwarderOptions) -> Self {
        use pingora::connectors::ConnectorOptions;
        use pingora::connectors::http::Connector;
        let dial = PingoraDial(Connector::new(Some(ConnectorOptions::from_server_conf(
            conf,
        ))));
        Self::with_dial(Arc::new(dial), opts)
    }

    /// A forwarder over any [`Dial`].
    pub fn with_dial(dial: Arc<dyn Dial>, opts: ForwarderOptions) -> Self {
        Self {
            dial,
            state: opts.state,
            jitter: opts.jitter,
            hub_default_rate: opts.hub_default_rate,
            replay_limit: opts.replay_limit,
            exhausted: opts.exhausted,
            drain: opts.drain,
            tokens: opts.tokens,
        }
    }

    /// The shared state (for health and metrics).
    pub fn state(&self) -> &Arc<dyn SharedState> {
        &self.state
    }

    /// Runs the call and writes the response to `session`; `Err` is a problem to answer
    /// instead. `report` says what happened either way.
    pub async fn call(
        &self,
        session: &mut Session,
        call: &Call<'_>,
        report: &mut CallReport,
    ) -> Result<u16, Problem> {
        // Boxed: inline, their (large) futures would grow every call's future, which is moved
        // and zeroed per request (measured: +10 µs CPU per HTTPS request at 64 connections).
        if session.as_http2().is_some() && crate::problem::is_grpc(session.req_header()) {
            return Box::pin(self.call_grpc(session, call, report)).await;
        }
        if is_websocket(session.req_header()) {
            return Box::pin(self.upgrade(session, call, report)).await;
        }
        let provider = call.provider;
        let policy = Policy::from_config(&provider.config, self.hub_default_rate);
        let plan = plan_for(provider, session.req_header());
        let expectation = Expectation::of(session.req_header());
        if expectation == Expectation::Unsupported {
            return Err(Problem::new(
                problem::EXPECTATION_FAILED,
                "the hub understands only Expect: 100-continue",
            ));
        }
        // The first admission comes before the body is read: a refused call costs nothing, and
        // a caller that sent `Expect: 100-continue` gets its refusal without sending the body.
        let mut permit = Some(self.admit(provider, &policy).await?);
        let mut header = upstream_header(
            session.req_header(),
            provider,
            call.path_and_query,
            call.request_id,
            &mut report.idempotency_key,
        )
        .map_err(|_| Problem::bad_request("the request cannot be forwarded"))?;
        let mut token = self
            .authorize(provider, plan.deadline(), &mut header)
            .await?;
        session.set_read_timeout(Some(provider.config.idle_timeout()));
        if expectation == Expectation::Continue && !session.is_body_empty() {
            body::write_continue(session).await?;
        }
        // What the caller sent (what the DLQ keeps), and what the provider gets: the same but
        // for a `body` credential placed in it.
        let caller_body = Body::read(session, self.replay_limit).await?;
        let placed = match &caller_body {
            Body::Full(b) => Some(b),
            Body::Streaming(_) => None,
        };
        let placed =
            match crate::placement::place_body(provider, &mut header, placed, self.replay_limit) {
                Ok(placed) => placed.map(Body::Full),
                Err(problem) => {
                    if let Some(p) = permit.take() {
                        self.state.record(p, Outcome::Neutral).await;
                    }
                    return Err(problem);
                }
            };
        let body = placed.as_ref().unwrap_or(&caller_body);
        body.frame(&mut header)
            .map_err(|_| Problem::bad_request("the request cannot be forwarded"))?;
        let method = header.method.as_str().to_owned();
        let peer = Upstream::new(provider, call.addr);
        let signing = sign::signs(provider);
        let mut last: Option<(AttemptEnd, String)> = None;
        // An OAuth2 provider's 401 gets one new token and one more attempt.
        let mut reauthorized = false;
        // Why the attempts ended, and the circuit's Retry-After when it closed the door mid-call.
        let (stop, circuit): (&'static str, Option<Duration>) = loop {
            let permit_now = match self
                .next_attempt(&mut permit, provider, &policy, &plan, report)
                .await
            {
                Ok(p) => p,
                Err(stopped) => break stopped,
            };
            // A signed request is signed again for every attempt (a fresh timestamp).
            let signed;
            let sent_header = if signing {
                let mut h = header.clone();
                if let Err(p) = sign::sign(provider, &mut h, body.whole()) {
                    self.state.record(permit_now, Outcome::Neutral).await;
                    return Err(p);
                }
                signed = h;
                &signed
            } else {
                &header
            };
            let attempt_started = Instant::now();
            let first_byte = plan.attempt_timeout(attempt_started);
            let attempt = attempt(
                self.dial.as_ref(),
                session,
                &peer,
                sent_header,
                body,
                first_byte,
            )
            .await;
            if let Some(problem) = attempt.caller_failed {
                // The provider is not at fault: the permit ends neutral, nothing goes to the DLQ
                // (there is no whole request to replay).
                self.state.record(permit_now, Outcome::Neutral).await;
                return Err(problem);
            }
            let outcome = attempt.end.outcome();
            self.state.record(permit_now, outcome).await;
            count_attempt(provider, attempt_started, attempt.end);
            if attempt.end == AttemptEnd::Status(401)
                && !reauthorized
                && body.replayable()
                && let Some(used) = token.take()
            {
                // The token was refused (revoked, or expired early): a new one, sent once more.
                // The 401's connection is dropped with its unread body.
                reauthorized = true;
                drop(attempt.upstream);
                METRICS
                    .token_rejections
                    .with_label_values(&[&provider.name])
                    .inc();
                if let Some(tokens) = &self.tokens {
                    tokens.invalidate(provider, &used).await;
                }
                token = self
                    .authorize(provider, plan.deadline(), &mut header)
                    .await?;
                continue;
            }
            let allowed = may_retry(
                attempt.end,
                &method,
                report.idempotency_key.is_some(),
                attempt.bytes_sent,
            );
            let retry = allowed && body.replayable();
            if !retry
                && outcome != Outcome::Failure
                && let Some(up) = attempt.upstream
            {
                // A final answer from a working provider (incl. a 4xx): the caller gets it as is.
                let (status, cut) = relay(
                    self.dial.as_ref(),
                    session,
                    up,
                    &peer,
                    call.request_id,
                    plan.deadline(),
                    scrubber_of(provider, token.as_deref()),
                )
                .await;
                report.cut = cut;
                return Ok(status);
            }
            let retry_after = attempt.upstream.as_ref().and_then(retry_after_of);
            let excerpt = match attempt.upstream {
                Some(mut up) => excerpt_of(&mut up, scrubber_of(provider, token.as_deref())).await,
                None => String::new(),
            };
            last = Some((attempt.end, excerpt));
            if !retry {
                // A streamed body left once: it cannot be sent again, say so.
                break (
                    if allowed {
                        "body_streamed"
                    } else {
                        "not_retryable"
                    },
                    None,
                );
            }
            match plan.next_wait(
                report.attempts,
                Instant::now(),
                retry_after,
                self.jitter.as_ref(),
            ) {
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(stop) => break (stop.kind(), None),
            }
        };
        let (end, excerpt) = last.unwrap_or((AttemptEnd::Timeout, String::new()));
        Err(self
            .give_up(
                session,
                call,
                report,
                &caller_body,
                (end, excerpt),
                (stop, circuit),
            )
            .await)
    }

    /// The answer to a call no attempt served: the problem (circuit open, or exhausted with the
    /// last attempt's end) with its DLQ entry's id. A body not kept whole is recorded without
    /// it (`body_truncated`), as a streamed upload is.
    async fn give_up(
        &self,
        session: &Session,
        call: &Call<'_>,
        report: &CallReport,
        body: &Body,
        (end, excerpt): (AttemptEnd, String),
        (stop, circuit): (&'static str, Option<Duration>),
    ) -> Problem {
        let provider = call.provider;
        let mut problem = match circuit {
            Some(retry_after) => verdict::circuit_open(&provider.name, retry_after),
            None => verdict::exhausted(&provider.name, end, report.attempts, stop),
        };
        let failure = CallFailure {
            idempotency_key: report.idempotency_key.clone(),
            attempts: report.attempts,
            end,
            stop,
            excerpt,
        };
        let id = dlq::hand_off(
            self.exhausted.as_deref(),
            session.req_header(),
            provider,
            call.path_and_query,
            call.request_id,
            body,
            failure,
        )
        .await;
        match id {
            dlq::Recorded::Durable(id) => problem.dlq_id = Some(id),
            dlq::Recorded::Refused => problem = verdict::unrecorded(problem),
            dlq::Recorded::Nowhere => {}
        }
        problem
    }

    /// Injects the OAuth2 access token of `provider` into `header` (a no-op for other schemes),
    /// waiting for a refresh at most until `deadline`.
    pub(crate) async fn authorize(
        &self,
        provider: &Provider,
        deadline: Instant,
        header: &mut pingora::http::RequestHeader,
    ) -> Result<Option<Arc<crate::oauth::Token>>, Problem> {
        if !provider
            .auth
            .as_ref()
            .is_some_and(|a| a.auth_type().is_oauth())
        {
            return Ok(None);
        }
        let Some(tokens) = &self.tokens else {
            return Err(Problem::new(
                problem::CREDENTIALS_UNAVAILABLE,
                format!(
                    "provider {} uses OAuth2, which this proxy was started without",
                    provider.name
                ),
            ));
        };
        let token = tokens.token(provider, deadline).await?;
        if let Some(t) = &token {
            crate::inject::inject_bearer(header, &t.value)
                .map_err(|_| Problem::bad_request("the access token is not a header value"))?;
        }
        Ok(token)
    }

    /// The permit for the next attempt (the first admission's, else a new one), counted.
    async fn next_attempt(
        &self,
        first: &mut Option<Permit>,
        provider: &Provider,
        policy: &Policy,
        plan: &RetryPlan,
        report: &mut CallReport,
    ) -> Result<Permit, (&'static str, Option<Duration>)> {
        let permit = match first.take() {
            Some(p) => p,
            None => self.readmit(provider, policy, plan).await?,
        };
        report.attempts += 1;
        if report.attempts > 1 {
            METRICS.retries.with_label_values(&[&provider.name]).inc();
        }
        Ok(permit)
    }

    /// The admission of a retry: a rate limit or quota that frees up within the budget is waited
    /// for; otherwise why the attempts stop, and the circuit's `Retry-After` when it closed the
    /// door mid-call.
    async fn readmit(
        &self,
        provider: &Provider,
        policy: &Policy,
        plan: &RetryPlan,
    ) -> Result<Permit, (&'static str, Option<Duration>)> {
        loop {
            match self.admission(provider, policy).await {
                Admission::Admitted(p) => return Ok(p),
                Admission::RateLimited { retry_after }
                | Admission::QuotaExhausted { retry_after } => {
                    if retry_after + plan.attempt_timeout(Instant::now())
                        > plan.remaining(Instant::now())
                    {
                        return Err((Stop::BudgetExhausted.kind(), None));
                    }
                    tokio::time::sleep(retry_after).await;
                }
                Admission::CircuitOpen { retry_after } => {
                    return Err(("circuit_open", Some(retry_after)));
                }
            }
        }
    }

    /// Asks the shared state for an attempt, counting a refusal.
    async fn admission(&self, provider: &Provider, policy: &Policy) -> Admission {
        let a = self.state.admit(provider.id, policy).await;
        verdict::count_rejection(provider, &a);
        a
    }

    /// The first admission: a refusal is the caller's answer.
    /// Charges one call to `grant`'s own limits (kept in the shared state under the grant's
    /// id, like a provider's): `429` when they are used up, before the provider's are touched.
    pub async fn admit_grant(
        &self,
        provider: &Provider,
        caller: &str,
        grant: &crate::registry::Grant,
    ) -> Result<(), Problem> {
        let Some(policy) = &grant.policy else {
            return Ok(());
        };
        match self.state.admit(grant.record.id, policy).await {
            Admission::Admitted(permit) => {
                self.state
                    .record(permit, hub_core::state::Outcome::Success)
                    .await;
                Ok(())
            }
            Admission::RateLimited { retry_after } => Err(verdict::grant_limited(
                caller,
                &provider.name,
                retry_after,
                false,
            )),
            Admission::QuotaExhausted { retry_after } => Err(verdict::grant_limited(
                caller,
                &provider.name,
                retry_after,
                true,
            )),
            // A grant has no breaker of its own (its threshold is never reached).
            Admission::CircuitOpen { .. } => Ok(()),
        }
    }

    async fn admit(&self, provider: &Provider, policy: &Policy) -> Result<Permit, Problem> {
        verdict::permit_or_problem(&provider.name, self.admission(provider, policy).await)
    }
}

/// What masks an answer to a call that carried `token`: the provider's scrubber, with the
/// access token added for OAuth2 providers.
fn scrubber_of<'a>(
    provider: &'a Provider,
    token: Option<&'a crate::oauth::Token>,
) -> Option<&'a hub_core::scrub::Scrubber> {
    match token {
        Some(t) => t.scrubber.as_deref(),
        None => provider.scrubber.as_deref(),
    }
}

/// Counts an attempt that ended `end` after starting at `started`.
fn count_attempt(provider: &Provider, started: Instant, end: AttemptEnd) {
    METRICS
        .upstream_duration
        .with_label_values(&[&provider.name])
        .observe(started.elapsed().as_secs_f64());
    METRICS
        .attempts
        .with_label_values(&[&provider.name, verdict::outcome_label(end)])
        .inc();
}

/// The retry plan of a call: the provider's budget, lowered by what the caller asked for
/// (`X-Hub-Timeout-Ms`, and a gRPC call's `grpc-timeout`), whichever is smallest.
fn plan_for(provider: &Provider, req: &pingora::http::RequestHeader) -> RetryPlan {
    let plan = RetryPlan::new(&provider.config, Instant::now());
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let asked = [
        header(TIMEOUT_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis),
        header(hub_core::wire::GRPC_TIMEOUT)
            .filter(|_| crate::problem::is_grpc(req))
            .and_then(grpc::parse_grpc_timeout),
    ];
    match asked.into_iter().flatten().min() {
        Some(budget) => plan.limit_total(budget.max(Duration::from_millis(1))),
        None => plan,
    }
}
