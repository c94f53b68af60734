//! Key rotation: re-seal every live provider's credentials that are not under the active key.
//!
//! Each row is opened with the key it names and sealed again with the active key, bound to the
//! same provider id; the bytes inside are not reinterpreted. The write is conditional on the
//! version that was read, so an edit made meanwhile (new credentials, say) is never overwritten:
//! on `Stale` the row is read again and retried. Running it again finds nothing to do.

use crate::provider::{ProviderId, ProviderRecord};
use crate::store::{ProviderChange, Store, StoreError};

use super::{Vault, credentials_aad};

/// How many conditional writes one provider gets before a run of concurrent edits wins.
const MAX_ATTEMPTS: usize = 5;

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Providers re-sealed under the active key.
    pub rotated: usize,
    /// Providers already under the active key.
    pub already_current: usize,
    /// Providers with no sealed credentials (auth type `none`), or deleted during the run.
    pub without_credentials: usize,
    /// Stored (rotated) OAuth2 refresh tokens re-sealed under the active key.
    pub refresh_tokens_rotated: usize,
    /// Providers that could not be rotated, with why; they keep their old ciphertext.
    pub failed: Vec<RotationFailure>,
}

/// One provider a rotation could not re-seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationFailure {
    /// The provider.
    pub provider_id: ProviderId,
    /// The error's stable label (`unknown_key`, `decrypt_failed`, `stale`, `database`, ...).
    pub kind: &'static str,
    /// The error message (never key material or plaintext).
    pub message: String,
}

enum Outcome {
    Rotated,
    AlreadyCurrent,
    WithoutCredentials,
}

/// Re-seals every live provider's credentials under `vault`'s active key. Only listing the
/// providers can fail the whole run; a provider that fails is reported and the run goes on.
pub async fn rotate_keys(store: &dyn Store, vault: &Vault) -> Result<RotationReport, StoreError> {
    let mut report = RotationReport::default();
    rotate_refresh_tokens(store, vault, &mut report).await?;
    for record in store.live_providers().await? {
        let id = record.id;
        match rotate_one(store, vault, record).await {
            Ok(Outcome::Rotated) => report.rotated += 1,
            Ok(Outcome::AlreadyCurrent) => report.already_current += 1,
            Ok(Outcome::WithoutCredentials) => report.without_credentials += 1,
            Err(failure) => {
                tracing::warn!(
                    provider_id = %id,
                    kind = failure.kind,
                    error = %failure.message,
                    "could not re-seal provider credentials under the active key"
                );
                report.failed.push(failure);
            }
        }
    }
    tracing::info!(
        active_key = vault.active_key_id(),
        rotated = report.rotated,
        already_current = report.already_current,
        without_credentials = report.without_credentials,
        failed = report.failed.len(),
        "key rotation finished"
    );
    Ok(report)
}

async fn rotate_one(
    store: &dyn Store,
    vault: &Vault,
    mut record: ProviderRecord,
) -> Result<Outcome, RotationFailure> {
    let id = record.id;
    let fail = |kind: &'static str, message: String| RotationFailure {
        provider_id: id,
        kind,
        message,
    };
    let mut writes = 0;
    loop {
        let Some(sealed) = &record.credentials else {
            return Ok(Outcome::WithoutCredentials);
        };
        if sealed.key_id == vault.active_key_id() {
            return Ok(Outcome::AlreadyCurrent);
        }
        if writes == MAX_ATTEMPTS {
            return Err(fail(
                StoreError::Stale.kind(),
                format!("the record kept changing; gave up after {MAX_ATTEMPTS} attempts"),
            ));
        }
        writes += 1;
        let aad = credentials_aad(id);
        let resealed = vault
            .open(&aad, sealed)
            .and_then(|plaintext| vault.seal(&aad, &plaintext))
            .map_err(|e| fail(e.kind(), e.to_string()))?;
        let change = ProviderChange {
            credentials: Some((record.auth_type, Some(resealed))),
            expected_version: Some(record.version),
            ..ProviderChange::default()
        };
        match store.update_provider(id, change, None).await {
            Ok(_) => return Ok(Outcome::Rotated),
            // Edited meanwhile: read it again; it may even be current by now.
            Err(StoreError::Stale) => match store.get_provider(id).await {
                Ok(Some(fresh)) => record = fresh,
                Ok(None) => return Ok(Outcome::WithoutCredentials),
                Err(e) => return Err(fail(e.kind(), e.to_string())),
            },
            // Deleted between the listing and the write: nothing left to rotate.
            Err(StoreError::NotFound) => return Ok(Outcome::WithoutCredentials),
            Err(e) => return Err(fail(e.kind(), e.to_string())),
        }
    }
}

/// Re-seals the refresh tokens providers rotated (kept beside their credentials) under the
/// active key; a token the proxy replaced meanwhile is left as the proxy wrote it.
async fn rotate_refresh_tokens(
    store: &dyn Store,
    vault: &Vault,
    report: &mut RotationReport,
) -> Result<(), StoreError> {
    for (id, version, sealed) in store.all_oauth_refresh_tokens().await? {
        if sealed.key_id == vault.active_key_id() {
            continue;
        }
        let aad = super::oauth_aad("refresh", id, version);
        let resealed = vault
            .open(&aad, &sealed)
            .and_then(|plain| vault.seal(&aad, &plain));
        match resealed {
            Ok(new) => {
                store
                    .put_oauth_refresh_token(id, version, new, Some(&sealed.ciphertext))
                    .await?;
                report.refresh_tokens_rotated += 1;
            }
            Err(e) => report.failed.push(RotationFailure {
                provider_id: id,
                kind: e.kind(),
                message: format!("stored refresh token: {e}"),
            }),
        }
    }
    Ok(())
}
