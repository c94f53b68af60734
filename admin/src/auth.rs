//! Authentication and authorization: `Authorization: Bearer <token>` is either the bootstrap
//! token (compared in constant time through its SHA-256) or an API token from the store (looked
//! up by its SHA-256, live only). Each route in [`crate::routes::ROUTES`] names the least
//! [`Role`] it needs; [`require`] runs before the handler (so before the body is read) and puts
//! the [`Caller`] into the request for the handler and the audit trail.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use hub_core::access::{Role, token_hash};
use hub_core::secret::SecretString;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AdminState;
use crate::error::ApiError;

/// The actor id of the bootstrap token in the audit trail.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap";
/// Prefix of API tokens (`hubt_` + 64 hex digits): easy to spot in a leaked file or a scanner.
pub const TOKEN_PREFIX: &str = "hubt_";
/// Longest bearer value even looked at.
const MAX_TOKEN_LEN: usize = 512;

/// Who is calling: the bootstrap token or an API token, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// [`BOOTSTRAP_ACTOR`] or the API token's id.
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it acts on; `None`: every tenant (see [`crate::scope`]).
    pub tenant: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Only routes behind `require` extract a caller; anywhere else it is a wiring bug.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route has no access check".into()))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (`/healthz`, `/readyz`, `ca.pem`, the OpenAPI document).
    Open,
    /// A token with at least this role.
    Role(Role),
}

/// The SHA-256 of the bootstrap token; `None` for an empty one (it authenticates nothing).
pub fn bootstrap_hash(token: &SecretString) -> Option<[u8; 32]> {
    let t = token.expose().trim();
    (!t.is_empty()).then(|| Sha256::digest(t.as_bytes()).into())
}

/// A new API token: [`TOKEN_PREFIX`] + 256 random bits in hex.
pub fn generate_token() -> SecretString {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    SecretString::from(format!("{TOKEN_PREFIX}{}", hex::encode(raw)))
}

/// The bearer value, when the header is well-formed.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_graphic()))
    .then_some(token)
}

/// Resolves the caller of a request; 401 when there is no valid token.
pub async fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer(headers).ok_or(ApiError::Unauthorized)?;
    if let Some(expected) = &state.bootstrap_hash {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(presented.ct_eq(expected)) {
            return Ok(Caller {
                id: BOOTSTRAP_ACTOR.to_owned(),
                role: Role::Admin,
                tenant: None,
            });
        }
    }
    if !token.starts_with(TOKEN_PREFIX) {
        return Err(ApiError::Unauthorized);
    }
    match state.store.api_token_by_hash(&token_hash(token)).await? {
        Some(t) if t.revoked_at.is_none() => Ok(Caller {
            id: t.id.to_string(),
            role: t.role,
            tenant: t.tenant,
        }),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Middleware: 401 without a valid token, 403 when its role is below `needed`; otherwise the
/// [`Caller`] goes into the request extensions.
pub async fn require(
    State((state, needed)): State<(AdminState, Role)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, req.headers()).await?;
    if !caller.role.allows(needed) {
        return Err(ApiError::Forbidden {
            needed,
            has: caller.role,
        });
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
        assert_eq!(bearer(&headers("Bearer a b")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(bearer(&headers(&long)), None);
    }

    #[test]
    fn tokens_are_prefixed_and_random() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
    }

    #[test]
    fn empty_bootstrap_token_authenticates_nothing() {
        assert!(bootstrap_hash(&SecretString::new("  ")).is_none());
        assert!(bootstrap_hash(&SecretString::new("x")).is_some());
    }
}
