//! One suite for every work queue: the table on SQLite and PostgreSQL, and RabbitMQ. Plus
//! concurrent claimers on PostgreSQL never taking the same task (`SKIP LOCKED`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ulid::Ulid;

use super::{AmqpOptions, AmqpQueue, SqlQueue, Task, TaskKind, WorkQueue};
use crate::db::Db;
use crate::state::Clock;
use crate::testing;

const LEASE: Duration = Duration::from_millis(300);

async fn migrated(url: &str) -> Db {
    crate::store::connect(url)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    Db::connect(url).await.unwrap()
}

fn tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|_| Task::new(TaskKind::Job, Ulid::new()))
        .collect()
}

/// Push, claim, ack, delay, and the return of a task its worker never settled (`reclaim`
/// simulates the worker's death and returns the queue a second worker uses).
async fn suite<F, Fut>(q: Arc<dyn WorkQueue>, reclaim: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn WorkQueue>>,
{
    let t = tasks(3);
    q.push(&t, Duration::ZERO).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(q.claim(10, Duration::from_secs(2)).await.unwrap());
        if got.len() == 3 {
            break;
        }
    }
    let ids: HashSet<Ulid> = got.iter().map(|c| c.task.id).collect();
    assert_eq!(
        ids,
        t.iter().map(|t| t.id).collect(),
        "every pushed task, once"
    );
    assert!(got.iter().all(|c| c.deliveries == 1));
    let mut got = got.into_iter();
    let (a, b, c) = (
        got.next().unwrap(),
        got.next().unwrap(),
        got.next().unwrap(),
    );
    q.ack(a).await.unwrap();
    let delayed = b.task;
    q.retry_later(b, Duration::from_millis(200)).await.unwrap();
    let started = tokio::time::Instant::now();
    let back = q.claim(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        back.iter().map(|c| c.task).collect::<Vec<_>>(),
        vec![delayed]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "not before its delay"
    );
    for c in back {
        q.ack(c).await.unwrap();
    }
    // `c` is never settled: its worker dies.
    let unsettled = c.task;
    std::mem::forget(c);
    let q2 = reclaim().await;
    let again = q2.claim(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        again.iter().map(|c| c.task).collect::<Vec<_>>(),
        vec![unsettled]
    );
    assert!(again[0].deliveries >= 2, "handed out again");
    for c in again {
        q2.ack(c).await.unwrap();
    }
    assert!(
        q2.claim(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn table_queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = migrated(&testing::fresh_sqlite_url(dir.path())).await;
    let q: Arc<dyn WorkQueue> = Arc::new(SqlQueue::new(db.clone(), LEASE, Clock::system()));
    // A dead worker's claim comes back after the lease.
    suite(q, || async move {
        Arc::new(SqlQueue::new(db, LEASE, Clock::system())) as Arc<dyn WorkQueue>
    })
    .await;
}

#[tokio::test]
async fn table_queue_on_postgres() {
    let Some(pg) = testing::fresh_postgres().await else {
        return;
    };
    let db = migrated(pg.url()).await;
    let q: Arc<dyn WorkQueue> = Arc::new(SqlQueue::new(db.clone(), LEASE, Clock::system()));
    suite(q, || async move {
        Arc::new(SqlQueue::new(db, LEASE, Clock::system())) as Arc<dyn WorkQueue>
    })
    .await;
}

#[tokio::test]
async fn rabbitmq_queue() {
    let Some(url) = testing::amqp_url().await else {
        return;
    };
    let opts = AmqpOptions {
        url,
        queue: format!("hub.test.{}", Ulid::new()),
        prefetch: 10,
        expires: Some(Duration::from_secs(60)),
    };
    let first = Arc::new(AmqpQueue::connect(opts.clone()).await.unwrap());
    let q: Arc<dyn WorkQueue> = first.clone();
    // A dead worker's unacked message is redelivered when its connection drops.
    suite(q, || async move {
        first.close().await;
        Arc::new(AmqpQueue::connect(opts).await.unwrap()) as Arc<dyn WorkQueue>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_on_postgres_never_share_a_task() {
    let Some(pg) = testing::fresh_postgres().await else {
        return;
    };
    let db = migrated(pg.url()).await;
    let pushed = tasks(200);
    let lease = Duration::from_secs(60);
    SqlQueue::new(db.clone(), lease, Clock::system())
        .push(&pushed, Duration::ZERO)
        .await
        .unwrap();
    let claimer = |db: Db| async move {
        let q = SqlQueue::new(db, lease, Clock::system());
        let mut mine = Vec::new();
        loop {
            let got = q.claim(7, Duration::ZERO).await.unwrap();
            if got.is_empty() {
                return mine;
            }
            for c in got {
                mine.push(c.task.id);
                q.ack(c).await.unwrap();
            }
        }
    };
    let mut workers = Vec::new();
    for _ in 0..4 {
        let db = Db::connect(pg.url()).await.unwrap();
        workers.push(tokio::spawn(claimer(db)));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let unique: HashSet<Ulid> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "no task handed to two claimers");
    assert_eq!(unique, pushed.iter().map(|t| t.id).collect());
}
