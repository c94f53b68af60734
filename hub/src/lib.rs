//! The one `hub` command: `up` (proxy and admin in one process, the embedded default),
//! `proxy` and `admin` (the two services as deployed separately), `migrate`, `rotate-keys`,
//! `keys generate`.

mod bootstrap;
mod logsink;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hub_core::config::{HubConfig, LogFormat};
use hub_proxy::{ProxyOptions, ProxyServer, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use bootstrap::{Hub, StoreOpen};

/// Integration Hub: the platform's single point of exit to third-party APIs.
#[derive(Debug, Parser)]
#[command(name = "hub", version, about)]
pub struct Cli {
    /// Configuration file (default: `config/hub.yaml` when it exists, else built-in defaults).
    #[arg(long, global = true, env = "HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Proxy and admin in one process; applies migrations. The embedded default for a laptop.
    Up,
    /// The egress proxy alone (production).
    Proxy,
    /// The admin API alone (production).
    Admin,
    /// Apply database migrations and exit.
    Migrate,
    /// Re-encrypt every stored credential under the active master key.
    RotateKeys,
    /// Print a new master key entry (`id:base64`) for HUB_MASTER_KEYS.
    GenerateKey {
        /// Key id, e.g. `k2026`.
        id: String,
    },
}

/// Runs a parsed command line; the exit code says how it went.
pub fn run(cli: Cli) -> ExitCode {
    if let Command::GenerateKey { id } = &cli.command {
        return match hub_core::vault::Vault::generate_spec_entry(id) {
            Ok(entry) => {
                println!("{}", entry.expose());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hub: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match HubConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run_command(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "hub failed");
            ExitCode::FAILURE
        }
    };
    if let Some(sink) = LOG_SINK.get() {
        sink.flush();
    }
    code
}

/// Pingora's own DEBUG/TRACE lines print whole upstream request heads, which carry injected
/// query-string credentials: its crates are capped at `info` whatever `log.level` asks for.
const SECRET_SAFE_CAPS: &str =
    "pingora=info,pingora_core=info,pingora_proxy=info,pingora_http=info";

/// The tracing filter for `level` (falls back to `info` when it does not parse), with the caps
/// that keep credentials out of third-party debug output.
pub fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(format!("{level},{SECRET_SAFE_CAPS}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{SECRET_SAFE_CAPS}")))
}

/// Logs go straight to stderr, one `write` per line. A background writer thread
/// (tracing-appender) was tried and measured worse: its channel spins with `sched_yield`
/// (2.4 calls per request at one connection), costing more than the write it moved.
/// The process's log output, flushed once more at exit.
static LOG_SINK: std::sync::OnceLock<logsink::LogSink> = std::sync::OnceLock::new();

fn init_logging(config: &HubConfig) {
    let filter = log_filter(&config.log.level);
    let sink = LOG_SINK
        .get_or_init(|| logsink::LogSink::stderr(Duration::from_millis(config.log.access_flush_ms)))
        .clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    let _ = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run_command(command: Command, config: HubConfig) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            let hub = Hub::open(config, StoreOpen::Migrate).await?;
            tracing::info!(backend = hub.store.backend(), "migrations applied");
            Ok(())
        }
        Command::RotateKeys => {
            let hub = Hub::open(config, StoreOpen::Connect).await?;
            let report = hub_core::vault::rotate_keys(hub.store.as_ref(), &hub.vault).await?;
            tracing::info!(
                ?report,
                active_key = hub.vault.active_key_id(),
                "key rotation finished"
            );
            Ok(())
        }
        Command::Up => serve(Hub::open(config, StoreOpen::Migrate).await?, true, true).await,
        Command::Proxy => serve(Hub::open(config, StoreOpen::Lazy).await?, true, false).await,
        Command::Admin => serve(Hub::open(config, StoreOpen::Lazy).await?, false, true).await,
        Command::GenerateKey { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// Runs the selected services until SIGINT/SIGTERM.
async fn serve(hub: Hub, proxy: bool, admin: bool) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut proxy_parts = None;
    if proxy {
        let listener = TcpListener::bind(hub.config.proxy.listen)
            .await
            .with_context(|| {
                format!("cannot listen on proxy address {}", hub.config.proxy.listen)
            })?;
        let metrics_listener = TcpListener::bind(hub.config.proxy.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on metrics address {}",
                    hub.config.proxy.metrics_listen
                )
            })?;
        let started = start_proxy(&hub, stop_rx.clone()).await?;
        let server = started.server.clone();
        proxy_parts = Some(started);
        tracing::info!(listen = %listener.local_addr()?, "proxy listening (HTTP_PROXY / HTTPS_PROXY)");
        tracing::info!(listen = %metrics_listener.local_addr()?, "proxy metrics and probes listening (/metrics, /healthz, /readyz)");
        tasks.spawn(
            server
                .clone()
                .run_gauges(Duration::from_secs(1), stop_rx.clone()),
        );
        tasks.spawn(serve_proxy_ops(
            metrics_listener,
            server.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(server.serve(listener, stop_rx.clone()));
        if hub.config.jobs.workers > 0 {
            start_background(&hub, &mut tasks, stop_rx.clone())?;
        }
    }
    if admin {
        let listener = TcpListener::bind(hub.config.admin.listen)
            .await
            .with_context(|| {
                format!("cannot listen on admin address {}", hub.config.admin.listen)
            })?;
        tracing::info!(listen = %listener.local_addr()?, "admin API listening");
        let state = hub.admin_state(proxy).await?;
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            if let Err(e) = hub_admin::serve(listener, state, rx).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("drain timed out after 30 s");
    }
    if let Some(p) = proxy_parts {
        p.finish(Duration::from_secs(10)).await;
    }
    Ok(())
}

