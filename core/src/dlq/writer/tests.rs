//! The writer's durable hand-off: acknowledged only once the call is in the fsync'd spool, so
//! a 502 sent after the acknowledgement names an entry that survives SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ulid::Ulid;

use super::{WriterOptions, spawn};
use crate::dlq::FailedCall;
use crate::dlq::spool::Spool;
use crate::dlq::store::EntryStore;
use crate::jobs::db::Db;
use crate::secret::SecretString;
use crate::state::Clock;
use crate::testing;
use crate::vault::Vault;

const KEYS: &str = "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn call() -> FailedCall {
    FailedCall {
        id: Ulid::new(),
        provider_id: Ulid::new(),
        provider: "p".into(),
        method: "POST".into(),
        path: "/v1/x".into(),
        headers: vec![("authorization".into(), "Bearer nope".into())],
        body: Some(Bytes::from_static(b"{\"n\":1}")),
        body_truncated: false,
        idempotency_key: Some("k".into()),
        request_id: "r".into(),
        attempts: 3,
        last_status: Some(503),
        last_error: "status",
        stop: "attempts_exhausted",
        excerpt: String::new(),
        failed_at: chrono::Utc::now(),
    }
}

fn options(dir: &std::path::Path) -> WriterOptions {
    WriterOptions {
        spool_path: dir.join("dlq.spool"),
        capacity: 16,
        max_body_bytes: 1024,
        retention_ms: 86_400_000,
        flush_interval: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn an_acknowledged_handoff_is_on_disk_and_reaches_the_database_once() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::from_spec(&SecretString::new(KEYS)).unwrap());
    // A database without the DLQ tables: every insert fails, as when the server is down.
    let broken = Db::connect(&testing::fresh_sqlite_url(dir.path()))
        .await
        .unwrap();
    let (sender, task) =
        spawn(broken, vault.clone(), Clock::system(), options(dir.path())).unwrap();
    let c = call();
    sender
        .send_durable(c.clone(), Duration::from_secs(5))
        .await
        .expect("acknowledged once durable");
    let copy = dir.path().join("copy.spool");
    std::fs::copy(dir.path().join("dlq.spool"), &copy).unwrap();
    let (_, on_disk) = Spool::open(&copy).unwrap();
    assert_eq!(on_disk.iter().map(|e| e.id).collect::<Vec<_>>(), vec![c.id]);
    assert!(
        on_disk[0].headers.iter().all(|(k, _)| k != "authorization"),
        "no credential in the spool"
    );
    // SIGKILL, then a restart against a working database: the spool is flushed first.
    task.abort();
    let _ = task.await;
    let url = testing::fresh_sqlite_url(dir.path());
    crate::store::connect(&url)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let db = Db::connect(&url).await.unwrap();
    let (sender, task) = spawn(db.clone(), vault, Clock::system(), options(dir.path())).unwrap();
    let store = EntryStore::new(db);
    for _ in 0..200 {
        if store.get(c.id).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let row = store.get(c.id).await.unwrap().expect("flushed on start");
    assert_eq!(row.request_id, "r");
    drop(sender);
    task.await.unwrap();
    let (_, left) = Spool::open(&dir.path().join("dlq.spool")).unwrap();
    assert!(left.is_empty(), "the spool is emptied once flushed");
}
