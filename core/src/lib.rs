//! Integration Hub domain crate: everything both deployables (proxy, admin) share and that
//! depends on neither Pingora nor axum.
//!
//! - [`provider`]: the provider model, its per-provider policy and auth scheme, validation.
//! - [`secret`]: a string type that never prints.
//! - [`oauth`]: OAuth2 grants the hub runs (client credentials, refresh token, JWT bearer).
//! - [`signing`]: request signatures for providers (AWS SigV4, HMAC partner schemes).
//! - [`scrub`]: masking provider credentials in what providers send back.
//! - [`config`]: the typed `hub.yaml` tree with `HUB_*` overrides.
//! - [`db`]: one database handle over SQLite or PostgreSQL (SQL written once), transactions.
//! - [`store`]: the registry's persistence interface and its one SQL implementation.
//! - [`vault`]: AES-256-GCM credential encryption with a key ring.
//! - [`state`]: shared resilience state (breaker, rate limit), in-process or Redis.
//! - [`ca`]: the hub's certificate authority (generated on first start, loaded after).
//! - [`caller`]: tenants, callers (modules) and grants: who may call which provider, how.
//! - [`access`]: admin API roles, API tokens (hashed) and audit entries.
//! - [`dlq`]: the dead-letter queue (writer, spool, replay, retention).
//! - [`jobs`]: asynchronous calls, the work queue (database or RabbitMQ) and its worker.
//! - [`wire`]: the hub's own header names, stripped-header lists and problem codes.

pub mod access;
pub mod ca;
pub mod caller;
pub mod catalog;
pub mod config;
pub mod db;
pub mod dlq;
pub mod jobs;
pub mod oauth;
pub mod otlp;
pub mod provider;
pub mod satoken;
pub mod scrub;
pub mod secret;
pub mod signing;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod vault;
pub mod wire;
