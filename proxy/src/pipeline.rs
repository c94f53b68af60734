//! The one `ProxyHttp` implementation. Each hook is thin and calls one module: routing
//! ([`crate::registry`]), egress ([`crate::escape`]), hygiene and credential injection
//! ([`crate::hygiene`], [`crate::inject`]), and the access log. All per-request state lives in
//! [`RequestCtx`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::provider::{ProviderStatus, normalize_host, split_host_port};
use pingora::http::RequestHeader;
use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::callers::{Gate, Identity, Who};
use crate::escape::{EgressError, Resolver};
use crate::forward::{Call, CallReport, Forwarder};
use crate::hygiene;
use crate::inject;
use crate::metrics::{METRICS, method_label};
use crate::problem::Problem;
use crate::registry::{Provider, Registry, Snapshot};
use crate::trace::TraceContext;
use hub_core::jobs::JobSubmitter;
use hub_core::otlp::{CallSpan, OtlpExporter};
use hub_core::wire::problem;
use tracing::Instrument;

/// The target of the CONNECT tunnel a request arrived through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelTarget {
    /// Normalized host.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// What a connection carries from request to request: its tunnel target (none for plain HTTP)
/// and the guard of its request heads.
#[derive(Debug)]
pub struct ConnCtx {
    /// The CONNECT target, for requests inside a tunnel.
    pub tunnel: Option<TunnelTarget>,
    /// Disarmed once the head is parsed (see `serve::guard`).
    pub head: Arc<crate::serve::guard::HeadControl>,
    /// Who the CONNECT authenticated as (requests outside tunnels authenticate themselves).
    pub identity: Identity,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    request_id: Option<String>,
    /// The connection's context (its tunnel target, its head guard); shared, not copied.
    conn: Option<Arc<ConnCtx>>,
    provider: Option<Arc<Provider>>,
    upstream_addr: Option<SocketAddr>,
    /// Path and query as the caller sent them (origin-form).
    path_and_query: String,
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
    call: CallReport,
    problem_code: Option<&'static str>,
    trace: Option<TraceContext>,
    /// Who the call is made as, once authenticated.
    who: Option<Who>,
    /// The identity it was authenticated as (kept for a WebSocket's revocation watch).
    identity: Option<Identity>,
}

/// The hub's proxy logic.
pub struct HubProxy {
    registry: Arc<Registry>,
    resolver: Resolver,
    forwarder: Arc<Forwarder>,
    jobs: Option<Arc<dyn JobSubmitter>>,
    spans: Option<OtlpExporter>,
    gate: Gate,
}

impl HubProxy {
    /// Checks callers and grants with `gate` (default: `proxy.callers: optional`).
    #[must_use]
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// A proxy routing through `registry` and sending calls with `forwarder`.
    pub fn new(
        registry: Arc<Registry>,
        forwarder: Arc<Forwarder>,
        jobs: Option<Arc<dyn JobSubmitter>>,
        spans: Option<OtlpExporter>,
    ) -> Self {
        Self {
            registry,
            resolver: Resolver::default(),
            forwarder,
            jobs,
            spans,
            gate: Gate::default(),
        }
    }
}

/// Where a request wants to go, as the caller addressed it.
struct Target {
    host: String,
    port: u16,
    path_and_query: String,
}

