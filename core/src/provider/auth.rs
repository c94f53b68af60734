//! How the hub authenticates to a provider. The whole [`Auth`] value is what the vault seals;
//! only [`AuthType`] is stored in the clear.

use serde::{Deserialize, Serialize};

use super::ValidationError;
use crate::secret::SecretString;
use crate::{oauth, signing};

/// The auth scheme, stored in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// No credentials are injected.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic base64(username:password)`.
    Basic,
    /// `<name>: <value>`.
    Header,
    /// `?<name>=<value>` on the query string.
    Query,
    /// OAuth2 client credentials grant; the hub owns the access token.
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials,
    /// OAuth2 refresh token grant (rotating refresh tokens kept).
    #[serde(rename = "oauth2_refresh_token")]
    OAuth2RefreshToken,
    /// OAuth2 JWT bearer grant (RFC 7523), the assertion signed by the hub.
    #[serde(rename = "oauth2_jwt_bearer")]
    OAuth2JwtBearer,
    /// AWS Signature Version 4 on every request the provider receives.
    #[serde(rename = "aws_sigv4")]
    AwsSigV4,
    /// An HMAC signature header over chosen parts of the request (partner APIs).
    Hmac,
    /// In the URL path, where the template's `{secret}` is (e.g. Telegram's `/bot{secret}`).
    Path,
    /// A field of a form or JSON request body (e.g. Slack's `token`).
    Body,
}

impl AuthType {
    /// Every scheme (the OpenAPI drift test checks the document names exactly these).
    pub const ALL: [AuthType; 12] = [
        Self::None,
        Self::Bearer,
        Self::Basic,
        Self::Header,
        Self::Query,
        Self::Path,
        Self::Body,
        Self::OAuth2ClientCredentials,
        Self::OAuth2RefreshToken,
        Self::OAuth2JwtBearer,
        Self::AwsSigV4,
        Self::Hmac,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bearer => "bearer",
            Self::Basic => "basic",
            Self::Header => "header",
            Self::Query => "query",
            Self::OAuth2ClientCredentials => "oauth2_client_credentials",
            Self::OAuth2RefreshToken => "oauth2_refresh_token",
            Self::OAuth2JwtBearer => "oauth2_jwt_bearer",
            Self::AwsSigV4 => "aws_sigv4",
            Self::Hmac => "hmac",
            Self::Path => "path",
            Self::Body => "body",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "bearer" => Self::Bearer,
            "basic" => Self::Basic,
            "header" => Self::Header,
            "query" => Self::Query,
            "oauth2_client_credentials" => Self::OAuth2ClientCredentials,
            "oauth2_refresh_token" => Self::OAuth2RefreshToken,
            "oauth2_jwt_bearer" => Self::OAuth2JwtBearer,
            "aws_sigv4" => Self::AwsSigV4,
            "hmac" => Self::Hmac,
            "path" => Self::Path,
            "body" => Self::Body,
            _ => return None,
        })
    }

    /// The credential fields this scheme carries (what the admin API says "is set").
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::None => &[],
            Self::Bearer => &["token"],
            Self::Basic => &["username", "password"],
            Self::Header | Self::Query => &["name", "value"],
            Self::OAuth2ClientCredentials => &["tokenUrl", "clientId", "clientSecret"],
            Self::OAuth2RefreshToken => &["tokenUrl", "clientId", "refreshToken"],
            Self::OAuth2JwtBearer => &["privateKey"],
            Self::AwsSigV4 => &["accessKeyId", "secretAccessKey"],
            Self::Hmac => &["secret"],
            Self::Path => &["template", "value"],
            Self::Body => &["format", "field", "value"],
        }
    }

    /// Whether the hub obtains access tokens for this scheme (OAuth2).
    pub fn is_oauth(self) -> bool {
        matches!(
            self,
            Self::OAuth2ClientCredentials | Self::OAuth2RefreshToken | Self::OAuth2JwtBearer
        )
    }
}

/// The body a `body` credential goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json` (a top-level object).
    Json,
}

impl BodyFormat {
    /// The spelling in the credential.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Form => "form",
            Self::Json => "json",
        }
    }

    /// The content type such a body has (what an empty body gets).
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Form => "application/x-www-form-urlencoded",
            Self::Json => "application/json",
        }
    }
}

