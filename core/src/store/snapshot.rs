//! The proxy's last-known-good registry on local disk: `<data_dir>/registry.snapshot.json`.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory) every time the
//! proxy installs a registry revision from the store, and read at start when the store cannot
//! be reached, so a proxy restarted during a database incident still routes. Credentials stay
//! sealed exactly as the store holds them (the vault's AES-256-GCM ciphertext and key id): the
//! file holds nothing the database does not, and it is private (0600).
//!
//! With Redis configured, the same bytes are also kept in Redis ([`RedisCopy`], key
//! `<prefix>registry:snapshot`), so a proxy on a fresh node (a Kubernetes pod replaced during a
//! database incident has an empty data dir) still starts: it takes the newer of the two.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::caller::{CallerRecord, GrantRecord};
use crate::provider::{
    AuthType, HostPattern, ProviderConfig, ProviderRecord, ProviderStatus, SealedCredentials,
};

/// The file name under the data directory.
pub const FILE: &str = "registry.snapshot.json";
const FORMAT: u32 = 1;

/// A registry revision as the proxy last loaded it from the store.
#[derive(Debug, Clone)]
pub struct RegistrySnapshot {
    /// The store's registry revision.
    pub revision: i64,
    /// When the store last confirmed this revision was current (unix ms).
    pub confirmed_at_ms: i64,
    /// Every live provider, credentials sealed.
    pub providers: Vec<ProviderRecord>,
    /// Every caller (revoked ones included: they must keep failing), tokens as hashes.
    pub callers: Vec<CallerRecord>,
    /// Every grant.
    pub grants: Vec<GrantRecord>,
}

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read, written or synced.
    #[error("registry snapshot {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse (or is of a format this hub does not know).
    #[error("registry snapshot {} is not usable: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnDisk {
    format: u32,
    revision: i64,
    confirmed_at_ms: i64,
    providers: Vec<Record>,
    /// Absent from files written before callers existed.
    #[serde(default)]
    callers: Vec<CallerRecord>,
    #[serde(default)]
    grants: Vec<GrantRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    name: String,
    /// `None`: global. Files from before tenants hold the default tenant's providers.
    #[serde(default = "default_tenant")]
    tenant: Option<String>,
    hosts: Vec<String>,
    base_url: String,
    auth_type: AuthType,
    /// `(key id, base64 of the sealed bytes)`.
    credentials: Option<(String, String)>,
    credentials_updated_at: Option<DateTime<Utc>>,
    config: ProviderConfig,
    status: ProviderStatus,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&ProviderRecord> for Record {
    fn from(r: &ProviderRecord) -> Self {
        Self {
            id: r.id.to_string(),
            name: r.name.clone(),
            tenant: r.tenant.clone(),
            hosts: r.hosts.iter().map(ToString::to_string).collect(),
            base_url: r.base_url.clone(),
            auth_type: r.auth_type,
            credentials: r
                .credentials
                .as_ref()
                .map(|c| (c.key_id.clone(), STANDARD.encode(&c.ciphertext))),
            credentials_updated_at: r.credentials_updated_at,
            config: r.config.clone(),
            status: r.status,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Record {
    fn into_record(self) -> Result<ProviderRecord, String> {
        Ok(ProviderRecord {
            id: self.id.parse().map_err(|_| format!("bad id {}", self.id))?,
            hosts: self
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect::<Result<_, _>>()?,
            credentials: match self.credentials {
                None => None,
                Some((key_id, b64)) => Some(SealedCredentials {
                    key_id,
                    ciphertext: STANDARD
                        .decode(b64)
                        .map_err(|_| "bad credential encoding".to_owned())?,
                }),
            },
            name: self.name,
            tenant: self.tenant,
            base_url: self.base_url,
            auth_type: self.auth_type,
            credentials_updated_at: self.credentials_updated_at,
            config: self.config,
            status: self.status,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[allow(clippy::unnecessary_wraps)] // serde's `default =` wants this shape
fn default_tenant() -> Option<String> {
    Some(crate::caller::DEFAULT_TENANT.to_owned())
}

/// The snapshot's bytes (what the file and the Redis copy hold).
pub fn encode(snap: &RegistrySnapshot) -> Vec<u8> {
    let body = OnDisk {
        format: FORMAT,
        revision: snap.revision,
        confirmed_at_ms: snap.confirmed_at_ms,
        providers: snap.providers.iter().map(Record::from).collect(),
        callers: snap.callers.clone(),
        grants: snap.grants.clone(),
    };
    serde_json::to_vec(&body).expect("a snapshot serializes")
}

/// Parses [`encode`]'s bytes; `from` names the source in errors.
pub fn decode(raw: &[u8], from: &Path) -> Result<RegistrySnapshot, SnapshotError> {
    let invalid = |message: String| SnapshotError::Invalid {
        path: from.to_owned(),
        message,
    };
    let disk: OnDisk = serde_json::from_slice(raw).map_err(|e| invalid(e.to_string()))?;
    if disk.format != FORMAT {
        return Err(invalid(format!(
            "format {} (this hub reads {FORMAT})",
            disk.format
        )));
    }
    let providers = disk
        .providers
        .into_iter()
        .map(Record::into_record)
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    Ok(RegistrySnapshot {
        revision: disk.revision,
        confirmed_at_ms: disk.confirmed_at_ms,
        providers,
        callers: disk.callers,
        grants: disk.grants,
    })
}

/// Writes `snap` to `path` atomically: a reader sees the old file or the new one, never a mix.
pub fn write(path: &Path, snap: &RegistrySnapshot) -> Result<(), SnapshotError> {
    write_bytes(path, &encode(snap))
}

/// Writes encoded snapshot bytes to `path` atomically.
pub fn write_bytes(path: &Path, json: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(json).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<RegistrySnapshot>, SnapshotError> {
    let raw = match std::fs::read(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    decode(&raw, path).map(Some)
}

/// The snapshot's copy in Redis (best effort both ways: Redis is a second place to start from,
/// never something the proxy waits on for long).
#[derive(Clone)]
pub struct RedisCopy {
    client: redis::Client,
    key: String,
}

impl std::fmt::Debug for RedisCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCopy").field("key", &self.key).finish()
    }
}

/// Longest a Redis copy read or write may take.
const REDIS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl RedisCopy {
    /// The copy under `<prefix>registry:snapshot` on the Redis `url` names.
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            key: format!("{prefix}registry:snapshot"),
        })
    }

    /// Stores the bytes; `false` when Redis did not take them within a second.
    pub async fn put(&self, bytes: Vec<u8>) -> bool {
        let op = async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("SET")
                .arg(&self.key)
                .arg(bytes)
                .query_async::<()>(&mut conn)
                .await
        };
        matches!(tokio::time::timeout(REDIS_WAIT, op).await, Ok(Ok(())))
    }

    /// The stored snapshot, if Redis answers within a second and holds a usable one.
    pub async fn get(&self) -> Option<RegistrySnapshot> {
        let op = async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("GET")
                .arg(&self.key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        };
        let raw = tokio::time::timeout(REDIS_WAIT, op).await.ok()?.ok()??;
        match decode(&raw, Path::new(&self.key)) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "the registry snapshot in Redis is not usable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_with_credentials_still_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert!(read(&path).unwrap().is_none(), "none yet");
        let now = Utc::now();
        let rec = ProviderRecord {
            id: ulid::Ulid::new(),
            name: "stripe".into(),
            tenant: Some("acme".into()),
            hosts: vec![
                HostPattern::parse("api.stripe.com").unwrap(),
                HostPattern::parse("*.stripe.test").unwrap(),
            ],
            base_url: "https://api.stripe.com".into(),
            auth_type: AuthType::Bearer,
            credentials: Some(SealedCredentials {
                key_id: "k1".into(),
                ciphertext: vec![1, 2, 3, 250],
            }),
            credentials_updated_at: Some(now),
            config: ProviderConfig::default(),
            status: ProviderStatus::Active,
            version: 7,
            created_at: now,
            updated_at: now,
        };
        let snap = RegistrySnapshot {
            revision: 42,
            confirmed_at_ms: 1_700_000_000_000,
            providers: vec![rec.clone()],
            callers: Vec::new(),
            grants: Vec::new(),
        };
        write(&path, &snap).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!(
            (back.revision, back.confirmed_at_ms),
            (42, 1_700_000_000_000)
        );
        let got = &back.providers[0];
        assert_eq!((got.id, &got.name, got.version), (rec.id, &rec.name, 7));
        assert_eq!(got.hosts, rec.hosts);
        assert_eq!(got.credentials, rec.credentials);
        assert_eq!(got.config, rec.config);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, b"{\"format\":99}").unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Invalid { .. })));
    }
}
