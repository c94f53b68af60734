//! What hub instances share about OAuth2 access tokens: the current token (sealed), the lease
//! that makes one instance the only one asking the token endpoint, and each provider's token
//! status for the admin API.
//!
//! [`LocalShare`] is one process (single-flight is the token manager's own lock; the status is
//! kept in memory, where an admin in the same process reads it). [`RedisShare`] spans instances:
//!
//! - `{prefix}oauth:{provider}:{version}:token` — `"<generation>:<key id>:<base64 sealed>"`,
//!   expiring with the token. Sealed with the vault under AAD naming provider and version.
//! - `{prefix}oauth:{provider}:{version}:lease` — `SET NX PX` by the instance refreshing; others
//!   poll the token key until a fresh one appears or the lease lapses.
//! - `{prefix}oauth:{provider}:{version}:refresh` — the newest refresh token (sealed), for
//!   providers that rotate them (the store keeps it durably).
//! - `{prefix}oauth:{provider}:status` — [`TokenStatus`] as JSON (no secret), kept 7 days.
//!
//! Every Redis command is bounded by [`COMMAND_TIMEOUT`]; an unreachable Redis degrades to
//! per-instance refreshes (each instance then asks the endpoint itself), never to a failed call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::provider::ProviderId;

/// Bound on each Redis command the token path waits for.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// A provider's token state as the admin API shows it (never the token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// When the current access token expires (RFC 3339), if there is one.
    pub expires_at: Option<String>,
    /// When the hub last asked the token endpoint (RFC 3339).
    pub last_refresh_at: Option<String>,
    /// `ok`, or why the last token request failed (`refused`, `invalid_grant`, `invalid_client`,
    /// `unreachable`, `timeout` (the call's budget ran out first), `circuit_open`, `malformed`,
    /// `key`, `store_unavailable`).
    pub last_outcome: Option<String>,
    /// Token requests made by the instance that wrote this status.
    pub token_requests: u64,
}

/// Where instances meet (see the module docs).
#[async_trait]
pub trait TokenShare: Send + Sync {
    /// The shared blob under `key`, if any.
    async fn get(&self, key: &str) -> Option<String>;
    /// Stores `blob` under `key` for `ttl`.
    async fn put(&self, key: &str, blob: &str, ttl: Duration);
    /// Deletes `key` if its blob starts with `prefix` (compare-and-delete).
    async fn delete_if(&self, key: &str, prefix: &str);
    /// Takes the refresh lease `key` for `ttl`: `true` when this caller holds it (or nothing is
    /// shared).
    async fn lease(&self, key: &str, nonce: &str, ttl: Duration) -> bool;
    /// Gives the lease back if this caller still holds it.
    async fn release(&self, key: &str, nonce: &str);
    /// Records a provider's token status.
    async fn put_status(&self, provider: ProviderId, status: &TokenStatus);
    /// A provider's token status, if known.
    async fn status(&self, provider: ProviderId) -> Option<TokenStatus>;
    /// Whether tokens are shared between instances (else `get` is always empty).
    fn shared(&self) -> bool;
}

/// One process: nothing shared, statuses in memory.
#[derive(Debug, Default)]
pub struct LocalShare {
    statuses: Mutex<HashMap<ProviderId, TokenStatus>>,
}

#[async_trait]
impl TokenShare for LocalShare {
    async fn get(&self, _key: &str) -> Option<String> {
        None
    }
    async fn put(&self, _key: &str, _blob: &str, _ttl: Duration) {}
    async fn delete_if(&self, _key: &str, _prefix: &str) {}
    async fn lease(&self, _key: &str, _nonce: &str, _ttl: Duration) -> bool {
        true
    }
    async fn release(&self, _key: &str, _nonce: &str) {}
    async fn put_status(&self, provider: ProviderId, status: &TokenStatus) {
        self.statuses
            .lock()
            .expect("status lock")
            .insert(provider, status.clone());
    }
    async fn status(&self, provider: ProviderId) -> Option<TokenStatus> {
        self.statuses
            .lock()
            .expect("status lock")
            .get(&provider)
            .cloned()
    }
    fn shared(&self) -> bool {
        false
    }
}

/// Instances sharing one Redis (see the module docs).
pub struct RedisShare {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    prefix: String,
}

impl std::fmt::Debug for RedisShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShare")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `DEL KEYS[1]` if its value starts with `ARGV[1]`.
const DELETE_IF: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

impl RedisShare {
    /// A share on `url` under `prefix` (the state's key prefix, `hub:` by default). Connects
    /// on first use.
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::OnceCell::new(),
            prefix: prefix.to_owned(),
        })
    }

    /// The key `name` under this share's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Option<T> {
        let work = async {
            let conn = self
                .conn
                .get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone()))
                .await?;
            let mut conn = conn.clone();
            cmd.query_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = ?e.kind(), "redis token share call failed");
                None
            }
            Err(_) => {
                tracing::debug!("redis token share call timed out");
                None
            }
        }
    }

    fn status_key(&self, provider: ProviderId) -> String {
        self.key(&format!("oauth:{provider}:status"))
    }
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl TokenShare for RedisShare {
    async fn get(&self, key: &str) -> Option<String> {
        self.run::<Option<String>>(redis::cmd("GET").arg(self.key(key)))
            .await
            .flatten()
    }
    async fn put(&self, key: &str, blob: &str, ttl: Duration) {
        let _: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(blob)
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await;
    }
    async fn delete_if(&self, key: &str, prefix: &str) {
        let _: Option<i64> = self
            .run(
                redis::cmd("EVAL")
                    .arg(DELETE_IF)
                    .arg(1)
                    .arg(self.key(key))
                    .arg(prefix),
            )
            .await;
    }
    async fn lease(&self, key: &str, nonce: &str, ttl: Duration) -> bool {
        match self
            .run::<Option<String>>(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(nonce)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await
        {
            Some(reply) => reply.is_some(),
            // Redis unreachable: each instance refreshes for itself.
            None => true,
        }
    }
    async fn release(&self, key: &str, nonce: &str) {
        self.delete_if(key, nonce).await;
    }
    async fn put_status(&self, provider: ProviderId, status: &TokenStatus) {
        let Ok(json) = serde_json::to_string(status) else {
            return;
        };
        let _: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(self.status_key(provider))
                    .arg(json)
                    .arg("EX")
                    .arg(7 * 86_400),
            )
            .await;
    }
    async fn status(&self, provider: ProviderId) -> Option<TokenStatus> {
        let raw: String = self
            .run::<Option<String>>(redis::cmd("GET").arg(self.status_key(provider)))
            .await
            .flatten()?;
        serde_json::from_str(&raw).ok()
    }
    fn shared(&self) -> bool {
        true
    }
}