/// A provider's credentials. `Debug` never shows a secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// Bearer token.
    Bearer {
        /// The token.
        token: SecretString,
    },
    /// HTTP basic.
    Basic {
        /// User name (treated as a secret too: some providers put the API key here).
        username: SecretString,
        /// Password.
        password: SecretString,
    },
    /// A custom header, e.g. `X-Api-Key`.
    Header {
        /// Header name (not secret).
        name: String,
        /// Header value.
        value: SecretString,
    },
    /// A query parameter, e.g. `api_key`.
    Query {
        /// Parameter name (not secret; its value is redacted in logs and the DLQ).
        name: String,
        /// Parameter value.
        value: SecretString,
    },
    /// OAuth2 client credentials (`Authorization: Bearer <access token>`).
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials(oauth::ClientCredentials),
    /// OAuth2 refresh token.
    #[serde(rename = "oauth2_refresh_token")]
    OAuth2RefreshToken(oauth::RefreshToken),
    /// OAuth2 JWT bearer.
    #[serde(rename = "oauth2_jwt_bearer")]
    OAuth2JwtBearer(oauth::JwtBearer),
    /// AWS SigV4: the hub signs the request as the provider receives it.
    #[serde(rename = "aws_sigv4")]
    AwsSigV4(signing::AwsSigV4),
    /// An HMAC signature (and timestamp, API key) header.
    #[serde(rename = "hmac")]
    Hmac(signing::HmacScheme),
    /// In the URL path (see [`super::placement`]): the caller sends the template's path with a
    /// placeholder of its choice where `{secret}` is; the hub puts the value there.
    Path {
        /// A path prefix of one or more segments, one holding `{secret}` (not secret).
        template: String,
        /// The value (percent-encoded as a path segment when placed).
        value: SecretString,
    },
    /// A field of the request body (buffered bodies only): every `field` the caller sent is
    /// replaced by the provider's.
    Body {
        /// `form` or `json`.
        format: BodyFormat,
        /// The field's name (a top-level key for JSON; not secret).
        field: String,
        /// The value.
        value: SecretString,
    },
}

impl Auth {
    /// The scheme.
    pub fn auth_type(&self) -> AuthType {
        match self {
            Self::None => AuthType::None,
            Self::Bearer { .. } => AuthType::Bearer,
            Self::Basic { .. } => AuthType::Basic,
            Self::Header { .. } => AuthType::Header,
            Self::Query { .. } => AuthType::Query,
            Self::OAuth2ClientCredentials(_) => AuthType::OAuth2ClientCredentials,
            Self::OAuth2RefreshToken(_) => AuthType::OAuth2RefreshToken,
            Self::OAuth2JwtBearer(_) => AuthType::OAuth2JwtBearer,
            Self::AwsSigV4(_) => AuthType::AwsSigV4,
            Self::Hmac(_) => AuthType::Hmac,
            Self::Path { .. } => AuthType::Path,
            Self::Body { .. } => AuthType::Body,
        }
    }

