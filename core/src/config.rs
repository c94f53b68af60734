//! The hub's typed configuration: one YAML file (`config/hub.yaml` is the documented default,
//! `--config FILE` or `HUB_CONFIG` picks another) overlaid with `HUB_*` environment variables.
//!
//! Every key is documented on its field below; unknown keys are rejected with the key named.
//! Secrets (admin token, master keys) are never read from the YAML itself: they come from the
//! environment or from a mounted file the YAML points at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::provider::DEFAULT_RATE_LIMIT_PER_SEC;

mod work;

pub use work::{CallbackConfig, DlqConfig, JobsConfig};

/// Default data directory (SQLite file, generated keys, CA, DLQ spool).
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default proxy listener.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:3128";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8080";
/// Default proxy metrics listener (admin-only).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";
/// Default registry poll period (SQLite has no notifications; PostgreSQL also polls as a backstop).
pub const DEFAULT_REGISTRY_POLL_MS: u64 = 500;
/// Default bound on cached leaf certificates.
pub const DEFAULT_LEAF_CACHE_SIZE: usize = 10_000;
/// Default leaf certificate lifetime.
pub const DEFAULT_LEAF_VALIDITY_HOURS: u32 = 24;
/// Default `proxy.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default `proxy.max_connections_per_source`.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 5_000;

/// A configuration problem; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a wrong type (serde names the key).
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// File name or `<inline>`.
        origin: String,
        /// serde's message, which names the key and the location.
        message: String,
    },
    /// An environment override is malformed.
    #[error("invalid environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A rule that spans fields is broken.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The key, dotted (`proxy.listen`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// Stable label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Parse { .. } => "parse",
            Self::Env { .. } => "env",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// The whole configuration tree (`hub.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// `data_dir` (env `HUB_DATA_DIR`, default `./data`): SQLite file, generated dev master key,
    /// hub CA, DLQ spool. Created on start with 0700 permissions.
    pub data_dir: PathBuf,
    /// The egress proxy service.
    pub proxy: ProxyConfig,
    /// The admin service.
    pub admin: AdminConfig,
    /// Registry and DLQ database.
    pub database: DatabaseConfig,
    /// Shared resilience state.
    pub redis: RedisConfig,
    /// Credential encryption keys.
    pub vault: VaultConfig,
    /// The hub CA that signs intercepted-TLS leaf certificates.
    pub ca: CaConfig,
    /// Hub-wide defaults for provider policy.
    pub defaults: DefaultsConfig,
    /// Dead-letter queue: retention, body limit, spool flushing.
    pub dlq: DlqConfig,
    /// The worker: DLQ replays, asynchronous jobs, callbacks, the work queue.
    pub jobs: JobsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `proxy:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// `proxy.listen` (env `HUB_PROXY_LISTEN`, default `127.0.0.1:3128`): where modules send
    /// `HTTP_PROXY`/`HTTPS_PROXY` traffic.
    pub listen: SocketAddr,
    /// `proxy.metrics_listen` (env `HUB_METRICS_LISTEN`, default `127.0.0.1:9090`): Prometheus
    /// `/metrics` for the proxy; keep it off the modules' network.
    pub metrics_listen: SocketAddr,
    /// `proxy.upstream_ca_file` (env `HUB_UPSTREAM_CA_FILE`): extra PEM roots trusted for upstream
    /// TLS, on top of the system roots (private CAs, tests).
    pub upstream_ca_file: Option<PathBuf>,
    /// `proxy.registry_poll_ms` (default 500): how often the proxy checks the registry revision.
    pub registry_poll_ms: u64,
    /// `proxy.leaf_cache_size` (default 10000): bound on cached minted leaf certificates.
    pub leaf_cache_size: usize,
    /// `proxy.leaf_validity_hours` (default 24): lifetime of minted leaves; they are renewed
    /// when less than a quarter of it remains.
    pub leaf_validity_hours: u32,
    /// `proxy.worker_threads` (env `HUB_PROXY_WORKER_THREADS`, default 0 = one per CPU): threads
    /// serving proxy connections, each a single-threaded runtime holding its connections from
    /// accept to close (no work stealing). At most 1024.
    pub worker_threads: usize,
    /// `proxy.max_connections` (env `HUB_PROXY_MAX_CONNECTIONS`, default 20000): open
    /// connections at most (tunnels included, ~44 KiB each when idle). A connection over the cap
    /// is answered `503` (`code: overloaded`) at once and closed; counted in
    /// `integration_connections_refused_total{reason="total"}`.
    pub max_connections: usize,
    /// `proxy.max_connections_per_source` (env `HUB_PROXY_MAX_CONNECTIONS_PER_SOURCE`, default
    /// 5000): open connections from one source address at most (one pod, one node behind SNAT);
    /// over it, the same `503` with `reason="per_source"`.
    pub max_connections_per_source: usize,
    /// `proxy.prefer_h2` (env `HUB_PROXY_PREFER_H2`, default false): inside tunnels the hub
    /// offers `http/1.1` and `h2` in ALPN; a module offering only `h2` (gRPC clients) always gets
    /// it. A module offering both gets HTTP/1.1 unless this is true. Off by default because the
    /// hub cannot answer `Expect: 100-continue` over h2 (Pingora 0.9 drops interim responses on
    /// h2), and a client that waits for the `100` there (Java's HttpClient with
    /// `expectContinue(true)`) hangs; turn it on when no module relies on that.
    pub prefer_h2: bool,
    /// `proxy.callers` (env `HUB_PROXY_CALLERS`, default `optional`): whether modules must
    /// identify themselves with a caller credential (`Proxy-Authorization`, see
    /// docs/MODULES.md). `off`: identities are ignored and every call is anonymous (no grants
    /// apply: the behaviour before callers existed). `optional`: a credential, when sent, must
    /// be valid (else `407`) and its caller's grants apply; a call without one is anonymous, in
    /// the default tenant, with no grant check; the hub logs loudly once that it allows that.
    /// `required`: a call without a valid caller credential gets `407 caller_unauthenticated`,
    /// and every call needs a grant. Production (deploy/) runs `required`.
    pub callers: CallersMode,
    /// `proxy.service_account_tokens` (default: none): verify Kubernetes projected
    /// ServiceAccount tokens sent as the caller credential (`Proxy-Authorization: Bearer <jwt>`,
    /// or as the Basic password), offline against the cluster's JWKS; a verified token is the
    /// caller mapped to its namespace/ServiceAccount (`serviceAccount` on the caller). Keys:
    /// see [`crate::satoken::SaTokenConfig`]. Without it, JWTs are refused like unknown tokens.
    pub service_account_tokens: Option<crate::satoken::SaTokenConfig>,
}

/// How the proxy treats caller identity (`proxy.callers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallersMode {
    /// Identities are ignored.
    Off,
    /// Anonymous calls allowed (default tenant, no grants); presented credentials are checked.
    #[default]
    Optional,
    /// Every call needs a valid caller credential and a grant.
    Required,
}

