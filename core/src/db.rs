//! One handle over the hub database for the registry store, the DLQ, the jobs and the work
//! queue: the same SQL on SQLite and PostgreSQL (written once with `?` placeholders, numbered for
//! PostgreSQL), with a statement counter so tests can state what an operation costs.
//!
//! The registry store ([`crate::store::SqlStore`]) opens the pool and its writes run in a [`Tx`]
//! ([`Db::begin_write`]); the DLQ and jobs reuse that pool ([`crate::store::SqlStore::db`]) or
//! open their own ([`Db::connect`]).
//!
//! Statements: `exec!`, `fetch!` and `scalars!` on the pool; `tx_exec!`, `tx_fetch!` and
//! `tx_scalar!` inside a transaction. Each counts one statement, and so do a
//! transaction's `BEGIN` and `COMMIT` (each a round trip).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Postgres, Sqlite, Transaction};
use tokio::sync::Notify;

/// How long a DLQ/jobs statement waits for a pooled connection when [`Db::connect`] made the
/// pool (short: the DLQ writer must notice an outage quickly and spool).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pool size of a pool [`Db::connect`] opens.
const MAX_CONNECTIONS: u32 = 4;

/// The two pools.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    statements: AtomicU64,
    /// Wakes in-process queue consumers when work is pushed (SQLite has no `LISTEN`; on
    /// PostgreSQL it saves the round trip for work pushed by this process).
    work_pushed: Notify,
}

/// The hub database as the registry store, the DLQ, jobs and work queue use it. Cheap to clone
/// (clones share the pool, the statement count and the work notifications).
#[derive(Debug, Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    fn new(pool: Pool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                statements: AtomicU64::new(0),
                work_pushed: Notify::new(),
            }),
        }
    }

    /// Over an existing SQLite pool.
    pub fn sqlite(pool: SqlitePool) -> Self {
        Self::new(Pool::Sqlite(pool))
    }

    /// Over an existing PostgreSQL pool.
    pub fn postgres(pool: PgPool) -> Self {
        Self::new(Pool::Postgres(pool))
    }

    /// Opens a pool of its own. PostgreSQL connects lazily, so a hub whose database is down
    /// still starts its DLQ writer (which then spools).
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Self::sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy(url)?;
            Ok(Self::postgres(pool))
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.inner.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Statements run through this handle so far (every clone shares the count).
    pub fn statements(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self) {
        self.inner.statements.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn work_pushed(&self) -> &Notify {
        &self.inner.work_pushed
    }

    /// A new handle on the same pool with a statement count and work notifications of its own
    /// (what [`Db::sqlite`]/[`Db::postgres`] over a clone of the pool give).
    pub fn share_pool(&self) -> Self {
        Self::new(self.inner.pool.clone())
    }

    /// Starts a transaction meant to write. SQLite: `BEGIN IMMEDIATE`, which takes the database's
    /// write lock at once, so concurrent writers queue on the busy timeout instead of failing
    /// later on a stale read snapshot. PostgreSQL: a plain `BEGIN` (row locks do the queueing).
    /// Dropping the [`Tx`] without [`Tx::commit`] rolls it back.
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        self.count();
        let conn = match self.pool() {
            Pool::Sqlite(p) => TxConn::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => TxConn::Postgres(p.begin().await?),
        };
        Ok(Tx {
            db: self.clone(),
            conn,
        })
    }
}

/// A transaction's connection on either backend.
#[derive(Debug)]
pub(crate) enum TxConn {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// An open transaction ([`Db::begin_write`]); its statements count on the [`Db`] it came from.
/// Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    db: Db,
    conn: TxConn,
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.db.count();
        match self.conn {
            TxConn::Sqlite(t) => t.commit().await,
            TxConn::Postgres(t) => t.commit().await,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.db.backend()
    }

    pub(crate) fn count(&self) {
        self.db.count();
    }

    pub(crate) fn conn(&mut self) -> &mut TxConn {
        &mut self.conn
    }
}

