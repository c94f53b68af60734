//! OAuth2 credentials the hub owns: what a provider's `oauth2_*` auth holds, the token request
//! each grant makes, the RFC 7523 assertion the hub signs, and the token endpoint's answer.
//!
//! Pure: no I/O here. The proxy's token manager (`hub_proxy::oauth`) caches, refreshes
//! (single-flight across replicas) and injects the tokens.
//!
//! Three grants:
//! - [`ClientCredentials`]: `grant_type=client_credentials`, the client authenticated with HTTP
//!   Basic (default) or in the form body; scopes, audience, resource and extra form parameters.
//! - [`RefreshToken`]: `grant_type=refresh_token` from an initial refresh token; a provider that
//!   rotates refresh tokens returns a new one with every access token, which the manager stores
//!   (sealed) before the access token is used.
//! - [`JwtBearer`]: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an assertion
//!   the hub signs (RS256 or ES256) from a sealed private key, given directly or as a Google
//!   service account JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

pub mod share;

use crate::provider::ValidationError;
use crate::secret::SecretString;

/// What calls do while the identity provider cannot issue a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WhenIdpDown {
    /// Fail at once with `503 credentials_unavailable` once the cached token is due for refresh
    /// (the default: the hub never works on a token it could not renew).
    #[default]
    Fail,
    /// Keep injecting the cached token while it is unexpired.
    UseValidToken,
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlenc(id):urlenc(secret))` (RFC 6749 §2.3.1), the default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// `oauth2_client_credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCredentials {
    /// The token endpoint (https; http only with the provider's `allowInsecureUpstream`).
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Basic (default) or body.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Scopes, sent space-separated as `scope`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `audience` form parameter (Auth0, Okta custom servers).
    #[serde(default)]
    pub audience: Option<String>,
    /// `resource` form parameter (RFC 8707, Microsoft v1).
    #[serde(default)]
    pub resource: Option<String>,
    /// Further form parameters, sent as given.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// What calls do while the token endpoint is down.
    #[serde(default)]
    pub when_idp_down: WhenIdpDown,
}

/// `oauth2_refresh_token`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshToken {
    /// The token endpoint.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (public clients have none).
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// Basic (default) or body.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The initial refresh token. Once the provider rotates it, the newest one the hub stored
    /// is used until this one is changed.
    pub refresh_token: SecretString,
    /// Scopes (optional; most providers keep the grant's).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Further form parameters.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// What calls do while the token endpoint is down.
    #[serde(default)]
    pub when_idp_down: WhenIdpDown,
}

/// The assertion's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google service accounts).
    #[default]
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// `oauth2_jwt_bearer` (RFC 7523). Either `serviceAccountJson` (a Google service account key
/// file: `client_email`, `private_key`, `private_key_id`, `token_uri`) or `issuer` +
/// `privateKey` (+ `tokenUrl`); explicit fields win over the JSON's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtBearer {
    /// The token endpoint (default: the service account's `token_uri`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// `iss` (default: the service account's `client_email`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// `sub`: the user to impersonate (domain-wide delegation), if any.
    #[serde(default)]
    pub subject: Option<String>,
    /// `aud` (default: the token URL).
    #[serde(default)]
    pub audience: Option<String>,
    /// Scopes, as the assertion's `scope` claim (space-separated).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// PEM private key (PKCS#8, or PKCS#1 for RSA).
    #[serde(default)]
    pub private_key: Option<SecretString>,
    /// `kid` (default: the service account's `private_key_id`).
    #[serde(default)]
    pub key_id: Option<String>,
    /// RS256 (default) or ES256.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// A Google service account key file, whole.
    #[serde(default)]
    pub service_account_json: Option<SecretString>,
    /// What calls do while the token endpoint is down.
    #[serde(default)]
    pub when_idp_down: WhenIdpDown,
}

/// The fields of a service account key file the hub uses.
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

/// A [`JwtBearer`] with the service account's fields merged in.
struct Resolved {
    token_url: String,
    issuer: String,
    private_key: SecretString,
    key_id: Option<String>,
}

