//! The three provider writes (create, update, delete) as one path: each is a single store
//! transaction that also appends the write's audit entry, so the trail holds an entry exactly
//! for each change that happened (a refused or failed write leaves none; an entry that cannot be
//! stored fails the write). The handlers in [`super`] decide what to write and map errors.

use hub_core::access::AuditEntry;
use hub_core::catalog;
use hub_core::provider::{NewProvider, ProviderId, ProviderRecord};
use hub_core::store::{ProviderChange, StoreError};
use serde_json::{Value, json};

use super::patch::ProviderPatch;
use crate::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;

/// The audit entry of `action` on provider `id` by `caller`. `detail` names fields and a status,
/// never a value that could be a secret.
fn entry(caller: &Caller, action: &str, id: ProviderId, detail: Value) -> AuditEntry {
    AuditEntry {
        actor: caller.id.clone(),
        action: action.to_owned(),
        target_id: Some(id.to_string()),
        detail,
    }
}

/// Validates, seals the credentials to a new id and inserts, audited as `provider.create`.
pub async fn create(
    s: &AdminState,
    caller: &Caller,
    new: NewProvider,
) -> Result<ProviderRecord, ApiError> {
    if let Some(t) = new.scope()
        && !s.store.list_tenants().await?.iter().any(|x| x.name == t)
    {
        return Err(ApiError::validation(
            "tenant",
            format!("no tenant named {t}"),
        ));
    }
    let insert = catalog::prepare(&s.vault, new)?;
    let detail = json!({"name": insert.name, "status": insert.status.as_str()});
    let audit = entry(caller, "provider.create", insert.id, detail);
    Ok(s.store.create_provider(insert, Some(audit)).await?)
}

/// Applies `change` (made from `patch`), audited as `provider.update` with the patched field
/// names (and the new status, if any).
pub async fn update(
    s: &AdminState,
    caller: &Caller,
    id: ProviderId,
    change: ProviderChange,
    patch: &ProviderPatch,
) -> Result<ProviderRecord, StoreError> {
    let mut detail = json!({"fields": patch.field_names()});
    if let Some(status) = patch.status {
        detail["status"] = status.as_str().into();
    }
    let audit = entry(caller, "provider.update", id, detail);
    s.store.update_provider(id, change, Some(audit)).await
}

/// Soft-deletes, audited as `provider.delete`.
pub async fn delete(s: &AdminState, caller: &Caller, id: ProviderId) -> Result<(), StoreError> {
    // Its grants go with it: the entry says what they allowed.
    let callers = s.store.all_callers().await?;
    let grants: Vec<_> = s
        .store
        .all_grants()
        .await?
        .into_iter()
        .filter(|g| g.provider_id == id)
        .collect();
    let name = s.store.get_provider(id).await?.map(|p| p.name);
    let removed =
        hub_core::caller::allowances(&callers, &grants, |_| name.clone(), chrono::Utc::now());
    let detail = if removed.is_empty() {
        json!({})
    } else {
        json!({"removes": removed})
    };
    let audit = entry(caller, "provider.delete", id, detail);
    s.store.delete_provider(id, Some(audit)).await
}
