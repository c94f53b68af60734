//! The request as the provider gets it, and the caller's headers as the DLQ keeps them.

use hub_core::provider::Auth;
use hub_core::wire::{CREDENTIAL_HEADERS, HOP_BY_HOP, listed};
use pingora::http::RequestHeader;

use crate::hygiene::{self, REQUEST_ID};
use crate::inject;
use crate::registry::Provider;

/// The request as the provider gets it: origin-form under the base path, Host of the base URL,
/// hop-by-hop and `Expect` out, credentials in, request id and idempotency key set. Framing
/// headers are the caller's; [`super::body`] re-frames a buffered body. A provider whose answers
/// are scrubbed (`scrubResponses`, credentials to mask) is asked for `Accept-Encoding: identity`:
/// a compressed body cannot be scrubbed.
pub fn upstream_header(
    caller: &RequestHeader,
    p: &Provider,
    path_and_query: &str,
    request_id: &str,
    idempotency_key: &mut Option<String>,
) -> pingora::Result<RequestHeader> {
    let mut up = caller.clone();
    hygiene::strip_hop_by_hop(&mut up);
    // Whatever the caller spoke: Pingora's h2 client sets HTTP/2 on its own copy.
    up.set_version(http::Version::HTTP_11);
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, q)) => (path, Some(q)),
        None => (path_and_query, None),
    };
    // A `path` credential goes in the provider's copy only (checked at admission).
    let path = crate::placement::upstream_path(p.auth.as_ref(), path).ok_or_else(|| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "the path does not match the provider's path template",
        )
    })?;
    let mut target = format!("{}{}", p.base.path_prefix, path);
    match (p.auth.as_ref(), query) {
        (Some(Auth::Query { name, value }), q) => {
            target.push('?');
            target.push_str(&inject::rewrite_query(q, name, value.expose()));
        }
        (_, Some(q)) => {
            target.push('?');
            target.push_str(q);
        }
        (_, None) => {}
    }
    up.set_raw_path(target.as_bytes())?;
    let default_port = if p.base.tls { 443 } else { 80 };
    let host = if p.base.port == default_port {
        p.base.host.clone()
    } else if p.base.host.contains(':') {
        format!("[{}]:{}", p.base.host, p.base.port)
    } else {
        format!("{}:{}", p.base.host, p.base.port)
    };
    up.insert_header("host", host)?;
    if let Some(auth) = p.auth.as_ref() {
        inject::inject_headers(&mut up, auth)?;
    }
    if p.scrubber.is_some() {
        up.insert_header("accept-encoding", "identity")?;
    }
    up.insert_header(REQUEST_ID, request_id)?;
    if let Some(h) = &p.config.idempotency_header {
        let key = match up.headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
            Some(k) => k.to_owned(),
            None => {
                let k = idempotency_key.clone().unwrap_or_else(hygiene::new_uuid);
                up.insert_header(h.to_ascii_lowercase(), k.as_str())?;
                k
            }
        };
        *idempotency_key = Some(key);
    }
    Ok(up)
}

/// The caller's headers minus credentials (whatever the provider's scheme uses, plus the usual
/// ones), hop-by-hop and framing: what a DLQ entry or a job keeps to re-send the call.
pub fn caller_headers(req: &RequestHeader, provider: &Provider) -> Vec<(String, String)> {
    let auth_header = match &provider.auth {
        Some(Auth::Header { name, .. }) => Some(name.to_ascii_lowercase()),
        _ => None,
    };
    req.headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !listed(HOP_BY_HOP, k)
                && !listed(CREDENTIAL_HEADERS, k)
                && auth_header.as_deref() != Some(k)
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}