impl JwtBearer {
    fn resolve(&self) -> Result<Resolved, ValidationError> {
        let sa: Option<ServiceAccountKey> = match &self.service_account_json {
            Some(json) => Some(serde_json::from_str(json.expose()).map_err(|_| {
                ValidationError::new(
                    "auth.serviceAccountJson",
                    "is not a service account key file (JSON)",
                )
            })?),
            None => None,
        };
        let from_sa = |f: fn(&ServiceAccountKey) -> Option<String>| sa.as_ref().and_then(f);
        let token_url = self
            .token_url
            .clone()
            .or_else(|| from_sa(|k| k.token_uri.clone()))
            .ok_or_else(|| ValidationError::new("auth.tokenUrl", "is required"))?;
        let issuer = self
            .issuer
            .clone()
            .or_else(|| from_sa(|k| k.client_email.clone()))
            .ok_or_else(|| ValidationError::new("auth.issuer", "is required"))?;
        let private_key = self
            .private_key
            .clone()
            .or_else(|| from_sa(|k| k.private_key.clone()).map(SecretString::from))
            .ok_or_else(|| ValidationError::new("auth.privateKey", "is required"))?;
        let key_id = self
            .key_id
            .clone()
            .or_else(|| from_sa(|k| k.private_key_id.clone()));
        Ok(Resolved {
            token_url,
            issuer,
            private_key,
            key_id,
        })
    }
}

/// One of the three grants, borrowed from a provider's auth.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    /// Client credentials.
    ClientCredentials(&'a ClientCredentials),
    /// Refresh token.
    RefreshToken(&'a RefreshToken),
    /// JWT bearer.
    JwtBearer(&'a JwtBearer),
}

/// A token request, ready to send: `POST url` with a form body and maybe Basic client auth.
pub struct TokenRequest {
    /// The token endpoint.
    pub url: String,
    /// Form parameters (`application/x-www-form-urlencoded`).
    pub form: Vec<(String, SecretString)>,
    /// `Authorization` header value (client Basic auth), if any.
    pub authorization: Option<SecretString>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TokenRequest {
    /// The form body, URL-encoded.
    pub fn body(&self) -> String {
        self.form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v.expose())))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// `application/x-www-form-urlencoded` encoding of one name or value (space as `+`).
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Why a token could not be obtained (never carries a secret or the endpoint's body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The key could not sign the assertion.
    #[error("the private key cannot sign the assertion")]
    Key,
    /// The endpoint answered with an error status (`error` code from the body when it is one
    /// of RFC 6749's).
    #[error("the token endpoint answered {status}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// RFC 6749 §5.2 error code.
        code: Option<String>,
    },
    /// The answer was not a usable token response.
    #[error("the token endpoint's answer is not a bearer token response: {0}")]
    Malformed(&'static str),
}

impl Grant<'_> {
    /// What calls do while the endpoint is down.
    pub fn when_idp_down(&self) -> WhenIdpDown {
        match self {
            Self::ClientCredentials(c) => c.when_idp_down,
            Self::RefreshToken(r) => r.when_idp_down,
            Self::JwtBearer(j) => j.when_idp_down,
        }
    }

    /// Whether answers may carry a new refresh token the hub must keep.
    pub fn rotates(&self) -> bool {
        matches!(self, Self::RefreshToken(_))
    }

    /// The token request at `now` (unix seconds). `refresh_token` overrides the configured one
    /// (the newest the provider issued).
    pub fn request(
        &self,
        now: u64,
        refresh_token: Option<&SecretString>,
    ) -> Result<TokenRequest, TokenError> {
        let mut form: Vec<(String, SecretString)> = Vec::new();
        let mut put = |k: &str, v: SecretString| form.push((k.to_owned(), v));
        let client = |id: &str, secret: Option<&SecretString>, how: ClientAuth| match how {
            ClientAuth::Basic => {
                let raw = format!(
                    "{}:{}",
                    form_encode(id),
                    secret.map(|s| form_encode(s.expose())).unwrap_or_default()
                );
                (
                    Some(SecretString::from(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    ))),
                    Vec::new(),
                )
            }
            ClientAuth::Body => {
                let mut f = vec![("client_id".to_owned(), SecretString::from(id))];
                if let Some(s) = secret {
                    f.push(("client_secret".to_owned(), s.clone()));
                }
                (None, f)
            }
        };
        let (url, authorization, client_form) = match self {
            Self::ClientCredentials(c) => {
                put("grant_type", "client_credentials".into());
                if !c.scopes.is_empty() {
                    put("scope", c.scopes.join(" ").into());
                }
                if let Some(a) = &c.audience {
                    put("audience", a.as_str().into());
                }
                if let Some(r) = &c.resource {
                    put("resource", r.as_str().into());
                }
                for (k, v) in &c.extra_params {
                    put(k, v.as_str().into());
                }
                let (auth, f) = client(&c.client_id, Some(&c.client_secret), c.client_auth);
                (c.token_url.clone(), auth, f)
            }
            Self::RefreshToken(r) => {
                put("grant_type", "refresh_token".into());
                put(
                    "refresh_token",
                    refresh_token.unwrap_or(&r.refresh_token).clone(),
                );
                if !r.scopes.is_empty() {
                    put("scope", r.scopes.join(" ").into());
                }
                for (k, v) in &r.extra_params {
                    put(k, v.as_str().into());
                }
                let (auth, f) = client(&r.client_id, r.client_secret.as_ref(), r.client_auth);
                (r.token_url.clone(), auth, f)
            }
            Self::JwtBearer(j) => {
                let resolved = j.resolve().map_err(|_| TokenError::Key)?;
                let assertion = assertion(j, &resolved, now)?;
                put(
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                );
                put("assertion", assertion);
                (resolved.token_url, None, Vec::new())
            }
        };
        form.extend(client_form);
        Ok(TokenRequest {
            url,
            form,
            authorization,
        })
    }
}

