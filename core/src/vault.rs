//! The credential vault: AES-256-GCM with a key ring.
//!
//! Every seal draws a fresh random 96-bit nonce from the OS and binds the ciphertext to what it
//! belongs to through the associated data (for credentials: the provider id, see
//! [`credentials_aad`]), so a ciphertext copied onto another provider's row does not open. The
//! stored layout is `nonce || ciphertext || tag`, with the sealing key's id kept alongside in
//! [`SealedCredentials::key_id`].
//!
//! The ring holds several keys; the first one (the active key) seals, all of them open. Rotating
//! from A to B: deploy `[A, B]` everywhere (every instance can open B), then `[B, A]` (B seals),
//! run [`rotate_keys`], and once it reports no failures deploy `[B]`.
//!
//! - `spec`: the `HUB_MASTER_KEYS` format read by [`Vault::from_spec`] (`id:base64key`, comma or
//!   newline separated, active first).
//! - `load`: where the ring comes from ([`Vault::load`], [`KeySource`]): env, key file, or a
//!   generated dev key.
//! - `rotate`: re-sealing stored credentials under the active key ([`rotate_keys`]).

mod load;
mod rotate;
mod spec;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::TryRngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::provider::{Auth, ProviderId, SealedCredentials};
use crate::secret::SecretString;

pub use load::{DEV_KEY_FILE, KeySource};
pub use rotate::{RotationFailure, RotationReport, rotate_keys};
pub use spec::{KEY_LEN, MAX_KEY_ID_LEN};

/// Length of the random nonce that prefixes every ciphertext.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag that ends every ciphertext.
pub const TAG_LEN: usize = 16;

/// Domain-separation prefix of the associated data for provider credentials.
const CREDENTIALS_AAD_PREFIX: &[u8] = b"hub/credentials/v1/";

/// What can go wrong in the vault. No variant ever carries key material or plaintext; `kind()` is
/// a stable label for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The ciphertext names a key the ring does not hold.
    #[error("unknown vault key id {key_id:?}")]
    UnknownKey {
        /// The id stored with the ciphertext.
        key_id: String,
    },
    /// Authentication failed: wrong key, tampered ciphertext, or bound to something else.
    #[error("decryption failed (wrong key, tampered ciphertext or mismatched binding)")]
    Decrypt,
    /// The ciphertext is shorter than a nonce and a tag.
    #[error("sealed value is truncated: {len} bytes, at least {min} expected")]
    Truncated {
        /// Actual length.
        len: usize,
        /// Minimum length (nonce + tag).
        min: usize,
    },
    /// The key spec (`HUB_MASTER_KEYS`, a key file) is malformed; the message names the entry.
    #[error("bad key spec: {message}")]
    BadKeySpec {
        /// What is wrong, by entry position and id; never the key itself.
        message: String,
    },
    /// A key file could not be read or written.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Decrypted credentials are not the JSON [`Auth::to_sealable_json`] writes.
    #[error("decrypted credentials are not valid auth JSON ({category} error at column {column})")]
    BadPlaintext {
        /// `syntax`, `data`, `eof` or `io` (serde_json's category; its message could echo secrets).
        category: &'static str,
        /// Where parsing stopped.
        column: usize,
    },
    /// The OS random source failed or the cipher refused the input.
    #[error("encryption failed: {0}")]
    Encrypt(&'static str),
}

impl VaultError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownKey { .. } => "unknown_key",
            Self::Decrypt => "decrypt_failed",
            Self::Truncated { .. } => "truncated",
            Self::BadKeySpec { .. } => "bad_key_spec",
            Self::Io { .. } => "io",
            Self::BadPlaintext { .. } => "bad_plaintext",
            Self::Encrypt(_) => "encrypt_failed",
        }
    }

    fn bad_spec(message: impl Into<String>) -> Self {
        Self::BadKeySpec {
            message: message.into(),
        }
    }
}

/// The associated data binding an OAuth2 value the hub sealed (`what`: `token`, `refresh`) to
/// its provider and provider version.
pub fn oauth_aad(what: &str, provider_id: ProviderId, version: i64) -> Vec<u8> {
    format!("hub-oauth:{what}:{provider_id}:{version}").into_bytes()
}

/// The associated data binding sealed credentials to their provider: `hub/credentials/v1/<ulid>`.
pub fn credentials_aad(provider_id: ProviderId) -> Vec<u8> {
    let mut aad = CREDENTIALS_AAD_PREFIX.to_vec();
    aad.extend_from_slice(provider_id.to_string().as_bytes());
    aad
}

/// One key of the ring. The raw key bytes are wiped once the cipher is keyed (the cipher's own
/// key schedule is not: that needs the `aes` crate's `zeroize` feature).
#[derive(Clone)]
struct RingKey {
    id: String,
    cipher: Aes256Gcm,
    /// HMAC-SHA256(key, [`INTERNAL_CALLER_LABEL`]): the hub's internal caller credential under
    /// this key (see [`Vault::internal_caller_token`]).
    internal: [u8; 32],
}

