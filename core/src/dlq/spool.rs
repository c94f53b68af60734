//! The DLQ spool: `<data_dir>/dlq-spool/`, a write-ahead log of sealed entries in numbered
//! segment files. The writer appends to the newest (the *active* segment) and fsyncs before it
//! acknowledges; closed segments wait for the drainer, which inserts them into the database in
//! order and deletes each once every record of it is in.
//!
//! Record framing: `"DLQ1"`, payload length (u32 LE), the first 8 bytes of the payload's
//! SHA-256, the payload (one [`SealedEntry`] as JSON). A record torn by a crash mid-write fails
//! its length or checksum and is dropped with everything after it; opening cuts a torn tail, and
//! a failed append (disk full) is cut back at once, so nothing is ever appended after a torn
//! record. A new segment's directory entry is synced before anything in it is acknowledged.
//!
//! The whole spool is bounded (`dlq.spool_max_bytes`): an append that would pass the bound is
//! refused ([`SpoolError::Full`]), as is one the disk refuses; the caller is told its call was
//! not recorded, never handed an id that does not exist. Segments close at [`SEGMENT_BYTES`], so
//! the drainer reads a bounded amount at a time whatever the length of the outage.
//!
//! Draining is idempotent (insert by entry id, existing ids ignored), so a crash between the
//! insert and the segment's deletion replays records that are then no-ops: each entry lands once.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use super::seal::SealedEntry;

const MAGIC: &[u8; 4] = b"DLQ1";
const HEADER_LEN: usize = 4 + 4 + 8;
/// Largest record accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_RECORD: usize = 128 * 1024 * 1024;
/// The active segment is closed once it holds this much (the drainer reads one at a time).
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// The spool file of hubs before segments; moved into the directory as its oldest segment.
pub const LEGACY_FILE: &str = "dlq.spool";

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file could not be opened, read, written or synced (disk full, read-only, gone).
    #[error("DLQ spool {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The spool holds `dlq.spool_max_bytes` already.
    #[error("DLQ spool is full ({bytes} of {max} bytes)")]
    Full {
        /// Bytes the spool holds.
        bytes: u64,
        /// The bound.
        max: u64,
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
            Self::Full { .. } => "spool_full",
            Self::Encode(_) => "spool_encode",
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the spool holds right now, for gauges and readiness. Cheap to clone and read.
#[derive(Debug, Clone, Default)]
pub struct SpoolStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    entries: AtomicU64,
    max_bytes: AtomicU64,
    rejected: AtomicU64,
    handed_over: AtomicU64,
    taken_over: AtomicU64,
}

impl SpoolStats {
    /// Bytes in every segment not yet drained.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Entries on disk not yet in the database.
    pub fn entries(&self) -> u64 {
        self.0.entries.load(Ordering::Relaxed)
    }

    /// The bound (`dlq.spool_max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.0.max_bytes.load(Ordering::Relaxed)
    }

    /// Entries the database refused outright, set aside since start ([`REJECTED_FILE`]).
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }

    /// Counts entries set aside.
    pub fn add_rejected(&self, n: u64) {
        self.0.rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Entries this process handed to Valkey when it stopped with the database down.
    pub fn handed_over(&self) -> u64 {
        self.0.handed_over.load(Ordering::Relaxed)
    }

    /// Entries this process took from Valkey (another proxy's hand-over) into the database.
    pub fn taken_over(&self) -> u64 {
        self.0.taken_over.load(Ordering::Relaxed)
    }

    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts entries handed over.
    pub fn add_handed_over(&self, n: usize) {
        Self::count(&self.0.handed_over, n);
    }

    /// Counts entries taken over.
    pub fn add_taken_over(&self, n: usize) {
        Self::count(&self.0.taken_over, n);
    }

    fn add(&self, bytes: u64, entries: u64) {
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.0.entries.fetch_add(entries, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64, entries: u64) {
        let _ = self
            .0
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        let _ = self
            .0
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                Some(e.saturating_sub(entries))
            });
    }
}

/// A closed segment waiting for the drainer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Whole records in it.
    pub records: u64,
}

impl Segment {
    /// Every whole record, oldest first.
    pub fn read(&self) -> Result<Vec<SealedEntry>, SpoolError> {
        let raw = std::fs::read(&self.path).map_err(io_error(&self.path))?;
        Ok(decode(&raw).0)
    }

    /// Deletes the file once every record is in the database.
    pub fn remove(self, stats: &SpoolStats) -> Result<(), SpoolError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&self.path)(e)),
        }
        stats.sub(self.bytes, self.records);
        Ok(())
    }
}

/// Closed segments in order, shared by the writer (which closes them) and the drainer.
#[derive(Debug, Clone, Default)]
pub struct Closed(Arc<Mutex<VecDeque<Segment>>>);

impl Closed {
    fn push(&self, s: Segment) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(s);
    }

    /// The oldest closed segment, left in place.
    pub fn front(&self) -> Option<Segment> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned()
    }

    /// Removes the oldest closed segment from the queue (after the drainer deleted its file).
    pub fn pop(&self) -> Option<Segment> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Closed segments waiting.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The writer's end: the active segment.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    seq: u64,
    /// Bytes of whole, synced records in the active segment.
    len: u64,
    records: u64,
    max_bytes: u64,
    closed: Closed,
    stats: SpoolStats,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

