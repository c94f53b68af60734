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
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Writes the problem as the response of `session`.
    pub async fn send(
        &self,
        session: &mut ServerSession,
        request_id: Option<&str>,
    ) -> pingora::Result<()> {
        let body = self.body(request_id);
        let mut resp = ResponseHeader::build(self.status, Some(5))?;
        resp.insert_header("content-type", "application/problem+json")?;
        resp.insert_header("content-length", body.len().to_string())?;
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
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(body, true).await?;
        Ok(())
    }
}
