//! A hub started in-process on ephemeral loopback ports, over SQLite or a fresh PostgreSQL
//! database, with a test PKI for the fake providers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hub_core::catalog;
use hub_core::config::HubConfig;
use hub_core::jobs::Background;
use hub_core::provider::{NewProvider, ProviderRecord};
use hub_core::store::Store;
use hub_core::testing;
use hub_core::vault::Vault;
use hub_proxy::serve::ConnLimits;
use hub_proxy::{ProxyServer, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A test CA and a `localhost`/`127.0.0.1` server certificate for fake providers.
pub struct TestPki {
    /// The CA certificate PEM, written to `ca_file`.
    pub ca_pem: String,
    /// Path of the CA PEM (what the hub gets as its extra upstream roots).
    pub ca_file: PathBuf,
    /// Server config for fake providers.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The server certificate chain (leaf, CA) and its key as PEM files, for providers that are
    /// other programs (a grpcio server).
    pub leaf_cert_file: PathBuf,
    /// See `leaf_cert_file`.
    pub leaf_key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates a fresh test PKI.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Fake Provider Test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("fake-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let leaf_cert_file = dir.path().join("leaf.pem");
        std::fs::write(&leaf_cert_file, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
        let leaf_key_file = dir.path().join("leaf-key.pem");
        std::fs::write(&leaf_key_file, leaf_key.serialize_pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            ca_file,
            server_config: Arc::new(server_config),
            leaf_cert_file,
            leaf_key_file,
            _dir: dir,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Which store a test hub runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// A running hub (proxy on an ephemeral port).
pub struct TestHub {
    /// Proxy address.
    pub proxy_addr: SocketAddr,
    /// The proxy's ops listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_addr: SocketAddr,
    /// The admin API (bootstrap token [`TEST_ADMIN_TOKEN`]; `POST /call` goes through this
    /// hub's proxy, health reads this hub's shared state).
    pub admin_addr: SocketAddr,
    /// The hub CA PEM modules trust.
    pub ca_pem: String,
    /// Store.
    pub store: Arc<dyn Store>,
    /// Vault.
    pub vault: Arc<Vault>,
    /// Registry (call `sync` to apply store changes now).
    pub registry: Arc<Registry>,
    /// The proxy.
    pub server: Arc<ProxyServer>,
    /// The configuration it runs with (data dir, database URL, …).
    pub config: HubConfig,
    /// Database, work queue, DLQ and jobs services: the binary's own parts.
    pub background: Background,
    stop: watch::Sender<bool>,
    /// Calls the forwarder gave up on, when the hub was built with [`DlqWiring::Channel`].
    pub exhausted: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<hub_core::dlq::FailedCall>>,
    _pg: Option<testing::TestDb>,
    _dir: tempfile::TempDir,
}

/// The vault key every test hub uses (fixed so tests can also open rows themselves).
pub const TEST_MASTER_KEYS: &str = "test1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The bootstrap admin token of every test hub.
pub const TEST_ADMIN_TOKEN: &str = "hub_test_bootstrap_admin_token";

/// Where the proxy's failed calls go.
pub enum DlqWiring {
    /// A channel the test reads ([`TestHub::exhausted`]): queued, not persisted.
    Channel,
    /// The binary's DLQ writer (spool, drainer, database).
    Writer,
    /// A sink the test owns (e.g. a writer it restarts).
    Sink(Arc<dyn hub_core::dlq::DeadLetterSink>),
}

/// The work queue of a test hub.
pub enum QueueChoice {
    /// The database table, with this lease.
    Table(Duration),
    /// A RabbitMQ queue of its own, deleted by the broker once unused.
    Amqp {
        /// Broker URL.
        url: String,
        /// Queue name.
        name: String,
    },
}

/// Builds a test hub from the binary's own wiring (`hub::Hub::open`, `hub::load_registry`,
/// `hub::proxy_options`, `Hub::admin_state`, `hub::serve_proxy_ops`) on ephemeral loopback
/// ports, over SQLite or a fresh PostgreSQL database. What a test changes is configuration
/// (`config`), the shared state, the DLQ wiring and the work queue; backoff jitter is zero.
pub struct HubBuilder<'a> {
    backend: Backend,
    pki: &'a TestPki,
    config: HubConfig,
    state: Option<Arc<dyn hub_core::state::SharedState>>,
    limits: Option<ConnLimits>,
    dlq: DlqWiring,
    queue: Option<QueueChoice>,
    database: Option<String>,
}

impl<'a> HubBuilder<'a> {
    /// A hub on `backend` trusting `pki` for upstream TLS, in-process state, failed calls on a
    /// channel, the test defaults (100/s hub rate, 100 leaves, two proxy threads).
    pub fn new(backend: Backend, pki: &'a TestPki) -> Self {
        let mut config = HubConfig::default();
        config.defaults.rate_limit_per_sec = 100;
        config.proxy.leaf_cache_size = 100;
        config.proxy.leaf_validity_hours = 1;
        // As deployed: connections on the proxy's own single-threaded runtimes.
        config.proxy.worker_threads = 2;
        config.jobs.workers = 0;
        Self {
            backend,
            pki,
            config,
            state: None,
            limits: None,
            dlq: DlqWiring::Channel,
            queue: None,
            database: None,
        }
    }

    /// Runs on `other`'s database (a second instance of the same deployment) instead of a
    /// fresh one; `other` keeps owning it.
    #[must_use]
    pub fn same_database_as(mut self, other: &TestHub) -> Self {
        self.database = other.config.database.url.clone();
        self
    }

    /// Replaces the configuration (the builder still sets data dir, database, listeners, keys).
    #[must_use]
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration.
    #[must_use]
    pub fn configure(mut self, f: impl FnOnce(&mut HubConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Breaker and rate-limit state (default: what the configuration names, in-process).
    #[must_use]
    pub fn state(mut self, state: Arc<dyn hub_core::state::SharedState>) -> Self {
        self.state = Some(state);
        self
    }

    /// Connection caps.
    #[must_use]
    pub fn limits(mut self, limits: ConnLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Where failed calls go.
    #[must_use]
    pub fn dlq(mut self, dlq: DlqWiring) -> Self {
        self.dlq = dlq;
        self
    }

    /// The work queue (default: the table, with the configuration's lease).
    #[must_use]
    pub fn queue(mut self, queue: QueueChoice) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Starts it; `None` when the backend is unavailable outside CI (the test is skipped).
    pub async fn start(self) -> Option<TestHub> {
        crate::logs::init();
        let dir = tempfile::tempdir().unwrap();
        let (url, pg) = match (self.database, self.backend) {
            (Some(url), _) => (url, None),
            (None, Backend::Sqlite) => (testing::fresh_sqlite_url(dir.path()), None),
            (None, Backend::Postgres) => {
                let db = testing::fresh_postgres().await?;
                (db.url().to_owned(), Some(db))
            }
        };
        let mut config = self.config;
        config.data_dir = dir.path().to_owned();
        config.database.url = Some(url.clone());
        config.proxy.upstream_ca_file = Some(self.pki.ca_file.clone());
        // SQLite: polling only. PostgreSQL: LISTEN/NOTIFY with a poll so slow (60 s) that a
        // change seen within the tests' 2 s can only have come through the notification.
        config.proxy.registry_poll_ms = match self.backend {
            Backend::Sqlite => 100,
            Backend::Postgres => 60_000,
        };
        let keys = dir.path().join("master-keys");
        std::fs::write(&keys, TEST_MASTER_KEYS).unwrap();
        config.vault.keys_file = Some(keys);
        let token = dir.path().join("admin-token");
        std::fs::write(&token, TEST_ADMIN_TOKEN).unwrap();
        config.admin.token_file = Some(token);
        let mut hub = hub::Hub::open(config, hub::StoreOpen::Migrate)
            .await
            .expect("the hub opens");
        if let Some(q) = self.queue {
            let queue: Arc<dyn hub_core::jobs::WorkQueue> = match q {
                QueueChoice::Table(lease) => Arc::new(hub_core::jobs::SqlQueue::new(
                    hub.background.db.clone(),
                    lease,
                    hub_core::state::Clock::system(),
                )),
                QueueChoice::Amqp { url, name } => Arc::new(
                    hub_core::jobs::AmqpQueue::connect(hub_core::jobs::AmqpOptions {
                        url,
                        queue: name,
                        prefetch: 8,
                        expires: Some(Duration::from_secs(120)),
                    })
                    .await
                    .unwrap(),
                ),
            };
            hub.background = Background::with_queue(
                hub.background.db.clone(),
                queue,
                hub.vault.clone(),
                &hub.config,
                hub_core::state::Clock::system(),
            );
        }
        if let Some(state) = self.state {
            assert!(hub.use_shared_state(state), "state set before first use");
        }
        let (stop, stop_rx) = watch::channel(false);
        let registry = hub::load_registry(&hub, stop_rx.clone()).await.unwrap();
        let (exhausted_tx, exhausted_rx) = tokio::sync::mpsc::channel(256);
        let sink: Arc<dyn hub_core::dlq::DeadLetterSink> = match self.dlq {
            DlqWiring::Channel => Arc::new(exhausted_tx),
            DlqWiring::Sink(sink) => sink,
            DlqWiring::Writer => {
                let (sender, _task) = hub.background.spawn_writer().unwrap();
                Arc::new(sender)
            }
        };
        let mut opts = hub::proxy_options(&hub, sink).await.unwrap();
        opts.jitter = Arc::new(|_max: u64| 0i64);
        if let Some(limits) = self.limits {
            opts.limits = limits;
        }
        let server = ProxyServer::new(registry.clone(), hub.ca.clone(), &opts).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        tokio::spawn(server.clone().serve(listener, stop_rx.clone()));
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = ops.local_addr().unwrap();
        tokio::spawn(hub::serve_proxy_ops(ops, server.clone(), stop_rx.clone()));
        tokio::spawn(
            server
                .clone()
                .run_gauges(Duration::from_millis(100), stop_rx.clone()),
        );
        // The admin, as `hub up` runs it: `POST /call` through this proxy.
        hub.config.admin.proxy_url = Some(format!("http://{proxy_addr}"));
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let admin_state = hub.admin_state(true).await.unwrap();
        tokio::spawn(hub_admin::serve(admin, admin_state, stop_rx));
        Some(TestHub {
            proxy_addr,
            metrics_addr,
            admin_addr,
            ca_pem: hub.ca.cert_pem().to_owned(),
            store: hub.store.clone(),
            vault: hub.vault.clone(),
            registry,
            server,
            config: hub.config.clone(),
            background: hub.background.clone(),
            stop,
            exhausted: tokio::sync::Mutex::new(exhausted_rx),
            _pg: pg,
            _dir: dir,
        })
    }
}

impl TestHub {
    /// Starts a hub with in-process state; `None` when the backend is unavailable outside CI
    /// (the test is skipped).
    pub async fn start(backend: Backend, pki: &TestPki) -> Option<Self> {
        HubBuilder::new(backend, pki).start().await
    }

    /// Starts a hub over the given shared state. Backoff jitter is zero (deterministic waits).
    pub async fn start_with(
        backend: Backend,
        pki: &TestPki,
        state: Arc<dyn hub_core::state::SharedState>,
    ) -> Option<Self> {
        HubBuilder::new(backend, pki).state(state).start().await
    }

    /// Starts a hub that also exports call spans to the OTLP/HTTP collector at `otlp`.
    pub async fn start_full(
        backend: Backend,
        pki: &TestPki,
        state: Arc<dyn hub_core::state::SharedState>,
        otlp: Option<String>,
    ) -> Option<Self> {
        HubBuilder::new(backend, pki)
            .state(state)
            .configure(|c| c.log.otlp_endpoint = otlp)
            .start()
            .await
    }

    /// Starts a hub as production runs it: `proxy.callers: required` (every call needs a caller
    /// credential and a grant).
    pub async fn start_callers_required(backend: Backend, pki: &TestPki) -> Option<Self> {
        HubBuilder::new(backend, pki)
            .configure(|c| c.proxy.callers = hub_core::config::CallersMode::Required)
            .start()
            .await
    }

    /// Starts a hub with these connection caps.
    pub async fn start_limited(
        backend: Backend,
        pki: &TestPki,
        limits: ConnLimits,
    ) -> Option<Self> {
        HubBuilder::new(backend, pki).limits(limits).start().await
    }

    /// Registers a provider from its JSON (as the admin API would) and applies it now.
    pub async fn add_provider(&self, json: serde_json::Value) -> ProviderRecord {
        let new: NewProvider = serde_json::from_value(json).expect("provider json");
        let rec = catalog::register(self.store.as_ref(), &self.vault, new)
            .await
            .expect("register provider");
        self.sync().await;
        rec
    }

    /// A caller named `name` in the default tenant with a grant of every method and path on
    /// `provider`, written to the store as the admin API would (and applied now); returns the
    /// caller and its token.
    pub async fn caller_granted_everything(
        &self,
        name: &str,
        provider: hub_core::provider::ProviderId,
    ) -> (hub_core::caller::CallerRecord, String) {
        use hub_core::caller::{
            CallerRecord, DEFAULT_TENANT, GrantLimits, GrantRecord, Methods, PathPattern, Subject,
        };
        let token = hub_core::caller::new_caller_token();
        let now = chrono::Utc::now();
        let caller = CallerRecord {
            id: ulid::Ulid::new(),
            name: name.to_owned(),
            tenant: DEFAULT_TENANT.into(),
            groups: Vec::new(),
            token_hash: Some(hub_core::access::token_hash(&token)),
            service_account: None,
            expires_at: None,
            revoked_at: None,
            created_at: now,
            updated_at: now,
        };
        self.store
            .put_caller(caller.clone(), true, test_audit("caller.create"))
            .await
            .unwrap();
        let grant = GrantRecord {
            id: ulid::Ulid::new(),
            tenant: caller.tenant.clone(),
            subject: Subject::Caller(caller.id),
            provider_id: provider,
            methods: Methods::Any,
            paths: vec![PathPattern::parse("/**").unwrap()],
            limits: GrantLimits::default(),
            created_at: now,
            updated_at: now,
        };
        self.store
            .put_grant(grant, true, test_audit("grant.create"))
            .await
            .unwrap();
        self.sync().await;
        (caller, token)
    }

    /// Revokes `caller` in the store as `DELETE /callers/{id}` would, without applying it to the
    /// proxy (tests of revocation wait for the proxy's own poll or notification).
    pub async fn revoke_caller(&self, mut caller: hub_core::caller::CallerRecord) {
        caller.revoked_at = Some(chrono::Utc::now());
        self.store
            .put_caller(caller, false, test_audit("caller.revoke"))
            .await
            .unwrap();
    }

    /// Applies store changes to the proxy now (instead of waiting for the poller).
    pub async fn sync(&self) {
        self.registry.refresh().await.unwrap();
    }

    /// `http://<admin addr>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Starts the graceful shutdown (as SIGTERM does in the binary).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// `http://<proxy addr>`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An audit entry for a change a test writes straight into the store.
pub fn test_audit(action: &str) -> hub_core::access::AuditEntry {
    hub_core::access::AuditEntry {
        actor: "test".into(),
        action: action.into(),
        target_id: None,
        detail: serde_json::json!({}),
    }
}
