//! Tenant scope of an admin token: the one rule every handler asks.
//!
//! An API token may be limited to one tenant (`api_tokens.tenant`, migration 0005; the bootstrap
//! token and tokens without a tenant act on every tenant). A scoped token:
//!
//! - sees only its tenant's callers, grants, DLQ entries and jobs, and its tenant's providers
//!   plus the global ones (readable, never changeable: 403); anything of another tenant is
//!   answered 404, exactly as if it did not exist;
//! - creates only in its tenant (a provider, caller or grant it creates lands there; naming
//!   another tenant, or `global: true`, is 403);
//! - cannot manage tenants or API tokens, nor read the audit trail (403): those span tenants.
//!
//! Roles still apply on top: a scoped viewer reads its tenant, a scoped admin changes it.

use crate::auth::Caller;
use crate::error::ApiError;

impl Caller {
    /// The tenant this token is limited to; `None`: every tenant.
    pub fn scope(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Whether this token sees a thing of `tenant` (`None`: a global provider's, or a DLQ entry
    /// or job whose tenant is not known; only unscoped tokens see those).
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        match self.scope() {
            None => true,
            Some(mine) => tenant == Some(mine),
        }
    }

    /// Whether this token sees a provider of `tenant`: its tenant's, and every global one.
    pub fn sees_provider(&self, tenant: Option<&str>) -> bool {
        tenant.is_none() || self.sees(tenant)
    }

    /// `Ok` when this token sees a thing of `tenant`, else `not_found` (a 404 naming the id):
    /// another tenant's things do not exist for it.
    pub fn check_sees(&self, tenant: Option<&str>, not_found: &str) -> Result<(), ApiError> {
        if self.sees(tenant) {
            Ok(())
        } else {
            Err(ApiError::NotFound(not_found.to_owned()))
        }
    }

    /// `Ok` when this token may change a provider of `tenant`: 404 for another tenant's, 403
    /// for a global one when scoped.
    pub fn check_changes_provider(&self, tenant: Option<&str>) -> Result<(), ApiError> {
        if !self.sees_provider(tenant) {
            return Err(ApiError::NotFound("no such provider".to_owned()));
        }
        match (self.scope(), tenant) {
            (Some(mine), None) => Err(ApiError::OutOfScope(format!(
                "global providers are shared by every tenant; a token scoped to tenant {mine} \
                 may read them but not change them"
            ))),
            _ => Ok(()),
        }
    }

    /// `Ok` for an unscoped token; 403 for a scoped one (`what`: the operation, e.g.
    /// `managing tenants`).
    pub fn check_unscoped(&self, what: &str) -> Result<(), ApiError> {
        match self.scope() {
            None => Ok(()),
            Some(mine) => Err(ApiError::OutOfScope(format!(
                "{what} spans tenants; this token is scoped to tenant {mine}"
            ))),
        }
    }

    /// The tenant a new thing goes into, given what the request asked for: a scoped token's
    /// own (403 when the request named another one), else what was asked.
    pub fn tenant_for_new(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (self.scope(), asked) {
            (None, asked) => Ok(asked),
            (Some(mine), Some(other)) if other != mine => Err(ApiError::OutOfScope(format!(
                "this token is scoped to tenant {mine}; it cannot create in tenant {other}"
            ))),
            (Some(mine), _) => Ok(Some(mine.to_owned())),
        }
    }

    /// `Ok` unless a scoped token asks for a global provider (`global: true`): 403.
    pub fn check_creates_global(&self, global: bool) -> Result<(), ApiError> {
        match self.scope() {
            Some(mine) if global => Err(ApiError::OutOfScope(format!(
                "a token scoped to tenant {mine} cannot create global providers (shared by \
                 every tenant)"
            ))),
            _ => Ok(()),
        }
    }

    /// The tenant filter of a listing: what was asked for, within the token's scope.
    pub fn tenant_filter(&self, asked: Option<String>) -> Listing {
        match (self.scope(), asked) {
            (None, asked) => Listing::Matching(asked),
            (Some(mine), Some(other)) if other != mine => Listing::Nothing,
            (Some(mine), _) => Listing::Matching(Some(mine.to_owned())),
        }
    }
}

/// What a listing shows a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Rows of this tenant (`None`: of every tenant).
    Matching(Option<String>),
    /// Nothing: the request asked for a tenant the token does not see (an empty page).
    Nothing,
}

#[cfg(test)]
mod tests {
    use hub_core::access::Role;

    use super::*;

    fn token(tenant: Option<&str>) -> Caller {
        Caller {
            id: "t".into(),
            role: Role::Admin,
            tenant: tenant.map(str::to_owned),
        }
    }

    #[test]
    fn unscoped_tokens_see_and_change_everything() {
        let t = token(None);
        for tenant in [None, Some("acme"), Some("beta")] {
            assert!(t.sees(tenant) && t.sees_provider(tenant));
            assert!(t.check_changes_provider(tenant).is_ok());
        }
        assert!(t.check_unscoped("managing tokens").is_ok());
        assert!(t.check_creates_global(true).is_ok());
        assert_eq!(t.tenant_for_new(None).unwrap(), None);
        assert_eq!(
            t.tenant_for_new(Some("beta".into())).unwrap().as_deref(),
            Some("beta")
        );
        assert_eq!(t.tenant_filter(None), Listing::Matching(None));
    }

    #[test]
    fn scoped_tokens_stay_in_their_tenant() {
        let t = token(Some("acme"));
        assert!(t.sees(Some("acme")));
        assert!(!t.sees(Some("beta")));
        assert!(!t.sees(None), "entries of unknown tenant are not acme's");
        assert!(t.sees_provider(None), "global providers are readable");
        assert!(!t.sees_provider(Some("beta")));
        assert!(t.check_changes_provider(Some("acme")).is_ok());
        let global = t.check_changes_provider(None).unwrap_err();
        assert_eq!(
            (global.status().as_u16(), global.code()),
            (403, "forbidden")
        );
        let other = t.check_changes_provider(Some("beta")).unwrap_err();
        assert_eq!(other.status().as_u16(), 404);
        assert_eq!(
            t.check_sees(Some("beta"), "no such")
                .unwrap_err()
                .status()
                .as_u16(),
            404
        );
        assert_eq!(
            t.check_unscoped("managing tokens")
                .unwrap_err()
                .status()
                .as_u16(),
            403
        );
        assert!(t.check_creates_global(false).is_ok());
        assert!(t.check_creates_global(true).is_err());
        assert_eq!(t.tenant_for_new(None).unwrap().as_deref(), Some("acme"));
        assert_eq!(
            t.tenant_for_new(Some("acme".into())).unwrap().as_deref(),
            Some("acme")
        );
        assert!(t.tenant_for_new(Some("beta".into())).is_err());
        assert_eq!(
            t.tenant_filter(None),
            Listing::Matching(Some("acme".into()))
        );
        assert_eq!(t.tenant_filter(Some("beta".into())), Listing::Nothing);
    }
}
