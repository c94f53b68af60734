//! Request hygiene: what is stripped from or added to a call on its way to the provider.

use pingora::http::RequestHeader;

pub use hub_core::wire::{ANSWERED_BY_HUB, HOP_BY_HOP, HUB_CONTROL, REQUEST_ID};
use hub_core::wire::{SINGLETON_REQUEST_HEADERS, problem};

use crate::problem::Problem;
use pingora::protocols::http::ServerSession;

/// Largest request head (request line and header fields) the hub reads: above it, `431`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Checks what Pingora's parser leaves to the application: an HTTP/1.1 request names its
/// `Host`; its body is framed one way (`chunked` alone, or one `Content-Length`); the headers
/// that route, frame or authenticate a call appear at most once (a duplicate is refused, never
/// resolved silently); the head fits [`MAX_HEAD_BYTES`].
pub fn check_request(session: &ServerSession) -> Result<(), Problem> {
    let req = session.req_header();
    let mut size = req.method.as_str().len() + req.raw_path().len() + 12;
    for (k, v) in &req.headers {
        size += k.as_str().len() + v.len() + 4;
    }
    if size > MAX_HEAD_BYTES {
        return Err(Problem::new(
            problem::HEADERS_TOO_LARGE,
            format!("the request head exceeds {} KiB", MAX_HEAD_BYTES / 1024),
        ));
    }
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key("host") {
        return Err(Problem::bad_request("an HTTP/1.1 request must carry Host"));
    }
    // Framing: chunked alone, or a Content-Length alone (RFC 9112 §6.1 allows refusing both
    // together; a request framed two ways is how bodies get smuggled).
    let mut te = req.headers.get_all("transfer-encoding").iter().peekable();
    if te.peek().is_some() {
        let only_chunked = te.count() == 1
            && req
                .headers
                .get("transfer-encoding")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !only_chunked {
            return Err(Problem::bad_request(
                "Transfer-Encoding must be exactly \"chunked\"",
            ));
        }
        // Pingora drops the Content-Length of such a request (and frames it by the chunks): the
        // raw head still shows it.
        let raw_cl = session.as_http1().is_some_and(|h| {
            h.get_headers_raw_bytes()
                .split(|b| *b == b'\n')
                .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        });
        if raw_cl || req.headers.contains_key("content-length") {
            return Err(Problem::bad_request(
                "a request must not carry both Transfer-Encoding and Content-Length",
            ));
        }
    }
    if let Some(cl) = req.headers.get("content-length")
        && (cl.is_empty() || !cl.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err(Problem::bad_request(
            "Content-Length must be one decimal number",
        ));
    }
    for name in SINGLETON_REQUEST_HEADERS {
        if req.headers.get_all(*name).iter().nth(1).is_some() {
            return Err(Problem::bad_request(format!(
                "the {name} header may appear only once"
            )));
        }
    }
    Ok(())
}

/// Removes hop-by-hop headers (including any named in `Connection`), what the hub answers
/// itself (`Expect`) and the hub's control headers.
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
    for h in HUB_CONTROL.iter().chain(ANSWERED_BY_HUB) {
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
