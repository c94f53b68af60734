//! The writer's durable hand-off: acknowledged only once the call is in the fsync'd spool, so
//! a 502 sent after the acknowledgement names an entry that survives SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::Connection;
use ulid::Ulid;

use super::{WriterOptions, spawn};
use crate::db::Db;
use crate::dlq::FailedCall;
use crate::dlq::spool::read_dir_records;
use crate::dlq::store::EntryStore;
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
        tenant: Some("default".into()),
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
        spool_dir: dir.join("dlq-spool"),
        legacy_spool: None,
        handover: None,
        spool_max_bytes: 1024 * 1024,
        capacity: 16,
        max_body_bytes: 1024,
        retention_ms: 86_400_000,
        flush_interval: Duration::from_millis(50),
    }
}

/// A SQLite database in `dir` with the hub's tables, and its URL.
async fn migrated(dir: &std::path::Path) -> (Db, String) {
    let url = testing::fresh_sqlite_url(dir);
    crate::store::connect(&url)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    (Db::connect(&url).await.unwrap(), url)
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
    let on_disk = read_dir_records(&dir.path().join("dlq-spool")).unwrap();
    assert_eq!(on_disk.iter().map(|e| e.id).collect::<Vec<_>>(), vec![c.id]);
    assert!(
        on_disk[0].headers.iter().all(|(k, _)| k != "authorization"),
        "no credential in the spool"
    );
    // SIGKILL, then a restart against a working database: the spool is flushed first.
    task.abort();
    let _ = task.await;
    let (db, _) = migrated(dir.path()).await;
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
    let left = read_dir_records(&dir.path().join("dlq-spool")).unwrap();
    assert!(left.is_empty(), "the spool is emptied once drained");
}

/// The hand-off never waits on the database: with every insert hanging (a database that
/// accepts connections and never answers), acknowledgements still come after one fsync.
#[tokio::test]
async fn acknowledgements_do_not_wait_for_a_stalled_database() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::from_spec(&SecretString::new(KEYS)).unwrap());
    let (db, url) = migrated(dir.path()).await;
    // Another connection holds SQLite's write lock: every insert waits (busy timeout) until
    // the drainer's own bound, as on a stuck database.
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let (sender, task) = spawn(db.clone(), vault, Clock::system(), options(dir.path())).unwrap();
    let mut ids = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let c = call();
        ids.push(c.id);
        let t = std::time::Instant::now();
        sender
            .send_durable(c, Duration::from_millis(250))
            .await
            .expect("durable while the database is stuck");
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(250),
        "an acknowledgement took {slowest:?}"
    );
    assert_eq!(sender.spool_stats().entries(), 20);
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    let store = EntryStore::new(db);
    for _ in 0..600 {
        if store.get(ids[19]).await.unwrap().is_some() && sender.spool_stats().entries() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in &ids {
        assert!(store.get(*id).await.unwrap().is_some(), "{id} drained");
    }
    assert_eq!(
        sender.spool_stats().entries(),
        0,
        "the spool is empty once drained"
    );
    drop(sender);
    task.await.unwrap();
}

/// A full spool refuses the hand-off: the caller learns its call was not recorded.
#[tokio::test]
async fn a_full_spool_refuses_the_handoff() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::from_spec(&SecretString::new(KEYS)).unwrap());
    let broken = Db::connect(&testing::fresh_sqlite_url(dir.path()))
        .await
        .unwrap();
    let mut opts = options(dir.path());
    opts.spool_max_bytes = 4096;
    let (sender, _task) = spawn(broken, vault, Clock::system(), opts).unwrap();
    let mut refused = None;
    for n in 0..100 {
        if let Err(e) = sender.send_durable(call(), Duration::from_secs(5)).await {
            refused = Some((n, e));
            break;
        }
    }
    let (n, e) = refused.expect("the bound is reached");
    assert!(n > 0, "the first entries fit");
    assert_eq!(e, super::HandoffError::SpoolFull);
    assert_eq!(
        read_dir_records(&dir.path().join("dlq-spool"))
            .unwrap()
            .len(),
        n,
        "exactly the acknowledged entries are on disk"
    );
}

/// A writer over a fresh, migrated PostgreSQL database (`None` without PostgreSQL, outside CI).
async fn writer_on_postgres() -> Option<(
    testing::TestDb,
    Db,
    tempfile::TempDir,
    super::DlqSender,
    tokio::task::JoinHandle<()>,
)> {
    let pg = testing::fresh_postgres().await?;
    crate::store::connect(pg.url())
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let db = Db::connect(pg.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::from_spec(&SecretString::new(KEYS)).unwrap());
    let (sender, task) = spawn(db.clone(), vault, Clock::system(), options(dir.path())).unwrap();
    Some((pg, db, dir, sender, task))
}

/// An entry PostgreSQL refuses for what it holds (here a NUL, which `TEXT` cannot store) is set
/// aside; the entries before and after it still land, and the spool drains.
#[tokio::test]
async fn an_entry_the_database_refuses_is_set_aside_not_blocking_the_rest() {
    let Some((_pg, db, dir, sender, task)) = writer_on_postgres().await else {
        return;
    };
    let (a, mut poison, b) = (call(), call(), call());
    poison.method = "PO\0ST".into();
    // One batch: the refusal is found inside it.
    for c in [&a, &poison, &b] {
        sender.try_send(c.clone()).unwrap();
    }
    let store = EntryStore::new(db);
    for _ in 0..500 {
        if store.get(b.id).await.unwrap().is_some() && sender.spool_stats().entries() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.get(a.id).await.unwrap().is_some(),
        "the entry before it landed"
    );
    assert!(
        store.get(b.id).await.unwrap().is_some(),
        "the entry after it landed"
    );
    assert!(store.get(poison.id).await.unwrap().is_none());
    assert_eq!(sender.spool_stats().entries(), 0, "the spool drained");
    assert_eq!(sender.spool_stats().rejected(), 1);
    let aside = crate::dlq::spool::read_rejected(&dir.path().join("dlq-spool")).unwrap();
    assert_eq!(
        aside.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![poison.id]
    );
    drop(sender);
    task.await.unwrap();
}

/// A NUL in a provider's error page (the excerpt) no longer makes an entry unstorable.
#[tokio::test]
async fn an_excerpt_with_a_nul_is_stored_on_postgres() {
    let Some((_pg, db, _dir, sender, task)) = writer_on_postgres().await else {
        return;
    };
    let mut c = call();
    c.excerpt = "gz\0\u{1f}binary".into();
    sender
        .send_durable(c.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let store = EntryStore::new(db);
    let mut row = None;
    for _ in 0..500 {
        row = store.get(c.id).await.unwrap();
        if row.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let row = row.expect("stored");
    assert_eq!(row.excerpt, "gz\u{FFFD}\u{FFFD}binary");
    assert_eq!(sender.spool_stats().rejected(), 0);
    drop(sender);
    task.await.unwrap();
}
