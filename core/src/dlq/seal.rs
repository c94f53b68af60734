//! A failed call turned into what is persisted: every column of the row, the body sealed by the
//! vault and bound to the entry id (`hub/dlq/v1/<id>`), so a body copied onto another row does
//! not open. The same [`SealedEntry`] is what the spool file holds: neither place ever has the
//! body in clear, nor a credential.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::FailedCall;
use crate::provider::{ProviderId, SealedCredentials};
use crate::vault::{Vault, VaultError};

/// Domain-separation prefix of the associated data of DLQ bodies.
const BODY_AAD_PREFIX: &[u8] = b"hub/dlq/v1/";

/// Request header a replay carries: the entry it replays. A failed replay is then recorded on
/// that entry, never as a new one (the writer maps such a call onto the entry's id, and the
/// insert of an existing id is a no-op).
pub const REPLAY_HEADER: &str = crate::wire::DLQ_REPLAY;
/// Request header an async job's attempt carries: its job id. Failed attempts are not DLQ
/// entries of their own; a job that fails for good leaves one entry.
pub const JOB_HEADER: &str = crate::wire::JOB_ID;
/// Request header a module may send to name itself (kept as the entry's `caller`).
pub const CALLER_HEADER: &str = crate::wire::CALLER;

/// Headers never kept, whatever the proxy handed over: credentials under their usual names,
/// and the hub's own control headers.
fn never_kept(name: &str) -> bool {
    use crate::wire::{CREDENTIAL_HEADERS, HUB_CONTROL, listed};
    listed(CREDENTIAL_HEADERS, name) || (listed(HUB_CONTROL, name) && name != CALLER_HEADER)
}

/// The associated data binding a sealed DLQ body to its entry.
pub fn body_aad(id: Ulid) -> Vec<u8> {
    let mut aad = BODY_AAD_PREFIX.to_vec();
    aad.extend_from_slice(id.to_string().as_bytes());
    aad
}

/// Drops credentials and control headers (defence in depth: the proxy already strips the
/// provider's credential header and hop-by-hop ones).
pub fn keepable_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !never_kept(&k.to_ascii_lowercase()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// An entry ready for the database or the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    /// Entry id.
    pub id: Ulid,
    /// Provider id.
    pub provider_id: ProviderId,
    /// Provider name.
    pub provider: String,
    /// The tenant of the call (`None`: a global provider's, caller's tenant unknown). Spool
    /// records written before tenants have none.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query (auth query values redacted).
    pub path: String,
    /// Kept headers.
    pub headers: Vec<(String, String)>,
    /// `nonce || ciphertext || tag`, base64 in the spool.
    #[serde(with = "b64")]
    pub body: Option<Vec<u8>>,
    /// Key that sealed `body`.
    pub body_key_id: Option<String>,
    /// Plaintext bytes kept.
    pub body_size: u64,
    /// Truncated (or dropped) body: not replayable.
    pub body_truncated: bool,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Request id.
    pub request_id: String,
    /// `X-Hub-Caller`.
    pub caller: Option<String>,
    /// The async job this entry records.
    pub job_id: Option<Ulid>,
    /// The job whose attempt this call was: such calls are dropped at insert (see [`JOB_HEADER`]).
    pub attempt_of_job: Option<Ulid>,
    /// Attempts.
    pub attempts: u32,
    /// Last upstream status.
    pub last_status: Option<u16>,
    /// Last error kind.
    pub last_error: String,
    /// Why retries stopped.
    pub stop: String,
    /// Response excerpt.
    pub excerpt: String,
    /// When the call failed (ms since the epoch).
    pub created_at_ms: i64,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: i64,
}

/// The plain parts of an entry, before sealing.
#[derive(Debug, Clone)]
pub struct EntryDraft<'a> {
    /// Entry id.
    pub id: Ulid,
    /// Provider id.
    pub provider_id: ProviderId,
    /// Provider name.
    pub provider: &'a str,
    /// The tenant of the call.
    pub tenant: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Headers (filtered again here).
    pub headers: &'a [(String, String)],
    /// The whole body, or `None` when the proxy could not keep it.
    pub body: Option<&'a [u8]>,
    /// Idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Request id.
    pub request_id: &'a str,
    /// The async job this entry records.
    pub job_id: Option<Ulid>,
    /// Attempts.
    pub attempts: u32,
    /// Last upstream status.
    pub last_status: Option<u16>,
    /// Last error kind.
    pub last_error: &'a str,
    /// Why retries stopped.
    pub stop: &'a str,
    /// Response excerpt.
    pub excerpt: &'a str,
    /// When the call failed (ms since the epoch).
    pub failed_at_ms: i64,
}

