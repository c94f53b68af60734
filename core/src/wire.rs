//! The hub's own wire contract, in one place: the header names it reads and writes, the header
//! lists it strips, and the problem codes it answers with. The proxy, the admin API and the
//! background worker all take these from here, and `README.md`'s error table is checked against
//! [`PROBLEMS`] by a test, so the three cannot drift apart.

/// The request id, propagated or generated, echoed to the caller.
pub const REQUEST_ID: &str = "x-request-id";
/// The DLQ entry a failed call was recorded as (on the hub's 502/504).
pub const DLQ_ID: &str = "x-hub-dlq-id";
/// A DLQ replay carries the entry it replays.
pub const DLQ_REPLAY: &str = "x-hub-dlq-replay";
/// An async job's attempt carries its job id (also on the 202 that accepted it).
pub const JOB_ID: &str = "x-hub-job-id";
/// The URL an async job's result is POSTed to.
pub const CALLBACK_URL: &str = "x-hub-callback-url";
/// A module may name itself (kept as the DLQ entry's `caller`).
pub const CALLER: &str = "x-hub-caller";
/// The hub's own calls (internal caller) name the provider they mean: two tenants may claim
/// the same host. Honoured only from the internal caller; never forwarded.
pub const PROVIDER_ID: &str = "x-hub-provider-id";
/// The tenant of the authenticated caller, set by the hub on the request it handles (whatever
/// a module sent is removed): DLQ entries and jobs of calls to global providers record it.
/// Never forwarded.
pub const TENANT: &str = "x-hub-tenant";
/// A caller may lower the call's total budget, in milliseconds.
pub const TIMEOUT_MS: &str = "x-hub-timeout-ms";
/// The seed's marker on a breaker rejection.
pub const CIRCUIT_OPEN: &str = "x-circuit-breaker-open";

/// Hop-by-hop request headers (RFC 9110 §7.6.1) plus the proxy's own credentials: never
/// forwarded. Framing (`Transfer-Encoding`, `Content-Length`) is re-derived, not copied blindly.
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

/// Request headers the hub answers itself and never forwards: `Expect: 100-continue` is
/// answered once the call is admitted, so the provider never sees the expectation.
pub const ANSWERED_BY_HUB: &[&str] = &["expect"];

/// The hub's control headers: read by the hub, never forwarded to a provider.
pub const HUB_CONTROL: &[&str] = &[
    DLQ_REPLAY,
    JOB_ID,
    CALLER,
    TIMEOUT_MS,
    CALLBACK_URL,
    PROVIDER_ID,
    TENANT,
];

/// Headers that carry credentials under their usual names: never stored (DLQ entries, jobs, call
/// records) whatever the provider's own scheme is.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// The challenge on a `407 caller_unauthenticated`: a caller credential goes in
/// `Proxy-Authorization` as Basic (`<caller>:<token>`) or Bearer (a token or a ServiceAccount JWT).
pub const PROXY_AUTHENTICATE: &str = "proxy-authenticate";
/// Its value.
pub const PROXY_CHALLENGE: &str =
    "Basic realm=\"integration-hub\", Bearer realm=\"integration-hub\"";
/// Where a module's caller credential arrives.
pub const PROXY_AUTHORIZATION: &str = "proxy-authorization";

/// Request headers that must appear at most once: routing, framing and credentials depend on
/// them, and resolving duplicates silently is how requests get smuggled or misrouted.
pub const SINGLETON_REQUEST_HEADERS: &[&str] = &["host", "content-length", "authorization"];

/// One kind of answer the hub gives itself: status, stable `code`, title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemKind {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code; modules branch on it.
    pub code: &'static str,
    /// Human-readable summary of the code.
    pub title: &'static str,
}

macro_rules! problems {
    ($($name:ident = $status:literal, $code:literal, $title:literal;)*) => {
        /// The problem kinds, by name.
        pub mod problem {
            use super::ProblemKind;
            $(
                #[doc = concat!("`", $status, " ", $code, "`: ", $title, ".")]
                pub const $name: ProblemKind = ProblemKind { status: $status, code: $code, title: $title };
            )*
        }
        /// Every problem the proxy answers with (the README's error table lists exactly these).
        pub const PROBLEMS: &[ProblemKind] = &[$(problem::$name),*];
    };
}

