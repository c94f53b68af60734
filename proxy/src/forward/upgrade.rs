//! WebSocket through the hub: an HTTP/1.1 `Upgrade: websocket` request (in a tunnel or in
//! absolute-form) is admitted like a call (rate limit, breaker), holds a slot under the
//! provider's `maxUpgradedConnections`, gets its credentials, and goes once on a new HTTP/1.1
//! connection (no pool, no retry). A `101` is relayed to the module and the frames flow both
//! ways, byte for byte, until either side closes or both are silent for
//! `upgradedIdleTimeoutMs`; any other answer is relayed as a normal answer (a `5xx` is the
//! provider failing, answered `502` as any call).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hub_core::scrub::Scrubber;
use hub_core::state::{AttemptEnd, Outcome, Policy, RetryPlan};
use hub_core::wire::{HOP_BY_HOP, listed};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use tokio::time::Instant;

use super::upstream::{Cut, Upstream, relay};
use super::{Call, CallReport, Forwarder, upstream_header, verdict};
use crate::hygiene::REQUEST_ID;
use crate::problem::Problem;
use crate::upgraded::{End, Kind, Slot};

/// Whether `req` asks for a WebSocket: an HTTP/1.1 `GET` with `Upgrade: websocket` and
/// `Connection: upgrade` (RFC 6455 §4.1). Other upgrades (`h2c`, …) are not relayed: their
/// `Upgrade` is stripped as hop-by-hop and the request goes as a plain call.
pub fn is_websocket(req: &RequestHeader) -> bool {
    let has_token = |name: &str, token: &str| {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && has_token("upgrade", "websocket")
        && has_token("connection", "upgrade")
}

/// Headers of the provider's `101` that describe the upgrade itself: kept for the module (the
/// other hop-by-hop headers are not).
const UPGRADE_RESPONSE_HEADERS: &[&str] = &["connection", "upgrade"];

impl Forwarder {
    /// Runs a WebSocket upgrade (see the module doc). `Ok(101)` once the relay has ended (how
    /// it ended is in `report.cut`), `Ok(status)` for another answer relayed as is, `Err` a
    /// problem to answer instead.
    pub async fn upgrade(
        &self,
        session: &mut Session,
        call: &Call<'_>,
        report: &mut CallReport,
    ) -> Result<u16, Problem> {
        let provider = call.provider;
        report.kind = Some(Kind::WebSocket);
        if crate::pipeline::wants_async(session.req_header()) {
            return Err(Problem::bad_request(
                "a WebSocket upgrade cannot be answered asynchronously (Prefer: respond-async)",
            ));
        }
        if !session.is_body_empty() {
            return Err(Problem::bad_request(
                "a WebSocket upgrade request carries no body",
            ));
        }
        let policy = Policy::from_config(&provider.config, self.hub_default_rate);
        let plan = RetryPlan::new(&provider.config, Instant::now());
        let permit = self.admit(provider, &policy).await?;
        let Some(mut slot) = Slot::take(provider, Kind::WebSocket) else {
            self.state.record(permit, Outcome::Neutral).await;
            return Err(Problem::too_many_upgraded(provider));
        };
        let mut header = match upgrade_header(session.req_header(), call, report) {
            Ok(h) => h,
            Err(_) => {
                self.state.record(permit, Outcome::Neutral).await;
                return Err(Problem::bad_request("the request cannot be forwarded"));
            }
        };
        let authorized = match self.authorize(provider, plan.deadline(), &mut header).await {
            Ok(token) => super::sign::sign(provider, &mut header, Some(b"")).map(|()| token),
            Err(p) => Err(p),
        };
        let token = match authorized {
            Ok(token) => token,
            Err(p) => {
                self.state.record(permit, Outcome::Neutral).await;
                return Err(p);
            }
        };
        // What the provider sends back is scrubbed of its credentials and the access token.
        let scrubber = super::scrubber_of(provider, token.as_deref());
        report.attempts = 1;
        let started = Instant::now();
        let sent = self
            .send_upgrade(call, header, plan.attempt_timeout(started))
            .await;
        let end = match &sent {
            Ok(up) => AttemptEnd::Status(up.resp_header().map_or(502, |h| h.status.as_u16())),
            Err(end) => *end,
        };
        self.state.record(permit, end.outcome()).await;
        super::count_attempt(provider, started, end);
        let mut up = match sent {
            Ok(up) if end.outcome() != Outcome::Failure => up,
            // Not retried: an upgrade is not replayed (and is not a call the DLQ could keep).
            _ => return Err(verdict::exhausted(&provider.name, end, 1, "not_retryable")),
        };
        if !up.was_upgraded() {
            // The provider refused the upgrade (401, 403, 404, …): that is the module's answer.
            slot.ended(End::Closed);
            let peer = Upstream::new(provider, call.addr);
            let (status, cut) = relay(
                self.dial.as_ref(),
                session,
                UpstreamSession::H1(up),
                &peer,
                call.request_id,
                plan.deadline(),
                scrubber,
            )
            .await;
            report.cut = cut;
            return Ok(status);
        }
        let idle = provider.config.upgraded_idle_timeout();
        let mut resp = switching_protocols(up.resp_header(), call.request_id);
        if let Some(s) = scrubber {
            super::scrub::head(s, &mut resp);
        }
        // Frames may stall a write at most the idle timeout; reads are bounded by the relay.
        session.set_read_timeout(None);
        session.set_write_timeout(Some(idle));
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_err()
        {
            slot.ended(End::Error);
            report.cut = Some(Cut::CallerGone);
            up.shutdown().await;
            return Ok(101);
        }
        up.read_timeout = None;
        up.write_timeout = Some(idle);
        // Request-body writes now pass the frames as they are.
        up.maybe_upgrade_body_writer();
        let (end, cut) = {
            let mut module = Module(session);
            let mut provider_side = Provider(&mut up, scrubber);
            pump(
                &mut module,
                &mut provider_side,
                idle,
                &slot,
                &self.drain,
                call.revoker.as_ref(),
            )
            .await
        };
        slot.ended(end);
        report.cut = cut;
        tracing::debug!(end = end.as_str(), "websocket relay ended");
        // The module's connection ends here (a 101 turns keep-alive off).
        session.set_keepalive(None);
        if cut.is_some() {
            session.shutdown().await;
        }
        Ok(101)
    }

    /// Sends the upgrade request on a new HTTP/1.1 connection and reads the answer's head
    /// (interim answers other than `101` are read past). Nothing is sent twice.
    async fn send_upgrade(
        &self,
        call: &Call<'_>,
        header: RequestHeader,
        first_byte: Duration,
    ) -> Result<Http1Session, AttemptEnd> {
        let provider = call.provider;
        let mut up = match self.dial.dial_h1(provider, call.addr).await {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(error = %e.etype().as_str(), "upstream connect failed (upgrade)");
                return Err(verdict::classify(&e, false));
            }
        };
        up.read_timeout = None;
        up.write_timeout = Some(provider.config.idle_timeout());
        let sent = async {
            up.write_request_header(Box::new(header)).await?;
            loop {
                up.read_response().await?;
                match up.resp_header().map(|h| h.status.as_u16()) {
                    Some(s) if (100..200).contains(&s) && s != 101 => continue,
                    _ => return Ok::<_, Box<pingora::Error>>(()),
                }
            }
        };
        match pingora::time::timeout(first_byte, sent).await {
            Ok(Ok(())) => Ok(up),
            Ok(Err(e)) => {
                tracing::debug!(error = %e.etype().as_str(), "upgrade request failed");
                Err(AttemptEnd::ConnectionLost)
            }
            Err(_) => Err(AttemptEnd::Timeout),
        }
    }
}

