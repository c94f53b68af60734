//! Provider registration as one operation shared by the admin API, the CLI and tests:
//! validate the input, bind and seal the credentials to a fresh id, store.

use crate::provider::{NewProvider, ProviderId, ProviderRecord, ValidationError};
use crate::store::{ProviderInsert, Store, StoreError};
use crate::vault::{Vault, VaultError};

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The input is invalid (names the field).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Sealing the credentials failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The store refused (conflict) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CatalogError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Vault(e) => e.kind(),
            Self::Store(e) => e.kind(),
        }
    }
}

/// Validates and registers a provider without an audit entry (the CLI and tests); its
/// credentials are sealed under the active key with the new id as associated data.
pub async fn register(
    store: &dyn Store,
    vault: &Vault,
    new: NewProvider,
) -> Result<ProviderRecord, CatalogError> {
    let insert = prepare(vault, new)?;
    Ok(store.create_provider(insert, None).await?)
}

/// Validates a registration and seals its credentials to a fresh id: the row to insert (whose
/// id an audit entry can then name, for [`Store::create_provider`]).
pub fn prepare(vault: &Vault, new: NewProvider) -> Result<ProviderInsert, CatalogError> {
    let hosts = new.validate()?;
    let id = ProviderId::new();
    let credentials = vault.seal_auth(id, &new.auth)?;
    Ok(ProviderInsert {
        id,
        tenant: new.scope(),
        name: new.name,
        hosts,
        base_url: new.base_url,
        auth_type: new.auth.auth_type(),
        credentials,
        config: new.config,
        status: new.status,
    })
}
