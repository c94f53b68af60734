//! Set-up shared by the DLQ and jobs end-to-end tests: a hub proxy on port 0 whose exhausted
//! calls feed the real DLQ writer, the DLQ/jobs services over the same database, a worker
//! that sends through that proxy, and fake providers. Every scenario runs on SQLite, on
//! PostgreSQL, and on PostgreSQL with RabbitMQ as the work queue.

#![allow(dead_code)]

pub mod chaos;
pub mod dlq;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hub_core::catalog;
use hub_core::config::HubConfig;
use hub_core::dlq::DlqSender;
use hub_core::dlq::FailedCall;
use hub_core::jobs::{AmqpOptions, AmqpQueue, Background, Db, SqlQueue, WorkQueue, Worker};
use hub_core::provider::{NewProvider, ProviderRecord};
use hub_core::state::Clock;
use hub_core::store::Store;
use hub_core::testing;
use hub_core::vault::Vault;
use hub_proxy::Registry;
use hub_tests::harness::{Backend, DlqWiring, HubBuilder, QueueChoice, TestHub};
use hub_tests::{FakeProvider, TestPki};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

/// The vault ring of these tests (fixed so tests can open rows themselves).
pub const KEYS: &str = hub_tests::harness::TEST_MASTER_KEYS;
/// A credential that must never show up in a DLQ entry, a job or a log line.
pub const SECRET: &str = "sk_live_SUPERSECRET_4242";
/// Test lease: a crashed worker's task returns after this.
pub const TEST_LEASE: Duration = Duration::from_secs(1);

/// Database and queue a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// SQLite file, table queue.
    Sqlite,
    /// Fresh PostgreSQL database, table queue.
    Postgres,
    /// Fresh PostgreSQL database, RabbitMQ queue.
    Amqp,
}

/// One scenario per variant: `on_all!(name)` makes `name::{sqlite, postgres, amqp}` tests.
#[macro_export]
macro_rules! on_all {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::support::Variant;
            #[tokio::test]
            async fn sqlite() { super::$scenario(Variant::Sqlite).await }
            #[tokio::test]
            async fn postgres() { super::$scenario(Variant::Postgres).await }
            #[tokio::test]
            async fn amqp() { super::$scenario(Variant::Amqp).await }
        }
    )*};
}

/// Like [`on_all!`] without the RabbitMQ variant (DLQ write path: no queue involved).
#[macro_export]
macro_rules! on_databases {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::support::Variant;
            #[tokio::test]
            async fn sqlite() { super::$scenario(Variant::Sqlite).await }
            #[tokio::test]
            async fn postgres() { super::$scenario(Variant::Postgres).await }
        }
    )*};
}

/// Test configuration: fast flushes, short backoffs, loopback callbacks allowed.
pub fn test_config() -> HubConfig {
    let mut c = HubConfig::default();
    c.dlq.flush_interval_ms = 100;
    c.jobs.workers = 4;
    c.jobs.idle_poll_ms = 500;
    c.jobs.backoff_base_ms = 50;
    c.jobs.backoff_max_ms = 200;
    c.jobs.max_attempts = 2;
    c.jobs.callback.allow_loopback = true;
    c.jobs.callback.timeout_ms = 2_000;
    c
}

/// Polls `f` until it yields, at most `within` (background tasks settle on their own time).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A running hub proxy with the DLQ and jobs wired as `hub up` wires them: the one test
/// harness ([`HubBuilder`]) with a DLQ writer the test can kill and restart.
pub struct WorkHub {
    pub pki: TestPki,
    pub proxy_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub registry: Arc<Registry>,
    pub config: HubConfig,
    pub variant: Variant,
    /// The database URL.
    pub url: String,
    /// DLQ/jobs handle on the hub database (statement counter included).
    pub db: Db,
    /// Services and constructors, as in the binary.
    pub bg: Background,
    /// The current DLQ writer's input (replaced when a test restarts the writer).
    writer: Arc<Mutex<Option<DlqSender>>>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    amqp_queue: Option<String>,
    _hub: TestHub,
}

