//! Sending a stored call again, through the hub proxy: the same pipeline as live traffic.
//!
//! The worker does not talk to providers. It sends the call to the hub proxy as a plain
//! absolute-form request, `http://<a host of the provider><path>` (the first exact host, or
//! `call.<suffix>` for a provider with only wildcards), and the proxy routes it like any
//! module's call: registry lookup, rate limit, breaker, credential injection, https to the base
//! URL, retries, timeouts. It carries the stored request id and idempotency key, and a marker
//! header (`X-Hub-DLQ-Replay` or `X-Hub-Job-Id`) so its failure is not recorded as a new DLQ
//! entry. The answer is classified: the provider's own answer, the hub throttling the call
//! (not an attempt: try later), or a failure.

use std::time::Duration;

use crate::provider::{HostPattern, ProviderRecord};

use super::callback::reqwest_kind;

/// Bytes of a failed answer kept as its excerpt.
pub const EXCERPT_LEN: usize = 512;
/// Extra time on top of the provider's budget before the worker gives up on the proxy.
const MARGIN: Duration = Duration::from_secs(10);
/// Type URI prefix of the hub's own problem answers.
const HUB_PROBLEM: &str = "urn:integration-hub:problem:";
/// Whether a stored header is never re-sent: what no sender sets itself, the hub's control
/// headers, and the request id (this module sets it).
fn not_resent(name: &str) -> bool {
    use crate::wire::{HUB_CONTROL, REQUEST_ID, listed, reserved_request_header};
    name == REQUEST_ID || reserved_request_header(name) || listed(HUB_CONTROL, name)
}

/// The host the worker addresses a provider by.
pub fn call_host(p: &ProviderRecord) -> Option<String> {
    p.hosts
        .iter()
        .find_map(|h| match h {
            HostPattern::Exact(h) => Some(h.clone()),
            HostPattern::Wildcard(_) => None,
        })
        .or_else(|| {
            p.hosts.iter().find_map(|h| match h {
                HostPattern::Wildcard(s) => Some(format!("call.{s}")),
                HostPattern::Exact(_) => None,
            })
        })
}

/// A call to send.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The provider as stored.
    pub provider: &'a ProviderRecord,
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Stored headers.
    pub headers: &'a [(String, String)],
    /// Body.
    pub body: Vec<u8>,
    /// Request id to send again.
    pub request_id: &'a str,
    /// Idempotency key (sent in the provider's `idempotencyHeader`).
    pub idempotency_key: Option<&'a str>,
    /// `(X-Hub-DLQ-Replay | X-Hub-Job-Id, id)`.
    pub marker: (&'static str, String),
    /// Largest answer body read.
    pub max_body: usize,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The provider's answer (a 4xx included: it is final).
    Final {
        /// Status.
        status: u16,
        /// Headers minus hop-by-hop.
        headers: Vec<(String, String)>,
        /// Body (at most `max_body` bytes).
        body: Vec<u8>,
        /// The body was longer.
        truncated: bool,
    },
    /// The hub's own rate limit or quota refused the call: not an attempt; try after this.
    Throttled {
        /// `Retry-After`.
        retry_after: Duration,
    },
    /// The call failed through the pipeline (5xx, an open breaker, a hub refusal).
    Failed {
        /// Status.
        status: u16,
        /// The hub's problem code, when the hub answered.
        code: Option<String>,
        /// Start of the body.
        excerpt: String,
    },
    /// The proxy could not be reached: not an attempt.
    Unreachable {
        /// Error kind.
        error: &'static str,
    },
}

/// Sends calls through the hub proxy.
#[derive(Debug, Clone)]
pub struct ProxyCaller {
    client: reqwest::Client,
}