/// The proxy's admin-only listener: Prometheus `/metrics`, `/healthz`, `/readyz`.
pub async fn serve_proxy_ops(
    listener: TcpListener,
    server: Arc<ProxyServer>,
    mut stop: watch::Receiver<bool>,
) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    hub_proxy::metrics::METRICS.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let server = server.clone();
                async move {
                    let (ready, body) = server.readiness();
                    let code = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, axum::Json(body))
                }
            }),
        );
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

/// How long the proxy waits for the store at start before it routes from its last-known-good
/// registry file instead.
pub const STARTUP_STORE_WAIT: Duration = Duration::from_secs(2);

/// The proxy and its DLQ writer.
pub struct Proxy {
    /// The proxy.
    pub server: Arc<ProxyServer>,
    dlq: hub_core::dlq::DlqSender,
    writer: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// After the proxy has drained: the DLQ writer spools what is queued, the drainer stores
    /// what the database takes, and the rest is handed over to Valkey when configured (bounded
    /// by `within`).
    pub async fn finish(self, within: Duration) {
        self.dlq.finish();
        if tokio::time::timeout(within, self.writer).await.is_err() {
            tracing::warn!(
                ?within,
                "the DLQ writer did not finish in time; the spool keeps the rest"
            );
        }
    }
}

/// Loads the registry (from the store, else from the last-known-good file), starts its
/// refresher and builds the proxy with the DLQ writer.
pub async fn start_proxy(hub: &Hub, stop: watch::Receiver<bool>) -> anyhow::Result<Proxy> {
    let registry = load_registry(hub, stop).await?;
    // The DLQ writer: failed calls are spooled (fsync'd) before their 502/504 is answered.
    let (dlq, writer) = hub
        .background
        .spawn_writer()
        .context("cannot open the DLQ spool")?;
    let opts = proxy_options(hub, Arc::new(dlq.clone())).await?;
    Ok(Proxy {
        server: ProxyServer::new(registry, hub.ca.clone(), &opts)?,
        dlq,
        writer,
    })
}