/// What the internal caller credential is derived from (with each master key).
const INTERNAL_CALLER_LABEL: &[u8] = b"integration-hub/internal-caller/v1";

/// Prefix of the internal caller credential.
pub const INTERNAL_CALLER_PREFIX: &str = "hubi_";

/// The key ring: the first key seals, every key opens. `Debug` shows key ids only.
#[derive(Clone)]
pub struct Vault {
    /// Never empty; `keys[0]` is the active key; ids are unique.
    keys: Vec<RingKey>,
}

impl Vault {
    /// Builds a ring from a spec: `id:base64key` entries separated by commas or newlines, the
    /// first one active.
    pub fn from_spec(spec: &SecretString) -> Result<Self, VaultError> {
        Self::from_spec_str(spec.expose())
    }

    fn from_spec_str(spec: &str) -> Result<Self, VaultError> {
        let entries = spec::parse(spec)?;
        let keys = entries
            .into_iter()
            .map(|entry| {
                let cipher = Aes256Gcm::new_from_slice(entry.key.as_slice()).map_err(|_| {
                    VaultError::bad_spec(format!("key {:?}: wrong length", entry.id))
                })?;
                use hmac::Mac as _;
                let mut mac =
                    <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(entry.key.as_slice())
                        .expect("HMAC takes a key of any length");
                mac.update(INTERNAL_CALLER_LABEL);
                Ok(RingKey {
                    id: entry.id,
                    cipher,
                    internal: mac.finalize().into_bytes().into(),
                })
            })
            .collect::<Result<Vec<_>, VaultError>>()?;
        Ok(Self { keys })
    }

    /// A new spec entry `id:base64key` with a fresh random key, for `hub keys generate`.
    pub fn generate_spec_entry(id: &str) -> Result<SecretString, VaultError> {
        spec::generate_entry(id)
    }

    /// The credential the hub's own components (the admin's `POST /call`, DLQ replays, async
    /// jobs) present to the proxy as `Proxy-Authorization: Bearer …`: derived from the active
    /// master key, so every process holding the keys agrees on it without another secret, and
    /// it changes when the keys rotate. Never logged; the proxy keeps only its hash.
    pub fn internal_caller_token(&self) -> SecretString {
        SecretString::new(format!(
            "{INTERNAL_CALLER_PREFIX}{}",
            hex::encode(self.keys[0].internal)
        ))
    }

    /// The SHA-256 hashes of the internal caller credential under every key of the ring (a
    /// process still on the previous active key during a rotation is accepted).
    pub fn internal_caller_hashes(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| {
                crate::access::token_hash(&format!(
                    "{INTERNAL_CALLER_PREFIX}{}",
                    hex::encode(k.internal)
                ))
            })
            .collect()
    }

    /// The id of the key that seals.
    pub fn active_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Every key id in the ring, active first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Whether the ring holds a key with this id.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.key(key_id).is_some()
    }

    fn key(&self, key_id: &str) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.id == key_id)
    }

    /// Encrypts `plaintext` under the active key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<SealedCredentials, VaultError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| VaultError::Encrypt("the OS random source failed"))?;
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::Encrypt("the cipher refused the input"))?;
        let mut ciphertext = Vec::with_capacity(NONCE_LEN + sealed.len());
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&sealed);
        Ok(SealedCredentials {
            key_id: key.id.clone(),
            ciphertext,
        })
    }

    /// Decrypts a sealed value with the key it names; fails unless `aad` is what it was sealed
    /// with. The plaintext is wiped from memory when dropped.
    pub fn open(
        &self,
        aad: &[u8],
        sealed: &SealedCredentials,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let key = self
            .key(&sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let min = NONCE_LEN + TAG_LEN;
        if sealed.ciphertext.len() < min {
            return Err(VaultError::Truncated {
                len: sealed.ciphertext.len(),
                min,
            });
        }
        let (nonce, body) = sealed.ciphertext.split_at(NONCE_LEN);
        key.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Decrypt)
    }

    /// Seals a provider's credentials, bound to its id; `None` for [`Auth::None`].
    pub fn seal_auth(
        &self,
        provider_id: ProviderId,
        auth: &Auth,
    ) -> Result<Option<SealedCredentials>, VaultError> {
        if matches!(auth, Auth::None) {
            return Ok(None);
        }
        let plaintext = Zeroizing::new(auth.to_sealable_json());
        self.seal(&credentials_aad(provider_id), &plaintext)
            .map(Some)
    }

    /// Opens a provider's sealed credentials.
    pub fn open_auth(
        &self,
        provider_id: ProviderId,
        sealed: &SealedCredentials,
    ) -> Result<Auth, VaultError> {
        let plaintext = self.open(&credentials_aad(provider_id), sealed)?;
        Auth::from_sealed_json(&plaintext).map_err(|e| VaultError::BadPlaintext {
            category: match e.classify() {
                serde_json::error::Category::Io => "io",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "eof",
            },
            column: e.column(),
        })
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("active", &self.active_key_id())
            .field("keys", &self.key_ids())
            .finish()
    }
}