problems! {
    BAD_REQUEST = 400, "bad_request", "Bad request";
    INVALID_CALLBACK = 400, "invalid_callback", "Invalid callback URL";
    CREDENTIAL_PLACEMENT = 400, "credential_placement", "Credential placement";
    UNKNOWN_PROVIDER = 403, "unknown_provider", "Unknown provider";
    PROVIDER_DISABLED = 403, "provider_disabled", "Provider disabled";
    FORBIDDEN_PORT = 403, "forbidden_port", "Port not allowed";
    FORBIDDEN_DESTINATION = 403, "forbidden_destination", "Forbidden destination";
    NOT_GRANTED = 403, "not_granted", "Not granted";
    FOREIGN_CREDENTIAL = 403, "foreign_credential", "Foreign credential";
    CALLER_UNAUTHENTICATED = 407, "caller_unauthenticated", "Caller not authenticated";
    REQUEST_TIMEOUT = 408, "request_timeout", "Request timeout";
    IDEMPOTENCY_CONFLICT = 409, "idempotency_conflict", "Idempotency conflict";
    BODY_TOO_LARGE = 413, "body_too_large", "Body too large";
    EXPECTATION_FAILED = 417, "expectation_failed", "Expectation failed";
    MISDIRECTED_REQUEST = 421, "misdirected_request", "Misdirected request";
    RATE_LIMITED = 429, "rate_limited", "Rate limited";
    QUOTA_EXHAUSTED = 429, "quota_exhausted", "Daily quota exhausted";
    TOO_MANY_UPGRADED = 429, "too_many_upgraded_connections", "Too many upgraded connections";
    HEADERS_TOO_LARGE = 431, "headers_too_large", "Request header fields too large";
    INTERNAL_ERROR = 500, "internal_error", "Internal error";
    UPSTREAM_FAILED = 502, "upstream_failed", "Upstream failed";
    UPSTREAM_FAILED_UNRECORDED = 502, "upstream_failed_unrecorded", "Upstream failed; not recorded in the DLQ";
    UPSTREAM_DNS_FAILED = 502, "upstream_dns_failed", "Upstream name resolution failed";
    CIRCUIT_OPEN = 503, "circuit_open", "Circuit open";
    CREDENTIALS_UNAVAILABLE = 503, "credentials_unavailable", "Credentials unavailable";
    JOBS_UNAVAILABLE = 503, "jobs_unavailable", "Jobs unavailable";
    OVERLOADED = 503, "overloaded", "Too many connections";
    UPSTREAM_TIMEOUT = 504, "upstream_timeout", "Upstream timeout";
}

/// gRPC's status header (in trailers, or in a trailers-only answer).
pub const GRPC_STATUS: &str = "grpc-status";
/// gRPC's status message header (percent-encoded).
pub const GRPC_MESSAGE: &str = "grpc-message";
/// gRPC's deadline header (`<digits><unit>`, unit one of H M S m u n).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// gRPC status codes the hub answers with itself (grpc/doc/statuscodes.md).
pub mod grpc_status {
    /// Not an error.
    pub const OK: u32 = 0;
    /// The client's request was malformed.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// The deadline (`grpc-timeout`, the provider's budget) expired.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// Not allowed: unknown provider, disabled, forbidden port or destination.
    pub const PERMISSION_DENIED: u32 = 7;
    /// Rate limit, daily quota, too many streams.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// The method is not served (a request gRPC cannot carry).
    pub const UNIMPLEMENTED: u32 = 12;
    /// A fault in the hub.
    pub const INTERNAL: u32 = 13;
    /// Transient: breaker open, provider failing, credentials unavailable. Safe to retry when no
    /// response headers were received.
    pub const UNAVAILABLE: u32 = 14;
    /// The provider's credentials could not be used.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The gRPC status a module gets for one of the hub's own answers (`status` is the HTTP status
/// the same problem has for plain HTTP callers).
pub fn grpc_status_of(status: u16) -> u32 {
    match status {
        400 | 413 | 417 | 421 | 431 => grpc_status::INVALID_ARGUMENT,
        401 | 407 => grpc_status::UNAUTHENTICATED,
        403 | 404 => grpc_status::PERMISSION_DENIED,
        408 | 504 => grpc_status::DEADLINE_EXCEEDED,
        409 => grpc_status::INVALID_ARGUMENT,
        429 => grpc_status::RESOURCE_EXHAUSTED,
        501 => grpc_status::UNIMPLEMENTED,
        502 | 503 => grpc_status::UNAVAILABLE,
        _ => grpc_status::INTERNAL,
    }
}

/// Whether a request is a gRPC call (`content-type: application/grpc` or `application/grpc+…`).
pub fn is_grpc_content_type(content_type: &[u8]) -> bool {
    let ct = content_type;
    ct.len() >= 16
        && ct[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(ct.get(16), None | Some(b'+' | b';'))
}

/// Request headers a call's sender never sets itself (a module through `POST /call`, the worker
/// re-sending a stored call): framing, hop-by-hop, and what the hub answers itself.
pub fn reserved_request_header(name: &str) -> bool {
    ["host", "content-length", "transfer-encoding"]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
        || listed(HOP_BY_HOP, name)
        || listed(ANSWERED_BY_HUB, name)
}

/// Response headers that describe the hop, not the provider's answer.
pub fn hop_response_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("transfer-encoding") || listed(HOP_BY_HOP, name)
}

/// At most `max` bytes of a body as text fit for logs and both stores: invalid UTF-8 and control
/// characters other than tab, CR and LF become U+FFFD (PostgreSQL `TEXT` refuses NUL, so one
/// NUL in a provider's error page would otherwise make its DLQ entry impossible to store).
pub fn excerpt(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)])
        .chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Whether `name` (any case) is in `list`.
