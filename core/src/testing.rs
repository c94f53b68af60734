//! Test support for this crate's tests and the e2e crate (feature `test-support`): a fresh
//! PostgreSQL database per test, a SQLite URL per test, and Redis and RabbitMQ probes.
//!
//! A service that is not running skips the test locally (with a `SKIPPED:` line on stderr) and
//! fails it loudly in CI (`CI=true`), so a broken CI database never passes as green.

pub mod chaos;

use std::path::Path;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use ulid::Ulid;

/// Where tests find PostgreSQL when `HUB_TEST_POSTGRES_URL` is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Where tests find Redis when `HUB_TEST_REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Where tests find RabbitMQ when `HUB_TEST_AMQP_URL` is unset.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Prefix of every database [`fresh_postgres`] creates.
const DB_PREFIX: &str = "hub_test_";
/// How long a probe waits for a service.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Test databases older than this are leftovers of killed runs and are dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A database created for one test. Dropping it drops the database (best effort, forcibly
/// disconnecting whatever still holds it).
#[derive(Debug)]
pub struct TestDb {
    url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    /// URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of the fresh database.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block on itself: use a thread of our own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(Ok(mut admin)) =
                    tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect(&admin_url)).await
                {
                    drop_database(&mut admin, &name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Creates a uniquely named database on the server `HUB_TEST_POSTGRES_URL` names (default
/// [`DEFAULT_POSTGRES_URL`]). `None` (and a `SKIPPED:` line) when the server is unreachable,
/// unless `CI=true`, in which case it panics.
pub async fn fresh_postgres() -> Option<TestDb> {
    let admin_url =
        std::env::var("HUB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let mut admin =
        match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect(&admin_url)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return unavailable("PostgreSQL", "HUB_TEST_POSTGRES_URL", &admin_url, &e);
            }
            Err(_) => {
                return unavailable(
                    "PostgreSQL",
                    "HUB_TEST_POSTGRES_URL",
                    &admin_url,
                    "timed out",
                );
            }
        };
    drop_stale_databases(&mut admin).await;
    let name = format!("{DB_PREFIX}{}", Ulid::new().to_string().to_lowercase());
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap_or_else(|e| panic!("creating test database {name} at {admin_url}: {e}"));
    Some(TestDb {
        url: with_database(&admin_url, &name),
        admin_url,
        name,
    })
}

/// A `sqlite:` URL for a new database file in `dir` (created on first connect).
pub fn fresh_sqlite_url(dir: &Path) -> String {
    let file = dir.join(format!("hub-{}.db", Ulid::new().to_string().to_lowercase()));
    // The URL parser percent-decodes the path and splits at `?`.
    let path = file
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    format!("sqlite://{path}?mode=rwc")
}

/// The Redis URL from `HUB_TEST_REDIS_URL` (default [`DEFAULT_REDIS_URL`]) once it answers
/// `PING`; `None` (and a `SKIPPED:` line) when it does not, unless `CI=true` (panics).
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("HUB_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    match tokio::time::timeout(PROBE_TIMEOUT, ping_redis(&url)).await {
        Ok(Ok(())) => Some(url),
        Ok(Err(e)) => unavailable("Redis", "HUB_TEST_REDIS_URL", &url, &e),
        Err(_) => unavailable("Redis", "HUB_TEST_REDIS_URL", &url, "timed out"),
    }
}

async fn ping_redis(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

/// The RabbitMQ URL from `HUB_TEST_AMQP_URL` (default [`DEFAULT_AMQP_URL`]) once a connection
/// opens; `None` (and a `SKIPPED:` line) when it does not, unless `CI=true` (panics).
pub async fn amqp_url() -> Option<String> {
    let url = std::env::var("HUB_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
    let probe = async {
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
        conn.close(200, "probe".into()).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => Some(url),
        Ok(Err(e)) => unavailable("RabbitMQ", "HUB_TEST_AMQP_URL", &url, &e),
        Err(_) => unavailable("RabbitMQ", "HUB_TEST_AMQP_URL", &url, "timed out"),
    }
}

/// Skips (or, in CI, fails) a test whose service is down.
fn unavailable<T>(
    service: &str,
    env_var: &str,
    url: &str,
    why: &(impl std::fmt::Display + ?Sized),
) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{service} required in CI but unreachable at {url}: {why}");
    }
    eprintln!("SKIPPED: {service} unavailable at {url} (set {env_var}): {why}");
    None
}

/// `url` with its database (path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Best effort: the database is gone afterwards unless the server refused.
async fn drop_database(admin: &mut PgConnection, name: &str) {
    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
    if let Err(e) = admin.execute(sql.as_str()).await {
        eprintln!("warning: could not drop test database {name}: {e}");
    }
}

/// Drops test databases that outlived [`STALE_AFTER`] (their ULID says when they were made):
/// leftovers of runs that were killed before their `TestDb` dropped.
async fn drop_stale_databases(admin: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
    )
    .bind(DB_PREFIX)
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let now = std::time::SystemTime::now();
    for name in names {
        let Some(created) = name
            .strip_prefix(DB_PREFIX)
            .and_then(|u| Ulid::from_string(&u.to_uppercase()).ok())
            .map(|u| u.datetime())
        else {
            continue;
        };
        if now
            .duration_since(created)
            .is_ok_and(|age| age > STALE_AFTER)
        {
            drop_database(admin, &name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_swaps_only_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn sqlite_urls_are_unique_and_escaped() {
        let dir = Path::new("/tmp/a?b");
        let (a, b) = (fresh_sqlite_url(dir), fresh_sqlite_url(dir));
        assert_ne!(a, b);
        assert!(
            a.starts_with("sqlite:///tmp/a%3Fb/hub-") && a.ends_with(".db?mode=rwc"),
            "{a}"
        );
    }

    #[tokio::test]
    async fn amqp_probe_answers_or_skips() {
        if let Some(url) = amqp_url().await {
            assert!(url.starts_with("amqp"), "{url}");
        }
    }

    #[tokio::test]
    async fn redis_probe_answers_or_skips() {
        if let Some(url) = redis_url().await {
            assert!(url.starts_with("redis://"), "{url}");
        }
    }
}
