//! DLQ helpers: a module call that fails through the hub, waiting for its entry, the spool's
//! size, and database outages for the writer (PostgreSQL behind a chaos proxy; SQLite locked
//! or swapped for a broken database).

use std::time::Duration;

use ulid::Ulid;

use super::chaos::{ChaosProxy, SqliteLock, pg_addr, via};
use super::{WorkHub, eventually};

/// How long a test waits for background work.
pub const WAIT: Duration = Duration::from_secs(15);
/// The body of a failing call (its `PLAINTEXT` must never be at rest in clear).
pub const BODY: &str = r#"{"amount":4200,"card":"4242-PLAINTEXT-CARD"}"#;

/// One call through the hub that fails; returns the entry id the 502 names.
pub async fn failing_call(hub: &WorkHub, host: &str, key: &str) -> Ulid {
    let resp = hub
        .client()
        .post(format!("http://{host}/v1/charges?limit=3"))
        .header("authorization", "Bearer dummy-caller-key")
        .header("x-api-key", "dummy-caller-key")
        .header("cookie", "session=dummy-caller-key")
        .header("idempotency-key", key)
        .header("x-request-id", format!("req-{key}"))
        .header("x-hub-caller", "orders")
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "the call fails after its attempts");
    resp.headers()["x-hub-dlq-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub async fn entry_of(hub: &WorkHub, id: Ulid) -> hub_core::dlq::DlqEntry {
    eventually("the DLQ entry", WAIT, || async {
        hub.bg.dlq.get(id).await.ok()
    })
    .await
}

pub fn spool_len(hub: &WorkHub) -> u64 {
    hub_core::dlq::spool::dir_bytes(&hub.config.dlq_spool_dir())
}

/// An outage of the writer's database, and what ends it.
pub enum Outage {
    Pg(ChaosProxy),
    Sqlite(SqliteLock),
    /// The writer points at a database without the DLQ tables; ending it does nothing (the
    /// test restarts the writer on the real one).
    Broken,
}

/// SQLite: `lock` holds the write lock (the same writer flushes afterwards), else the writer
/// is pointed at a broken database (its inserts fail at once, none is left in flight).
pub async fn outage(hub: &WorkHub, lock: bool) -> Outage {
    if hub.url.starts_with("sqlite:") && lock {
        Outage::Sqlite(SqliteLock::take(&hub.url).await)
    } else if hub.url.starts_with("sqlite:") {
        let dir = hub.config.data_dir.join("broken");
        std::fs::create_dir_all(&dir).unwrap();
        let url = hub_core::testing::fresh_sqlite_url(&dir);
        hub.start_writer(hub_core::jobs::Db::connect(&url).await.unwrap())
            .await;
        Outage::Broken
    } else {
        let chaos = ChaosProxy::start(pg_addr(&hub.url).await).await;
        let db = hub_core::jobs::Db::connect(&via(&hub.url, chaos.addr()))
            .await
            .unwrap();
        hub.start_writer(db).await;
        chaos.set_up(false);
        Outage::Pg(chaos)
    }
}

impl Outage {
    /// Ends the outage; returns what must outlive it (the chaos proxy keeps forwarding).
    pub async fn end(self) -> Option<ChaosProxy> {
        match self {
            Self::Pg(chaos) => {
                chaos.set_up(true);
                Some(chaos)
            }
            Self::Sqlite(lock) => {
                lock.release().await;
                None
            }
            Self::Broken => None,
        }
    }
}
