//! API tokens (admin only): create (the token is shown once, in the 201 answer, and stored only
//! as its SHA-256), list (never the token or its hash), revoke. Revoked tokens stay listed with
//! `revokedAt` and authenticate nothing. A token may be scoped to one tenant (`tenant`): see
//! [`crate::scope`]. Managing tokens spans tenants, so scoped tokens may not.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hub_core::access::{ApiToken, ApiTokenInsert, Role, TokenId, TokenQuery, token_hash};
use hub_core::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit;
use super::page::{self, Page};
use super::providers::cursor_id;
use crate::AdminState;
use crate::auth::{Caller, generate_token};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, IdPath};

/// Longest token name.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// Body of `POST /tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for (1-64 printable characters).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it may act on (must exist); absent or `null`: every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A token in responses (never the token itself).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// ULID.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it acts on; `null`: every tenant.
    pub tenant: Option<String>,
    /// `bootstrap` or the creating token's id.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name,
            role: t.role,
            tenant: t.tenant,
            created_by: t.created_by,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// The 201 answer: the view plus the token, shown this once.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    view: TokenView,
    /// The bearer token. It cannot be read again.
    token: String,
}

/// `POST /tokens`.
pub async fn create(
    State(s): State<AdminState>,
    caller: Caller,
    ApiJson(new): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    caller.check_unscoped("managing API tokens")?;
    let name = new.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_TOKEN_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::validation(
            "name",
            format!("must be 1-{MAX_TOKEN_NAME_LEN} printable characters"),
        ));
    }
    if let Some(t) = &new.tenant
        && !s.store.list_tenants().await?.iter().any(|x| &x.name == t)
    {
        return Err(ApiError::validation(
            "tenant",
            format!("no tenant named {t}"),
        ));
    }
    let token = generate_token();
    let insert = ApiTokenInsert {
        id: TokenId::new(),
        name: name.to_owned(),
        role: new.role,
        tenant: new.tenant,
        hash: token_hash(token.expose()),
        created_by: caller.id.clone(),
    };
    let stored = s.store.create_api_token(insert).await?;
    let mut detail = json!({"name": stored.name, "role": stored.role.as_str()});
    if let Some(t) = &stored.tenant {
        detail["tenant"] = t.as_str().into();
    }
    audit::record(&s, &caller, "token.create", stored.id, detail).await;
    let location = format!("{}/tokens/{}", super::PREFIX, stored.id);
    let body = CreatedToken {
        view: stored.into(),
        token: token.expose().to_owned(),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    // The body holds a credential: keep it out of every cache.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Query of `GET /tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /tokens`: oldest first, revoked ones included.
pub async fn list(
    State(s): State<AdminState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TokenListQuery>,
) -> Result<Json<Page<TokenView>>, ApiError> {
    caller.check_unscoped("managing API tokens")?;
    let limit = page::limit(q.limit)?;
    let query = TokenQuery {
        after: cursor_id(q.cursor.as_deref())?,
        limit: limit + 1,
    };
    let fetched = s.store.list_api_tokens(&query).await?;
    Ok(Json(page::page(
        fetched,
        limit,
        |t| t.id.to_string(),
        TokenView::from,
    )))
}

/// `DELETE /tokens/{id}`: revoke (idempotent for a known token). 204.
pub async fn revoke(
    State(s): State<AdminState>,
    IdPath(id): IdPath,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.check_unscoped("managing API tokens")?;
    match s.store.revoke_api_token(id).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("no token with id {id}")));
        }
        Err(e) => return Err(e.into()),
    }
    audit::record(&s, &caller, "token.revoke", id, json!({})).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
