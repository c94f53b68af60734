//! End-to-end tests of the admin API: a real admin server on port 0 in front of a real proxy,
//! on SQLite and on PostgreSQL. Every endpoint's happy path and errors, roles, audit entries,
//! write-only credentials (every answer is searched for every secret), propagation to the
//! running proxy, `POST /call` through the proxy to a fake provider, bad input that must
//! never yield a 5xx, the DLQ and jobs endpoints over the real DLQ writer, queue and worker,
//! `/metrics`, and tokens scoped to one tenant.

#[path = "admin/access.rs"]
mod access;
#[path = "admin/calls.rs"]
mod calls;
#[path = "admin/dlq.rs"]
mod dlq;
#[path = "admin/input.rs"]
mod input;
#[path = "admin/jobs_metrics.rs"]
mod jobs_metrics;
#[path = "admin/providers.rs"]
mod providers;
#[path = "admin/scope.rs"]
mod scope;
#[path = "admin/support.rs"]
mod support;
/// The DLQ and jobs suites' hub (proxy, DLQ writer, work queue, worker).
#[path = "support/mod.rs"]
mod work;