/// The upgrade request as the provider gets it: the call's header (credentials in, hop-by-hop
/// out), with `Connection: upgrade` and the caller's `Upgrade` put back; no body framing.
fn upgrade_header(
    caller: &RequestHeader,
    call: &Call<'_>,
    report: &mut CallReport,
) -> pingora::Result<RequestHeader> {
    let mut header = upstream_header(
        caller,
        call.provider,
        call.path_and_query,
        call.request_id,
        &mut report.idempotency_key,
    )?;
    header.remove_header("content-length");
    header.remove_header("transfer-encoding");
    header.insert_header("connection", "upgrade")?;
    let upgrade = caller
        .headers
        .get("upgrade")
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from_static("websocket"));
    header.insert_header("upgrade", upgrade)?;
    Ok(header)
}

/// The module's `101`: the provider's, minus the hop-by-hop headers that are not the upgrade
/// (`Sec-WebSocket-*` stay), with the request id.
fn switching_protocols(head: Option<&ResponseHeader>, request_id: &str) -> ResponseHeader {
    let mut resp = match head {
        Some(h) => h.clone(),
        None => ResponseHeader::build(101, None).expect("a 101 head"),
    };
    for h in HOP_BY_HOP {
        if !listed(UPGRADE_RESPONSE_HEADERS, h) {
            resp.remove_header(*h);
        }
    }
    resp.remove_header("transfer-encoding");
    resp.remove_header("content-length");
    let _ = resp.insert_header(REQUEST_ID, request_id);
    resp
}

