//! HMAC request signatures: the "X-Signature + X-Timestamp" pattern of many partner APIs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use http::header::{HeaderMap, HeaderName};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{FRAMING_HEADERS, SignError, header_name, header_value, is_header_token, split_target};
use crate::provider::ValidationError;
use crate::secret::SecretString;

/// Longest secret or API key accepted.
const MAX_SECRET_LEN: usize = 8192;
/// Most parts one signature may cover.
const MAX_PARTS: usize = 32;
/// Longest prefix accepted.
const MAX_PREFIX_LEN: usize = 64;
/// Longest separator accepted.
const MAX_SEPARATOR_LEN: usize = 16;

/// How the configured secret is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The secret's UTF-8 bytes are the key.
    #[default]
    Plain,
    /// Hex; the decoded bytes are the key.
    Hex,
    /// Standard base64 (padded); the decoded bytes are the key.
    Base64,
}

/// The HMAC hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA1, for legacy partners only.
    Sha1,
    /// HMAC-SHA512.
    Sha512,
}

/// How the signature bytes are written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Lower-case hex.
    #[default]
    Hex,
    /// Standard base64, padded.
    Base64,
}

/// How `now` is written in the timestamp header (and the `timestamp` part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TimestampFormat {
    /// Seconds since the Unix epoch, e.g. `1440938160`.
    #[default]
    UnixSeconds,
    /// Milliseconds since the Unix epoch, e.g. `1440938160000`.
    UnixMillis,
    /// RFC 3339 in UTC to the second, e.g. `2015-08-30T12:36:00Z`.
    Rfc3339,
}

/// One piece of the string to sign. JSON: `"method"`, `"path"`, `"query"`, `"timestamp"`,
/// `"body"`, `"bodySha256"` or `{"header": "x-foo"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignedPart {
    /// The request method as sent, e.g. `POST`.
    Method,
    /// The path as sent (percent-encoded, not normalized), without the query.
    Path,
    /// The query string as sent, without `?`; empty when there is none.
    Query,
    /// The timestamp, as written in the timestamp header.
    Timestamp,
    /// The raw body bytes (empty for a request without a body).
    Body,
    /// The lower-case hex SHA-256 of the body.
    BodySha256,
    /// A request header's value as sent (after the timestamp and API key headers are set, so
    /// those can be named too). Several values are joined by `,`. A header the request lacks
    /// signs as the empty string rather than failing the request: partner specs that sign an
    /// optional header (e.g. `content-type` on a GET) expect exactly that.
    Header(String),
}

/// An HMAC signature over a configurable list of request parts.
///
/// The string to sign is the [`parts`](Self::parts) in order, joined by
/// [`separator`](Self::separator) (a newline by default). The signature is
/// `prefix + encode(HMAC(secret, string to sign))`, sent in
/// [`signature_header`](Self::signature_header). When [`timestamp_header`](Self::timestamp_header)
/// is set, that header carries `now` (and the `timestamp` part is the same string); when
/// [`api_key_header`](Self::api_key_header) is set, that header carries the API key. The caller's
/// own copies of these headers are removed first.
///
/// JSON (camelCase), e.g. a partner that wants `X-Signature: sha256=<hex>` over
/// `timestamp.METHOD.path.body`:
///
/// ```json
/// {"secret": "…", "signatureHeader": "X-Signature", "prefix": "sha256=",
///  "timestampHeader": "X-Timestamp", "parts": ["timestamp", "method", "path", "body"],
///  "separator": "."}
/// ```
///
/// `Debug` never shows a secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HmacScheme {
    /// The HMAC key, written as [`secret_encoding`](Self::secret_encoding) says.
    pub secret: SecretString,
    /// How [`secret`](Self::secret) is written: `plain` (default), `hex` or `base64`.
    #[serde(default)]
    pub secret_encoding: SecretEncoding,
    /// `sha256` (default), `sha1` or `sha512`.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// The header that carries the signature, e.g. `X-Signature`.
    pub signature_header: String,
    /// How the signature is written: `hex` (default, lower case) or `base64`.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Written before the signature, e.g. `sha256=`; empty by default.
    #[serde(default)]
    pub prefix: String,
    /// The header that carries `now`, e.g. `X-Timestamp`; none by default.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// How `now` is written: `unixSeconds` (default), `unixMillis` or `rfc3339`.
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
    /// What the signature covers, in order. At least one.
    pub parts: Vec<SignedPart>,
    /// Joins the parts; a newline by default.
    #[serde(default = "newline")]
    pub separator: String,
    /// The header that carries an API key sent beside the signature (e.g. `X-Api-Key`).
    #[serde(default)]
    pub api_key_header: Option<String>,
    /// The API key sent in [`api_key_header`](Self::api_key_header).
    #[serde(default)]
    pub api_key: Option<SecretString>,
}

fn newline() -> String {
    "\n".to_owned()
}

