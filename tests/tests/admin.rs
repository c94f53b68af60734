//! End-to-end tests of the admin API: a real admin server on port 0 in front of a real proxy,
//! on SQLite and on PostgreSQL. Every endpoint's happy path and errors, roles, audit entries,
//! write-only credentials (every answer is searched for every secret), propagation to the
//! running proxy, `POST /call` through the proxy to a fake provider, and bad input that must
//! never yield a 5xx.

#[path = "admin/access.rs"]
mod access;
#[path = "admin/calls.rs"]
mod calls;
#[path = "admin/input.rs"]
mod input;
#[path = "admin/providers.rs"]
mod providers;
#[path = "admin/support.rs"]
mod support;