/// One side of an upgraded connection: bytes in, bytes out.
#[async_trait]
pub(crate) trait Side: Send {
    /// The next bytes, `None` once the peer closed. Cancel-safe: a read dropped before it
    /// completes loses nothing.
    async fn read(&mut self) -> pingora::Result<Option<Bytes>>;
    /// Writes (and flushes) `bytes`.
    async fn write(&mut self, bytes: Bytes) -> pingora::Result<()>;
    /// Ends this side's writing (the peer reads an end).
    async fn close(&mut self);
}

/// The module's connection after the `101`.
struct Module<'a>(&'a mut Session);

#[async_trait]
impl Side for Module<'_> {
    async fn read(&mut self) -> pingora::Result<Option<Bytes>> {
        self.0.read_request_body().await
    }
    async fn write(&mut self, bytes: Bytes) -> pingora::Result<()> {
        self.0.write_response_body(Some(bytes), false).await
    }
    async fn close(&mut self) {
        let _ = self.0.write_response_body(None, true).await;
        self.0.shutdown().await;
    }
}

/// The provider's connection after its `101`, and the scrubber of what it sends: each read is
/// masked on its own (no bytes are held back: a frame must not wait for the next one, which may
/// never come), so a secret inside one read is masked and one split across reads, or inside a
/// compressed (`permessage-deflate`) message, is not.
struct Provider<'a>(&'a mut Http1Session, Option<&'a Scrubber>);

#[async_trait]
impl Side for Provider<'_> {
    async fn read(&mut self) -> pingora::Result<Option<Bytes>> {
        let read = self.0.read_body_bytes().await?;
        Ok(match (read, self.1) {
            (Some(b), Some(s)) => Some(s.masked(&b).map_or(b, Bytes::from)),
            (read, _) => read,
        })
    }
    async fn write(&mut self, bytes: Bytes) -> pingora::Result<()> {
        self.0.write_body(&bytes).await.map(|_| ())
    }
    async fn close(&mut self) {
        self.0.shutdown().await;
    }
}