impl ProxyCaller {
    /// A caller using the hub proxy at `proxy_url` (`http://host:port`), identified to it by
    /// the hub's internal caller credential ([`crate::vault::Vault::internal_caller_token`]).
    pub fn new(
        proxy_url: &str,
        internal: &crate::secret::SecretString,
    ) -> Result<Self, reqwest::Error> {
        let mut credential =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", internal.expose()))
                .expect("hex is a header value");
        credential.set_sensitive(true);
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(proxy_url)?.custom_http_auth(credential))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { client })
    }

    /// Sends one call and classifies the answer.
    pub async fn send(&self, out: Outgoing<'_>) -> Answer {
        let Some(host) = call_host(out.provider) else {
            return failed(0, "no_host", "the provider claims no host");
        };
        let Ok(url) = reqwest::Url::parse(&format!("http://{host}{}", out.path)) else {
            return failed(0, "bad_path", "the stored path does not form a URL");
        };
        let Ok(method) = reqwest::Method::from_bytes(out.method.as_bytes()) else {
            return failed(0, "bad_method", "the stored method is not valid");
        };
        let idem_header = out
            .provider
            .config
            .idempotency_header
            .as_deref()
            .map(str::to_ascii_lowercase);
        let mut req = self.client.request(method, url);
        for (k, v) in out.headers {
            let k = k.to_ascii_lowercase();
            let is_async_prefer = k == "prefer" && v.contains(super::model::PREFER_ASYNC);
            if not_resent(&k) || is_async_prefer || Some(&k) == idem_header.as_ref() {
                continue;
            }
            req = req.header(k, v);
        }
        req = req
            .header(crate::wire::PROVIDER_ID, out.provider.id.to_string())
            .header(crate::wire::REQUEST_ID, out.request_id)
            .header(out.marker.0, out.marker.1.as_str());
        if let (Some(h), Some(key)) = (&idem_header, out.idempotency_key) {
            req = req.header(h.as_str(), key);
        }
        let budget = Duration::from_millis(out.provider.config.total_timeout_ms.into()) + MARGIN;
        let resp = match req.body(out.body).timeout(budget).send().await {
            Ok(r) => r,
            Err(e) => {
                return Answer::Unreachable {
                    error: reqwest_kind(&e),
                };
            }
        };
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| !crate::wire::hop_response_header(k.as_str()))
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let (body, truncated) = read_body(resp, out.max_body.max(EXCERPT_LEN)).await;
        classify(status, headers, body, truncated, out.max_body)
    }
}

fn failed(status: u16, code: &str, excerpt: &str) -> Answer {
    Answer::Failed {
        status,
        code: Some(code.to_owned()),
        excerpt: excerpt.to_owned(),
    }
}

async fn read_body(mut resp: reqwest::Response, max: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = max.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, true);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) | Err(_) => return (body, false),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The hub's problem code, when the body is one of the hub's own problem answers.
fn hub_problem_code(headers: &[(String, String)], body: &[u8]) -> Option<String> {
    let ct = header(headers, "content-type")?;
    if !ct.starts_with("application/problem+json") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !v.get("type")?.as_str()?.starts_with(HUB_PROBLEM) {
        return None;
    }
    v.get("code")?.as_str().map(str::to_owned)
}

/// Sorts an answer into final / throttled / failed.
pub fn classify(
    status: u16,
    headers: Vec<(String, String)>,
    mut body: Vec<u8>,
    truncated: bool,
    max_body: usize,
) -> Answer {
    let code = hub_problem_code(&headers, &body);
    let excerpt = || crate::wire::excerpt(&body, EXCERPT_LEN);
    if status == 429 && matches!(code.as_deref(), Some("rate_limited" | "quota_exhausted")) {
        let secs = header(&headers, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1);
        return Answer::Throttled {
            retry_after: Duration::from_secs(secs.max(1)),
        };
    }
    if status >= 500 || code.is_some() {
        return Answer::Failed {
            status,
            excerpt: excerpt(),
            code,
        };
    }
    let truncated = truncated || body.len() > max_body;
    body.truncate(max_body);
    Answer::Final {
        status,
        headers,
        body,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(code: &str) -> Vec<u8> {
        format!(r#"{{"type":"urn:integration-hub:problem:{code}","code":"{code}","status":0}}"#)
            .into_bytes()
    }

    fn h(ct: &str) -> Vec<(String, String)> {
        vec![
            ("content-type".into(), ct.into()),
            ("retry-after".into(), "3".into()),
        ]
    }

    #[test]
    fn answers_are_sorted_by_who_answered() {
        let pj = "application/problem+json";
        assert_eq!(
            classify(429, h(pj), problem("rate_limited"), false, 100),
            Answer::Throttled {
                retry_after: Duration::from_secs(3)
            }
        );
        // A provider's own 429 relayed (no hub problem type) is its answer.
        assert!(matches!(
            classify(429, h("application/json"), b"{}".to_vec(), false, 100),
            Answer::Final { status: 429, .. }
        ));
        assert!(matches!(
            classify(502, h(pj), problem("upstream_failed"), false, 100),
            Answer::Failed { status: 502, code: Some(c), .. } if c == "upstream_failed"
        ));
        assert!(matches!(
            classify(403, h(pj), problem("provider_disabled"), false, 100),
            Answer::Failed { status: 403, .. }
        ));
        assert!(matches!(
            classify(200, h("text/plain"), vec![b'x'; 10], false, 4),
            Answer::Final { status: 200, truncated: true, ref body, .. } if body.len() == 4
        ));
    }
}
