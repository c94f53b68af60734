//! Who may use the admin API and what they did with it: [`Role`]s, API tokens (persisted only
//! as SHA-256 hashes of high-entropy random strings) and audit entries. The admin service
//! decides who may do what; the store persists tokens and the audit trail.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ulid::Ulid;

/// API token ids are ULIDs.
pub type TokenId = Ulid;

/// What a token may do. Ordered: each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read providers, health and the audit trail.
    Viewer,
    /// Viewer, plus `POST /call` and DLQ actions.
    Operator,
    /// Everything: provider changes, tokens.
    Admin,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Self::Viewer,
            "operator" => Self::Operator,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// The SHA-256 of a presented token, hex: what the store keeps and looks tokens up by. A plain
/// hash suffices because tokens are 256-bit random strings, not passwords.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An API token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// ULID.
    pub id: TokenId,
    /// What it is for (free text, e.g. `grafana`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it acts on; `None`: every tenant.
    pub tenant: Option<String>,
    /// Who created it: `bootstrap` or a token id.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct ApiTokenInsert {
    /// New ULID.
    pub id: TokenId,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one tenant it acts on (which must exist); `None`: every tenant.
    pub tenant: Option<String>,
    /// [`token_hash`] of the token handed out once.
    pub hash: String,
    /// `bootstrap` or the creating token's id.
    pub created_by: String,
}

/// Cursor for listing tokens, oldest first.
#[derive(Debug, Clone, Default)]
pub struct TokenQuery {
    /// Only ids strictly greater than this.
    pub after: Option<TokenId>,
    /// Page size (clamped to 1..=[`crate::store::MAX_PAGE_SIZE`]).
    pub limit: u32,
}

/// One change to record. Never carries a secret: details name fields, not their values.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// `bootstrap` or the acting token's id.
    pub actor: String,
    /// Dotted verb, e.g. `provider.update`.
    pub action: String,
    /// The id of what changed.
    pub target_id: Option<String>,
    /// Secret-free detail (changed field names, the new status, a call's method and path).
    pub detail: serde_json::Value,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Monotonic sequence number (newer entries have larger ids).
    pub id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// The entry.
    pub entry: AuditEntry,
}

/// Filter and cursor for reading the audit trail, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries about this target.
    pub target_id: Option<String>,
    /// Only entries with ids strictly smaller than this (the previous page's last id).
    pub before: Option<i64>,
    /// Page size (clamped to 1..=[`crate::store::MAX_PAGE_SIZE`]).
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
