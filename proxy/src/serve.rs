//! Ingress: the proxy's accept loop. Pingora has no CONNECT endpoint of its own, so each
//! connection is classified here: a CONNECT head is answered by the hub (route check, `200`,
//! TLS termination with a minted leaf) and the decrypted stream is handed to the shared Pingora
//! `HttpProxy` request by request (keep-alive, pipelined requests answered in order), with the
//! tunnel target as connection context; anything else is rewound and handed to the same
//! `HttpProxy` as plain HTTP (absolute-form). Every request head passes [`guard`] (size and
//! time bounds); connections are capped in total and per source address ([`ConnLimits`]).
//!
//! A refused CONNECT (unknown or disabled provider, forbidden port) is still accepted: the hub
//! completes the TLS handshake with a leaf for the refused name (bounded, see
//! `tls::RefusalLeaves`), answers the first request with the problem+json and closes, so the
//! module's HTTP client shows the status and the `code`. Nothing is dialled or resolved.

/// Implements Pingora's per-stream traits (everything `IO` needs but the reads, writes and
/// `Shutdown`) for a wrapper `$t<S>` by delegating to its `inner` stream.
macro_rules! delegate_stream_traits {
    ($t:ident) => {
        impl<S: pingora::protocols::UniqueID> pingora::protocols::UniqueID for $t<S> {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl<S: pingora::protocols::Ssl> pingora::protocols::Ssl for $t<S> {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }

            fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        #[async_trait::async_trait]
        impl<S: pingora::protocols::Peek + Send> pingora::protocols::Peek for $t<S> {
            async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
                self.inner.try_peek(buf).await
            }
        }

        impl<S: pingora::protocols::GetTimingDigest> pingora::protocols::GetTimingDigest for $t<S> {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl<S: pingora::protocols::GetProxyDigest> pingora::protocols::GetProxyDigest for $t<S> {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                self.inner.set_proxy_digest(digest);
            }
        }

        impl<S: pingora::protocols::GetSocketDigest> pingora::protocols::GetSocketDigest for $t<S> {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                self.inner.set_socket_digest(digest);
            }
        }
    };
}

mod coalesce;
pub mod guard;
pub mod h2;
mod passthrough;
mod tls;
mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hub_core::ca::HubCa;
use hub_core::provider::{TlsMode, normalize_host, split_host_port};
use hub_core::state::{Jitter, SharedState};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Ssl};
use pingora::proxy::{HttpProxy, http_proxy};
use pingora::server::configuration::ServerConf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use coalesce::Coalesced;
pub use tls::{LeafResolver, RefusalLeaves};
use workers::Workers;

use crate::forward::{Forwarder, ForwarderOptions};
use crate::metrics::OPEN_TUNNELS;
use crate::pipeline::{ConnCtx, HubProxy, TunnelTarget, route};
use crate::problem::Problem;
use crate::registry::Registry;
use guard::{Guarded, HeadControl};
use hub_core::dlq::DeadLetterSink;
use hub_core::jobs::JobSubmitter;

/// Largest CONNECT head accepted.
pub const MAX_CONNECT_HEAD: usize = 16 * 1024;
/// Time allowed for a client to send its first bytes / its CONNECT head.
pub const HEAD_TIMEOUT: Duration = guard::HEAD_TIMEOUT;
/// Time allowed for the TLS handshake inside a tunnel.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive time on a connection, seconds.
pub const KEEPALIVE_SECS: u64 = 60;

/// Caps on open connections. A connection over a cap is closed at accept with a `503`
/// (`code: overloaded`, written without waiting) and counted in
/// `integration_connections_refused_total{reason}`; the hub keeps serving the others.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at most (`proxy.max_connections`).
    pub total: usize,
    /// Open connections from one source address at most (`proxy.max_connections_per_source`).
    pub per_source: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            total: hub_core::config::DEFAULT_MAX_CONNECTIONS,
            per_source: hub_core::config::DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Connections in flight, for the caps and for draining on shutdown.
#[derive(Default)]
struct Active {
    count: std::sync::atomic::AtomicUsize,
    per_source: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    idle: tokio::sync::Notify,
}

/// One live connection; dropping it (also when its task is cancelled) releases it.
struct ActiveGuard(Arc<Active>, std::net::IpAddr);