/// How long an assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// The signed RFC 7523 assertion.
fn assertion(j: &JwtBearer, r: &Resolved, now: u64) -> Result<SecretString, TokenError> {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let alg = match j.algorithm {
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
    };
    let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = &r.key_id {
        header["kid"] = kid.as_str().into();
    }
    let mut claims = serde_json::json!({
        "iss": r.issuer,
        "aud": j.audience.clone().unwrap_or_else(|| r.token_url.clone()),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
        "jti": ulid::Ulid::new().to_string(),
    });
    if let Some(sub) = &j.subject {
        claims["sub"] = sub.as_str().into();
    }
    if !j.scopes.is_empty() {
        claims["scope"] = j.scopes.join(" ").into();
    }
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(j.algorithm, &r.private_key, signing_input.as_bytes())?;
    Ok(SecretString::from(format!("{signing_input}.{}", b64(&sig))))
}

/// The DER inside a PEM block, and whether it is PKCS#1 (`RSA PRIVATE KEY`).
fn pem_der(pem: &str) -> Option<(Vec<u8>, bool)> {
    let begin = pem.find("-----BEGIN ")?;
    let rest = &pem[begin + 11..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body_start = label_end + 5;
    let end = rest.find("-----END ")?;
    let b64: String = rest[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((der, label == "RSA PRIVATE KEY"))
}

fn sign(alg: JwtAlgorithm, key: &SecretString, msg: &[u8]) -> Result<Vec<u8>, TokenError> {
    use ring::signature;
    // PEM with literal "\n" escapes (a key pasted from JSON into YAML) is accepted too.
    let pem = key.expose().replace("\\n", "\n");
    let (der, pkcs1) = pem_der(&pem).ok_or(TokenError::Key)?;
    let rng = ring::rand::SystemRandom::new();
    match alg {
        JwtAlgorithm::RS256 => {
            let pair = if pkcs1 {
                signature::RsaKeyPair::from_der(&der)
            } else {
                signature::RsaKeyPair::from_pkcs8(&der)
            }
            .map_err(|_| TokenError::Key)?;
            let mut sig = vec![0u8; pair.public().modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                .map_err(|_| TokenError::Key)?;
            Ok(sig)
        }
        JwtAlgorithm::ES256 => {
            let pair = signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &rng,
            )
            .map_err(|_| TokenError::Key)?;
            Ok(pair
                .sign(&rng, msg)
                .map_err(|_| TokenError::Key)?
                .as_ref()
                .to_vec())
        }
    }
}

/// An access token the endpoint issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access token.
    pub access_token: SecretString,
    /// Its lifetime as the endpoint stated it (or [`DEFAULT_LIFETIME`]).
    pub lifetime: Duration,
    /// A new refresh token, when the endpoint rotated it.
    pub refresh_token: Option<SecretString>,
}

/// The lifetime assumed for a token answered without `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The longest token body read.
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Parses the endpoint's answer (RFC 6749 §5.1/§5.2).
pub fn parse_response(status: u16, body: &[u8]) -> Result<Issued, TokenError> {
    #[derive(Deserialize)]
    struct Ok_ {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<serde_json::Value>,
        refresh_token: Option<String>,
    }
    #[derive(Deserialize)]
    struct Err_ {
        error: Option<String>,
    }
    if !(200..300).contains(&status) {
        // Only RFC 6749's codes are kept: the body is the endpoint's, never relayed or logged.
        const CODES: &[&str] = &[
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
        ];
        let code = serde_json::from_slice::<Err_>(body)
            .ok()
            .and_then(|e| e.error)
            .filter(|c| CODES.contains(&c.as_str()));
        return Err(TokenError::Refused { status, code });
    }
    let ok: Ok_ = serde_json::from_slice(body).map_err(|_| TokenError::Malformed("not JSON"))?;
    let token = ok
        .access_token
        .filter(|t| !t.is_empty() && !t.bytes().any(|b| b.is_ascii_control()))
        .ok_or(TokenError::Malformed("no access_token"))?;
    if let Some(tt) = &ok.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::Malformed("token_type is not Bearer"));
    }
    let lifetime = match ok.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(Issued {
        access_token: token.into(),
        lifetime,
        refresh_token: ok.refresh_token.filter(|t| !t.is_empty()).map(Into::into),
    })
}

