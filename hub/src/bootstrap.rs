//! Opening the hub's parts from its configuration: data directory, master keys, CA, store.
//! Logs where everything is, and never a secret.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hub_admin::AdminState;
use hub_core::ca::{HubCa, write_private_file};
use hub_core::config::HubConfig;
use hub_core::jobs::{Background, Db};
use hub_core::secret::SecretString;
use hub_core::state::{Clock, LocalState, RedisOptions, RedisState, SharedState};
use hub_core::store::{SqlStore, Store, StoreError};
use hub_core::vault::{KeySource, Vault};

/// File holding the generated bootstrap admin token in the data dir (embedded default only).
pub const DEV_ADMIN_TOKEN_FILE: &str = "admin.token";

/// The opened parts every service shares.
pub struct Hub {
    /// Configuration in force.
    pub config: HubConfig,
    /// Registry (and later DLQ) store.
    pub store: Arc<dyn Store>,
    /// Credential key ring.
    pub vault: Arc<Vault>,
    /// The hub CA.
    pub ca: Arc<HubCa>,
    /// DLQ and jobs: database handle, work queue, services, background task constructors.
    pub background: Background,
    /// Breaker and rate-limit state, opened once on first use ([`Hub::shared_state`]), so the
    /// proxy and the admin of one process see the same object.
    shared_state: tokio::sync::OnceCell<Arc<dyn SharedState>>,
    token_share: std::sync::OnceLock<Arc<dyn hub_core::oauth::share::TokenShare>>,
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// How a service opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOpen {
    /// Connect now and apply migrations (`hub up`, `hub migrate`).
    Migrate,
    /// Connect now (`hub rotate-keys`).
    Connect,
    /// Connect on first use (`hub proxy`, `hub admin`): a PostgreSQL outage does not stop the
    /// service from starting; the proxy then routes from its last-known-good registry file and
    /// the admin answers `503` on store-backed routes until the database returns.
    Lazy,
}

/// Opens the store a URL names, and a DLQ/jobs handle on the same pool.
async fn open_store(url: &str, lazy: bool) -> Result<(Arc<dyn Store>, Db), StoreError> {
    let s = if lazy {
        SqlStore::connect_lazy(url).await?
    } else {
        SqlStore::connect(url).await?
    };
    let db = s.db();
    Ok((Arc::new(s), db))
}

fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        tracing::info!(path = %dir.display(), "data directory created");
    }
    Ok(())
}