impl CallersMode {
    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }
}

impl std::str::FromStr for CallersMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            other => Err(format!("{other:?}: expected off, optional or required")),
        }
    }
}

/// `admin:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `admin.listen` (env `HUB_ADMIN_LISTEN`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `admin.token_file`: a mounted file holding the bootstrap admin token. The env
    /// `HUB_ADMIN_TOKEN` wins over it. With neither, `hub up` generates one into the data dir.
    pub token_file: Option<PathBuf>,
    /// `admin.proxy_url` (env `HUB_ADMIN_PROXY_URL`, default `http://` + `proxy.listen`, with an
    /// unspecified address such as `0.0.0.0` replaced by loopback): the hub proxy that
    /// `POST /api/v1/integrations/call` sends its calls through, so they take exactly the path
    /// proxied traffic takes. Plain `http://host:port`; with `hub admin` deployed apart from the
    /// proxy, point it at the proxy service.
    pub proxy_url: Option<String>,
}

/// `database:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `database.url` (env `HUB_DATABASE_URL`): `sqlite://…` or `postgres://…`. Default:
    /// `sqlite://<data_dir>/hub.db`.
    pub url: Option<String>,
}

/// `redis:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis.url` (env `HUB_REDIS_URL`): Redis/Valkey for breaker and rate-limit state shared
    /// between hub instances. Unset: in-process state.
    pub url: Option<String>,
    /// `redis.command_timeout_ms` (env `HUB_REDIS_COMMAND_TIMEOUT_MS`, default 50): the
    /// longest a request waits on one Redis call. Past it the request is decided by the local
    /// fallback at this instance's share of each limit, Redis is skipped for a second, and the
    /// call still completes in the background. Between 1 and 1000.
    pub command_timeout_ms: u64,
    /// `redis.fallback_instances` (env `HUB_REDIS_FALLBACK_INSTANCES`, default 1): how many hub
    /// instances the fallback assumes share the limits before it has counted them in Redis
    /// (Redis unreachable since start). Set it to the replica count. Between 1 and 10000.
    pub fallback_instances: u32,
    /// `redis.key_prefix` (env `HUB_REDIS_KEY_PREFIX`, default `hub:`): the start of every key
    /// the hub keeps in Redis (state, instance registry, registry snapshot copy), so several
    /// hub installations can share one Redis. 1 to 64 characters, no spaces.
    pub key_prefix: String,
}