/// Relays bytes both ways until either side closes (the other is then closed too), a read or
/// write fails, or neither side sent anything for `idle`. Returns how it ended and, unless it
/// ended by a close, the cut for the access line.
pub(crate) async fn pump(
    module: &mut dyn Side,
    provider: &mut dyn Side,
    idle: Duration,
    slot: &Slot,
    drain: &crate::upgraded::Drain,
    revoker: Option<&crate::callers::Revoker>,
) -> (End, Option<Cut>) {
    enum Got {
        FromModule(pingora::Result<Option<Bytes>>),
        FromProvider(pingora::Result<Option<Bytes>>),
        Idle,
        Stopped(End),
    }
    let shutdown = crate::upgraded::stopped(drain, revoker);
    tokio::pin!(shutdown);
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    loop {
        let got = tokio::select! {
            r = module.read() => Got::FromModule(unclean_eof_is_end(r)),
            r = provider.read() => Got::FromProvider(unclean_eof_is_end(r)),
            () = &mut silence => Got::Idle,
            end = &mut shutdown => Got::Stopped(end),
        };
        match got {
            Got::Stopped(end) => {
                module.close().await;
                provider.close().await;
                let cut = if end == End::Revoked {
                    Cut::Revoked
                } else {
                    Cut::Shutdown
                };
                return (end, Some(cut));
            }
            Got::Idle => {
                module.close().await;
                provider.close().await;
                return (End::IdleTimeout, Some(Cut::IdleTimeout));
            }
            Got::FromModule(Ok(Some(b))) => {
                let n = b.len() as u64;
                if provider.write(b).await.is_err() {
                    module.close().await;
                    return (End::Error, Some(Cut::UpstreamError));
                }
                slot.count_bytes("to_provider", n);
            }
            Got::FromProvider(Ok(Some(b))) => {
                let n = b.len() as u64;
                if module.write(b).await.is_err() {
                    provider.close().await;
                    return (End::Error, Some(Cut::CallerGone));
                }
                slot.count_bytes("to_module", n);
            }
            Got::FromModule(Ok(None)) => {
                provider.close().await;
                return (End::Closed, None);
            }
            Got::FromProvider(Ok(None)) => {
                module.close().await;
                return (End::Closed, None);
            }
            Got::FromModule(Err(e)) => {
                tracing::debug!(error = %e, "websocket: reading the module failed");
                provider.close().await;
                return (End::Error, Some(Cut::CallerGone));
            }
            Got::FromProvider(Err(e)) => {
                tracing::debug!(error = %e, "websocket: reading the provider failed");
                module.close().await;
                return (End::Error, Some(Cut::UpstreamError));
            }
        }
        silence.as_mut().reset(Instant::now() + idle);
    }
}