impl WorkHub {
    /// Starts the proxy, the DLQ writer and the services (no worker yet); `None` when the
    /// variant's servers are unavailable outside CI.
    pub async fn start(variant: Variant, config: HubConfig) -> Option<Self> {
        let pki = TestPki::new();
        let amqp_url = match variant {
            Variant::Amqp => Some(testing::amqp_url().await?),
            _ => None,
        };
        let amqp_queue = amqp_url
            .as_ref()
            .map(|_| format!("hub.test.{}", ulid::Ulid::new()));
        let queue = match (&amqp_url, &amqp_queue) {
            (Some(url), Some(name)) => QueueChoice::Amqp {
                url: url.clone(),
                name: name.clone(),
            },
            _ => QueueChoice::Table(TEST_LEASE),
        };
        let backend = match variant {
            Variant::Sqlite => Backend::Sqlite,
            Variant::Postgres | Variant::Amqp => Backend::Postgres,
        };
        let (exhausted_tx, exhausted_rx) = mpsc::channel(256);
        let hub = HubBuilder::new(backend, &pki)
            .configure(|c| {
                c.dlq = config.dlq.clone();
                c.jobs = config.jobs.clone();
            })
            .queue(queue)
            .dlq(DlqWiring::Sink(Arc::new(exhausted_tx)))
            .start()
            .await?;
        let writer = Arc::new(Mutex::new(None));
        tokio::spawn(forward(exhausted_rx, writer.clone()));
        let work = Self {
            proxy_addr: hub.proxy_addr,
            store: hub.store.clone(),
            vault: hub.vault.clone(),
            registry: hub.registry.clone(),
            config: hub.config.clone(),
            variant,
            url: hub.config.database_url(),
            db: hub.background.db.clone(),
            bg: hub.background.clone(),
            writer,
            writer_task: Mutex::new(None),
            amqp_queue,
            pki,
            _hub: hub,
        };
        work.start_writer(work.db.clone()).await;
        Some(work)
    }

    async fn queue_for(db: &Db, amqp: Option<&str>, name: Option<&str>) -> Arc<dyn WorkQueue> {
        match (amqp, name) {
            (Some(url), Some(name)) => Arc::new(
                AmqpQueue::connect(AmqpOptions {
                    url: url.to_owned(),
                    queue: name.to_owned(),
                    prefetch: 8,
                    expires: Some(Duration::from_secs(120)),
                })
                .await
                .unwrap(),
            ),
            _ => Arc::new(SqlQueue::new(db.clone(), TEST_LEASE, Clock::system())),
        }
    }

    /// A work queue of its own (a second worker process), on the same database or broker queue.
    pub async fn own_queue(&self) -> Arc<dyn WorkQueue> {
        let amqp = match self.variant {
            Variant::Amqp => testing::amqp_url().await,
            _ => None,
        };
        Self::queue_for(&self.db, amqp.as_deref(), self.amqp_queue.as_deref()).await
    }

    /// A RabbitMQ queue of its own on the hub's broker queue (`None` for the table variants).
    pub async fn own_amqp_queue(&self) -> Option<Arc<AmqpQueue>> {
        let url = match self.variant {
            Variant::Amqp => testing::amqp_url().await?,
            _ => return None,
        };
        let q = AmqpQueue::connect(AmqpOptions {
            url,
            queue: self.amqp_queue.clone()?,
            prefetch: 8,
            expires: Some(Duration::from_secs(120)),
        })
        .await
        .unwrap();
        Some(Arc::new(q))
    }

    /// (Re)starts the DLQ writer over `db` (the spool in the data dir is replayed first).
    pub async fn start_writer(&self, db: Db) {
        let bg = Background::with_queue(
            db,
            self.bg.queue.clone(),
            self.vault.clone(),
            &self.config,
            Clock::system(),
        );
        let (sender, task) = bg.spawn_writer().unwrap();
        *self.writer.lock().await = Some(sender);
        if let Some(old) = self.writer_task.lock().await.replace(task) {
            old.abort();
        }
    }

