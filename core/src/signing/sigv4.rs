//! AWS Signature Version 4, header form (`Authorization: AWS4-HMAC-SHA256 …`).
//!
//! Follows the published algorithm: canonical request → string to sign → signature with the key
//! derived from the secret, date, region and service. [`AwsSigV4::canonical_parts`] exposes the
//! intermediate strings so the implementation can be checked against AWS's own test suite.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use http::header::{AUTHORIZATION, HOST, HeaderMap, HeaderName};
use ring::{digest, hmac};

use super::{Payload, SignError, header_value, no_controls, split_target};
use crate::provider::ValidationError;
use crate::secret::SecretString;

/// The payload hash sent (and signed) for a body that is not hashed: a streamed body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");

/// Longest secret (key, token) accepted.
const MAX_SECRET_LEN: usize = 8192;
/// Longest region or service name accepted.
const MAX_SCOPE_PART_LEN: usize = 64;

/// AWS SigV4 credentials and scope. `Debug` never shows a secret.
///
/// JSON (camelCase): `{"accessKeyId", "secretAccessKey", "sessionToken"?, "region", "service"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSigV4 {
    /// Access key id (`AKIA…`, or `ASIA…` for temporary credentials).
    pub access_key_id: SecretString,
    /// Secret access key.
    pub secret_access_key: SecretString,
    /// Session token of temporary (STS) credentials, sent as `x-amz-security-token`.
    #[serde(default)]
    pub session_token: Option<SecretString>,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Service signing name, e.g. `execute-api`, `s3`, `sqs`.
    pub service: String,
}

/// The intermediate and final strings of one signature, for checks against reference vectors.
///
/// `Debug` leaves out the canonical request: it holds the signed header values, a session token
/// included.
#[derive(Clone, PartialEq, Eq)]
pub struct SigV4Parts {
    /// The canonical request (method, URI, query, headers, signed header names, payload hash).
    pub canonical_request: String,
    /// The string to sign (algorithm, time, credential scope, hash of the canonical request).
    pub string_to_sign: String,
    /// The signature, lower-case hex.
    pub signature: String,
    /// The `Authorization` header value.
    pub authorization: String,
}

impl fmt::Debug for SigV4Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigV4Parts")
            .field("canonical_request", &"[redacted]")
            .field("string_to_sign", &self.string_to_sign)
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

