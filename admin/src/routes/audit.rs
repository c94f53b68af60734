//! The audit trail: every change made through the API (who, what, which target, when; never a
//! secret) is recorded, and read back newest first.
//!
//! Provider writes append their entry in the change's own transaction
//! ([`super::providers::write`]). Every other action appends with [`record`], a separate
//! statement after the change commits: if it fails, the change stands and the entry goes to the
//! error log instead (same fields), so nothing is lost silently.

use std::fmt::Display;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use hub_core::access::{AuditEntry, AuditQuery, AuditRecord};
use serde::{Deserialize, Serialize};

use super::page::{self, Page};
use crate::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// Records `action` on `target` by `caller`. `detail` must not carry a secret: field names, a
/// status, a method and path.
pub async fn record(
    s: &AdminState,
    caller: &Caller,
    action: &str,
    target: impl Display,
    detail: serde_json::Value,
) {
    record_about(s, caller, action, Some(target.to_string()), detail).await;
}

/// Like [`record`], for an action that may have no single target (`dlq.retry_all` over every
/// provider).
pub async fn record_about(
    s: &AdminState,
    caller: &Caller,
    action: &str,
    target: Option<String>,
    detail: serde_json::Value,
) {
    let entry = AuditEntry {
        actor: caller.id.clone(),
        action: action.to_owned(),
        target_id: target,
        detail,
    };
    if let Err(e) = s.store.append_audit(entry.clone()).await {
        tracing::error!(
            error = %e,
            kind = e.kind(),
            actor = %entry.actor,
            action = %entry.action,
            target = entry.target_id.as_deref().unwrap_or_default(),
            detail = %entry.detail,
            "audit entry could not be stored; the change itself was applied"
        );
    }
}

/// An audit entry in responses.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    /// Sequence number (newer is larger).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// `bootstrap` or the acting token's id.
    pub actor: String,
    /// e.g. `provider.update`.
    pub action: String,
    /// What it was done to.
    pub target_id: Option<String>,
    /// Secret-free detail.
    pub detail: serde_json::Value,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            at: r.at,
            actor: r.entry.actor,
            action: r.entry.action,
            target_id: r.entry.target_id,
            detail: r.entry.detail,
        }
    }
}

/// Query of `GET /audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    target_id: Option<String>,
}

/// `GET /audit`: newest first, optionally about one target. Unscoped tokens only: entries
/// name targets of every tenant (and tokens, tenants), which a tenant's token must not read.
pub async fn list(
    State(s): State<AdminState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditListQuery>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    caller.check_unscoped("reading the audit trail")?;
    let limit = page::limit(q.limit)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ApiError::InvalidQuery {
                    field: "cursor".into(),
                    message: "not a cursor this API handed out".into(),
                })
        })
        .transpose()?;
    let query = AuditQuery {
        target_id: page::filter("targetId", q.target_id)?,
        before,
        limit: limit + 1,
    };
    let fetched = s.store.list_audit(&query).await?;
    Ok(Json(page::page(
        fetched,
        limit,
        |r| r.id.to_string(),
        AuditView::from,
    )))
}
