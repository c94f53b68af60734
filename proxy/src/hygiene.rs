//! Request hygiene: what is stripped from or added to a call on its way to the provider.

use pingora::http::RequestHeader;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy's own credentials: never forwarded.
/// Framing (`Transfer-Encoding`, `Content-Length`) is Pingora's job and is left alone.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// The hub's own control headers (DLQ replay, job attempt, caller name, budget): read by the hub,
/// never forwarded to a provider.
pub const HUB_CONTROL: &[&str] = &[
    "x-hub-dlq-replay",
    "x-hub-job-id",
    "x-hub-caller",
    "x-hub-timeout-ms",
    "x-hub-callback-url",
];

/// The request id header, propagated or generated, echoed to the caller.
pub const REQUEST_ID: &str = "x-request-id";

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(req: &mut RequestHeader) {
    let named: Vec<String> = req
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| {
            !t.is_empty() && !matches!(t.as_str(), "content-length" | "transfer-encoding" | "host")
        })
        .collect();
    for h in HOP_BY_HOP {
        req.remove_header(*h);
    }
    for h in named {
        req.remove_header(h.as_str());
    }
    for h in HUB_CONTROL {
        req.remove_header(*h);
    }
}

/// A caller-supplied request id is kept when it is short printable ASCII; otherwise (or when
/// absent) a fresh UUID is used, so ids in logs are always safe to print.
pub fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(new_uuid, str::to_owned)
}

/// A random (v4) UUID from the thread-local RNG: `Uuid::new_v4` asks the OS (a `getrandom`
/// syscall) every time, and ids are made for every call.
pub fn new_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("keep-alive", "timeout=5"),
            ("x-keep", "yes"),
        ] {
            req.append_header(k, v).unwrap();
        }
        strip_hop_by_hop(&mut req);
        let left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, vec!["x-keep"]);
    }

    #[test]
    fn request_ids_are_kept_only_when_safe() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(REQUEST_ID, "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header(REQUEST_ID, "bad id with spaces").unwrap();
        assert_ne!(request_id(&req), "bad id with spaces");
    }
}