impl AwsSigV4 {
    /// Checks the fields: the access key id is 1–128 ASCII letters and digits; the secret key and
    /// session token are 1–8192 characters without control characters (the token visible ASCII:
    /// it is sent as a header); region and service are 1–64 characters of `a-z 0-9 -`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let akid = self.access_key_id.expose();
        if akid.is_empty() || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ValidationError::new(
                "auth.accessKeyId",
                "must be 1-128 ASCII letters and digits",
            ));
        }
        check_secret("auth.secretAccessKey", &self.secret_access_key, false)?;
        if let Some(token) = &self.session_token {
            check_secret("auth.sessionToken", token, true)?;
        }
        check_scope_part("auth.region", &self.region)?;
        check_scope_part("auth.service", &self.service)
    }

    /// The JSON the vault seals; it deserializes back to `self`. Holds the secrets in clear: drop
    /// it promptly.
    pub fn sealable_json(&self) -> serde_json::Value {
        serde_json::json!({
            "accessKeyId": self.access_key_id.expose(),
            "secretAccessKey": self.secret_access_key.expose(),
            "sessionToken": self.session_token.as_ref().map(SecretString::expose),
            "region": self.region,
            "service": self.service,
        })
    }

    /// Every secret value: what the hub masks wherever it could show up on the way back.
    pub fn secrets(&self) -> Vec<&SecretString> {
        let mut out = vec![&self.access_key_id, &self.secret_access_key];
        out.extend(self.session_token.as_ref());
        out
    }

    /// Signs the request the provider receives. Removes the caller's own `authorization`,
    /// `x-amz-date`, `x-amz-security-token`, `x-amz-content-sha256` first, then sets x-amz-date,
    /// x-amz-content-sha256 (the payload hash, or UNSIGNED-PAYLOAD), x-amz-security-token (when
    /// set) and authorization. Signed headers: host, content-type, content-md5 and every x-amz-*
    /// (the request must carry `host`). S3 (`service == "s3"`) uses single URI encoding and no
    /// path normalization; other services double-encode and normalize, as AWS specifies.
    ///
    /// `path_and_query` is the target as sent (percent-encoded). `authorization` and
    /// `x-amz-security-token` are marked sensitive. On error the caller's signature headers are
    /// gone and nothing was added.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &mut HeaderMap,
        payload: Payload<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), SignError> {
        for name in [
            AUTHORIZATION,
            X_AMZ_DATE,
            X_AMZ_SECURITY_TOKEN,
            X_AMZ_CONTENT_SHA256,
        ] {
            headers.remove(name);
        }
        if !headers.contains_key(HOST) {
            return Err(SignError::MissingHost);
        }
        let added = self.added_headers(payload, now);
        let parts = {
            let mut signed = signed_headers(headers)?;
            signed.extend(added.iter().map(|(n, v, _)| (n.as_str(), v.as_str())));
            let payload_hash = payload_hash(payload);
            self.canonical_parts(method, path_and_query, &signed, &payload_hash, now)?
        };
        let mut values = Vec::with_capacity(added.len() + 1);
        for (name, value, sensitive) in &added {
            values.push((name.clone(), header_value(name, value, *sensitive)?));
        }
        values.push((
            AUTHORIZATION,
            header_value(&AUTHORIZATION, &parts.authorization, true)?,
        ));
        for (name, value) in values {
            headers.insert(name, value);
        }
        Ok(())
    }

    /// The signature for an explicit list of signed headers (name, value; repeated names are
    /// joined with `,` in order), as the AWS test suite states requests. `path_and_query` is the
    /// target as sent; `payload_hash` the lower-case hex SHA-256 of the body or
    /// [`UNSIGNED_PAYLOAD`]. The headers must include whatever the service requires (`host`,
    /// `x-amz-date` with `now`); nothing is added.
    pub fn canonical_parts(
        &self,
        method: &str,
        path_and_query: &str,
        signed_headers: &[(&str, &str)],
        payload_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<SigV4Parts, SignError> {
        let (path, query) = split_target(path_and_query);
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SignError::InvalidTarget);
        }
        let (header_lines, signed_names) = canonical_headers(signed_headers);
        let canonical_request = format!(
            "{method}\n{uri}\n{query}\n{header_lines}\n{signed_names}\n{payload_hash}",
            uri = self.canonical_uri(path),
            query = canonical_query(query),
        );
        let amz_date = amz_date(now);
        let scope = format!(
            "{}/{}/{}/aws4_request",
            now.format("%Y%m%d"),
            self.region,
            self.service
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let signature = hex::encode(hmac::sign(
            &self.signing_key(now),
            string_to_sign.as_bytes(),
        ));
        let authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
            self.access_key_id.expose()
        );
        Ok(SigV4Parts {
            canonical_request,
            string_to_sign,
            signature,
            authorization,
        })
    }

    /// The headers [`AwsSigV4::sign`] adds before the authorization: name, value, sensitive.
    fn added_headers(
        &self,
        payload: Payload<'_>,
        now: DateTime<Utc>,
    ) -> Vec<(HeaderName, String, bool)> {
        let mut added = vec![
            (X_AMZ_DATE, amz_date(now), false),
            (X_AMZ_CONTENT_SHA256, payload_hash(payload), false),
        ];
        if let Some(token) = &self.session_token {
            added.push((X_AMZ_SECURITY_TOKEN, token.expose().to_owned(), true));
        }
        added
    }

    /// The canonical URI: S3 signs the path as sent; other services sign the normalized path
    /// encoded once more (so `%20` on the wire is `%2520` in the canonical request).
    fn canonical_uri(&self, path: &str) -> String {
        if self.service == "s3" {
            if path.is_empty() { "/" } else { path }.to_owned()
        } else {
            uri_encode(normalize_path(path).as_bytes(), true)
        }
    }

    /// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
    fn signing_key(&self, now: DateTime<Utc>) -> hmac::Key {
        let secret = format!("AWS4{}", self.secret_access_key.expose());
        let date = now.format("%Y%m%d").to_string();
        let mut key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        for part in [
            date.as_str(),
            self.region.as_str(),
            self.service.as_str(),
            "aws4_request",
        ] {
            key = hmac::Key::new(
                hmac::HMAC_SHA256,
                hmac::sign(&key, part.as_bytes()).as_ref(),
            );
        }
        key
    }
}

