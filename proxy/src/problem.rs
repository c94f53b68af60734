//! Errors the hub itself answers, as `application/problem+json` (RFC 9457) with a stable `code`.
//! Bodies never carry secrets: details are built from provider names, hosts and error kinds.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

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
    /// Builds a problem.
    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
            circuit_open: false,
            dlq_id: None,
        }
    }

    /// 400: the request is not something a forward proxy can act on.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, "bad_request", "Bad request", detail)
    }

    /// 403: no registered provider for the host.
    pub fn unknown_provider(host: &str) -> Self {
        Self::new(
            403,
            "unknown_provider",
            "Unknown provider",
            format!("no provider is registered for host {host}; the hub denies by default"),
        )
    }

    /// 403: the provider exists but is disabled.
    pub fn provider_disabled(name: &str) -> Self {
        Self::new(
            403,
            "provider_disabled",
            "Provider disabled",
            format!("provider {name} is disabled"),
        )
    }

    /// 403: the port is not one the provider is reached on.
    pub fn forbidden_port(host: &str, port: u16) -> Self {
        Self::new(
            403,
            "forbidden_port",
            "Port not allowed",
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
            out.push_str(&format!("x-request-id: {id}\r\n"));
        }
        if let Some(s) = self.retry_after {
            out.push_str(&format!("retry-after: {s}\r\n"));
        }
        if self.circuit_open {
            out.push_str("x-circuit-breaker-open: true\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Writes the problem as the response of `session`.
    pub async fn send(
        &self,
        session: &mut Session,
        request_id: Option<&str>,
    ) -> pingora::Result<()> {
        let body = self.body(request_id);
        let mut resp = ResponseHeader::build(self.status, Some(5))?;
        resp.insert_header("content-type", "application/problem+json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        if let Some(id) = request_id {
            resp.insert_header("x-request-id", id)?;
        }
        if let Some(s) = self.retry_after {
            resp.insert_header("retry-after", s.to_string())?;
        }
        if self.circuit_open {
            resp.insert_header("x-circuit-breaker-open", "true")?;
        }
        if let Some(id) = self.dlq_id {
            resp.insert_header(hub_core::dlq::DLQ_ID_HEADER, id.to_string())?;
        }
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}
