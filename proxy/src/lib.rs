//! The Integration Hub egress proxy, built on Pingora.
//!
//! - [`serve`]: ingress — accept loop, CONNECT tunnels with TLS interception, plain HTTP.
//! - [`pipeline`]: the one `ProxyHttp` implementation and its per-request `RequestCtx`.
//! - [`registry`]: the in-memory provider snapshot and its refresher.
//! - [`escape`]: egress — async DNS and the destination safety check.
//! - [`forward`]: the attempt loop — admission (rate limit + breaker), timeouts, retries with
//!   backoff inside the call's budget, replay, hand-off of exhausted calls.
//! - [`inject`], [`hygiene`]: credential injection and header hygiene; [`placement`]:
//!   credentials in the URL path or the request body.
//! - [`problem`]: the hub's own `application/problem+json` answers.
//! - [`upgraded`]: long-lived connections per provider (WebSocket, passthrough tunnels): the
//!   cap and the gauges.

pub mod asynccall;
pub mod callers;
pub mod escape;
pub mod forward;
pub mod hygiene;
pub mod inject;
pub mod metrics;
pub mod oauth;
pub mod pipeline;
pub mod placement;
pub mod problem;
pub mod registry;
pub mod serve;
pub mod trace;
pub mod upgraded;

pub use registry::Registry;
pub use serve::{ProxyOptions, ProxyServer};
