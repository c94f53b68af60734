//! `PATCH /providers/{id}`: what a change may carry and how it combines with the stored
//! provider.
//!
//! - `name`, `hosts`, `baseUrl`, `status`: replaced when present (`hosts` as a whole set).
//! - `auth`: replaced as a whole (type and every field) and re-sealed under the active vault key,
//!   bound to the provider id. Credentials cannot be patched field by field: they are never
//!   read back.
//! - `config`: a JSON Merge Patch (RFC 7396) onto the stored policy: fields present replace the
//!   stored ones (objects such as `breaker` merge the same way), `null` resets a field to its
//!   default, absent fields stay. The merged policy is validated as a whole, with `baseUrl`
//!   re-checked against it (turning `allowInsecureUpstream` off under an `http://` base URL is
//!   a 422 on `baseUrl`).
//! - A top-level `null` means "leave as is"; unknown fields are 422.

use hub_core::provider::{
    Auth, ProviderConfig, ProviderRecord, ProviderStatus, parse_base_url, validate_hosts,
    validate_name, validate_tls_mode,
};
use hub_core::store::ProviderChange;
use hub_core::vault::Vault;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::extract::from_value;

/// The body of `PATCH /providers/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderPatch {
    /// New unique name.
    pub name: Option<String>,
    /// New host set.
    pub hosts: Option<Vec<String>>,
    /// New base URL.
    pub base_url: Option<String>,
    /// New credentials (whole).
    pub auth: Option<Auth>,
    /// Merge patch onto the policy.
    pub config: Option<Map<String, Value>>,
    /// Active or disabled.
    pub status: Option<ProviderStatus>,
}

impl ProviderPatch {
    /// The fields present, for the audit trail (names only, never values).
    pub fn field_names(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("hosts", self.hosts.is_some()),
            ("baseUrl", self.base_url.is_some()),
            ("auth", self.auth.is_some()),
            ("config", self.config.is_some()),
            ("status", self.status.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, present)| present.then_some(n))
        .collect()
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.field_names().is_empty()
    }

    /// Validates the patch against `current` and turns it into a store change (credentials
    /// sealed). The change applies only at `current.version`.
    pub fn to_change(
        &self,
        current: &ProviderRecord,
        vault: &Vault,
    ) -> Result<ProviderChange, ApiError> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        let hosts = self.hosts.as_deref().map(validate_hosts).transpose()?;
        let config = match &self.config {
            Some(patch) => {
                let merged = merge_config(&current.config, patch)?;
                merged.validate()?;
                Some(merged)
            }
            None => None,
        };
        let effective = config.as_ref().unwrap_or(&current.config);
        let base_url = self.base_url.as_deref().unwrap_or(&current.base_url);
        parse_base_url(base_url, effective.allow_insecure_upstream)?;
        let auth_type = self
            .auth
            .as_ref()
            .map_or(current.auth_type, Auth::auth_type);
        validate_tls_mode(effective, auth_type)?;
        let credentials = match &self.auth {
            Some(auth) => {
                auth.validate()?;
                Some((auth.auth_type(), vault.seal_auth(current.id, auth)?))
            }
            None => None,
        };
        Ok(ProviderChange {
            name: self.name.clone(),
            hosts,
            base_url: self.base_url.clone(),
            config,
            status: self.status,
            credentials,
            expected_version: Some(current.version),
        })
    }
}

/// Applies a merge patch to the stored policy and reads the result back as a policy.
fn merge_config(
    current: &ProviderConfig,
    patch: &Map<String, Value>,
) -> Result<ProviderConfig, ApiError> {
    let mut merged = serde_json::to_value(current)
        .map_err(|e| ApiError::Internal(format!("stored config does not serialize: {e}")))?;
    merge(&mut merged, &Value::Object(patch.clone()));
    from_value(merged, "config")
}

/// RFC 7396: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn merged(patch: Value) -> Result<ProviderConfig, ApiError> {
        let current = ProviderConfig {
            timeout_ms: 5_000,
            rate_limit_per_sec: Some(7),
            ..Default::default()
        };
        let Value::Object(p) = patch else { panic!() };
        merge_config(&current, &p)
    }

    #[test]
    fn config_patch_merges_and_nulls_reset() {
        let c = merged(json!({"maxAttempts": 2})).unwrap();
        assert_eq!((c.timeout_ms, c.max_attempts), (5_000, 2));
        assert_eq!(c.rate_limit_per_sec, Some(7));
        let c = merged(json!({"timeoutMs": null, "rateLimitPerSec": null})).unwrap();
        assert_eq!(c.timeout_ms, ProviderConfig::default().timeout_ms);
        assert_eq!(c.rate_limit_per_sec, None);
        let c = merged(json!({"breaker": {"openMs": 5}})).unwrap();
        assert_eq!(c.breaker.open_ms, 5);
        assert_eq!(c.breaker.failure_threshold, 5);
    }

    #[test]
    fn config_patch_errors_name_the_field() {
        for (patch, field) in [
            (json!({"bogus": 1}), "config.bogus"),
            (json!({"timeoutMs": "fast"}), "config.timeoutMs"),
            (json!({"breaker": {"nope": 1}}), "config.breaker.nope"),
        ] {
            match merged(patch.clone()).unwrap_err() {
                ApiError::Validation { field: f, .. } => assert_eq!(f, field, "{patch}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn field_names_are_what_is_present() {
        let p: ProviderPatch =
            serde_json::from_value(json!({"status": "disabled", "auth": {"type": "none"}}))
                .unwrap();
        assert_eq!(p.field_names(), ["auth", "status"]);
        assert!(ProviderPatch::default().is_empty());
    }
}
