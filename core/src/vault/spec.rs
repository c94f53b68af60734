//! The key spec format, shared by `HUB_MASTER_KEYS` and mounted key files: `id:base64key` entries
//! separated by commas or newlines, the first one active. Keys are 32 bytes in standard (padded)
//! base64; ids are 1-32 characters of `[A-Za-z0-9_-]` and unique. Blank entries and lines starting
//! with `#` are ignored, so a key file may carry comments and a trailing newline.
//!
//! Errors name the entry by position (and id, once the id is known to be well formed) and never
//! echo what was written where the key goes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::TryRngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::VaultError;
use crate::secret::SecretString;

/// Length of a vault key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Longest key id accepted.
pub const MAX_KEY_ID_LEN: usize = 32;

/// One parsed entry. The key bytes are wiped on drop.
pub(super) struct SpecEntry {
    pub(super) id: String,
    pub(super) key: Zeroizing<[u8; KEY_LEN]>,
}

/// Whether `id` is 1-32 characters of `[A-Za-z0-9_-]`.
pub(super) fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const ID_RULE: &str = "key id must be 1-32 characters of A-Z a-z 0-9 _ -";

/// Parses a spec into its entries, active first.
pub(super) fn parse(spec: &str) -> Result<Vec<SpecEntry>, VaultError> {
    let mut entries: Vec<SpecEntry> = Vec::new();
    let raw_entries = spec
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'));
    for (index, raw) in raw_entries.enumerate() {
        let position = index + 1;
        let Some((id, encoded)) = raw.split_once(':') else {
            return Err(VaultError::bad_spec(format!(
                "entry {position}: expected `id:base64key`"
            )));
        };
        let id = id.trim();
        if !valid_key_id(id) {
            return Err(VaultError::bad_spec(format!("entry {position}: {ID_RULE}")));
        }
        let at = || format!("entry {position} (id {id:?})");
        if let Some(first) = entries.iter().position(|e| e.id == id) {
            return Err(VaultError::bad_spec(format!(
                "{}: duplicate key id (also entry {})",
                at(),
                first + 1
            )));
        }
        let key = decode_key(encoded.trim())
            .map_err(|m| VaultError::bad_spec(format!("{}: {m}", at())))?;
        entries.push(SpecEntry {
            id: id.to_owned(),
            key,
        });
    }
    if entries.is_empty() {
        return Err(VaultError::bad_spec(
            "no keys: expected comma- or newline-separated `id:base64key` entries",
        ));
    }
    Ok(entries)
}

/// Decodes one key into a wiped-on-drop buffer; the error says what is wrong, never what was read.
fn decode_key(encoded: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    // Room for more than a key, so an over-long key is reported as such, not as bad base64.
    let mut buf = Zeroizing::new([0u8; 2 * KEY_LEN]);
    let len = match STANDARD.decode_slice(encoded, &mut buf[..]) {
        Ok(len) => len,
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            return Err(format!("key must be {KEY_LEN} bytes, got more"));
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => {
            return Err("key is not valid standard base64".to_owned());
        }
    };
    if len != KEY_LEN {
        return Err(format!("key must be {KEY_LEN} bytes, got {len}"));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&buf[..KEY_LEN]);
    Ok(key)
}

/// A fresh `id:base64key` entry with a random key from the OS.
pub(super) fn generate_entry(id: &str) -> Result<SecretString, VaultError> {
    if !valid_key_id(id) {
        return Err(VaultError::bad_spec(ID_RULE));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|_| VaultError::Encrypt("the OS random source failed"))?;
    let mut entry = String::with_capacity(id.len() + 1 + KEY_LEN.div_ceil(3) * 4);
    entry.push_str(id);
    entry.push(':');
    STANDARD.encode_string(&key[..], &mut entry);
    Ok(SecretString::new(entry))
}