/// A TLS peer that ends without `close_notify` has closed: WebSocket frames carry their own
/// lengths and close handshake, so a cut message is still visible to the other end as one.
fn unclean_eof_is_end(read: pingora::Result<Option<Bytes>>) -> pingora::Result<Option<Bytes>> {
    match read {
        Err(e)
            if e.root_cause()
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof) =>
        {
            Ok(None)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A side fed and read through channels.
    struct Chan {
        rx: mpsc::Receiver<Option<Bytes>>,
        tx: mpsc::Sender<Bytes>,
        closed: bool,
    }

    #[async_trait]
    impl Side for Chan {
        async fn read(&mut self) -> pingora::Result<Option<Bytes>> {
            Ok(self.rx.recv().await.flatten())
        }
        async fn write(&mut self, bytes: Bytes) -> pingora::Result<()> {
            self.tx
                .send(bytes)
                .await
                .map_err(|_| pingora::Error::new(pingora::ErrorType::WriteError))
        }
        async fn close(&mut self) {
            self.closed = true;
        }
    }

    fn side() -> (Chan, mpsc::Sender<Option<Bytes>>, mpsc::Receiver<Bytes>) {
        let (in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, out_rx) = mpsc::channel(8);
        (
            Chan {
                rx: in_rx,
                tx: out_tx,
                closed: false,
            },
            in_tx,
            out_rx,
        )
    }

    fn slot(name: &str) -> Slot {
        let p = crate::registry::Provider::for_tests(name);
        Slot::take(&p, Kind::WebSocket).expect("a slot")
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_the_connection_open_and_silence_ends_it() {
        let (mut module, module_sends, mut module_receives) = side();
        let (mut provider, provider_sends, mut provider_receives) = side();
        let slot = slot("ws-idle");
        let idle = Duration::from_secs(10);
        let started = Instant::now();
        let driver = async {
            // Every 6 s one side speaks: never 10 s of silence while this goes on.
            for i in 0..4u8 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                let sender = if i % 2 == 0 {
                    &provider_sends
                } else {
                    &module_sends
                };
                sender.send(Some(Bytes::from(vec![i]))).await.unwrap();
            }
            // Keep the channels open: the relay must end by silence, not by a close.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        };
        let drain = crate::upgraded::Drain::default();
        let (end, cut) = tokio::select! {
            r = pump(&mut module, &mut provider, idle, &slot, &drain, None) => r,
            () = driver => unreachable!("the relay ends first"),
        };
        assert_eq!((end, cut), (End::IdleTimeout, Some(Cut::IdleTimeout)));
        // Last traffic at 24 s, then 10 s of silence.
        assert_eq!(started.elapsed(), Duration::from_secs(34));
        assert!(module.closed && provider.closed);
        // Bytes from the module went to the provider and the other way round.
        assert_eq!(
            module_receives.recv().await.unwrap(),
            Bytes::from(vec![0u8])
        );
        assert_eq!(
            provider_receives.recv().await.unwrap(),
            Bytes::from(vec![1u8])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_on_one_side_closes_the_other() {
        let (mut module, module_sends, _module_receives) = side();
        let (mut provider, _provider_sends, _provider_receives) = side();
        let slot = slot("ws-close");
        module_sends.send(None).await.unwrap();
        let drain = crate::upgraded::Drain::default();
        let (end, cut) = pump(
            &mut module,
            &mut provider,
            Duration::from_secs(10),
            &slot,
            &drain,
            None,
        )
        .await;
        assert_eq!((end, cut), (End::Closed, None));
        assert!(provider.closed && !module.closed);
    }

    #[test]
    fn a_tls_end_without_close_notify_is_a_close_and_other_errors_are_not() {
        let eof = pingora::Error::because(
            pingora::ErrorType::ReadError,
            "when reading body",
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no close_notify"),
        );
        assert!(matches!(unclean_eof_is_end(Err(eof)), Ok(None)));
        let reset = pingora::Error::because(
            pingora::ErrorType::ReadError,
            "when reading body",
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        );
        assert!(unclean_eof_is_end(Err(reset)).is_err());
    }

    #[test]
    fn only_http11_get_with_upgrade_websocket_and_connection_upgrade_is_a_websocket() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build(method, b"/", None).unwrap();
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).unwrap();
            }
            r
        };
        assert!(is_websocket(&req(
            "GET",
            &[
                ("upgrade", "WebSocket"),
                ("connection", "keep-alive, Upgrade")
            ]
        )));
        assert!(!is_websocket(&req("GET", &[("upgrade", "websocket")])));
        assert!(!is_websocket(&req(
            "GET",
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        assert!(!is_websocket(&req(
            "POST",
            &[("upgrade", "websocket"), ("connection", "upgrade")]
        )));
    }

    #[test]
    fn the_101_keeps_the_upgrade_and_websocket_headers_only() {
        let mut h = ResponseHeader::build(101, None).unwrap();
        for (k, v) in [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "abc"),
            ("sec-websocket-protocol", "chat"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
        ] {
            h.append_header(k, v).unwrap();
        }
        let out = switching_protocols(Some(&h), "rid-1");
        let mut names: Vec<_> = out.headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "connection",
                "sec-websocket-accept",
                "sec-websocket-protocol",
                "upgrade",
                "x-request-id"
            ]
        );
    }
}