pub fn listed(list: &[&str], name: &str) -> bool {
    list.iter().any(|h| h.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_hold_no_nul_and_no_invalid_utf8() {
        assert_eq!(
            excerpt(b"a\0b\tc\r\n\xff\x1b", 100),
            "a\u{FFFD}b\tc\r\n\u{FFFD}\u{FFFD}"
        );
        assert_eq!(excerpt(b"abcdef", 3), "abc");
    }

    #[test]
    fn grpc_content_types_and_statuses() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc_content_type(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/json",
            "application/grp",
            "",
        ] {
            assert!(!is_grpc_content_type(ct.as_bytes()), "{ct}");
        }
        assert_eq!(
            grpc_status_of(problem::CIRCUIT_OPEN.status),
            grpc_status::UNAVAILABLE
        );
        assert_eq!(
            grpc_status_of(problem::RATE_LIMITED.status),
            grpc_status::RESOURCE_EXHAUSTED
        );
        assert_eq!(
            grpc_status_of(problem::UNKNOWN_PROVIDER.status),
            grpc_status::PERMISSION_DENIED
        );
        assert_eq!(
            grpc_status_of(problem::UPSTREAM_TIMEOUT.status),
            grpc_status::DEADLINE_EXCEEDED
        );
        assert_eq!(
            grpc_status_of(problem::UPSTREAM_FAILED.status),
            grpc_status::UNAVAILABLE
        );
        assert_eq!(
            grpc_status_of(problem::INTERNAL_ERROR.status),
            grpc_status::INTERNAL
        );
    }

    /// The README's error table names exactly the problems the proxy answers with, each with its
    /// status: a code added, renamed or dropped on one side only fails here.
    #[test]
    fn the_readme_error_table_and_the_problem_codes_agree() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let mut in_table = false;
        let mut documented = Vec::new();
        for line in readme.lines() {
            if line.starts_with("| status | code |") {
                in_table = true;
                continue;
            }
            if !in_table {
                continue;
            }
            if !line.starts_with('|') {
                break;
            }
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let Ok(status) = cols[1].parse::<u16>() else {
                continue; // the |---| row
            };
            for code in cols[2].split('`').skip(1).step_by(2) {
                documented.push((status, code.to_owned()));
            }
        }
        let mut emitted: Vec<(u16, String)> = PROBLEMS
            .iter()
            .map(|p| (p.status, p.code.to_owned()))
            .collect();
        documented.sort();
        emitted.sort();
        assert_eq!(
            documented, emitted,
            "README.md's error table and core::wire::PROBLEMS differ"
        );
        let mut codes: Vec<_> = PROBLEMS.iter().map(|p| p.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), PROBLEMS.len(), "a code is listed twice");
    }
}
