//! `POST /call`: call a provider explicitly, through exactly the pipeline proxied traffic takes.
//!
//! The admin service does not talk to providers itself: it sends the call to the hub proxy as a
//! plain absolute-form request, `http://<provider host><path>` (the first exact host, or
//! `call.<suffix>` for a provider with only wildcards), and the proxy routes it like any
//! module's `HTTP_PROXY` call: registry lookup, rate limit, breaker, credential injection, https
//! to the real base URL, retries, timeouts, DLQ. `idempotencyKey` goes into the provider's
//! `idempotencyHeader` (default `Idempotency-Key`).
//!
//! The answer is 200 with whatever came back through the pipeline — the provider's answer, or
//! the hub's own problem (429, 503 with an open breaker, 504…) — as
//! `{status, headers, body, bodyEncoding}`: `body` is the text when it is UTF-8
//! (`bodyEncoding: "utf8"`), else base64 (`"base64"`); hop-by-hop headers are dropped and
//! repeated ones joined with `, `. The admin answers a problem itself only when the call cannot
//! be made: bad input (422), unknown provider (404), disabled provider (409), proxy unreachable
//! or response over [`MAX_RESPONSE_BYTES`] (502).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use hub_core::provider::{HostPattern, ProviderRecord, ProviderStatus};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, parse_ulid};
use crate::{AdminState, SetupError};

/// Largest provider response relayed (502 above it).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Time on top of the provider's total budget before the admin gives up on the proxy.
const MARGIN: Duration = Duration::from_secs(5);
/// Most headers a call may set.
const MAX_HEADERS: usize = 64;
/// The methods a call may use.
pub const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// The HTTP client that reaches the hub proxy.
#[derive(Clone)]
pub struct ProxyClient {
    url: String,
    client: reqwest::Client,
}

impl ProxyClient {
    /// A client sending every request through the proxy at `url` (`http://host:port`), as the
    /// hub's internal caller (`internal`: [`hub_core::vault::Vault::internal_caller_token`]).
    pub fn new(url: &str, internal: &hub_core::secret::SecretString) -> Result<Self, SetupError> {
        let bad = |message: &str| SetupError::ProxyUrl {
            url: url.to_owned(),
            message: message.to_owned(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "http" || parsed.host_str().is_none() || parsed.path() != "/" {
            return Err(bad("expected http://host:port"));
        }
        let mut credential =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", internal.expose()))
                .map_err(|_| bad("the internal caller credential is not a header value"))?;
        credential.set_sensitive(true);
        let proxy = reqwest::Proxy::all(url)
            .map_err(|e| bad(&e.to_string()))?
            .custom_http_auth(credential);
        let client = reqwest::Client::builder()
            .proxy(proxy)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            client,
        })
    }
}

/// Body of `POST /call`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallRequest {
    /// The provider's ULID.
    pub provider_id: String,
    /// One of [`METHODS`].
    pub method: String,
    /// Origin-form path and query, e.g. `/v1/charges?limit=3`.
    pub path: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A string is sent as is; any other JSON value is sent as JSON.
    pub body: Option<serde_json::Value>,
    /// Sent in the provider's idempotency header; makes retries safe for any method.
    pub idempotency_key: Option<String>,
}

/// The answer of `POST /call`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResponse {
    /// The status that came back through the pipeline.
    pub status: u16,
    /// Its headers, hop-by-hop ones dropped, names lower case.
    pub headers: BTreeMap<String, String>,
    /// The body: text or base64, per `body_encoding`.
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: &'static str,
}

/// The request, checked and ready to send.
struct Outgoing {
    method: reqwest::Method,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

fn check_request(req: &CallRequest, record: &ProviderRecord) -> Result<Outgoing, ApiError> {
    if !METHODS.contains(&req.method.as_str()) {
        return Err(ApiError::validation(
            "method",
            format!("must be one of {}", METHODS.join(", ")),
        ));
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| ApiError::validation("method", "not an HTTP method"))?;
    let path_ok = req.path.starts_with('/')
        && req.path.len() <= 8192
        && req
            .path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'#' && b != b'\\');
    if !path_ok {
        return Err(ApiError::validation(
            "path",
            "must be an origin-form path starting with '/', at most 8192 visible ASCII \
             characters, without '#' or '\\' (percent-encode the rest)",
        ));
    }
    if req.headers.len() > MAX_HEADERS {
        return Err(ApiError::validation(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let field = || format!("headers.{name}");
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::validation(field(), "not a valid header name"))?;
        if hub_core::wire::reserved_request_header(n.as_str()) {
            return Err(ApiError::validation(
                field(),
                "framing and hop-by-hop headers are set by the hub",
            ));
        }
        let v = HeaderValue::from_str(value)
            .map_err(|_| ApiError::validation(field(), "not a valid header value"))?;
        headers.append(n, v);
    }
    if let Some(key) = &req.idempotency_key {
        let ok = !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic());
        let value = HeaderValue::from_str(key)
            .ok()
            .filter(|_| ok)
            .ok_or_else(|| {
                ApiError::validation("idempotencyKey", "must be 1-255 visible ASCII characters")
            })?;
        let name = record
            .config
            .idempotency_header
            .as_deref()
            .unwrap_or("Idempotency-Key");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::Internal("stored idempotency header is invalid".into()))?;
        headers.insert(name, value);
    }
    let body = match &req.body {
        None => None,
        Some(serde_json::Value::String(text)) => {
            default_content_type(&mut headers, "text/plain; charset=utf-8");
            Some(text.clone().into_bytes())
        }
        Some(value) => {
            default_content_type(&mut headers, "application/json");
            Some(serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?)
        }
    };
    Ok(Outgoing {
        method,
        headers,
        body,
    })
}

