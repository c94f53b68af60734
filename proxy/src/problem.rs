//! Errors the hub itself answers, as `application/problem+json` (RFC 9457) with a stable `code`.
//! Bodies never carry secrets: details are built from provider names, hosts and error kinds.

use bytes::Bytes;
use hub_core::wire::{self, ProblemKind, problem};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

/// A problem the hub answers instead of the provider.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code (`unknown_provider`, `forbidden_destination`, …).
    pub code: &'static str,
    /// Human-readable summary of the code.
    pub title: &'static str,
    /// Human-readable detail for this occurrence.
    pub detail: String,
    /// Seconds for `Retry-After`, when a retry later may succeed.
    pub retry_after: Option<u64>,
    /// Adds `X-Circuit-Breaker-Open: true` (the seed's marker for a breaker rejection).
    pub circuit_open: bool,
    /// The DLQ entry recording this failed call (`X-Hub-DLQ-Id` and `dlqId` in the body).
    pub dlq_id: Option<ulid::Ulid>,
}

impl Problem {
    /// A problem of `kind` (one of [`hub_core::wire::problem`]).
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            status: kind.status,
            code: kind.code,
            title: kind.title,
            detail: detail.into(),
            retry_after: None,
            circuit_open: false,
            dlq_id: None,
        }
    }

    /// 400: the request is not something a forward proxy can act on.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(problem::BAD_REQUEST, detail)
    }

    /// 403: no registered provider for the host.
    pub fn unknown_provider(host: &str) -> Self {
        Self::new(
            problem::UNKNOWN_PROVIDER,
            format!("no provider is registered for host {host}; the hub denies by default"),
        )
    }

    /// 403: the provider exists but is disabled.
    pub fn provider_disabled(name: &str) -> Self {
        Self::new(
            problem::PROVIDER_DISABLED,
            format!("provider {name} is disabled"),
        )
    }

    /// 403: the port is not one the provider is reached on.
    pub fn forbidden_port(host: &str, port: u16) -> Self {
        Self::new(
            problem::FORBIDDEN_PORT,
            format!("port {port} is not a port of the provider serving {host}"),
        )
    }

    /// 407: no valid caller credential; `why` says what was wrong (never the credential).
    pub fn caller_unauthenticated(why: impl std::fmt::Display) -> Self {
        Self::new(
            problem::CALLER_UNAUTHENTICATED,
            format!("{why}; send a caller credential in Proxy-Authorization (see docs/MODULES.md)"),
        )
    }

    /// 403: the caller's grants do not allow the call.
    pub fn not_granted(detail: String) -> Self {
        Self::new(problem::NOT_GRANTED, detail)
    }

    /// 429: the provider's cap on upgraded connections and passthrough tunnels is reached.
    pub fn too_many_upgraded(provider: &crate::registry::Provider) -> Self {
        Self::new(
            problem::TOO_MANY_UPGRADED,
            format!(
                "provider {} has its maximum of {} upgraded connections and tunnels open",
                provider.name, provider.config.max_upgraded_connections
            ),
        )
    }

    /// The JSON body.
    pub fn body(&self, request_id: Option<&str>) -> Bytes {
        let mut v = serde_json::json!({
            "type": format!("urn:integration-hub:problem:{}", self.code),
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        });
        if let Some(id) = request_id {
            v["requestId"] = serde_json::Value::String(id.to_owned());
        }
        if let Some(id) = self.dlq_id {
            v["dlqId"] = serde_json::Value::String(id.to_string());
        }
        Bytes::from(serde_json::to_vec(&v).expect("problem json serializes"))
    }

    /// The full HTTP/1.1 response as bytes (for answers written before Pingora takes over,
    /// e.g. to a refused CONNECT).
    pub fn to_http1(&self, request_id: Option<&str>) -> Vec<u8> {
        let body = self.body(request_id);
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status,
            body.len()
        );
        if let Some(id) = request_id {
            out.push_str(&format!("{}: {id}\r\n", wire::REQUEST_ID));
        }
        if let Some(s) = self.retry_after {
            out.push_str(&format!("retry-after: {s}\r\n"));
        }
        if self.circuit_open {
            out.push_str(&format!("{}: true\r\n", wire::CIRCUIT_OPEN));
        }
        if self.status == 407 {
            out.push_str(&format!(
                "{}: {}\r\n",
                wire::PROXY_AUTHENTICATE,
                wire::PROXY_CHALLENGE
            ));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// The `grpc-message` for this problem: `code: detail`, percent-encoded as gRPC requires.
    pub fn grpc_message(&self) -> String {
        grpc_percent_encode(&format!("{}: {}", self.code, self.detail))
    }

    /// The problem as a gRPC "trailers-only" answer: HTTP 200, `grpc-status` from
    /// [`wire::grpc_status_of`], `grpc-message`, and the hub's own headers, in one HEADERS frame
    /// that ends the stream. A gRPC client shows it as a status, not as an HTTP error page.
    pub fn to_grpc(&self, request_id: Option<&str>) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(200, Some(8))?;
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header(
            wire::GRPC_STATUS,
            wire::grpc_status_of(self.status).to_string(),
        )?;
        resp.insert_header(wire::GRPC_MESSAGE, self.grpc_message())?;
        self.hub_headers(&mut resp, request_id)?;
        Ok(resp)
    }

    /// `X-Request-ID`, `Retry-After`, `X-Circuit-Breaker-Open`, `X-Hub-DLQ-Id` as they apply.
    fn hub_headers(
        &self,
        resp: &mut ResponseHeader,
        request_id: Option<&str>,
    ) -> pingora::Result<()> {
        if let Some(id) = request_id {
            resp.insert_header(wire::REQUEST_ID, id)?;
        }
        if let Some(s) = self.retry_after {
            resp.insert_header("retry-after", s.to_string())?;
        }
        if self.circuit_open {
            resp.insert_header(wire::CIRCUIT_OPEN, "true")?;
        }
        if let Some(id) = self.dlq_id {
            resp.insert_header(wire::DLQ_ID, id.to_string())?;
        }
        if self.status == 407 {
            resp.insert_header(wire::PROXY_AUTHENTICATE, wire::PROXY_CHALLENGE)?;
        }
        Ok(())
    }

    /// Writes the problem as the response of `session`: problem+json, or the gRPC form to a gRPC
    /// call over HTTP/2.
    pub async fn send(
        &self,
        session: &mut ServerSession,
        request_id: Option<&str>,
    ) -> pingora::Result<()> {
        if let ServerSession::H2(h2) = session
            && is_grpc(h2.req_header())
        {
            return h2.write_response_header(Box::new(self.to_grpc(request_id)?), true);
        }
        let body = self.body(request_id);
        let mut resp = ResponseHeader::build(self.status, Some(5))?;
        resp.insert_header("content-type", "application/problem+json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        self.hub_headers(&mut resp, request_id)?;
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(body, true).await?;
        Ok(())
    }
}

/// Whether `req` is a gRPC call.
pub fn is_grpc(req: &pingora::http::RequestHeader) -> bool {
    req.headers
        .get("content-type")
        .is_some_and(|v| wire::is_grpc_content_type(v.as_bytes()))
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`, as `%XX`.
fn grpc_percent_encode(s: &str) -> String {
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_form_carries_status_message_and_hub_headers() {
        let mut p = Problem::new(
            problem::CIRCUIT_OPEN,
            "provider pay is failing; 100% sure ✓",
        );
        p.circuit_open = true;
        p.retry_after = Some(7);
        let h = p.to_grpc(Some("rid-1")).unwrap();
        let get = |n: &str| h.headers.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h.status.as_u16(), 200);
        assert_eq!(get("content-type"), "application/grpc");
        assert_eq!(get("grpc-status"), "14");
        assert_eq!(
            get("grpc-message"),
            "circuit_open: provider pay is failing; 100%25 sure %E2%9C%93"
        );
        assert_eq!(get(wire::CIRCUIT_OPEN), "true");
        assert_eq!(get("retry-after"), "7");
        assert_eq!(get(wire::REQUEST_ID), "rid-1");
    }
}
