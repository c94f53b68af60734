//! Request signing for providers that authenticate each request with a signature over it.
//!
//! Pure functions over a request's method, target, headers and body: no I/O, no clock (the
//! caller passes `now`), no proxy types. Two schemes:
//!
//! - [`AwsSigV4`]: AWS Signature Version 4 (`Authorization: AWS4-HMAC-SHA256 …`), for API
//!   Gateway (`execute-api`), S3, SQS and the other AWS services.
//! - [`HmacScheme`]: the common partner-API pattern of an HMAC over a configurable list of request
//!   parts, sent in a header such as `X-Signature` next to an `X-Timestamp`.
//!
//! Both remove the caller's own copies of the headers they set (a caller cannot pre-sign or
//! smuggle a second signature), mark the credential-bearing header values sensitive
//! ([`http::HeaderValue::set_sensitive`]) and fail with a [`SignError`] that never contains a
//! secret.

use http::header::{HeaderName, HeaderValue};

mod hmac;
mod sigv4;
#[cfg(test)]
mod tests;

pub use self::hmac::{
    HmacAlgorithm, HmacScheme, SecretEncoding, SignatureEncoding, SignedPart, TimestampFormat,
};
pub use self::sigv4::{AwsSigV4, SigV4Parts, UNSIGNED_PAYLOAD};

/// The request body as far as signing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The whole body (empty for a request without one).
    Bytes(&'a [u8]),
    /// The body is streamed and not held in memory: it is not signed (`UNSIGNED-PAYLOAD`).
    Unsigned,
}

/// Why a request could not be signed. Messages name the header or field at fault, never a secret
/// or a header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// SigV4 signs the `host` header and the request has none.
    #[error("the request has no host header, which the signature covers")]
    MissingHost,
    /// The scheme signs the body, but the body was streamed (too large to hold in memory).
    #[error(
        "the signing scheme covers the request body, but the body was streamed (too large to hold in memory)"
    )]
    BodyRequired,
    /// The request target is not an origin-form path (`/…`).
    #[error("the request target must be a path starting with '/'")]
    InvalidTarget,
    /// A header the signature covers has a value that is not visible ASCII.
    #[error("header {name} must be visible ASCII to be signed")]
    UnsignableHeader {
        /// The header's name.
        name: String,
    },
    /// A configured header name is not a valid HTTP header name (an unvalidated scheme).
    #[error("{name:?} is not a valid header name")]
    InvalidHeaderName {
        /// The configured name.
        name: String,
    },
    /// A value the scheme would set is not a valid header value (an unvalidated credential).
    #[error("the value for header {name} is not a valid header value")]
    InvalidHeaderValue {
        /// The header it was meant for.
        name: String,
    },
    /// The secret does not decode as its configured encoding (an unvalidated scheme).
    #[error("the secret is not valid {encoding}")]
    InvalidSecret {
        /// The configured encoding (`hex` or `base64`).
        encoding: &'static str,
    },
}

/// A header name from configuration (the scheme's own header names).
fn header_name(name: &str) -> Result<HeaderName, SignError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| SignError::InvalidHeaderName {
        name: name.to_owned(),
    })
}

/// A header value, marked sensitive when it carries a credential. The error names the header only.
fn header_value(name: &HeaderName, value: &str, sensitive: bool) -> Result<HeaderValue, SignError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| SignError::InvalidHeaderValue {
        name: name.as_str().to_owned(),
    })?;
    v.set_sensitive(sensitive);
    Ok(v)
}

/// The path of an origin-form target (`/a/b?x=1` → `/a/b`), and its query (`x=1`, or empty).
fn split_target(path_and_query: &str) -> (&str, &str) {
    path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""))
}

/// Whether `name` is a token (RFC 9110) of 1–128 characters: what a configured header name must be.
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers a signing scheme may not set: they frame or route the request.
const FRAMING_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];

/// Whether `s` is free of ASCII control characters (it ends up in a header or a log line).
fn no_controls(s: &str) -> bool {
    !s.bytes().any(|b| b.is_ascii_control())
}