impl Active {
    /// Admits a connection from `ip` within `limits`; `Err` names the cap that refused it.
    fn enter(
        this: &Arc<Self>,
        ip: std::net::IpAddr,
        limits: ConnLimits,
    ) -> Result<ActiveGuard, &'static str> {
        if this.count.load(Ordering::Acquire) >= limits.total {
            return Err("total");
        }
        {
            let mut per = this.per_source.lock().expect("per-source lock");
            let n = per.entry(ip).or_insert(0);
            if *n >= limits.per_source {
                return Err("per_source");
            }
            *n += 1;
        }
        this.count.fetch_add(1, Ordering::AcqRel);
        Ok(ActiveGuard(this.clone(), ip))
    }

    async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        {
            let mut per = self.0.per_source.lock().expect("per-source lock");
            if let Some(n) = per.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&self.1);
                }
            }
        }
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Answers a CONNECT with `200` and completes the TLS handshake inside the tunnel, within
/// [`TLS_HANDSHAKE_TIMEOUT`]; `None` when the client goes away or sends no good TLS.
async fn establish(
    mut stream: L4Stream,
    acceptor: &Acceptor,
    peer: SocketAddr,
    target: &TunnelTarget,
) -> Option<pingora::protocols::tls::TlsStream<Coalesced<L4Stream>>> {
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .ok()?;
    match tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
        acceptor.tls_handshake(Coalesced::new(stream)),
    )
    .await
    {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, host = %target.host, error = %e, "TLS handshake inside tunnel failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, host = %target.host, "TLS handshake inside tunnel timed out");
            None
        }
    }
}

/// Counts an open tunnel for as long as it lives (also when its task is dropped).
struct TunnelGuard;

impl TunnelGuard {
    fn new() -> Self {
        OPEN_TUNNELS.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        OPEN_TUNNELS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proxy settings.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Shared breaker and rate-limit state (in-process or Redis).
    pub state: Arc<dyn SharedState>,
    /// Backoff jitter (the real random one in production; fixed in tests).
    pub jitter: Arc<dyn Jitter>,
    /// The rate limit of providers that set none (`INTEGRATION_RATE_LIMIT_PER_SEC`).
    pub hub_default_rate: u32,
    /// Largest request body kept for replay across attempts.
    pub replay_limit: usize,
    /// Where exhausted calls go (the DLQ writer).
    pub exhausted: Option<Arc<dyn DeadLetterSink>>,
    /// Where `Prefer: respond-async` calls are persisted as jobs; `None` = served synchronously.
    pub jobs: Option<Arc<dyn JobSubmitter>>,
    /// OTLP trace export (one span per call); `None` = off.
    pub spans: Option<hub_core::otlp::OtlpExporter>,
    /// Extra PEM roots trusted for upstream TLS on top of the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Where derived files (the combined root bundle) go.
    pub data_dir: PathBuf,
    /// Bound on cached leaves.
    pub leaf_cache_size: usize,
    /// Leaf lifetime.
    pub leaf_validity: Duration,
    /// Connection threads, each a single-threaded runtime (see `serve/workers.rs`); `None` runs
    /// connections on the runtime that calls [`ProxyServer::serve`] (tests on a paused clock).
    pub worker_threads: Option<usize>,
    /// Caps on open connections.
    pub limits: ConnLimits,
    /// Give `h2` to modules that offer both it and HTTP/1.1 (`proxy.prefer_h2`).
    pub prefer_h2: bool,
    /// Caller credentials and grants (`proxy.callers`).
    pub gate: crate::callers::Gate,
    /// OAuth2 access tokens (`None`: calls to OAuth2 providers get 503).
    pub tokens: Option<Arc<crate::oauth::Tokens>>,
}

/// The running proxy's shared parts.
pub struct ProxyServer {
    app: Arc<HttpProxy<HubProxy>>,
    state: Arc<dyn SharedState>,
    hub_default_rate: u32,
    acceptor: Acceptor,
    refusal_acceptor: Acceptor,
    refusals: Arc<RefusalLeaves>,
    registry: Arc<Registry>,
    resolver: Arc<LeafResolver>,
    /// Resolves and checks passthrough destinations (calls resolve in the pipeline).
    egress: crate::escape::Resolver,
    workers: Option<Workers>,
    limits: ConnLimits,
    /// The DLQ spool's gauges, when failed calls go to the writer.
    spool: Option<hub_core::dlq::spool::SpoolStats>,
    /// Ends upgraded connections and passthrough tunnels a grace after the drain starts.
    drain: crate::upgraded::Drain,
    /// Caller credentials and grants.
    gate: crate::callers::Gate,
}

/// Writes system roots plus `extra` into one PEM bundle under `data_dir` (Pingora's connector
/// takes one CA file that replaces the system roots, so the union is built here).
fn combined_roots(extra: &Path, data_dir: &Path) -> anyhow::Result<PathBuf> {
    use base64::Engine;
    let mut pem = String::new();
    let native = pingora::tls::load_native_certs().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot load system root certificates");
        Vec::new()
    });
    for cert in native {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let extra_pem = std::fs::read_to_string(extra)
        .map_err(|e| anyhow::anyhow!("cannot read upstream CA file {}: {e}", extra.display()))?;
    if !extra_pem.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!(
            "upstream CA file {} holds no PEM certificate",
            extra.display()
        );
    }
    pem.push_str(&extra_pem);
    std::fs::create_dir_all(data_dir)?;
    let out = data_dir.join("upstream-roots.pem");
    std::fs::write(&out, pem)?;
    Ok(out)
}