fn target_of(req: &RequestHeader, tunnel: Option<&TunnelTarget>) -> Result<Target, Problem> {
    let raw = std::str::from_utf8(req.raw_path())
        .map_err(|_| Problem::bad_request("request target is not valid UTF-8"))?;
    if let Some(t) = tunnel {
        // HTTP/2 names the host in `:authority` (a `Host` beside it must agree: Pingora checks).
        let host_header = match req.headers.get("host") {
            Some(v) => v.to_str().ok(),
            None => req.uri.authority().map(|a| a.as_str()),
        }
        .ok_or_else(|| Problem::bad_request("missing Host header"))?;
        let (h, p) = split_host_port(host_header)
            .ok_or_else(|| Problem::bad_request("malformed Host header"))?;
        if normalize_host(&h) != t.host || p.is_some_and(|p| p != t.port) {
            return Err(Problem::new(
                problem::MISDIRECTED_REQUEST,
                format!(
                    "Host {host_header} does not match the tunnel target {}:{}",
                    t.host, t.port
                ),
            ));
        }
        if !raw.starts_with('/') {
            return Err(Problem::bad_request(
                "requests inside a tunnel must use origin-form",
            ));
        }
        return Ok(Target {
            host: t.host.clone(),
            port: t.port,
            path_and_query: raw.to_owned(),
        });
    }
    match raw_target_authority(raw.as_bytes()) {
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } => {
            if !scheme.eq_ignore_ascii_case(b"http") {
                return Err(Problem::bad_request(
                    "absolute-form requests must use http://; use CONNECT for https",
                ));
            }
            let authority = std::str::from_utf8(authority).unwrap_or_default();
            let (h, p) = split_host_port(authority)
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| Problem::bad_request("malformed authority in request target"))?;
            let path = std::str::from_utf8(path_and_query).unwrap_or_default();
            Ok(Target {
                host: normalize_host(&h),
                port: p.unwrap_or(80),
                path_and_query: if path.is_empty() {
                    "/".into()
                } else {
                    path.to_owned()
                },
            })
        }
        RawTargetAuthority::None => Err(Problem::bad_request(
            "this is an egress proxy: send absolute-form requests (HTTP_PROXY) or CONNECT (HTTPS_PROXY)",
        )),
        RawTargetAuthority::AmbiguousAuthority => Err(Problem::bad_request(
            "ambiguous authority in request target",
        )),
    }
}

/// Routing decision for a host and port, for a caller of `tenant`: the provider or the problem
/// to answer.
pub fn route(
    snap: &Snapshot,
    tenant: &str,
    host: &str,
    port: u16,
    tunnel: bool,
) -> Result<Arc<Provider>, Problem> {
    let p = snap
        .lookup_for(tenant, host)
        .ok_or_else(|| Problem::unknown_provider(host))?;
    if p.status == ProviderStatus::Disabled {
        return Err(Problem::provider_disabled(&p.name));
    }
    if !p.accepts_port(port, tunnel) {
        return Err(Problem::forbidden_port(host, port));
    }
    Ok(p.clone())
}

/// Routing for the hub's internal caller: the provider its `X-Hub-Provider-Id` names.
fn route_by_id(
    snap: &Snapshot,
    id: &[u8],
    host: &str,
    port: u16,
    tunnel: bool,
) -> Result<Arc<Provider>, Problem> {
    let p = std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.parse::<hub_core::provider::ProviderId>().ok())
        .and_then(|id| snap.get(&id))
        .ok_or_else(|| Problem::unknown_provider(host))?;
    if p.status == ProviderStatus::Disabled {
        return Err(Problem::provider_disabled(&p.name));
    }
    if !p.accepts_port(port, tunnel) {
        return Err(Problem::forbidden_port(host, port));
    }
    Ok(p.clone())
}

pub(crate) fn egress_problem(e: &EgressError, provider: &str) -> Problem {
    match e {
        EgressError::Forbidden { .. } => Problem::new(
            problem::FORBIDDEN_DESTINATION,
            format!("provider {provider} resolves to a private, loopback or link-local address"),
        ),
        EgressError::Resolve { host, .. } => Problem::new(
            problem::UPSTREAM_DNS_FAILED,
            format!("cannot resolve {host} for provider {provider}"),
        ),
    }
}

impl RequestCtx {
    fn tunnel(&self) -> Option<&TunnelTarget> {
        self.conn.as_ref().and_then(|c| c.tunnel.as_ref())
    }
}

