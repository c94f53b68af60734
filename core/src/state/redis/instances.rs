//! The instance registry: how many hub instances share the limits, so that each admits only its
//! share while Redis is unavailable.
//!
//! A sorted set `{prefix}instances` holds one member per live instance, scored by Redis's own
//! clock (`TIME`, no skew between instances). A background task, never the request path, runs
//! `HEARTBEAT` every `heartbeat_interval` (1 s by default): it adds this instance once the
//! instance has admitted a request (an admin that only reads snapshots is not counted), drops
//! members not refreshed for [`TTL_BEATS`] intervals, and reads the count. The count is kept
//! in memory, so while Redis is away the last one read stands; before any has been read,
//! `fallback_instances` (default 1) is assumed. On drop the instance removes itself (best
//! effort: a crashed instance ages out after the TTL instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

use super::RedisOptions;
use super::link::Link;

/// A member not refreshed for this many heartbeat intervals is no longer counted (5 s with the
/// default interval: a heartbeat may be late by several intervals on a busy host before its
/// instance stops being counted, which would enlarge the others' shares).
pub(super) const TTL_BEATS: u32 = 5;

/// `HEARTBEAT(instances; member|'', ttl_ms)` → live count: adds or refreshes `member` (unless
/// empty), drops members older than `ttl_ms`, returns how many remain.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], now_ms, ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - ttl)
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return redis.call('ZCARD', KEYS[1])
";

/// This instance's entry in the registry and the count it last read.
pub(super) struct Instances {
    key: String,
    id: String,
    interval: Duration,
    fallback_instances: u32,
    script: Script,
    /// Set by the first admission: from then on the heartbeat registers this instance.
    active: AtomicBool,
    /// Set on drop: the heartbeat stops and registers no more.
    gone: AtomicBool,
    wake: Notify,
    /// Live instances as last read; 0 = none read yet.
    count: AtomicU32,
}

impl Instances {
    pub fn new(opts: &RedisOptions) -> Self {
        Self {
            key: format!("{}instances", opts.prefix),
            id: format!("{:016x}", rand::random::<u64>()),
            interval: opts.heartbeat_interval.max(Duration::from_millis(10)),
            fallback_instances: opts.fallback_instances.max(1),
            script: Script::new(HEARTBEAT),
            active: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            wake: Notify::new(),
            count: AtomicU32::new(0),
        }
    }

    /// Marks this instance as admitting requests; the first call wakes the heartbeat so it
    /// registers at once. One relaxed load afterwards.
    pub fn activate(&self) {
        if !self.active.load(Ordering::Relaxed) && !self.active.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Live instances as last read (0 before the first read).
    pub fn live(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// The count the fallback divides shared limits by: the last one read, else the
    /// `fallback_instances` hint.
    pub fn sharing(&self) -> u32 {
        match self.live() {
            0 => self.fallback_instances,
            n => n,
        }
    }

    fn ttl(&self) -> Duration {
        self.interval * TTL_BEATS
    }

    /// One heartbeat, bounded by the interval (a slower one is pointless); the count is kept
    /// only from an answer.
    async fn beat(&self, mut conn: ConnectionManager) {
        let member = if self.active.load(Ordering::Relaxed) && !self.gone.load(Ordering::Relaxed) {
            self.id.as_str()
        } else {
            ""
        };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(member)
            .arg(u64::try_from(self.ttl().as_millis()).unwrap_or(u64::MAX));
        let answer = tokio::time::timeout(self.interval, invocation.invoke_async::<u32>(&mut conn));
        match answer.await {
            Ok(Ok(n)) => self.count.store(n, Ordering::Relaxed),
            Ok(Err(e)) => tracing::debug!(error = %e, "shared state: heartbeat failed"),
            Err(_) => tracing::debug!("shared state: heartbeat timed out"),
        }
    }

    /// Stops the heartbeat and removes this instance from the registry (best effort, bounded,
    /// in the background when a runtime is there).
    pub fn leave(self: &Arc<Self>, link: &Link) {
        self.gone.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let (Some(mut conn), Ok(rt)) = (link.connection(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let me = Arc::clone(self);
        rt.spawn(async move {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&me.key).arg(&me.id);
            let _ = tokio::time::timeout(Duration::from_secs(1), zrem.query_async::<()>(&mut conn))
                .await;
        });
    }
}

/// The heartbeat: one beat at once, then one per interval or on activation, until the state is
/// dropped ([`Instances::leave`]).
pub(super) async fn heartbeat(me: Arc<Instances>, link: Arc<Link>) {
    loop {
        if me.gone.load(Ordering::Relaxed) {
            return;
        }
        if let Some(conn) = link.connection() {
            me.beat(conn).await;
        }
        tokio::select! {
            () = tokio::time::sleep(me.interval) => {}
            () = me.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::Instances;
    use crate::state::RedisOptions;

    #[test]
    fn the_share_divides_by_the_last_count_else_by_the_hint() {
        let opts = RedisOptions {
            fallback_instances: 3,
            ..RedisOptions::default()
        };
        let i = Instances::new(&opts);
        assert_eq!(
            (i.live(), i.sharing()),
            (0, 3),
            "nothing read yet: the hint"
        );
        i.count.store(2, Ordering::Relaxed);
        assert_eq!((i.live(), i.sharing()), (2, 2));
        let default = Instances::new(&RedisOptions::default());
        assert_eq!(default.sharing(), 1);
        assert_eq!(default.ttl(), std::time::Duration::from_secs(5));
    }
}