fn default_content_type(headers: &mut HeaderMap, value: &'static str) {
    headers
        .entry(reqwest::header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static(value));
}

/// The host the proxy routes to this provider: its first exact host, else a name under its
/// first wildcard.
pub fn call_host(record: &ProviderRecord) -> String {
    record
        .hosts
        .iter()
        .find_map(|h| match h {
            HostPattern::Exact(name) => Some(name.clone()),
            HostPattern::Wildcard(_) => None,
        })
        .or_else(|| {
            record.hosts.iter().find_map(|h| match h {
                HostPattern::Wildcard(suffix) => Some(format!("call.{suffix}")),
                HostPattern::Exact(_) => None,
            })
        })
        .unwrap_or_default()
}

/// `POST /call`.
pub async fn call(
    State(s): State<AdminState>,
    caller: Caller,
    ApiJson(req): ApiJson<CallRequest>,
) -> Result<Json<CallResponse>, ApiError> {
    let id = parse_ulid(&req.provider_id)
        .ok_or_else(|| ApiError::validation("providerId", "not a valid ULID"))?;
    let record = s
        .store
        .get_provider(id)
        .await?
        .filter(|p| caller.sees_provider(p.tenant.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("no provider with id {id}")))?;
    if record.status == ProviderStatus::Disabled {
        return Err(ApiError::ProviderDisabled(record.name));
    }
    let out = check_request(&req, &record)?;
    let proxy = s
        .proxy
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no proxy URL configured for POST /call".into()))?;
    let host = call_host(&record);
    let url = reqwest::Url::parse(&format!("http://{host}{}", req.path))
        .ok()
        .filter(|u| u.host_str() == Some(host.as_str()))
        .ok_or_else(|| ApiError::validation("path", "does not form a valid URL"))?;
    let budget = Duration::from_millis(record.config.total_timeout_ms.into()) + MARGIN;
    let mut builder = proxy
        .client
        .request(out.method, url)
        .headers(out.headers)
        .header(hub_core::wire::PROVIDER_ID, id.to_string())
        .timeout(budget);
    if let Some(body) = out.body {
        builder = builder.body(body);
    }
    let resp = builder
        .send()
        .await
        .map_err(|e| proxy_error(&proxy.url, &e))?;
    let answer = relay(resp, &proxy.url).await?;
    let path_only = req.path.split('?').next().unwrap_or_default();
    let detail = json!({"method": req.method, "path": path_only, "status": answer.status});
    audit::record(&s, &caller, "provider.call", id, detail).await;
    Ok(Json(answer))
}

fn proxy_error(url: &str, e: &reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::BadGateway(format!("the hub proxy at {url} did not answer in time"))
    } else {
        tracing::warn!(proxy = url, error = %e, "POST /call: proxy request failed");
        ApiError::BadGateway(format!("the hub proxy at {url} could not be reached"))
    }
}

/// Reads the answer (bounded) into the JSON envelope.
async fn relay(mut resp: reqwest::Response, proxy_url: &str) -> Result<CallResponse, ApiError> {
    let status = resp.status().as_u16();
    let named_in_connection: Vec<String> = resp
        .headers()
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if hub_core::wire::hop_response_header(n) || named_in_connection.iter().any(|c| c == n) {
            continue;
        }
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(n.to_owned())
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| proxy_error(proxy_url, &e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ApiError::BadGateway(format!(
                "the response exceeds {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let (body, body_encoding) = match String::from_utf8(body) {
        Ok(text) => (text, "utf8"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            "base64",
        ),
    };
    Ok(CallResponse {
        status,
        headers,
        body,
        body_encoding,
    })
}