fn create_private(path: &Path, exclusive: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if exclusive {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

impl Spool {
    /// Opens the spool directory (creating it, 0700): every segment left by an earlier run is
    /// closed (torn tails cut) and queued for the drainer, and a fresh active segment is started.
    /// `legacy`: a single-file spool of an older hub, moved in as the oldest segment.
    pub fn open(dir: &Path, legacy: Option<&Path>, max_bytes: u64) -> Result<Self, SpoolError> {
        {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.create(dir).map_err(io_error(dir))?;
        }
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            seqs.push(seq);
        }
        seqs.sort_unstable();
        if let Some(old) = legacy.filter(|p| p.exists()) {
            // Numbered before everything: segment 0 is never written by this layout.
            let to = dir.join(segment_name(0));
            std::fs::rename(old, &to).map_err(io_error(old))?;
            sync_dir(dir)?;
            seqs.insert(0, 0);
            tracing::info!(from = %old.display(), to = %to.display(),
                "moved the single-file DLQ spool of an older hub into the spool directory");
        }
        let stats = SpoolStats::default();
        stats.0.max_bytes.store(max_bytes, Ordering::Relaxed);
        let closed = Closed::default();
        for &seq in &seqs {
            let path = dir.join(segment_name(seq));
            let segment = close_existing(&path)?;
            if segment.records == 0 {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            stats.add(segment.bytes, segment.records);
            closed.push(segment);
        }
        let seq = seqs.last().map_or(1, |s| s + 1);
        let path = dir.join(segment_name(seq));
        let file = create_private(&path, true).map_err(io_error(&path))?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            path,
            seq,
            len: 0,
            records: 0,
            max_bytes,
            closed,
            stats,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The closed segments (shared with the drainer).
    pub fn closed(&self) -> Closed {
        self.closed.clone()
    }

    /// Gauges (shared).
    pub fn stats(&self) -> SpoolStats {
        self.stats.clone()
    }

    /// Records in the active segment.
    pub fn active_records(&self) -> u64 {
        self.records
    }

    /// Appends `entries` in one write and syncs the file. On failure nothing of the batch stays
    /// in the segment (the file is cut back to its last whole record).
    pub fn append(&mut self, entries: &[SealedEntry]) -> Result<(), SpoolError> {
        if entries.is_empty() {
            return Ok(());
        }
        let buf = encode(entries)?;
        let add = buf.len() as u64;
        let held = self.stats.bytes();
        if held + add > self.max_bytes {
            return Err(SpoolError::Full {
                bytes: held,
                max: self.max_bytes,
            });
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut the partial batch off, or no later record in this segment could be read.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(drop));
            if cut.is_err() {
                // The segment can't be trusted past `len`: close it there, start another.
                let _ = self.rotate();
            }
            return Err(io_error(&self.path)(e));
        }
        self.len += add;
        self.records += entries.len() as u64;
        self.stats.add(add, entries.len() as u64);
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        Ok(())
    }

    /// Closes the active segment (queuing it for the drainer) and starts the next one; a no-op
    /// while the active segment is empty.
    pub fn rotate(&mut self) -> Result<(), SpoolError> {
        if self.records == 0 {
            return Ok(());
        }
        let seq = self.seq + 1;
        let path = self.dir.join(segment_name(seq));
        let file = create_private(&path, true).map_err(io_error(&path))?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.seq = seq;
        self.closed.push(Segment {
            path: old,
            bytes: self.len,
            records: self.records,
        });
        self.len = 0;
        self.records = 0;
        Ok(())
    }
}

/// Records in the spool's framing.
fn encode(entries: &[SealedEntry]) -> Result<Vec<u8>, SpoolError> {
    let mut buf = Vec::new();
    for e in entries {
        let payload = serde_json::to_vec(e)?;
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&Sha256::digest(&payload)[..8]);
        buf.extend_from_slice(&payload);
    }
    Ok(buf)
}

/// The file under the spool directory where entries the database refuses outright (a
/// constraint or a value it cannot hold) are set aside, in the spool's framing, so they do not
/// block the entries behind them. [`read_dir_records`] does not read it; operators do.
pub const REJECTED_FILE: &str = "rejected.records";

/// Appends `entries` to the rejected file of `dir` (created 0600), synced.
pub fn set_aside(dir: &Path, entries: &[SealedEntry]) -> Result<(), SpoolError> {
    let path = dir.join(REJECTED_FILE);
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&path).map_err(io_error(&path))?;
    f.write_all(&encode(entries)?).map_err(io_error(&path))?;
    f.sync_data().map_err(io_error(&path))
}

/// Every whole record of the rejected file of `dir` (operators' tools and tests).
pub fn read_rejected(dir: &Path) -> Result<Vec<SealedEntry>, SpoolError> {
    let path = dir.join(REJECTED_FILE);
    match std::fs::read(&path) {
        Ok(raw) => Ok(decode(&raw).0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Reads a segment an earlier run left, cutting a torn tail.
fn close_existing(path: &Path) -> Result<Segment, SpoolError> {
    let io = io_error(path);
    let mut file = create_private(path, false).map_err(io)?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).map_err(io_error(path))?;
    let (entries, good_len) = decode(&raw);
    if good_len < raw.len() {
        tracing::warn!(path = %path.display(), dropped_bytes = raw.len() - good_len,
            "DLQ spool segment ends with a torn record (crash mid-write); dropping it");
        file.set_len(good_len as u64).map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
    }
    Ok(Segment {
        path: path.to_owned(),
        bytes: good_len as u64,
        records: entries.len() as u64,
    })
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

/// Every whole record in every segment of `dir`, oldest first (tests and tools; the hub itself
/// reads segments one at a time).
pub fn read_dir_records(dir: &Path) -> Result<Vec<SealedEntry>, SpoolError> {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let raw = std::fs::read(&p).map_err(io_error(&p))?;
        out.extend(decode(&raw).0);
    }
    Ok(out)
}

/// Bytes in the segments of `dir` (what the gauge reports, read from the disk).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

#[cfg(test)]
mod tests;
