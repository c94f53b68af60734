//! The connection to Redis as the request path sees it: every call bounded by the command
//! timeout, Redis skipped for `retry_interval` after an error, errors counted and logged at most
//! every [`WARN_EVERY`], and the first connection retried in the background until it exists
//! (after that the `ConnectionManager` reconnects by itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::time::Instant;

use super::RedisOptions;
use super::scripts::Scripts;
use crate::state::{BackendStats, StateError};

/// How often a Redis problem is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Link {
    pub opts: RedisOptions,
    pub scripts: Scripts,
    conn: OnceLock<ConnectionManager>,
    started: Instant,
    down_until_ms: AtomicU64,
    last_warn_ms: AtomicU64,
    round_trips: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

impl Link {
    /// Connects, waiting up to `connect_timeout`; on failure keeps trying in the background.
    pub async fn connect(client: Client, opts: RedisOptions) -> Arc<Self> {
        let link = Arc::new(Self {
            opts,
            scripts: Scripts::new(),
            conn: OnceLock::new(),
            started: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        });
        if let Err(e) = link.try_connect(&client).await {
            link.failed(&e);
            tokio::spawn(reconnect(Arc::downgrade(&link), client));
        }
        link
    }

    async fn try_connect(&self, client: &Client) -> Result<(), StateError> {
        let timeout = self.opts.connect_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(1_000);
        let connecting = async {
            let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
            for script in self.scripts.all() {
                script.load_async(&mut conn).await?;
            }
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| StateError::Timeout(timeout))??;
        let _ = self.conn.set(conn);
        tracing::info!(prefix = %self.opts.prefix, "shared state: connected to redis");
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.conn.get().is_some()
    }

    /// A connection, unless none exists yet or Redis failed within `retry_interval`.
    pub fn available(&self) -> Option<ConnectionManager> {
        let conn = self.conn.get()?;
        (self.ms_since_start() >= self.down_until_ms.load(Ordering::Relaxed)).then(|| conn.clone())
    }

    /// Counts an admission decided locally because Redis was unavailable.
    pub fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error, skips Redis for `retry_interval`, logs at most every [`WARN_EVERY`].
    pub fn failed(&self, error: &StateError) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.ms_since_start().max(1);
        let retry = millis(self.opts.retry_interval);
        self.down_until_ms
            .store(now.saturating_add(retry), Ordering::Relaxed);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= millis(WARN_EVERY))
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %error,
                kind = error.kind(),
                errors,
                "shared state: redis unavailable, using local state"
            );
        }
    }

    /// One script call, bounded by `command_timeout`; a failure is counted via [`Link::failed`].
    pub async fn call(
        &self,
        mut conn: ConnectionManager,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Vec<i64>, StateError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let timeout = self.opts.command_timeout;
        let result = match tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(StateError::from),
            Err(_) => Err(StateError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    pub fn stats(&self) -> BackendStats {
        BackendStats {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }

    fn ms_since_start(&self) -> u64 {
        millis(self.started.elapsed())
    }
}

/// Retries the first connection every `retry_interval` until it succeeds or the state is gone.
async fn reconnect(link: Weak<Link>, client: Client) {
    loop {
        let Some(interval) = link.upgrade().map(|l| l.opts.retry_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(link) = link.upgrade() else {
            return;
        };
        match link.try_connect(&client).await {
            Ok(()) => return,
            Err(e) => link.failed(&e),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
