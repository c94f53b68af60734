//! `tls: passthrough` providers: the CONNECT is checked (route, then destination, admission and
//! the provider's cap on long-lived connections) and the module's TLS is relayed byte for byte to
//! the provider's own address; the hub terminates nothing, so the module verifies the provider's
//! own certificate (pinning, mutual TLS) and no credential is injected.
//!
//! - Destination: the provider's base URL host and port are resolved and checked like a call's
//!   (`crate::escape`); the CONNECT target only picks the provider, its address is never dialled.
//! - Admission: one admission per tunnel (the rate limit and the daily quota count connections,
//!   an open breaker refuses them); the TCP connect is the attempt whose outcome is recorded.
//! - Refusals are plain HTTP answers to the CONNECT (`Problem::to_http1`): no TLS is terminated.
//! - The relay ends when both sides have closed (half-close passed on), on an error, or after
//!   `upgradedIdleTimeoutMs` of silence in both directions; one `hub::access` line says so, with
//!   bytes and duration. Tunnels are counted in the `integration_upgraded_*` metrics, not in
//!   `integration_requests_total`.

use std::net::SocketAddr;
use std::time::Instant;

use hub_core::state::{Outcome, Policy};
use hub_core::wire::problem;
use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ProxyServer, TunnelGuard};
use crate::forward::verdict;
use crate::pipeline::{TunnelTarget, egress_problem};
use crate::problem::Problem;
use crate::registry::Provider;
use crate::upgraded::{End, Kind, Relayed, Slot, relay_streams};

/// The answer that opens a relayed tunnel.
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

impl ProxyServer {
    /// Serves a CONNECT to a `tls: passthrough` provider on `stream` (bytes read past the CONNECT
    /// head already rewound into it), until the tunnel ends.
    pub(super) async fn passthrough(
        &self,
        mut stream: L4Stream,
        peer: SocketAddr,
        target: &TunnelTarget,
        provider: &Provider,
        revoker: Option<crate::callers::Revoker>,
    ) {
        let started = Instant::now();
        let request_id = crate::hygiene::new_uuid();
        let line = Line {
            request_id: &request_id,
            peer,
            target,
            provider,
            started,
        };
        let (mut slot, upstream) = match self.open_passthrough(provider).await {
            Ok(opened) => opened,
            Err(problem) => {
                let _ = stream.write_all(&problem.to_http1(Some(&request_id))).await;
                let _ = stream.shutdown().await;
                line.log(problem.status, problem.code, None);
                return;
            }
        };
        let answered = async {
            stream.write_all(ESTABLISHED).await?;
            stream.flush().await
        };
        if answered.await.is_err() {
            slot.ended(End::Error);
            line.log(200, "", Some(&empty(End::Error)));
            return;
        }
        let _open = TunnelGuard::new();
        let relayed = relay_streams(
            stream,
            upstream,
            provider.config.upgraded_idle_timeout(),
            self.drain.clone(),
            revoker,
        )
        .await;
        slot.count_bytes("to_provider", relayed.to_provider);
        slot.count_bytes("to_module", relayed.to_module);
        slot.ended(relayed.end);
        line.log(200, "", Some(&relayed));
    }

    /// Destination check, admission, a slot and the TCP connection to the provider; the problem
    /// that answers the CONNECT otherwise.
    async fn open_passthrough(&self, provider: &Provider) -> Result<(Slot, TcpStream), Problem> {
        let addr = self
            .egress
            .resolve(
                &provider.base.host,
                provider.base.port,
                provider.config.allow_private_network,
            )
            .await
            .map_err(|e| egress_problem(&e, &provider.name))?;
        let policy = Policy::from_config(&provider.config, self.hub_default_rate);
        let admission = self.state.admit(provider.id, &policy).await;
        verdict::count_rejection(provider, &admission);
        let permit = verdict::permit_or_problem(&provider.name, admission)?;
        let Some(slot) = Slot::take(provider, Kind::Passthrough) else {
            // Nothing was attempted: the permit ends neutral (a half-open probe is not lost).
            self.state.record(permit, Outcome::Neutral).await;
            return Err(Problem::too_many_upgraded(provider));
        };
        match tokio::time::timeout(provider.config.connect_timeout(), TcpStream::connect(addr))
            .await
        {
            Ok(Ok(tcp)) => {
                self.state.record(permit, Outcome::Success).await;
                let _ = tcp.set_nodelay(true);
                Ok((slot, tcp))
            }
            Ok(Err(e)) => {
                self.state.record(permit, Outcome::Failure).await;
                tracing::debug!(provider = %provider.name, error = %e, "passthrough connect failed");
                Err(Problem::new(
                    problem::UPSTREAM_FAILED,
                    format!(
                        "provider {} could not be reached (connect_failed)",
                        provider.name
                    ),
                ))
            }
            Err(_) => {
                self.state.record(permit, Outcome::Failure).await;
                Err(Problem::new(
                    problem::UPSTREAM_TIMEOUT,
                    format!(
                        "provider {} did not accept the connection in time",
                        provider.name
                    ),
                ))
            }
        }
    }
}

/// A relay that never started.
fn empty(end: End) -> Relayed {
    Relayed {
        end,
        to_provider: 0,
        to_module: 0,
    }
}

/// What the tunnel's access line says.
struct Line<'a> {
    request_id: &'a str,
    peer: SocketAddr,
    target: &'a TunnelTarget,
    provider: &'a Provider,
    started: Instant,
}

impl Line<'_> {
    /// One `hub::access` line for the tunnel (field names as a call's line where they apply).
    fn log(&self, status: u16, code: &str, relayed: Option<&Relayed>) {
        let cut = match relayed.map(|r| r.end) {
            Some(End::IdleTimeout) => "idle_timeout",
            Some(End::Error) => "error",
            Some(End::Shutdown) => "shutdown",
            Some(End::Revoked) => "revoked",
            Some(End::Closed) | None => "",
        };
        tracing::info!(
            target: "hub::access",
            request_id = self.request_id,
            peer = %self.peer,
            host = %self.target.host,
            port = self.target.port,
            provider = self.provider.name.as_str(),
            method = "CONNECT",
            tunnel = true,
            kind = "passthrough",
            status,
            code,
            cut,
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            bytes_in = relayed.map_or(0, |r| r.to_provider),
            bytes_out = relayed.map_or(0, |r| r.to_module),
            "tunnel"
        );
    }
}