/// `vault:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// `vault.keys_file` (env `HUB_MASTER_KEYS_FILE`): a mounted file holding the key ring in the
    /// `HUB_MASTER_KEYS` format. The env `HUB_MASTER_KEYS` wins over it. With neither, a dev key
    /// is generated into `<data_dir>/master.key` (0600) and the log says so loudly.
    pub keys_file: Option<PathBuf>,
}

/// `ca:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// `ca.cert_file` (env `HUB_CA_CERT_FILE`, default `<data_dir>/ca.pem`).
    pub cert_file: Option<PathBuf>,
    /// `ca.key_file` (env `HUB_CA_KEY_FILE`, default `<data_dir>/ca-key.pem`, 0600). When both
    /// files are missing the CA is generated on first start.
    pub key_file: Option<PathBuf>,
}

/// `defaults:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsConfig {
    /// `defaults.rate_limit_per_sec` (env `INTEGRATION_RATE_LIMIT_PER_SEC`, default 100): the
    /// rate limit of providers that set none.
    pub rate_limit_per_sec: u32,
}

/// `log:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `log.format` (env `HUB_LOG_FORMAT`): `json` (default) or `text`.
    pub format: LogFormat,
    /// `log.level` (env `HUB_LOG`, default `info`): a tracing filter, e.g. `info,hub_proxy=debug`.
    pub level: String,
    /// `log.otlp_endpoint` (env `HUB_OTLP_ENDPOINT`, or the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`): an OTLP/HTTP collector, e.g. `http://otel-collector:4318`;
    /// each call is exported as one span of its continued W3C trace. Unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `log.access_flush_ms` (env `HUB_LOG_ACCESS_FLUSH_MS`, default 50): access lines
    /// (`hub::access`, one per call) are written to stderr in batches at most this many
    /// milliseconds apart (or at 64 KiB), as nginx's `access_log ... buffer= flush=` does; a
    /// batch saves a `write(2)` per call. Warnings, errors and other lines are written at once,
    /// after what is pending. A crash loses at most this window of access lines. `0`: each
    /// access line is written at once. At most 10000.
    pub access_flush_ms: u64,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("default listen addresses parse")
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            proxy: ProxyConfig::default(),
            admin: AdminConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            vault: VaultConfig::default(),
            ca: CaConfig::default(),
            defaults: DefaultsConfig::default(),
            dlq: DlqConfig::default(),
            jobs: JobsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_PROXY_LISTEN),
            metrics_listen: addr(DEFAULT_METRICS_LISTEN),
            upstream_ca_file: None,
            registry_poll_ms: DEFAULT_REGISTRY_POLL_MS,
            leaf_cache_size: DEFAULT_LEAF_CACHE_SIZE,
            leaf_validity_hours: DEFAULT_LEAF_VALIDITY_HOURS,
            worker_threads: 0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            prefer_h2: false,
            callers: CallersMode::default(),
            service_account_tokens: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_ADMIN_LISTEN),
            token_file: None,
            proxy_url: None,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            command_timeout_ms: 50,
            fallback_instances: 1,
            key_prefix: "hub:".to_owned(),
        }
    }
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: DEFAULT_RATE_LIMIT_PER_SEC,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            otlp_endpoint: None,
            access_flush_ms: 50,
        }
    }
}