/// Checks a grant's fields (the proxy's destination check applies to the token URL at call
/// time).
pub fn validate(grant: Grant<'_>) -> Result<(), ValidationError> {
    fn url(field: &str, u: &str) -> Result<(), ValidationError> {
        let ok = (u.starts_with("https://") || u.starts_with("http://"))
            && reqwest::Url::parse(u).is_ok_and(|p| p.host_str().is_some());
        if ok {
            Ok(())
        } else {
            Err(ValidationError::new(field, "must be an http(s) URL"))
        }
    }
    fn text(field: &str, s: &str) -> Result<(), ValidationError> {
        if s.is_empty() || s.len() > 8192 || s.bytes().any(|b| b.is_ascii_control()) {
            return Err(ValidationError::new(
                field,
                "must be 1-8192 characters without control characters",
            ));
        }
        Ok(())
    }
    match grant {
        Grant::ClientCredentials(c) => {
            url("auth.tokenUrl", &c.token_url)?;
            text("auth.clientId", &c.client_id)?;
            text("auth.clientSecret", c.client_secret.expose())
        }
        Grant::RefreshToken(r) => {
            url("auth.tokenUrl", &r.token_url)?;
            text("auth.clientId", &r.client_id)?;
            if let Some(s) = &r.client_secret {
                text("auth.clientSecret", s.expose())?;
            }
            text("auth.refreshToken", r.refresh_token.expose())
        }
        Grant::JwtBearer(j) => {
            let r = j.resolve()?;
            url("auth.tokenUrl", &r.token_url)?;
            text("auth.issuer", &r.issuer)?;
            sign(j.algorithm, &r.private_key, b"probe").map_err(|_| {
                ValidationError::new(
                    "auth.privateKey",
                    format!(
                        "is not a PEM private key usable for {:?} (PKCS#8, or PKCS#1 for RSA)",
                        j.algorithm
                    ),
                )
            })?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;

fn secret_json(s: &SecretString) -> serde_json::Value {
    s.expose().into()
}

impl ClientCredentials {
    /// The plaintext the vault seals (round-trips through `Deserialize`).
    pub fn sealable_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokenUrl": self.token_url, "clientId": self.client_id,
            "clientSecret": secret_json(&self.client_secret),
            "clientAuth": client_auth_str(self.client_auth), "scopes": self.scopes,
            "audience": self.audience, "resource": self.resource,
            "extraParams": self.extra_params, "whenIdpDown": idp_str(self.when_idp_down),
        })
    }
}

impl RefreshToken {
    /// The plaintext the vault seals.
    pub fn sealable_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokenUrl": self.token_url, "clientId": self.client_id,
            "clientSecret": self.client_secret.as_ref().map(secret_json),
            "clientAuth": client_auth_str(self.client_auth),
            "refreshToken": secret_json(&self.refresh_token), "scopes": self.scopes,
            "extraParams": self.extra_params, "whenIdpDown": idp_str(self.when_idp_down),
        })
    }
}

impl JwtBearer {
    /// The plaintext the vault seals.
    pub fn sealable_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokenUrl": self.token_url, "issuer": self.issuer, "subject": self.subject,
            "audience": self.audience, "scopes": self.scopes,
            "privateKey": self.private_key.as_ref().map(secret_json), "keyId": self.key_id,
            "algorithm": match self.algorithm { JwtAlgorithm::RS256 => "RS256", JwtAlgorithm::ES256 => "ES256" },
            "serviceAccountJson": self.service_account_json.as_ref().map(secret_json),
            "whenIdpDown": idp_str(self.when_idp_down),
        })
    }
}

fn client_auth_str(c: ClientAuth) -> &'static str {
    match c {
        ClientAuth::Basic => "basic",
        ClientAuth::Body => "body",
    }
}

fn idp_str(w: WhenIdpDown) -> &'static str {
    match w {
        WhenIdpDown::Fail => "fail",
        WhenIdpDown::UseValidToken => "useValidToken",
    }
}