impl HubProxy {
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Problem> {
        hygiene::check_request(session)?;
        let target = target_of(session.req_header(), ctx.tunnel())?;
        let snap = self.registry.snapshot();
        // Who: the tunnel's caller, or (absolute-form) this request's own credential; checked
        // against the snapshot in force, so revocation reaches open tunnels.
        let who = match ctx.conn.as_ref().filter(|c| c.tunnel.is_some()) {
            Some(conn) => {
                let who = self.gate.current(&snap, &conn.identity)?;
                if who.caller.is_some() {
                    ctx.identity = Some(conn.identity.clone());
                }
                who
            }
            None => {
                let credential = session
                    .req_header()
                    .headers
                    .get(hub_core::wire::PROXY_AUTHORIZATION)
                    .map(http::HeaderValue::as_bytes);
                let identity = self.gate.authenticate(&snap, credential)?;
                let who = self.gate.current(&snap, &identity)?;
                if who.caller.is_some() {
                    ctx.identity = Some(identity);
                }
                who
            }
        };
        let in_tunnel = ctx.tunnel().is_some();
        let who = &*ctx.who.insert(who);
        let named = who
            .internal
            .then(|| {
                session
                    .req_header()
                    .headers
                    .get(hub_core::wire::PROVIDER_ID)
            })
            .flatten();
        let provider = match named {
            // The hub's own calls name their provider (two tenants may share a host).
            Some(id) => route_by_id(&snap, id.as_bytes(), &target.host, target.port, in_tunnel)?,
            None => route(&snap, who.tenant(), &target.host, target.port, in_tunnel)?,
        };
        // Refusals from here on name the provider and path in the access line and metrics.
        ctx.provider = Some(provider.clone());
        ctx.path_and_query = target.path_and_query;
        let method = session.req_header().method.as_str();
        let grant = self
            .gate
            .authorize(&snap, who, &provider, method, &ctx.path_and_query)?;
        drop(snap);
        if provider.config.refuse_foreign_credential
            && let Some(auth) = &provider.auth
            && inject::carries_credential(session.req_header(), &ctx.path_and_query, auth)
        {
            return Err(Problem::new(
                problem::FOREIGN_CREDENTIAL,
                format!(
                    "the call carries its own credential for provider {}, which refuses that; \
                     the hub injects the provider's",
                    provider.name
                ),
            ));
        }
        crate::placement::check(session.req_header(), &ctx.path_and_query, &provider)?;
        if let Some(caller) = &who.caller {
            // The DLQ entry and the job name the authenticated caller (and its tenant, for a
            // global provider's), never a claimed one.
            let req = session.req_header_mut();
            req.insert_header(hub_core::wire::CALLER, caller.name.as_str())
                .and_then(|()| req.insert_header(hub_core::wire::TENANT, caller.tenant.as_str()))
                .map_err(|_| Problem::bad_request("caller name is not a header value"))?;
        } else if session
            .req_header()
            .headers
            .contains_key(hub_core::wire::TENANT)
        {
            session
                .req_header_mut()
                .remove_header(hub_core::wire::TENANT);
        }
        if let Some(grant) = grant {
            self.forwarder
                .admit_grant(&provider, who.name(), &grant)
                .await?;
        }
        if provider.auth.is_none() {
            return Err(Problem::new(
                problem::CREDENTIALS_UNAVAILABLE,
                format!(
                    "the hub cannot decrypt the credentials of provider {}",
                    provider.name
                ),
            ));
        }
        let addr = self
            .resolver
            .resolve(
                &provider.base.host,
                provider.base.port,
                provider.config.allow_private_network,
            )
            .await
            .map_err(|e| egress_problem(&e, &provider.name))?;
        ctx.upstream_addr = Some(addr);
        Ok(())
    }

    fn log_path(ctx: &RequestCtx) -> String {
        inject::loggable_path(
            ctx.provider.as_ref().and_then(|p| p.auth.as_ref()),
            &ctx.path_and_query,
        )
    }
}