impl EntryDraft<'_> {
    /// Seals the body (cut at `max_body` bytes, then not replayable) and computes the expiry.
    pub fn seal(
        &self,
        vault: &Vault,
        max_body: usize,
        retention_ms: i64,
    ) -> Result<SealedEntry, VaultError> {
        let (kept, truncated) = match self.body {
            Some(b) if b.len() > max_body => (Some(&b[..max_body]), true),
            Some(b) => (Some(b), false),
            None => (None, true),
        };
        let sealed = match kept {
            Some(b) if !b.is_empty() => Some(vault.seal(&body_aad(self.id), b)?),
            _ => None,
        };
        let (body, body_key_id) = match sealed {
            Some(SealedCredentials { key_id, ciphertext }) => (Some(ciphertext), Some(key_id)),
            None => (None, None),
        };
        let attempt_of_job =
            header(self.headers, JOB_HEADER).and_then(|v| Ulid::from_string(v).ok());
        Ok(SealedEntry {
            id: self.id,
            provider_id: self.provider_id,
            provider: self.provider.to_owned(),
            tenant: self.tenant.map(str::to_owned),
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            headers: keepable_headers(self.headers),
            body,
            body_key_id,
            body_size: kept.map_or(0, |b| b.len() as u64),
            body_truncated: truncated,
            idempotency_key: self.idempotency_key.map(str::to_owned),
            request_id: self.request_id.to_owned(),
            caller: header(self.headers, CALLER_HEADER)
                .filter(|v| !v.is_empty())
                .map(|v| v.chars().take(128).collect()),
            job_id: self.job_id,
            attempt_of_job,
            attempts: self.attempts,
            last_status: self.last_status,
            last_error: self.last_error.to_owned(),
            stop: self.stop.to_owned(),
            excerpt: self.excerpt.to_owned(),
            created_at_ms: self.failed_at_ms,
            expires_at_ms: self.failed_at_ms.saturating_add(retention_ms),
        })
    }
}

/// Seals a failed call from the proxy. A call that replays an entry (it carries
/// [`REPLAY_HEADER`]) takes that entry's id, so that persisting it changes nothing.
pub fn seal_failed_call(
    call: &FailedCall,
    vault: &Vault,
    max_body: usize,
    retention_ms: i64,
) -> Result<SealedEntry, VaultError> {
    let id = header(&call.headers, REPLAY_HEADER)
        .and_then(|v| Ulid::from_string(v).ok())
        .unwrap_or(call.id);
    let draft = EntryDraft {
        id,
        provider_id: call.provider_id,
        provider: &call.provider,
        tenant: call.tenant.as_deref(),
        method: &call.method,
        path: &call.path,
        headers: &call.headers,
        body: if call.body_truncated {
            None
        } else {
            Some(call.body.as_deref().unwrap_or_default())
        },
        idempotency_key: call.idempotency_key.as_deref(),
        request_id: &call.request_id,
        job_id: None,
        attempts: call.attempts,
        last_status: call.last_status,
        last_error: call.last_error,
        stop: call.stop,
        excerpt: &crate::wire::excerpt(call.excerpt.as_bytes(), call.excerpt.len()),
        failed_at_ms: call.failed_at.timestamp_millis(),
    };
    draft.seal(vault, max_body, retention_ms)
}

/// Opens a sealed body of entry `id`.
pub fn open_body(
    vault: &Vault,
    id: Ulid,
    key_id: &str,
    ciphertext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let sealed = SealedCredentials {
        key_id: key_id.to_owned(),
        ciphertext: ciphertext.to_vec(),
    };
    vault.open(&body_aad(id), &sealed).map(|p| p.to_vec())
}

/// `Option<Vec<u8>>` as base64 text in the spool.
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