impl HmacScheme {
    /// Checks the scheme: the secret is non-empty and decodes as its encoding; header names are
    /// tokens, not framing headers (`host`, `content-length`, `transfer-encoding`, `connection`)
    /// and pairwise different; `apiKey` and `apiKeyHeader` come together; there are 1–32 parts,
    /// header parts name tokens other than the signature header, and a `timestamp` part has a
    /// `timestampHeader`; the prefix is at most 64 printable ASCII characters, the separator at
    /// most 16 bytes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.check_secret()?;
        check_header("auth.signatureHeader", &self.signature_header)?;
        if let Some(name) = &self.timestamp_header {
            check_header("auth.timestampHeader", name)?;
        }
        self.check_api_key()?;
        self.check_distinct_headers()?;
        self.check_decoration()?;
        self.check_parts()
    }

    /// The JSON the vault seals; it deserializes back to `self`. Holds the secrets in clear: drop
    /// it promptly.
    pub fn sealable_json(&self) -> serde_json::Value {
        serde_json::json!({
            "secret": self.secret.expose(),
            "secretEncoding": self.secret_encoding,
            "algorithm": self.algorithm,
            "signatureHeader": self.signature_header,
            "encoding": self.encoding,
            "prefix": self.prefix,
            "timestampHeader": self.timestamp_header,
            "timestampFormat": self.timestamp_format,
            "parts": self.parts,
            "separator": self.separator,
            "apiKeyHeader": self.api_key_header,
            "apiKey": self.api_key.as_ref().map(SecretString::expose),
        })
    }

    /// Every secret value: what the hub masks wherever it could show up on the way back.
    pub fn secrets(&self) -> Vec<&SecretString> {
        let mut out = vec![&self.secret];
        out.extend(self.api_key.as_ref());
        out
    }

    /// Whether the signature covers the body (`body` or `bodySha256` among the parts): the body
    /// must then be held in memory to sign the request.
    pub fn needs_body(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, SignedPart::Body | SignedPart::BodySha256))
    }

    /// Removes the caller's own signature/timestamp/api-key headers, then sets them.
    ///
    /// `path_and_query` is the target as sent; `body` is the whole body (`Some(b"")` when there
    /// is none) or `None` when it is streamed, which fails with [`SignError::BodyRequired`] if
    /// the scheme [needs the body](Self::needs_body). The signature and API key values are marked
    /// sensitive. On error the request must not be sent.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &mut HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<(), SignError> {
        let signature_name = header_name(&self.signature_header)?;
        let timestamp_name = self
            .timestamp_header
            .as_deref()
            .map(header_name)
            .transpose()?;
        let api_key_name = self
            .api_key_header
            .as_deref()
            .map(header_name)
            .transpose()?;
        for name in [
            Some(&signature_name),
            timestamp_name.as_ref(),
            api_key_name.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            headers.remove(name);
        }
        if self.needs_body() && body.is_none() {
            return Err(SignError::BodyRequired);
        }
        let key = self.key()?;
        let timestamp = self.timestamp(now);
        let mut extra = Vec::new();
        if let Some(name) = timestamp_name {
            extra.push((header_value(&name, &timestamp, false)?, name));
        }
        if let (Some(name), Some(api_key)) = (api_key_name, &self.api_key) {
            extra.push((header_value(&name, api_key.expose(), true)?, name));
        }
        for (value, name) in extra {
            headers.insert(name, value);
        }
        let message = self.string_to_sign(method, path_and_query, headers, body, &timestamp);
        let signature = format!("{}{}", self.prefix, self.mac(&key, &message));
        let value = header_value(&signature_name, &signature, true)?;
        headers.insert(signature_name, value);
        Ok(())
    }

    /// The bytes the HMAC covers: the parts in order, joined by the separator.
    fn string_to_sign(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        timestamp: &str,
    ) -> Vec<u8> {
        let (path, query) = split_target(path_and_query);
        let body = body.unwrap_or_default();
        let mut out = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(self.separator.as_bytes());
            }
            match part {
                SignedPart::Method => out.extend_from_slice(method.as_bytes()),
                SignedPart::Path => out.extend_from_slice(path.as_bytes()),
                SignedPart::Query => out.extend_from_slice(query.as_bytes()),
                SignedPart::Timestamp => out.extend_from_slice(timestamp.as_bytes()),
                SignedPart::Body => out.extend_from_slice(body),
                SignedPart::BodySha256 => out.extend_from_slice(
                    hex::encode(digest::digest(&digest::SHA256, body)).as_bytes(),
                ),
                SignedPart::Header(name) => out.extend_from_slice(&header_part(headers, name)),
            }
        }
        out
    }

    /// The HMAC key: the secret decoded as configured.
    fn key(&self) -> Result<Zeroizing<Vec<u8>>, SignError> {
        let secret = self.secret.expose();
        let bytes = match self.secret_encoding {
            SecretEncoding::Plain => Ok(secret.as_bytes().to_vec()),
            SecretEncoding::Hex => {
                hex::decode(secret).map_err(|_| SignError::InvalidSecret { encoding: "hex" })
            }
            SecretEncoding::Base64 => STANDARD
                .decode(secret)
                .map_err(|_| SignError::InvalidSecret { encoding: "base64" }),
        }?;
        Ok(Zeroizing::new(bytes))
    }

    /// `now` as the timestamp header (and part) writes it.
    fn timestamp(&self, now: DateTime<Utc>) -> String {
        match self.timestamp_format {
            TimestampFormat::UnixSeconds => now.timestamp().to_string(),
            TimestampFormat::UnixMillis => now.timestamp_millis().to_string(),
            TimestampFormat::Rfc3339 => now.to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }

    /// The encoded HMAC of `message` (without the prefix).
    fn mac(&self, key: &[u8], message: &[u8]) -> String {
        let algorithm = match self.algorithm {
            HmacAlgorithm::Sha256 => hmac::HMAC_SHA256,
            HmacAlgorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            HmacAlgorithm::Sha512 => hmac::HMAC_SHA512,
        };
        let tag = hmac::sign(&hmac::Key::new(algorithm, key), message);
        match self.encoding {
            SignatureEncoding::Hex => hex::encode(tag),
            SignatureEncoding::Base64 => STANDARD.encode(tag),
        }
    }

    fn check_secret(&self) -> Result<(), ValidationError> {
        const FIELD: &str = "auth.secret";
        if self.secret.is_empty() || self.secret.expose().len() > MAX_SECRET_LEN {
            return Err(ValidationError::new(FIELD, "must be 1-8192 characters"));
        }
        match self.key() {
            Ok(key) if !key.is_empty() => Ok(()),
            Ok(_) => Err(ValidationError::new(FIELD, "decodes to an empty key")),
            Err(e) => Err(ValidationError::new(FIELD, e.to_string())),
        }
    }

    fn check_api_key(&self) -> Result<(), ValidationError> {
        match (&self.api_key_header, &self.api_key) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(ValidationError::new(
                "auth.apiKey",
                "is required with apiKeyHeader",
            )),
            (None, Some(_)) => Err(ValidationError::new(
                "auth.apiKeyHeader",
                "is required with apiKey",
            )),
            (Some(name), Some(key)) => {
                check_header("auth.apiKeyHeader", name)?;
                let v = key.expose();
                let printable = v.bytes().all(|b| (0x20..0x7f).contains(&b));
                if v.is_empty() || v.len() > MAX_SECRET_LEN || !printable {
                    return Err(ValidationError::new(
                        "auth.apiKey",
                        "must be 1-8192 printable ASCII characters",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The signature, timestamp and API key headers are three different headers.
    fn check_distinct_headers(&self) -> Result<(), ValidationError> {
        let signature = &self.signature_header;
        let others = [
            ("auth.timestampHeader", &self.timestamp_header),
            ("auth.apiKeyHeader", &self.api_key_header),
        ];
        for (field, name) in others {
            if name
                .as_ref()
                .is_some_and(|n| n.eq_ignore_ascii_case(signature))
            {
                return Err(ValidationError::new(
                    field,
                    "must differ from signatureHeader",
                ));
            }
        }
        let same = match (&self.timestamp_header, &self.api_key_header) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        if same {
            return Err(ValidationError::new(
                "auth.apiKeyHeader",
                "must differ from timestampHeader",
            ));
        }
        Ok(())
    }

    fn check_decoration(&self) -> Result<(), ValidationError> {
        let printable = self.prefix.bytes().all(|b| (0x20..0x7f).contains(&b));
        if self.prefix.len() > MAX_PREFIX_LEN || !printable {
            return Err(ValidationError::new(
                "auth.prefix",
                "must be at most 64 printable ASCII characters",
            ));
        }
        if self.separator.len() > MAX_SEPARATOR_LEN {
            return Err(ValidationError::new(
                "auth.separator",
                "must be at most 16 bytes",
            ));
        }
        Ok(())
    }

    fn check_parts(&self) -> Result<(), ValidationError> {
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(ValidationError::new("auth.parts", "must list 1-32 parts"));
        }
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                SignedPart::Timestamp if self.timestamp_header.is_none() => {
                    return Err(ValidationError::new(
                        format!("auth.parts[{i}]"),
                        "the timestamp part needs timestampHeader",
                    ));
                }
                SignedPart::Header(name) => {
                    let field = format!("auth.parts[{i}].header");
                    if !is_header_token(name) {
                        return Err(ValidationError::new(field, "must be a header name"));
                    }
                    if name.eq_ignore_ascii_case(&self.signature_header) {
                        return Err(ValidationError::new(
                            field,
                            "cannot sign the signature header",
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A configured header name: a token, and not one that frames the request.
fn check_header(field: &str, name: &str) -> Result<(), ValidationError> {
    if !is_header_token(name) {
        return Err(ValidationError::new(
            field,
            "must be a header name (1-128 token characters)",
        ));
    }
    if FRAMING_HEADERS
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
    {
        return Err(ValidationError::new(
            field,
            "may not replace a framing header",
        ));
    }
    Ok(())
}

/// A header part: every value of the header as sent, joined by `,`; empty when absent.
fn header_part(headers: &HeaderMap, name: &str) -> Vec<u8> {
    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
        return Vec::new();
    };
    let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    values.join(&b","[..])
}
