//! The provider as the API shows it. Credentials are write-only: the view says which scheme,
//! which fields are set, under which vault key and since when, and never a secret, not even a
//! masked one (the record handed in only has the sealed bytes, and the view does not touch
//! them beyond "present or not").

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hub_core::oauth::share::TokenStatus;
use hub_core::provider::{AuthType, ProviderConfig, ProviderRecord, ProviderStatus};
use serde::Serialize;

use crate::extract::etag;
use crate::routes::PREFIX;

/// A provider in responses.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderView {
    /// ULID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Its tenant; `null` for a global provider.
    pub tenant: Option<String>,
    /// Whether every tenant's callers reach it.
    pub global: bool,
    /// Host patterns (`api.x.com`, `*.x.com`).
    pub hosts: Vec<String>,
    /// Upstream base URL.
    pub base_url: String,
    /// What is known about the credentials, never their values.
    pub auth: AuthView,
    /// Policy, every field with its effective value.
    pub config: ProviderConfig,
    /// Active or disabled.
    pub status: ProviderStatus,
    /// Moves on every change; the `ETag` and `If-Match` value.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The credentials' metadata.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthView {
    /// The scheme.
    #[serde(rename = "type")]
    pub kind: AuthType,
    /// The credential fields that hold a value (`["token"]`, `["username", "password"]`…).
    pub fields_set: Vec<&'static str>,
    /// The vault key that sealed them.
    pub key_id: Option<String>,
    /// When they last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// OAuth2 schemes, on `GET /providers/{id}`: the access token's expiry and the last token
    /// request's time and outcome (never the token). `null` when no proxy has reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenStatus>,
}

impl From<&ProviderRecord> for ProviderView {
    fn from(r: &ProviderRecord) -> Self {
        let sealed = r.credentials.as_ref();
        Self {
            id: r.id.to_string(),
            name: r.name.clone(),
            tenant: r.tenant.clone(),
            global: r.tenant.is_none(),
            hosts: r.hosts.iter().map(ToString::to_string).collect(),
            base_url: r.base_url.clone(),
            auth: AuthView {
                kind: r.auth_type,
                fields_set: if sealed.is_some() {
                    r.auth_type.fields().to_vec()
                } else {
                    Vec::new()
                },
                key_id: sealed.map(|c| c.key_id.clone()),
                updated_at: r.credentials_updated_at,
                token: None,
            },
            config: r.config.clone(),
            status: r.status,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A provider response with its `ETag` (and `Location` for a creation).
pub fn respond(status: StatusCode, record: &ProviderRecord) -> Response {
    respond_view(status, record, ProviderView::from(record))
}

/// [`respond`] with a view built by the caller (one with the token status).
pub fn respond_view(status: StatusCode, record: &ProviderRecord, view: ProviderView) -> Response {
    let mut resp = (status, Json(view)).into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(record.version)) {
        headers.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&format!("{}/providers/{}", PREFIX, record.id))
    {
        headers.insert(header::LOCATION, v);
    }
    resp
}