impl ProxyServer {
    /// Builds the proxy over `registry`, minting leaves from `ca`.
    pub fn new(
        registry: Arc<Registry>,
        ca: Arc<HubCa>,
        opts: &ProxyOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let mut conf = ServerConf::default();
        if let Some(extra) = &opts.upstream_ca_file {
            conf.ca_file = Some(combined_roots(extra, &opts.data_dir)?.display().to_string());
        }
        // Pingora's `max_retries` counts tries, the first included: 1 = no Pingora-level retry.
        // Retries are the hub's own policy (resilience), not Pingora's.
        conf.max_retries = 1;
        let conf = Arc::new(conf);
        let drain = crate::upgraded::Drain::default();
        let forwarder = Arc::new(Forwarder::new(
            &conf,
            ForwarderOptions {
                state: opts.state.clone(),
                jitter: opts.jitter.clone(),
                hub_default_rate: opts.hub_default_rate,
                replay_limit: opts.replay_limit,
                exhausted: opts.exhausted.clone(),
                drain: drain.clone(),
                tokens: opts.tokens.clone(),
            },
        ));
        let app = Arc::new(http_proxy(
            &conf,
            HubProxy::new(
                registry.clone(),
                forwarder,
                opts.jobs.clone(),
                opts.spans.clone(),
            )
            .with_gate(opts.gate.clone()),
        ));
        let resolver = Arc::new(LeafResolver::new(
            ca.clone(),
            registry.clone(),
            opts.leaf_cache_size,
            opts.leaf_validity,
        ));
        let acceptor =
            Acceptor::from_server_config(tls::server_config(resolver.clone(), opts.prefer_h2)?);
        let refusals = Arc::new(RefusalLeaves::new(ca));
        let refusal_acceptor =
            Acceptor::from_server_config(tls::server_config(refusals.clone(), opts.prefer_h2)?);
        let workers = match opts.worker_threads {
            Some(n) => Some(
                Workers::start(n)
                    .map_err(|e| anyhow::anyhow!("cannot start the proxy's threads: {e}"))?,
            ),
            None => None,
        };
        Ok(Arc::new(Self {
            app,
            state: opts.state.clone(),
            hub_default_rate: opts.hub_default_rate,
            acceptor,
            refusal_acceptor,
            refusals,
            registry,
            resolver,
            egress: crate::escape::Resolver::default(),
            workers,
            limits: opts.limits,
            spool: opts.exhausted.as_ref().and_then(|s| s.spool_stats()),
            drain,
            gate: opts.gate.clone(),
        }))
    }

    /// The leaf resolver (cache statistics).
    pub fn leaves(&self) -> &LeafResolver {
        &self.resolver
    }