/// `?` placeholders numbered `$1, $2, …` for PostgreSQL. The SQL of this crate never has a `?`
/// inside a literal.
pub(crate) fn pg(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Runs a statement on either backend; `Result<u64 rows affected, sqlx::Error>`.
macro_rules! exec {
    ($db:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let db: &$crate::db::Db = $db;
        db.count();
        match db.pool() {
            $crate::db::Pool::Sqlite(p) => sqlx::query($sql)
                $(.bind($arg))*
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            $crate::db::Pool::Postgres(p) => sqlx::query(&$crate::db::pg($sql))
                $(.bind($arg))*
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
    }};
}

/// Fetches rows as `$ty` (a `sqlx::FromRow`) on either backend; `$how` is `fetch_all` or
/// `fetch_optional`.
macro_rules! fetch {
    ($how:ident, $ty:ty, $db:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let db: &$crate::db::Db = $db;
        db.count();
        match db.pool() {
            $crate::db::Pool::Sqlite(p) => sqlx::query_as::<_, $ty>($sql)
                $(.bind($arg))*
                .$how(p)
                .await,
            $crate::db::Pool::Postgres(p) => {
                sqlx::query_as::<_, $ty>(&$crate::db::pg($sql))
                    $(.bind($arg))*
                    .$how(p)
                    .await
            }
        }
    }};
}

/// Fetches one scalar column of every row on either backend.
macro_rules! scalars {
    ($ty:ty, $db:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let db: &$crate::db::Db = $db;
        db.count();
        match db.pool() {
            $crate::db::Pool::Sqlite(p) => sqlx::query_scalar::<_, $ty>($sql)
                $(.bind($arg))*
                .fetch_all(p)
                .await,
            $crate::db::Pool::Postgres(p) => {
                sqlx::query_scalar::<_, $ty>(&$crate::db::pg($sql))
                    $(.bind($arg))*
                    .fetch_all(p)
                    .await
            }
        }
    }};
}

/// Runs a statement inside a [`Tx`]; `Result<u64 rows affected, sqlx::Error>`.
macro_rules! tx_exec {
    ($tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let tx: &mut $crate::db::Tx = $tx;
        tx.count();
        match tx.conn() {
            $crate::db::TxConn::Sqlite(t) => sqlx::query($sql)
                $(.bind($arg))*
                .execute(&mut **t)
                .await
                .map(|r| r.rows_affected()),
            $crate::db::TxConn::Postgres(t) => sqlx::query(&$crate::db::pg($sql))
                $(.bind($arg))*
                .execute(&mut **t)
                .await
                .map(|r| r.rows_affected()),
        }
    }};
}

/// Fetches rows as `$ty` (a `sqlx::FromRow`) inside a [`Tx`]; `$how` is `fetch_one`,
/// `fetch_optional` or `fetch_all`.
macro_rules! tx_fetch {
    ($how:ident, $ty:ty, $tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let tx: &mut $crate::db::Tx = $tx;
        tx.count();
        match tx.conn() {
            $crate::db::TxConn::Sqlite(t) => sqlx::query_as::<_, $ty>($sql)
                $(.bind($arg))*
                .$how(&mut **t)
                .await,
            $crate::db::TxConn::Postgres(t) => {
                sqlx::query_as::<_, $ty>(&$crate::db::pg($sql))
                    $(.bind($arg))*
                    .$how(&mut **t)
                    .await
            }
        }
    }};
}

/// Fetches one scalar column inside a [`Tx`]; `$how` is `fetch_one`, `fetch_optional` or
/// `fetch_all`.
macro_rules! tx_scalar {
    ($how:ident, $ty:ty, $tx:expr, $sql:expr $(, $arg:expr)* $(,)?) => {{
        let tx: &mut $crate::db::Tx = $tx;
        tx.count();
        match tx.conn() {
            $crate::db::TxConn::Sqlite(t) => sqlx::query_scalar::<_, $ty>($sql)
                $(.bind($arg))*
                .$how(&mut **t)
                .await,
            $crate::db::TxConn::Postgres(t) => {
                sqlx::query_scalar::<_, $ty>(&$crate::db::pg($sql))
                    $(.bind($arg))*
                    .$how(&mut **t)
                    .await
            }
        }
    }};
}

pub(crate) use {exec, fetch, scalars, tx_exec, tx_fetch, tx_scalar};

#[cfg(test)]
mod tests {
    use super::pg;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            pg("UPDATE t SET a = ? WHERE b = ? AND c = ?"),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = $3"
        );
        assert!(matches!(pg("SELECT 1"), std::borrow::Cow::Borrowed(_)));
    }
}