impl Hub {
    /// Opens everything; how the store is opened is `store`'s choice.
    pub async fn open(config: HubConfig, store: StoreOpen) -> anyhow::Result<Self> {
        ensure_data_dir(&config.data_dir)?;
        let env_keys = std::env::var("HUB_MASTER_KEYS")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(SecretString::from);
        let (vault, source) = Vault::load(
            env_keys,
            config.vault.keys_file.as_deref(),
            &config.data_dir,
        )
        .context("cannot load master keys")?;
        match &source {
            KeySource::GeneratedDev { path } => tracing::warn!(
                path = %path.display(),
                "GENERATED A DEVELOPMENT MASTER KEY: fine for a laptop, not for production. \
                 Losing this file loses every stored credential; set HUB_MASTER_KEYS in production"
            ),
            KeySource::DevFile { path } => tracing::warn!(
                path = %path.display(),
                "using the development master key; set HUB_MASTER_KEYS in production"
            ),
            KeySource::Env => tracing::info!("master keys from HUB_MASTER_KEYS"),
            KeySource::File { path } => {
                tracing::info!(path = %path.display(), "master keys from file")
            }
        }
        tracing::info!(
            active_key = vault.active_key_id(),
            keys = vault.key_ids().len(),
            "vault ready"
        );

        let (ca_cert, ca_key) = (config.ca_cert_path(), config.ca_key_path());
        let (ca, generated) =
            HubCa::load_or_generate(&ca_cert, &ca_key).context("cannot load the hub CA")?;
        if generated {
            tracing::warn!(cert = %ca_cert.display(), key = %ca_key.display(),
                "generated a new hub CA: modules must trust this certificate");
        } else {
            tracing::info!(cert = %ca_cert.display(), "hub CA loaded");
        }

        let url = config.database_url();
        let open = store;
        let (store, db) = open_store(&url, open == StoreOpen::Lazy)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(&url)))?;
        if open == StoreOpen::Migrate {
            store.migrate().await.context("migrations failed")?;
        }
        tracing::info!(
            database = %redact_url(&url),
            backend = store.backend(),
            shared_state = if config.redis.url.is_some() { "redis" } else { "in-process" },
            data_dir = %config.data_dir.display(),
            "store ready"
        );
        let vault = Arc::new(vault);
        let background = Background::open(db, vault.clone(), &config, Clock::system())
            .await
            .context("cannot open the work queue (jobs.amqp_url)")?;
        tracing::info!(
            queue = background.queue.backend(),
            workers = config.jobs.workers,
            "DLQ and jobs ready"
        );
        Ok(Self {
            config,
            store,
            vault,
            ca: Arc::new(ca),
            background,
            shared_state: tokio::sync::OnceCell::new(),
            token_share: std::sync::OnceLock::new(),
        })
    }

    /// The bootstrap admin token: `HUB_ADMIN_TOKEN`, else `admin.token_file`, else (embedded
    /// default) a token generated into the data dir, 0600.
    pub fn admin_token(&self) -> anyhow::Result<SecretString> {
        if let Ok(t) = std::env::var("HUB_ADMIN_TOKEN")
            && !t.trim().is_empty()
        {
            return Ok(SecretString::from(t.trim().to_owned()));
        }
        if let Some(path) = &self.config.admin.token_file {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin token file {}", path.display()))?;
            return Ok(SecretString::from(t.trim().to_owned()));
        }
        let path = self.config.data_dir.join(DEV_ADMIN_TOKEN_FILE);
        if path.exists() {
            let t = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            tracing::warn!(path = %path.display(), "using the development admin token; set HUB_ADMIN_TOKEN in production");
            return Ok(SecretString::from(t.trim().to_owned()));
        }
        use rand::RngCore;
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("hub_{}", hex::encode(raw));
        write_private_file(&path, token.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::warn!(path = %path.display(), "generated a development admin token (read it from this file)");
        Ok(SecretString::from(token))
    }

    /// Uses `state` as the breaker and rate-limit state (a test's own backend) instead of the one
    /// the configuration names; `false` when the state was already opened.
    pub fn use_shared_state(&self, state: Arc<dyn SharedState>) -> bool {
        self.shared_state.set(state).is_ok()
    }

    /// Breaker and rate-limit state: Redis when `redis.url` is set, else in-process. Opened on
    /// the first call; later calls return the same object.
    pub async fn shared_state(&self) -> anyhow::Result<Arc<dyn SharedState>> {
        let state = self
            .shared_state
            .get_or_try_init(|| async {
                match &self.config.redis.url {
                    Some(url) => {
                        let redis = &self.config.redis;
                        let opts = RedisOptions {
                            command_timeout: std::time::Duration::from_millis(
                                redis.command_timeout_ms,
                            ),
                            fallback_instances: redis.fallback_instances,
                            prefix: redis.key_prefix.clone(),
                            ..RedisOptions::default()
                        };
                        let state = RedisState::connect(url.as_str(), opts)
                            .await
                            .with_context(|| format!("cannot use Redis at {}", redact_url(url)))?;
                        tracing::info!(
                            redis = %redact_url(url),
                            command_timeout_ms = redis.command_timeout_ms,
                            fallback_instances = redis.fallback_instances,
                            "shared state in Redis"
                        );
                        let state: Arc<dyn SharedState> = Arc::new(state);
                        Ok::<_, anyhow::Error>(state)
                    }
                    None => Ok(Arc::new(LocalState::new()) as Arc<dyn SharedState>),
                }
            })
            .await?;
        Ok(state.clone())
    }

    /// Where OAuth2 access tokens and their statuses are shared: Redis when `redis.url` is set
    /// (every instance, and the admin service, see the same), else this process only.
    pub fn token_share(&self) -> anyhow::Result<Arc<dyn hub_core::oauth::share::TokenShare>> {
        use hub_core::oauth::share::{LocalShare, RedisShare, TokenShare};
        if let Some(s) = self.token_share.get() {
            return Ok(s.clone());
        }
        let share: Arc<dyn TokenShare> = match &self.config.redis.url {
            Some(url) => Arc::new(
                RedisShare::new(url.as_str(), &self.config.redis.key_prefix)
                    .with_context(|| format!("cannot use Redis at {}", redact_url(url)))?,
            ),
            None => Arc::new(LocalShare::default()),
        };
        Ok(self.token_share.get_or_init(|| share).clone())
    }

    /// The admin service's state. `proxy_in_process`: the proxy runs in this process (`hub up`),
    /// so its in-process breaker state is visible; an admin running alone sees breakers only
    /// through Redis, and otherwise reports none rather than an empty state of its own.
    pub async fn admin_state(&self, proxy_in_process: bool) -> anyhow::Result<AdminState> {
        let proxy_url = self.config.admin_proxy_url();
        let mut state = AdminState::new(
            self.store.clone(),
            self.vault.clone(),
            self.ca.cert_pem(),
            &self.admin_token()?,
            self.background.dlq.clone(),
            self.background.jobs.clone(),
        )
        .with_default_rate_limit(self.config.defaults.rate_limit_per_sec)
        .with_proxy(&proxy_url)
        .context("admin.proxy_url")?;
        if let Some(url) = &self.config.redis.url {
            state = state.with_redis(url).context("redis.url")?;
        }
        if proxy_in_process || self.config.redis.url.is_some() {
            state = state
                .with_shared_state(self.shared_state().await?)
                .with_token_share(self.token_share()?);
        }
        tracing::info!(proxy = %proxy_url, "POST /call goes through this proxy");
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("sqlite://./data/hub.db?mode=rwc"),
            "sqlite://./data/hub.db?mode=rwc"
        );
    }
}