#[async_trait]
impl ProxyHttp for HubProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: None,
            conn: None,
            provider: None,
            upstream_addr: None,
            path_and_query: String::new(),
            upstream_started: None,
            upstream_time: None,
            call: CallReport::default(),
            problem_code: None,
            trace: None,
            who: None,
            identity: None,
        }
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(c) = prev.downcast::<Arc<ConnCtx>>() {
            // The head is parsed: the guard stops watching before any body byte is read.
            c.head.disarm();
            ctx.conn = Some(*c);
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        if ctx.conn.is_none() {
            // An HTTP/2 stream: its connection's context came in the request's extensions.
            ctx.conn = session
                .req_header()
                .extensions
                .get::<Arc<ConnCtx>>()
                .cloned();
        }
        let rid = hygiene::request_id(session.req_header());
        ctx.request_id = Some(rid.clone());
        let trace = TraceContext::continue_or_start(
            session
                .req_header()
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        // The provider sees the hub as the parent of its span.
        session
            .req_header_mut()
            .insert_header("traceparent", trace.traceparent())?;
        // Debug only: the access line carries these ids; at info the span costs nothing.
        let span = tracing::debug_span!("call", request_id = %rid, trace_id = %trace.trace_id, span_id = %trace.span_id);
        ctx.trace = Some(trace);
        let outcome = match self.admit(session, ctx).await {
            Ok(()) => {
                let (Some(provider), Some(addr)) = (ctx.provider.clone(), ctx.upstream_addr) else {
                    return Error::e_explain(ErrorType::InternalError, "no route decided");
                };
                // A WebSocket upgrade asking for async is refused by the forwarder.
                if let Some(jobs) = &self.jobs
                    && wants_async(session.req_header())
                    && !crate::forward::is_websocket(session.req_header())
                {
                    let r = crate::asynccall::accept(
                        session,
                        jobs.as_ref(),
                        &provider,
                        &ctx.path_and_query,
                        &rid,
                    )
                    .instrument(span)
                    .await;
                    return match r {
                        Ok(()) => Ok(true),
                        Err(problem) => {
                            ctx.problem_code = Some(problem.code);
                            problem.send(session, Some(&rid)).await?;
                            Ok(true)
                        }
                    };
                }
                ctx.upstream_started = Some(Instant::now());
                // Boxed: the call's future is large, and moving it into this one (and into an
                // `Instrumented`) was a measurable share of memcpy per request.
                // A WebSocket outlives its request: it ends when its caller is revoked.
                let revoker = if crate::forward::is_websocket(session.req_header()) {
                    ctx.identity.clone().and_then(|identity| {
                        crate::callers::Revoker::new(
                            self.registry.clone(),
                            self.gate.clone(),
                            identity,
                        )
                    })
                } else {
                    None
                };
                let call = Call {
                    provider: &provider,
                    addr,
                    path_and_query: &ctx.path_and_query,
                    request_id: &rid,
                    revoker,
                };
                let call = Box::pin(self.forwarder.call(session, &call, &mut ctx.call));
                let r = if span.is_disabled() {
                    call.await
                } else {
                    call.instrument(span).await
                };
                ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
                r.map(|_| ())
            }
            Err(problem) => Err(problem),
        };
        if let Err(problem) = outcome {
            ctx.problem_code = Some(problem.code);
            problem.send(session, Some(&rid)).await?;
        }
        // The response has been written: Pingora's own upstream phases are not used.
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Never reached: request_filter answers every request (the forwarder runs the attempts).
        Error::e_explain(
            ErrorType::InternalError,
            "upstream_peer is not used by the hub",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        // Upstream outcomes never arrive here: the forwarder answers them (502/504 with the DLQ
        // id). What remains is input Pingora could not parse, a caller gone, or a hub fault.
        let problem = match e.etype() {
            // Every answer is one of `wire::PROBLEMS`: a status Pingora picked is reported as
            // the request being unprocessable.
            HTTPStatus(code) if *code >= 400 => Some(Problem::bad_request(format!(
                "the request could not be processed ({code})"
            ))),
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => None,
                    _ => Some(Problem::bad_request("malformed request")),
                },
                ErrorSource::Upstream | ErrorSource::Internal | ErrorSource::Unset => {
                    Some(Problem::new(
                        problem::INTERNAL_ERROR,
                        "the hub failed to process the request",
                    ))
                }
            },
        };
        let code = match problem {
            Some(p) => {
                ctx.problem_code = Some(p.code);
                if let Err(err) = p.send(session, ctx.request_id.as_deref()).await {
                    tracing::debug!(error = %err, "could not send error response");
                }
                p.status
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let provider = ctx
            .provider
            .as_ref()
            .map_or("unrouted", |p| p.name.as_str());
        let total = ctx.started.elapsed();
        if status != 0 {
            let code = itoa_status(status);
            METRICS
                .requests
                .with_label_values(&[provider, method_label(req.method.as_str()), code])
                .inc();
            METRICS
                .request_duration
                .with_label_values(&[provider])
                .observe(total.as_secs_f64());
            METRICS
                .caller_requests
                .with_label_values(&[
                    ctx.who
                        .as_ref()
                        .and_then(|w| w.caller.as_ref())
                        .map_or_else(
                            || {
                                if ctx.who.as_ref().is_some_and(|w| w.internal) {
                                    crate::callers::INTERNAL_NAME
                                } else {
                                    "anonymous"
                                }
                            },
                            |c| c.name.as_str(),
                        ),
                    ctx.who.as_ref().map_or("-", Who::tenant),
                    provider,
                    code,
                ])
                .inc();
        }
        let (trace_id, span_id) = ctx
            .trace
            .as_ref()
            .map_or(("", ""), |t| (t.trace_id.as_str(), t.span_id.as_str()));
        tracing::info!(
            target: "hub::access",
            request_id = ctx.request_id.as_deref().unwrap_or("-"),
            trace_id,
            span_id,
            provider = ctx.provider.as_ref().map_or("-", |p| p.name.as_str()),
            caller = ctx.who.as_ref().map_or("-", Who::name),
            tenant = ctx.who.as_ref().map_or("-", Who::tenant),
            method = req.method.as_str(),
            path = %Self::log_path(ctx),
            tunnel = ctx.tunnel().is_some(),
            status,
            attempts = ctx.call.attempts,
            cut = ctx.call.cut.map_or("", |c| c.as_str()),
            kind = ctx.call.kind.map_or("", |k| k.as_str()),
            code = ctx.problem_code.unwrap_or(""),
            error = e.map_or(String::new(), |e| e.etype().as_str().to_owned()),
            upstream_ms = ctx.upstream_time.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            total_ms = total.as_secs_f64() * 1e3,
            bytes_in = session.body_bytes_read(),
            bytes_out = session.body_bytes_sent(),
            "call"
        );
        if let (Some(exporter), Some(trace)) = (&self.spans, &ctx.trace) {
            let end = std::time::SystemTime::now();
            exporter.export(CallSpan {
                trace_id: trace.trace_id.clone(),
                span_id: trace.span_id.clone(),
                parent_span_id: trace.parent_id.clone(),
                name: "hub.call",
                start: end - total,
                end,
                attributes: vec![
                    ("hub.provider", provider.to_owned()),
                    (
                        "hub.caller",
                        ctx.who.as_ref().map_or("-", Who::name).to_owned(),
                    ),
                    (
                        "hub.tenant",
                        ctx.who.as_ref().map_or("-", Who::tenant).to_owned(),
                    ),
                    ("http.request.method", req.method.as_str().to_owned()),
                    ("url.path", Self::log_path(ctx)),
                    ("hub.request_id", ctx.request_id.clone().unwrap_or_default()),
                    ("hub.code", ctx.problem_code.unwrap_or("").to_owned()),
                ],
                int_attributes: vec![
                    ("http.response.status_code", i64::from(status)),
                    ("hub.attempts", i64::from(ctx.call.attempts)),
                ],
                error: status == 0 || status >= 500,
            });
        }
    }
}

/// Status code as a label without allocating for the common ones.
fn itoa_status(status: u16) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (101, "101"),
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (407, "407"),
        (409, "409"),
        (421, "421"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    CODES.iter().find(|(c, _)| *c == status).map_or(
        match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        |(_, s)| s,
    )
}

/// Whether the caller asked for an asynchronous answer (`Prefer: respond-async`, RFC 7240).
pub(crate) fn wants_async(req: &RequestHeader) -> bool {
    req.headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split([',', ';'])
                .any(|t| t.trim().eq_ignore_ascii_case("respond-async"))
        })
}