/// The proxy's registry: loaded from the store (else from the last-known-good snapshot, in the
/// data dir or in Redis) and kept fresh by a refresher until `stop`.
pub async fn load_registry(
    hub: &Hub,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Registry>> {
    let snapshot_file = hub.config.data_dir.join(hub_core::store::snapshot::FILE);
    let mut registry = Registry::new(hub.store.clone(), hub.vault.clone())
        .with_snapshot_file(snapshot_file.clone());
    if let Some(url) = &hub.config.redis.url {
        let copy = hub_core::store::snapshot::RedisCopy::new(url, &hub.config.redis.key_prefix)
            .context("redis.url")?;
        registry = registry.with_redis_copy(copy);
    }
    let registry = Arc::new(registry);
    if let Err(why) = registry.refresh_within(STARTUP_STORE_WAIT).await {
        let loaded = registry
            .load_last_known_good()
            .await
            .context("the store is unreachable and the registry snapshot cannot be read")?;
        if !loaded {
            anyhow::bail!(
                "cannot load the provider registry: the store is unreachable ({why}) and there is \
                 no last-known-good snapshot at {} nor in Redis (a proxy writes both once it has \
                 reached the store). Restore the database connection, or copy the file from \
                 another replica",
                snapshot_file.display()
            );
        }
        tracing::warn!(error = %why, "store unreachable at start: routing from the last-known-good registry snapshot; reconnecting in the background");
    }
    let period = Duration::from_millis(hub.config.proxy.registry_poll_ms);
    let url = hub.config.database_url();
    let wake = url.starts_with("postgres").then(|| {
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(hub_core::store::watch_registry(url, wake.clone()));
        wake
    });
    tokio::spawn(registry.clone().run_refresher(period, wake, stop));
    Ok(registry)
}

/// The proxy's options from the configuration, failed calls going to `exhausted`.
pub async fn proxy_options(
    hub: &Hub,
    exhausted: Arc<dyn hub_core::dlq::DeadLetterSink>,
) -> anyhow::Result<ProxyOptions> {
    let state = hub.shared_state().await?;
    let tokens = hub_proxy::oauth::Tokens::new(hub_proxy::oauth::TokensOptions {
        share: hub.token_share()?,
        vault: hub.vault.clone(),
        store: Some(hub.store.clone()),
        state: state.clone(),
        extra_roots: hub.config.proxy.upstream_ca_file.clone(),
    })?;
    Ok(ProxyOptions {
        tokens: Some(Arc::new(tokens)),
        state,
        jitter: Arc::new(hub_core::state::RandomJitter),
        hub_default_rate: hub.config.defaults.rate_limit_per_sec,
        replay_limit: hub_proxy::forward::DEFAULT_REPLAY_LIMIT,
        exhausted: Some(exhausted),
        jobs: Some(hub.background.jobs.clone()),
        spans: hub.config.log.otlp_endpoint.as_deref().map(|endpoint| {
            tracing::info!(endpoint, "exporting call spans over OTLP/HTTP");
            hub_core::otlp::OtlpExporter::spawn(endpoint, "integration-hub")
        }),
        upstream_ca_file: hub.config.proxy.upstream_ca_file.clone(),
        data_dir: hub.config.data_dir.clone(),
        leaf_cache_size: hub.config.proxy.leaf_cache_size,
        leaf_validity: Duration::from_secs(u64::from(hub.config.proxy.leaf_validity_hours) * 3600),
        worker_threads: Some(match hub.config.proxy.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }),
        limits: hub_proxy::serve::ConnLimits {
            total: hub.config.proxy.max_connections,
            per_source: hub.config.proxy.max_connections_per_source,
        },
        prefer_h2: hub.config.proxy.prefer_h2,
        gate: callers_gate(hub).await?,
    })
}

/// The proxy's caller gate (`proxy.callers`), saying loudly when anonymous calls are allowed.
async fn callers_gate(hub: &Hub) -> anyhow::Result<hub_proxy::callers::Gate> {
    use hub_core::config::CallersMode;
    match hub.config.proxy.callers {
        CallersMode::Required => {
            tracing::info!("callers: required (every call needs a caller credential and a grant)");
        }
        CallersMode::Optional => tracing::warn!(
            "callers: optional: calls WITHOUT a caller credential are allowed (default tenant, \
             no grant check); set proxy.callers: required in production"
        ),
        CallersMode::Off => tracing::warn!(
            "callers: off: caller credentials and grants are ignored; every call is anonymous"
        ),
    }
    let sa = match hub.config.proxy.service_account_tokens.clone() {
        None => None,
        Some(config) => {
            let verifier = hub_core::satoken::SaVerifier::new(config)
                .await
                .map_err(|e| anyhow::anyhow!("proxy.service_account_tokens: {e}"))?;
            Some(Arc::new(verifier))
        }
    };
    Ok(hub_proxy::callers::Gate::with_internal(
        hub.config.proxy.callers,
        sa,
        hub.vault.internal_caller_hashes(),
    ))
}

/// Starts the DLQ/jobs worker (sending through this process's proxy) and the retention job.
pub fn start_background(
    hub: &Hub,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let proxy_url = hub.config.admin_proxy_url();
    let worker = hub
        .background
        .worker(
            hub.store.clone(),
            &proxy_url,
            hub.background.worker_options(),
        )
        .context("cannot build the worker's client for the proxy")?;
    tasks.spawn(worker.run(stop.clone()));
    tasks.spawn(hub.background.retention().run(stop));
    tracing::info!(proxy = %proxy_url, queue = hub.background.queue.backend(),
        "DLQ/jobs worker and retention job started");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