    /// The OAuth2 grant, for the schemes whose access token the hub obtains.
    pub fn oauth(&self) -> Option<oauth::Grant<'_>> {
        match self {
            Self::OAuth2ClientCredentials(c) => Some(oauth::Grant::ClientCredentials(c)),
            Self::OAuth2RefreshToken(r) => Some(oauth::Grant::RefreshToken(r)),
            Self::OAuth2JwtBearer(j) => Some(oauth::Grant::JwtBearer(j)),
            _ => None,
        }
    }

    /// Every secret value this credential holds: what the hub masks wherever it could show up
    /// on the way back (responses to modules, DLQ excerpts).
    pub fn secrets(&self) -> Vec<&SecretString> {
        match self {
            Self::None => Vec::new(),
            Self::Bearer { token } => vec![token],
            Self::Basic { username, password } => vec![username, password],
            Self::Header { value, .. }
            | Self::Query { value, .. }
            | Self::Path { value, .. }
            | Self::Body { value, .. } => vec![value],
            Self::OAuth2ClientCredentials(c) => vec![&c.client_secret],
            Self::OAuth2RefreshToken(r) => {
                let mut v = vec![&r.refresh_token];
                v.extend(r.client_secret.as_ref());
                v
            }
            Self::OAuth2JwtBearer(j) => j
                .private_key
                .iter()
                .chain(j.service_account_json.iter())
                .collect(),
            Self::AwsSigV4(a) => a.secrets(),
            Self::Hmac(h) => h.secrets(),
        }
    }

    /// Checks the fields: secrets non-empty and free of control characters (they end up in
    /// headers), names valid header tokens / query names.
    pub fn validate(&self) -> Result<(), ValidationError> {
        fn secret(field: &str, s: &SecretString) -> Result<(), ValidationError> {
            if s.is_empty() || s.expose().len() > 8192 {
                return Err(ValidationError::new(field, "must be 1-8192 characters"));
            }
            if s.expose().bytes().any(|b| b.is_ascii_control()) {
                return Err(ValidationError::new(
                    field,
                    "must not contain control characters",
                ));
            }
            Ok(())
        }
        fn token_name(field: &str, n: &str) -> Result<(), ValidationError> {
            let ok = !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(ValidationError::new(
                    field,
                    "must be 1-128 characters of A-Z a-z 0-9 - _ .",
                ))
            }
        }
        match self {
            Self::None => Ok(()),
            Self::Bearer { token } => secret("auth.token", token),
            Self::Basic { username, password } => {
                if username.expose().contains(':') {
                    return Err(ValidationError::new(
                        "auth.username",
                        "must not contain ':'",
                    ));
                }
                secret("auth.username", username)?;
                secret("auth.password", password)
            }
            Self::Header { name, value } => {
                token_name("auth.name", name)?;
                let lower = name.to_ascii_lowercase();
                if ["host", "content-length", "transfer-encoding", "connection"]
                    .contains(&lower.as_str())
                {
                    return Err(ValidationError::new(
                        "auth.name",
                        "may not replace a framing header",
                    ));
                }
                secret("auth.value", value)
            }
            Self::Query { name, value } => {
                token_name("auth.name", name)?;
                secret("auth.value", value)
            }
            Self::Path { template, value } => {
                super::placement::PathTemplate::parse(template)
                    .map_err(|why| ValidationError::new("auth.template", why))?;
                secret("auth.value", value)
            }
            Self::Body { field, value, .. } => {
                if field.is_empty()
                    || field.len() > 128
                    || field.bytes().any(|b| b.is_ascii_control())
                {
                    return Err(ValidationError::new(
                        "auth.field",
                        "must be 1-128 characters, no control characters",
                    ));
                }
                secret("auth.value", value)
            }
            Self::OAuth2ClientCredentials(_)
            | Self::OAuth2RefreshToken(_)
            | Self::OAuth2JwtBearer(_) => {
                oauth::validate(self.oauth().expect("an oauth scheme has a grant"))
            }
            Self::AwsSigV4(a) => a.validate(),
            Self::Hmac(h) => h.validate(),
        }
    }

    /// The plaintext the vault seals (JSON). The caller must drop it promptly.
    pub fn to_sealable_json(&self) -> Vec<u8> {
        let v = match self {
            Self::None => serde_json::json!({"type": "none"}),
            Self::Bearer { token } => {
                serde_json::json!({"type": "bearer", "token": token.expose()})
            }
            Self::Basic { username, password } => serde_json::json!({
                "type": "basic", "username": username.expose(), "password": password.expose()
            }),
            Self::Header { name, value } => {
                serde_json::json!({"type": "header", "name": name, "value": value.expose()})
            }
            Self::Query { name, value } => {
                serde_json::json!({"type": "query", "name": name, "value": value.expose()})
            }
            Self::Path { template, value } => serde_json::json!({
                "type": "path", "template": template, "value": value.expose()
            }),
            Self::Body {
                format,
                field,
                value,
            } => serde_json::json!({
                "type": "body", "format": format.as_str(), "field": field, "value": value.expose()
            }),
            Self::OAuth2ClientCredentials(c) => tagged(self, c.sealable_json()),
            Self::OAuth2RefreshToken(r) => tagged(self, r.sealable_json()),
            Self::OAuth2JwtBearer(j) => tagged(self, j.sealable_json()),
            Self::AwsSigV4(a) => tagged(self, a.sealable_json()),
            Self::Hmac(h) => tagged(self, h.sealable_json()),
        };
        serde_json::to_vec(&v).expect("json of strings always serializes")
    }

    /// Parses what [`Auth::to_sealable_json`] produced.
    pub fn from_sealed_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// `fields` with the scheme's `type` added (nulls dropped: absent optional fields).
fn tagged(auth: &Auth, fields: serde_json::Value) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("type".into(), auth.auth_type().as_str().into());
    if let serde_json::Value::Object(f) = fields {
        map.extend(f.into_iter().filter(|(_, v)| !v.is_null()));
    }
    serde_json::Value::Object(map)
}
