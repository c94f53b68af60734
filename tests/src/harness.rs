//! A hub started in-process on ephemeral loopback ports, over SQLite or a fresh PostgreSQL
//! database, with a test PKI for the fake providers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hub_core::ca::HubCa;
use hub_core::catalog;
use hub_core::provider::{NewProvider, ProviderRecord};
use hub_core::secret::SecretString;
use hub_core::store::{self, Store};
use hub_core::testing;
use hub_core::vault::Vault;
use hub_proxy::serve::ConnLimits;
use hub_proxy::{ProxyOptions, ProxyServer, Registry};
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
    stop: watch::Sender<bool>,
    /// Calls the forwarder gave up on (what the DLQ will persist).
    pub exhausted: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<hub_core::dlq::FailedCall>>,
    _pg: Option<testing::TestDb>,
    _dir: tempfile::TempDir,
}

/// The vault key every test hub uses (fixed so tests can also open rows themselves).
pub const TEST_MASTER_KEYS: &str = "test1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The bootstrap admin token of every test hub.
pub const TEST_ADMIN_TOKEN: &str = "hub_test_bootstrap_admin_token";

impl TestHub {
    /// Starts a hub with in-process state; `None` when the backend is unavailable outside CI
    /// (the test is skipped).
    pub async fn start(backend: Backend, pki: &TestPki) -> Option<Self> {
        Self::start_with(backend, pki, Arc::new(hub_core::state::LocalState::new())).await
    }

    /// Starts a hub over the given shared state. Backoff jitter is zero (deterministic waits).
    pub async fn start_with(
        backend: Backend,
        pki: &TestPki,
        state: Arc<dyn hub_core::state::SharedState>,
    ) -> Option<Self> {
        Self::start_full(backend, pki, state, None).await
    }

    /// Starts a hub that also exports call spans to the OTLP/HTTP collector at `otlp`.
    pub async fn start_full(
        backend: Backend,
        pki: &TestPki,
        state: Arc<dyn hub_core::state::SharedState>,
        otlp: Option<String>,
    ) -> Option<Self> {
        Self::start_inner(backend, pki, state, otlp, ConnLimits::default()).await
    }

    /// Starts a hub with these connection caps.
    pub async fn start_limited(
        backend: Backend,
        pki: &TestPki,
        limits: ConnLimits,
    ) -> Option<Self> {
        let state = Arc::new(hub_core::state::LocalState::new());
        Self::start_inner(backend, pki, state, None, limits).await
    }

    async fn start_inner(
        backend: Backend,
        pki: &TestPki,
        state: Arc<dyn hub_core::state::SharedState>,
        otlp: Option<String>,
        limits: ConnLimits,
    ) -> Option<Self> {
        crate::logs::init();
        let dir = tempfile::tempdir().unwrap();
        let (url, pg) = match backend {
            Backend::Sqlite => (testing::fresh_sqlite_url(dir.path()), None),
            Backend::Postgres => {
                let db = testing::fresh_postgres().await?;
                (db.url().to_owned(), Some(db))
            }
        };
        let store = store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let vault = Arc::new(Vault::from_spec(&SecretString::new(TEST_MASTER_KEYS)).unwrap());
        let (ca, _) =
            HubCa::load_or_generate(&dir.path().join("ca.pem"), &dir.path().join("ca-key.pem"))
                .unwrap();
        let ca_pem = ca.cert_pem().to_owned();
        let registry = Arc::new(Registry::new(store.clone(), vault.clone()));
        registry.refresh().await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        // SQLite: polling only. PostgreSQL: LISTEN/NOTIFY with a poll so slow (60 s) that a change
        // seen within the tests' 2 s can only have come through the notification.
        let (period, wake) = match backend {
            Backend::Sqlite => (Duration::from_millis(100), None),
            Backend::Postgres => {
                let wake = Arc::new(tokio::sync::Notify::new());
                tokio::spawn(hub_core::store::postgres::watch_registry(
                    url.clone(),
                    wake.clone(),
                ));
                (Duration::from_secs(60), Some(wake))
            }
        };
        tokio::spawn(
            registry
                .clone()
                .run_refresher(period, wake, stop_rx.clone()),
        );
        let (exhausted_tx, exhausted_rx) = tokio::sync::mpsc::channel(64);
        let admin_shared_state = state.clone();
        let opts = ProxyOptions {
            state,
            jitter: Arc::new(|_max: u64| 0i64),
            hub_default_rate: 100,
            replay_limit: hub_proxy::forward::DEFAULT_REPLAY_LIMIT,
            exhausted: Some(Arc::new(exhausted_tx)),
            jobs: None,
            spans: otlp.map(|endpoint| hub_core::otlp::OtlpExporter::spawn(&endpoint, "hub-test")),
            upstream_ca_file: Some(pki.ca_file.clone()),
            data_dir: dir.path().to_owned(),
            leaf_cache_size: 100,
            leaf_validity: Duration::from_secs(3600),
            // As deployed: connections on the proxy's own single-threaded runtimes.
            worker_threads: Some(2),
            limits,
        };
        let server = ProxyServer::new(registry.clone(), Arc::new(ca), &opts).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        tokio::spawn(server.clone().serve(listener, stop_rx.clone()));
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = ops.local_addr().unwrap();
        tokio::spawn(hub::serve_proxy_ops(ops, server.clone(), stop_rx.clone()));
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        // The admin's DLQ/jobs services, over the same database. Nothing feeds them here (failed
        // calls go to `exhausted`, no worker runs); the DLQ/jobs suites' WorkHub wires it all.
        let db = hub_core::jobs::Db::connect(&url).await.unwrap();
        let work = hub_core::jobs::Background::with_queue(
            db.clone(),
            Arc::new(hub_core::jobs::SqlQueue::new(
                db,
                Duration::from_secs(30),
                hub_core::state::Clock::system(),
            )),
            vault.clone(),
            &hub_core::config::HubConfig::default(),
            hub_core::state::Clock::system(),
        );
        let admin_state = hub_admin::AdminState::new(
            store.clone(),
            vault.clone(),
            ca_pem.as_str(),
            &SecretString::new(TEST_ADMIN_TOKEN),
            work.dlq,
            work.jobs,
        )
        .with_shared_state(admin_shared_state)
        .with_proxy(&format!("http://{proxy_addr}"))
        .unwrap();
        tokio::spawn(hub_admin::serve(admin, admin_state, stop_rx.clone()));
        tokio::spawn(
            server
                .clone()
                .run_gauges(Duration::from_millis(100), stop_rx),
        );
        Some(Self {
            proxy_addr,
            metrics_addr,
            admin_addr,
            ca_pem,
            store,
            vault,
            registry,
            server,
            stop,
            exhausted: tokio::sync::Mutex::new(exhausted_rx),
            _pg: pg,
            _dir: dir,
        })
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
