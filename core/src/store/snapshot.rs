//! The proxy's last-known-good registry on local disk: `<data_dir>/registry.snapshot.json`.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory) every time the
//! proxy installs a registry revision from the store, and read at start when the store cannot
//! be reached, so a proxy restarted during a database incident still routes. Credentials stay
//! sealed exactly as the store holds them (the vault's AES-256-GCM ciphertext and key id): the
//! file holds nothing the database does not, and it is private (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    name: String,
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

/// Writes `snap` to `path` atomically: a reader sees the old file or the new one, never a mix.
pub fn write(path: &Path, snap: &RegistrySnapshot) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let body = OnDisk {
        format: FORMAT,
        revision: snap.revision,
        confirmed_at_ms: snap.confirmed_at_ms,
        providers: snap.providers.iter().map(Record::from).collect(),
    };
    let json = serde_json::to_vec(&body).map_err(|e| SnapshotError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
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
        f.write_all(&json).map_err(io)?;
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
    let invalid = |message: String| SnapshotError::Invalid {
        path: path.to_owned(),
        message,
    };
    let disk: OnDisk = serde_json::from_slice(&raw).map_err(|e| invalid(e.to_string()))?;
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
    Ok(Some(RegistrySnapshot {
        revision: disk.revision,
        confirmed_at_ms: disk.confirmed_at_ms,
        providers,
    }))
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