impl HubConfig {
    /// Parses YAML text (an empty document is all defaults).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Loads the configuration: `explicit` file if given, else `config/hub.yaml` when it exists,
    /// else defaults; then `HUB_*` overrides from the process environment; then [`Self::validate`].
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let default_path = Path::new("config/hub.yaml");
        let mut cfg = match explicit {
            Some(p) => Self::from_file(p)?,
            None if default_path.exists() => Self::from_file(default_path)?,
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies environment overrides read through `get` (injectable for tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                message: e.to_string(),
            })
        }
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("HUB_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("HUB_PROXY_LISTEN") {
            self.proxy.listen = parse("HUB_PROXY_LISTEN", &v)?;
        }
        if let Some(v) = get("HUB_METRICS_LISTEN") {
            self.proxy.metrics_listen = parse("HUB_METRICS_LISTEN", &v)?;
        }
        if let Some(v) = get("HUB_ADMIN_LISTEN") {
            self.admin.listen = parse("HUB_ADMIN_LISTEN", &v)?;
        }
        if let Some(v) = get("HUB_ADMIN_PROXY_URL") {
            self.admin.proxy_url = Some(v.trim().to_owned());
        }
        if let Some(v) = get("HUB_UPSTREAM_CA_FILE") {
            self.proxy.upstream_ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("HUB_DATABASE_URL") {
            self.database.url = Some(v);
        }
        if let Some(v) = get("HUB_REDIS_URL") {
            self.redis.url = Some(v);
        }
        if let Some(v) = get("HUB_REDIS_COMMAND_TIMEOUT_MS") {
            self.redis.command_timeout_ms = parse("HUB_REDIS_COMMAND_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("HUB_REDIS_KEY_PREFIX") {
            self.redis.key_prefix = v.trim().to_owned();
        }
        if let Some(v) = get("HUB_REDIS_FALLBACK_INSTANCES") {
            self.redis.fallback_instances = parse("HUB_REDIS_FALLBACK_INSTANCES", &v)?;
        }
        if let Some(v) = get("HUB_MASTER_KEYS_FILE") {
            self.vault.keys_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("HUB_CA_CERT_FILE") {
            self.ca.cert_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("HUB_CA_KEY_FILE") {
            self.ca.key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("INTEGRATION_RATE_LIMIT_PER_SEC") {
            self.defaults.rate_limit_per_sec = parse("INTEGRATION_RATE_LIMIT_PER_SEC", &v)?;
        }
        if let Some(v) = get("HUB_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                other => {
                    return Err(ConfigError::Env {
                        var: "HUB_LOG_FORMAT",
                        message: format!("{other:?}: expected json or text"),
                    });
                }
            };
        }
        if let Some(v) = get("HUB_LOG") {
            self.log.level = v;
        }
        if let Some(v) = get("HUB_OTLP_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            self.log.otlp_endpoint = Some(v);
        }
        if let Some(v) = get("HUB_PROXY_MAX_CONNECTIONS") {
            self.proxy.max_connections = parse("HUB_PROXY_MAX_CONNECTIONS", &v)?;
        }
        if let Some(v) = get("HUB_PROXY_MAX_CONNECTIONS_PER_SOURCE") {
            self.proxy.max_connections_per_source =
                parse("HUB_PROXY_MAX_CONNECTIONS_PER_SOURCE", &v)?;
        }
        if let Some(v) = get("HUB_PROXY_CALLERS") {
            self.proxy.callers = parse("HUB_PROXY_CALLERS", &v)?;
        }
        if let Some(v) = get("HUB_PROXY_PREFER_H2") {
            self.proxy.prefer_h2 = parse("HUB_PROXY_PREFER_H2", &v)?;
        }
        if let Some(v) = get("HUB_PROXY_WORKER_THREADS") {
            self.proxy.worker_threads = parse("HUB_PROXY_WORKER_THREADS", &v)?;
        }
        if let Some(v) = get("HUB_LOG_ACCESS_FLUSH_MS") {
            self.log.access_flush_ms = parse("HUB_LOG_ACCESS_FLUSH_MS", &v)?;
        }
        work::apply_env(&mut self.dlq, &mut self.jobs, &get)?;
        Ok(())
    }

    /// Rules that span fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.proxy.listen == self.admin.listen {
            return invalid("admin.listen", "must differ from proxy.listen");
        }
        if self.proxy.metrics_listen == self.proxy.listen
            || self.proxy.metrics_listen == self.admin.listen
        {
            return invalid(
                "proxy.metrics_listen",
                "must differ from proxy.listen and admin.listen",
            );
        }
        if !(50..=60_000).contains(&self.proxy.registry_poll_ms) {
            return invalid("proxy.registry_poll_ms", "must be between 50 and 60000");
        }
        if self.proxy.leaf_cache_size == 0 {
            return invalid("proxy.leaf_cache_size", "must be at least 1");
        }
        if self.proxy.max_connections == 0 || self.proxy.max_connections_per_source == 0 {
            return invalid(
                "proxy.max_connections",
                "max_connections and max_connections_per_source must be at least 1",
            );
        }
        if self.proxy.worker_threads > 1024 {
            return invalid("proxy.worker_threads", "must be at most 1024");
        }
        if !(1..=24 * 90).contains(&self.proxy.leaf_validity_hours) {
            return invalid("proxy.leaf_validity_hours", "must be between 1 and 2160");
        }
        if !(1..=1_000_000).contains(&self.defaults.rate_limit_per_sec) {
            return invalid(
                "defaults.rate_limit_per_sec",
                "must be between 1 and 1000000",
            );
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return invalid("database.url", "must start with sqlite: or postgres://");
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return invalid("redis.url", "must start with redis:// or rediss://");
        }
        if !(1..=1_000).contains(&self.redis.command_timeout_ms) {
            return invalid("redis.command_timeout_ms", "must be between 1 and 1000");
        }
        if !(1..=10_000).contains(&self.redis.fallback_instances) {
            return invalid("redis.fallback_instances", "must be between 1 and 10000");
        }
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return invalid(
                "redis.key_prefix",
                "must be 1 to 64 characters without spaces",
            );
        }
        if let Some(url) = &self.admin.proxy_url
            && !valid_proxy_url(url)
        {
            return invalid(
                "admin.proxy_url",
                "must be http://host:port (the hub proxy's plain listener)",
            );
        }
        if self.ca.cert_file.is_some() != self.ca.key_file.is_some() {
            return invalid("ca.key_file", "ca.cert_file and ca.key_file go together");
        }
        if self.log.access_flush_ms > 10_000 {
            return invalid("log.access_flush_ms", "must be at most 10000");
        }
        if let Some(url) = &self.log.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid("log.otlp_endpoint", "must start with http:// or https://");
        }
        if tracing_filter_is_empty(&self.log.level) {
            return invalid("log.level", "must not be empty");
        }
        work::validate(&self.dlq, &self.jobs)?;
        Ok(())
    }

    /// The database URL in force (the SQLite default lives in the data dir).
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("hub.db").display()
            )
        })
    }

    /// The proxy URL `POST /call` goes through: `admin.proxy_url`, else `http://` +
    /// `proxy.listen` (an unspecified address becomes the loopback of its family).
    pub fn admin_proxy_url(&self) -> String {
        if let Some(url) = &self.admin.proxy_url {
            return url.clone();
        }
        let mut listen = self.proxy.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(match listen.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{listen}")
    }

    /// The DLQ spool directory: `<data_dir>/dlq-spool`.
    pub fn dlq_spool_dir(&self) -> PathBuf {
        self.data_dir.join("dlq-spool")
    }

    /// The CA certificate path in force.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca
            .cert_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca.pem"))
    }

    /// The CA key path in force.
    pub fn ca_key_path(&self) -> PathBuf {
        self.ca
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca-key.pem"))
    }
}

/// `http://authority[/]`: no path, query, userinfo or TLS (the proxy listener is plain HTTP).
fn valid_proxy_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' '])
        && crate::provider::split_host_port(authority).is_some_and(|(h, _)| !h.is_empty())
}

fn tracing_filter_is_empty(level: &str) -> bool {
    level.trim().is_empty()
}

#[cfg(test)]
mod tests;