    /// Readiness: the proxy can route once a registry is loaded, from the store or from the
    /// last-known-good file. A store or Redis outage does not make it unready: it keeps serving
    /// from its snapshot and local state, and failing every replica's probe at once would turn a
    /// degraded dependency into an outage. Answers at once: it never asks the store or Redis, it
    /// reports what the background checks last observed. The body says what is degraded.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let loaded = self.registry.loaded();
        let status = self.registry.status();
        let stats = self.state.stats();
        let mut body = serde_json::json!({
            "ready": loaded,
            "registryLoaded": loaded,
            "registrySource": status.registry_source,
            "registryRevision": status.registry_revision,
            "registryAgeSeconds": status.registry_age_seconds,
            "providers": status.providers,
            "store": status.store,
            "stateBackendErrors": stats.errors,
        });
        if let Some(spool) = &self.spool {
            body["dlqSpool"] = serde_json::json!({
                "entries": spool.entries(),
                "bytes": spool.bytes(),
                "maxBytes": spool.max_bytes(),
            });
        }
        (loaded, body)
    }

    /// Refreshes the gauges that mirror shared state (breaker state per provider, backend
    /// counters, registry size) every `period` until `shutdown`.
    pub async fn run_gauges(
        self: Arc<Self>,
        period: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        use crate::metrics::METRICS;
        use hub_core::state::{CircuitState, Policy};
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let snap = self.registry.snapshot();
            METRICS
                .providers
                .set(i64::try_from(snap.len()).unwrap_or(i64::MAX));
            let status = self.registry.status();
            METRICS
                .registry_age
                .set(i64::try_from(status.registry_age_seconds).unwrap_or(i64::MAX));
            METRICS.registry_from_snapshot.set(i64::from(
                status.registry_source == crate::registry::RegistrySource::Snapshot,
            ));
            METRICS.store_available.set(i64::from(
                status.store == crate::registry::StoreState::Available,
            ));
            if let Some(spool) = &self.spool {
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                METRICS.dlq_spool_bytes.set(gauge(spool.bytes()));
                METRICS.dlq_spool_entries.set(gauge(spool.entries()));
                METRICS.dlq_spool_max_bytes.set(gauge(spool.max_bytes()));
                crate::metrics::catch_up(&METRICS.dlq_rejected, spool.rejected());
                crate::metrics::catch_up(&METRICS.dlq_handed_over, spool.handed_over());
                crate::metrics::catch_up(&METRICS.dlq_taken_over, spool.taken_over());
            }
            for p in snap.providers() {
                let policy = Policy::from_config(&p.config, self.hub_default_rate);
                let s = self.state.snapshot(p.id, &policy).await;
                let v = match s.breaker.state {
                    CircuitState::Closed => 0,
                    CircuitState::HalfOpen => 1,
                    CircuitState::Open => 2,
                };
                METRICS.circuit_state.with_label_values(&[&p.name]).set(v);
                METRICS
                    .circuit_open
                    .with_label_values(&[&p.name])
                    .set(i64::from(v != 0));
            }
            let stats = self.state.stats();
            crate::metrics::catch_up(&METRICS.state_errors, stats.errors);
            crate::metrics::catch_up(&METRICS.state_round_trips, stats.round_trips);
            crate::metrics::catch_up(&METRICS.state_fallbacks, stats.fallbacks);
            crate::metrics::catch_up_ms(&METRICS.state_fallback_seconds, stats.fallback_ms);
            METRICS.state_in_fallback.set(i64::from(stats.in_fallback));
            METRICS.state_instances.set(i64::from(stats.instances));
        }
    }

    /// Accepts connections until `shutdown` flips to `true`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let active = Arc::new(Active::default());
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let guard = match Active::enter(&active, peer.ip(), self.limits) {
                        Ok(g) => g,
                        Err(reason) => {
                            crate::metrics::METRICS
                                .connections_refused
                                .with_label_values(&[reason])
                                .inc();
                            let p = Problem::new(
                                hub_core::wire::problem::OVERLOADED,
                                "the hub has too many open connections; retry later",
                            );
                            // Best effort and never waiting: the accept loop goes on.
                            let _ = tcp.try_write(&p.to_http1(None));
                            continue;
                        }
                    };
                    let this = self.clone();
                    let shutdown = shutdown.clone();
                    match &self.workers {
                        None => {
                            tokio::spawn(async move {
                                this.handle(tcp, peer, shutdown).await;
                                drop(guard);
                            });
                        }
                        Some(workers) => {
                            // The socket moves to the worker's own reactor.
                            let Ok(std) = tcp.into_std() else { continue };
                            workers.spawn(async move {
                                if let Ok(tcp) = TcpStream::from_std(std) {
                                    this.handle(tcp, peer, shutdown).await;
                                }
                                drop(guard);
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Drain: no new connections; idle keep-alive sessions (tunnels included) are told to
        // end, and calls in flight finish (the caller of `serve` bounds how long this may take).
        drop(listener);
        self.drain.start();
        ServerApp::cleanup(self.app.as_ref()).await;
        let open = active.count.load(Ordering::Acquire);
        tracing::info!(open, "proxy stopped accepting; draining connections");
        active.drained().await;
        tracing::info!("proxy drained");
    }

    async fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        let _ = tcp.set_nodelay(true);
        let mut stream = L4Stream::from(tcp);
        let mut buf = Vec::with_capacity(1024);
        // Enough bytes to tell CONNECT from anything else.
        let read_prefix = async {
            let mut chunk = [0u8; 4096];
            while buf.len() < 8 && !buf.contains(&b'\n') {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(HEAD_TIMEOUT, read_prefix).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        if !buf.starts_with(b"CONNECT ") {
            stream.rewind(&buf);
            let control = Arc::new(HeadControl::default());
            let stream = Guarded::new(Coalesced::new(stream), control.clone());
            self.serve_http(Box::new(stream), control, None, &shutdown)
                .await;
            return;
        }
        let (target, head_len, credential) =
            match self.read_connect_head(&mut stream, &mut buf).await {
                Ok(t) => t,
                Err(Some(problem)) => {
                    let _ = stream.write_all(&problem.to_http1(None)).await;
                    let _ = stream.shutdown().await;
                    return;
                }
                Err(None) => return,
            };
        if buf.len() > head_len {
            stream.rewind(&buf[head_len..]);
        }
        let snap = self.registry.snapshot();
        // CONNECT authenticates the tunnel: every request inside is this caller's. A bad or
        // missing credential is answered to the CONNECT itself (407 + Proxy-Authenticate), so
        // clients that wait for the challenge (Java) send their credential and try again.
        let authenticated = self
            .gate
            .authenticate(&snap, credential.as_deref())
            .and_then(|identity| Ok((self.gate.current(&snap, &identity)?, identity)));
        let (who, identity) = match authenticated {
            Ok(w) => w,
            Err(problem) => {
                tracing::info!(target: "hub::access", %peer, host = %target.host, port = target.port,
                    code = problem.code, status = problem.status, "connect refused");
                let _ = stream.write_all(&problem.to_http1(None)).await;
                let _ = stream.shutdown().await;
                return;
            }
        };
        let routed = route(&snap, who.tenant(), &target.host, target.port, true);
        let provider = match routed {
            Ok(p) => p,
            Err(problem) => {
                tracing::info!(target: "hub::access", %peer, host = %target.host, port = target.port,
                    caller = who.name(), tenant = who.tenant(),
                    code = problem.code, status = problem.status, "connect refused");
                self.refuse_in_tunnel(stream, peer, &target, &problem).await;
                return;
            }
        };
        if provider.config.tls == TlsMode::Passthrough {
            // The module trusts only the provider's CA here: a refusal is the CONNECT's answer.
            if let Err(problem) = self.gate.authorize_tunnel(&snap, &who, &provider) {
                tracing::info!(target: "hub::access", %peer, host = %target.host, port = target.port,
                    provider = provider.name.as_str(), caller = who.name(), tenant = who.tenant(),
                    code = problem.code, status = problem.status, "connect refused");
                let _ = stream.write_all(&problem.to_http1(None)).await;
                let _ = stream.shutdown().await;
                return;
            }
            drop(snap);
            let revoker =
                crate::callers::Revoker::new(self.registry.clone(), self.gate.clone(), identity);
            self.passthrough(stream, peer, &target, &provider, revoker)
                .await;
            return;
        }
        drop(snap);
        let Some(tls) = establish(stream, &self.acceptor, peer, &target).await else {
            return;
        };
        let _open = TunnelGuard::new();
        if tls.selected_alpn_proto() == Some(ALPN::H2) {
            let conn = Arc::new(ConnCtx {
                tunnel: Some(target),
                head: Arc::new(HeadControl::default()),
                identity,
            });
            h2::serve(
                &self.app,
                Box::new(tls),
                conn,
                Duration::from_secs(KEEPALIVE_SECS),
                &shutdown,
            )
            .await;
            return;
        }
        let control = Arc::new(HeadControl::default());
        let stream = Guarded::new(tls, control.clone());
        self.serve_http(
            Box::new(stream),
            control,
            Some((target, identity)),
            &shutdown,
        )
        .await;
    }

    /// Serves HTTP/1.1 requests on `stream` until it ends: each head is guarded (armed here,
    /// disarmed by the pipeline once parsed), pipelined requests are answered in order.
    async fn serve_http(
        &self,
        stream: pingora::protocols::Stream,
        control: Arc<HeadControl>,
        tunnel: Option<(TunnelTarget, crate::callers::Identity)>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(Some(KEEPALIVE_SECS));
        session.set_pipelining_enabled(true);
        // Outside a tunnel each request authenticates itself (absolute-form).
        let (tunnel, identity) = match tunnel {
            Some((t, i)) => (Some(t), i),
            None => (None, crate::callers::Identity::Anonymous),
        };
        let conn = Arc::new(ConnCtx {
            tunnel,
            head: control.clone(),
            identity,
        });
        loop {
            control.arm();
            session.set_connection_user_context(Some(Box::new(conn.clone())));
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                break;
            };
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }

    /// Answers a refused CONNECT inside the tunnel: `200`, a handshake with a refusal leaf, the
    /// problem as the answer to the first request, then the end. Past the minting bound (or for
    /// a client that sends no TLS), the refusal is the bare answer to the CONNECT.
    async fn refuse_in_tunnel(
        &self,
        mut stream: L4Stream,
        peer: SocketAddr,
        target: &TunnelTarget,
        problem: &Problem,
    ) {
        if !self.refusals.prepare(&target.host) {
            let _ = stream.write_all(&problem.to_http1(None)).await;
            let _ = stream.shutdown().await;
            return;
        }
        let Some(tls) = establish(stream, &self.refusal_acceptor, peer, target).await else {
            return;
        };
        if tls.selected_alpn_proto() == Some(ALPN::H2) {
            h2::refuse(Box::new(tls), problem, Duration::from_secs(KEEPALIVE_SECS)).await;
            return;
        }
        let control = Arc::new(HeadControl::default());
        control.arm();
        let mut session = ServerSession::new_http1(Box::new(Guarded::new(tls, control.clone())));
        let head =
            tokio::time::timeout(Duration::from_secs(KEEPALIVE_SECS), session.read_request()).await;
        if !matches!(head, Ok(Ok(true))) {
            return;
        }
        control.disarm();
        let rid = crate::hygiene::request_id(session.req_header());
        if let Err(e) = problem.send(&mut session, Some(&rid)).await {
            tracing::debug!(error = %e, "could not answer the refused tunnel's request");
        }
        session.shutdown().await;
    }

    /// Reads the rest of a CONNECT head into `buf`; returns the target, the head's length and
    /// its `Proxy-Authorization` (the caller credential).
    /// `Err(Some(problem))` answers the client; `Err(None)` just closes.
    async fn read_connect_head(
        &self,
        stream: &mut L4Stream,
        buf: &mut Vec<u8>,
    ) -> Result<(TunnelTarget, usize, Option<Vec<u8>>), Option<Problem>> {
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let target = req.path.unwrap_or_default().to_owned();
                        let mut credentials = req.headers.iter().filter(|h| {
                            h.name
                                .eq_ignore_ascii_case(hub_core::wire::PROXY_AUTHORIZATION)
                        });
                        let credential = credentials.next().map(|h| h.value.to_vec());
                        if credentials.next().is_some() {
                            return Err(Some(Problem::bad_request(
                                "Proxy-Authorization sent twice",
                            )));
                        }
                        return Ok((target, len, credential));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(Some(Problem::bad_request(format!(
                            "malformed CONNECT request: {e}"
                        ))));
                    }
                }
                if buf.len() >= MAX_CONNECT_HEAD {
                    return Err(Some(Problem::new(
                        hub_core::wire::problem::HEADERS_TOO_LARGE,
                        "CONNECT head exceeds 16 KiB",
                    )));
                }
                let n = stream.read(&mut chunk).await.map_err(|_| None)?;
                if n == 0 {
                    return Err(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        let (raw_target, len, credential) = tokio::time::timeout(HEAD_TIMEOUT, read)
            .await
            .map_err(|_| None)??;
        let (host, port) = split_host_port(&raw_target)
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| Some(Problem::bad_request("CONNECT target must be host:port")))?;
        let Some(port) = port else {
            return Err(Some(Problem::bad_request(
                "CONNECT target must include a port",
            )));
        };
        Ok((
            TunnelTarget {
                host: normalize_host(&host),
                port,
            },
            len,
            credential,
        ))
    }
}
