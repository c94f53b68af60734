//! The DLQ spool: `<data_dir>/dlq.spool`, an append-only file of sealed entries written before
//! the database is (a write-ahead log) and emptied once they are all in the database.
//!
//! Record framing: `"DLQ1"`, payload length (u32 LE), the first 8 bytes of the payload's
//! SHA-256, the payload (one [`SealedEntry`] as JSON). A record torn by a crash mid-write fails
//! its length or checksum and is dropped with everything after it (nothing is appended after a
//! torn record: opening truncates the file to its last whole record). Every append ends with an
//! `fsync`, so an entry the writer acknowledged survives SIGKILL and power loss.
//!
//! Flushing is idempotent (insert by entry id, existing ids ignored), so a crash between the
//! insert and the truncation replays records that are then no-ops: each entry lands exactly once.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::seal::SealedEntry;

const MAGIC: &[u8; 4] = b"DLQ1";
const HEADER_LEN: usize = 4 + 4 + 8;
/// Largest record accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_RECORD: usize = 128 * 1024 * 1024;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file could not be opened, read, written or synced.
    #[error("DLQ spool {}: {source}", path.display())]
    Io {
        /// The spool file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be encoded (a bug).
    #[error("DLQ spool record encoding failed: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SpoolError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "spool_io",
            Self::Encode(_) => "spool_encode",
        }
    }
}

/// The open spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    records: usize,
}

impl Spool {
    /// Opens (creating, 0600) the spool; returns it with the whole records it already holds and
    /// cuts off a torn tail.
    pub fn open(path: &Path) -> Result<(Self, Vec<SealedEntry>), SpoolError> {
        let io = |source| SpoolError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io)?;
        let (entries, good_len) = decode(&raw);
        if good_len < raw.len() {
            tracing::warn!(path = %path.display(), dropped_bytes = raw.len() - good_len,
                "DLQ spool ends with a torn record (crash mid-write); dropping it");
            file.set_len(good_len as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let records = entries.len();
        Ok((
            Self {
                path: path.to_owned(),
                file,
                records,
            },
            entries,
        ))
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the file.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `entries` in one write and syncs the file.
    pub fn append(&mut self, entries: &[SealedEntry]) -> Result<(), SpoolError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            let payload = serde_json::to_vec(e)?;
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&Sha256::digest(&payload)[..8]);
            buf.extend_from_slice(&payload);
        }
        self.file.write_all(&buf).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.records += entries.len();
        Ok(())
    }

    /// Every whole record, oldest first.
    pub fn read_all(&mut self) -> Result<Vec<SealedEntry>, SpoolError> {
        let mut raw = Vec::new();
        self.file.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        let read = self.file.read_to_end(&mut raw).map_err(|e| self.io(e));
        self.file.seek(SeekFrom::End(0)).map_err(|e| self.io(e))?;
        read?;
        Ok(decode(&raw).0)
    }

    /// Empties the file once every record is in the database.
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        self.file.set_len(0).map_err(|e| self.io(e))?;
        self.file.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.records = 0;
        Ok(())
    }
}

/// The whole records of `raw` and the length they span.
fn decode(raw: &[u8]) -> (Vec<SealedEntry>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while raw.len() - at >= HEADER_LEN {
        let head = &raw[at..at + HEADER_LEN];
        if &head[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let end = at + HEADER_LEN + len;
        if len > MAX_RECORD || end > raw.len() {
            break;
        }
        let payload = &raw[at + HEADER_LEN..end];
        if Sha256::digest(payload)[..8] != head[8..16] {
            break;
        }
        match serde_json::from_slice::<SealedEntry>(payload) {
            Ok(e) => out.push(e),
            Err(e) => {
                tracing::error!(error = %e, "DLQ spool record does not decode; skipping it");
            }
        }
        at = end;
    }
    (out, at)
}

#[cfg(test)]
mod tests;