/// A secret field: 1–8192 characters, no control characters; `header` ones visible ASCII.
fn check_secret(field: &str, s: &SecretString, header: bool) -> Result<(), ValidationError> {
    let v = s.expose();
    if v.is_empty() || v.len() > MAX_SECRET_LEN {
        return Err(ValidationError::new(field, "must be 1-8192 characters"));
    }
    if !no_controls(v) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if header && !v.is_ascii() {
        return Err(ValidationError::new(field, "must be ASCII"));
    }
    Ok(())
}

/// A region or service: 1–64 characters of `a-z 0-9 -` (they appear in the credential scope).
fn check_scope_part(field: &str, s: &str) -> Result<(), ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCOPE_PART_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be 1-64 characters of a-z, 0-9 or '-'",
        ))
    }
}

/// Whether [`AwsSigV4::sign`] signs a header of this (lower-case) name.
fn is_signed(name: &str) -> bool {
    matches!(name, "host" | "content-type" | "content-md5") || name.starts_with("x-amz-")
}

/// The request's headers that are signed, as text (a non-ASCII value cannot be signed).
fn signed_headers(headers: &HeaderMap) -> Result<Vec<(&str, &str)>, SignError> {
    headers
        .iter()
        .filter(|(name, _)| is_signed(name.as_str()))
        .map(|(name, value)| {
            value
                .to_str()
                .map(|v| (name.as_str(), v))
                .map_err(|_| SignError::UnsignableHeader {
                    name: name.as_str().to_owned(),
                })
        })
        .collect()
}

/// The payload hash: hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
fn payload_hash(payload: Payload<'_>) -> String {
    match payload {
        Payload::Bytes(body) => sha256_hex(body),
        Payload::Unsigned => UNSIGNED_PAYLOAD.to_owned(),
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'`, the x-amz-date format.
fn amz_date(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

/// Canonical header lines (`name:value\n` each, names lower-case and sorted, values trimmed with
/// inner whitespace runs collapsed, repeated names joined by `,`) and the signed header names
/// (`a;b;c`).
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        by_name
            .entry(name.trim().to_ascii_lowercase())
            .or_default()
            .push(trim_all(value));
    }
    let lines = by_name
        .iter()
        .map(|(name, values)| format!("{name}:{}\n", values.join(",")))
        .collect();
    let names = by_name
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(";");
    (lines, names)
}

/// Trims a header value and collapses each inner run of whitespace to one space.
fn trim_all(value: &str) -> String {
    value.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical query: each name and value percent-decoded then encoded with AWS's rules
/// (unreserved characters kept, everything else `%XX`; so `+` is a literal plus, `%2B`), a missing
/// `=` meaning an empty value, pairs sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name), false),
                uri_encode(&percent_decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 dot-segment removal with empty segments dropped too (AWS wants `//` collapsed); the
/// leading slash and a trailing one are kept; an empty path is `/`.
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = path.ends_with('/') && !segments.is_empty();
    let mut out = format!("/{}", segments.join("/"));
    if trailing {
        out.push('/');
    }
    out
}

/// AWS's URI encoding: `A-Z a-z 0-9 - _ . ~` kept (and `/` when `keep_slash`), every other byte
/// `%XX` in upper-case hex.
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits is kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| Some(hex_digit(*bytes.get(i + 1)?)? << 4 | hex_digit(*bytes.get(i + 2)?)?))
            .flatten();
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