    /// Kills the writer the way SIGKILL would: no flush, no goodbye.
    pub async fn kill_writer(&self) {
        self.writer.lock().await.take();
        if let Some(t) = self.writer_task.lock().await.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Workers with the test options, on the hub's queue (`queue` = another process's).
    pub fn worker_on(&self, queue: Arc<dyn WorkQueue>) -> Worker {
        let bg = Background::with_queue(
            self.db.clone(),
            queue,
            self.vault.clone(),
            &self.config,
            Clock::system(),
        );
        let mut opts = bg.worker_options();
        opts.lease = TEST_LEASE;
        bg.worker(self.store.clone(), &self.proxy_url(), opts)
            .unwrap()
    }

    /// Starts a worker on the hub's queue; stop it by dropping the returned sender.
    pub fn start_worker(&self) -> (watch::Sender<bool>, JoinHandle<()>) {
        let worker = self.worker_on(self.bg.queue.clone());
        let (tx, rx) = watch::channel(false);
        (tx, tokio::spawn(worker.run(rx)))
    }

    /// Registers a provider (loopback allowed) and applies it to the proxy now.
    pub async fn add_provider(&self, json: serde_json::Value) -> ProviderRecord {
        let new: NewProvider = serde_json::from_value(json).expect("provider json");
        let rec = catalog::register(self.store.as_ref(), &self.vault, new)
            .await
            .expect("register provider");
        self.registry.refresh().await.unwrap();
        rec
    }

    /// A TLS fake provider registered under `host` with a bearer credential and `config`.
    pub async fn provider(
        &self,
        name: &str,
        host: &str,
        config: serde_json::Value,
    ) -> (FakeProvider, ProviderRecord) {
        let fake = FakeProvider::start(Some(self.pki.server_config.clone())).await;
        let mut json = hub_tests::client::provider_json(
            name,
            host,
            &fake,
            serde_json::json!({"type": "bearer", "token": SECRET}),
        );
        json["config"]["idempotencyHeader"] = "Idempotency-Key".into();
        for (k, v) in config.as_object().into_iter().flatten() {
            json["config"][k] = v.clone();
        }
        let rec = self.add_provider(json).await;
        (fake, rec)
    }

    /// `http://<proxy addr>`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// `http://<admin addr>` (bootstrap token [`hub_tests::harness::TEST_ADMIN_TOKEN`]).
    pub fn admin_url(&self) -> String {
        self._hub.admin_url()
    }

    /// A module's HTTP client: plain `HTTP_PROXY` to the hub.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(self.proxy_url()).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// A raw connection-level query: the column of one row, as bytes or text, on either backend.
    pub async fn raw_bytes(&self, sql: &str, id: &str) -> Option<Vec<u8>> {
        if self.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            sqlx::query_scalar::<_, Option<Vec<u8>>>(sql)
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        } else {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            let sql = sql.replacen('?', "$1", 1);
            sqlx::query_scalar::<_, Option<Vec<u8>>>(&sql)
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    }
}

/// Feeds the proxy's exhausted calls to whichever writer is current.
async fn forward(mut rx: mpsc::Receiver<FailedCall>, writer: Arc<Mutex<Option<DlqSender>>>) {
    while let Some(call) = rx.recv().await {
        let w = writer.lock().await.clone();
        match w {
            Some(w) => {
                if w.try_send(call).is_err() {
                    eprintln!("test writer gone: a failed call was not recorded");
                }
            }
            None => eprintln!("no test writer: a failed call was not recorded"),
        }
    }
}

/// Asserts `haystack` never contains the test credential.
pub fn assert_no_secret(what: &str, haystack: &str) {
    assert!(
        !haystack.contains(SECRET) && !haystack.contains("dummy-caller-key"),
        "{what} leaks a credential: {haystack}"
    );
}
