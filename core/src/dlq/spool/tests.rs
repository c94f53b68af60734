//! The spool survives a crash: records written before an unclean stop are read back, a torn
//! tail is cut, and bodies are never in clear.

use ulid::Ulid;

use super::{Spool, read_dir_records};
use crate::dlq::seal::{EntryDraft, SealedEntry};
use crate::secret::SecretString;
use crate::vault::Vault;

const KEYS: &str = "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn entry(vault: &Vault, body: &[u8]) -> SealedEntry {
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    EntryDraft {
        id: Ulid::new(),
        provider_id: Ulid::new(),
        provider: "p",
        tenant: Some("default"),
        method: "POST",
        path: "/v1/charges",
        headers: &headers,
        body: Some(body),
        idempotency_key: Some("k-1"),
        request_id: "r-1",
        job_id: None,
        attempts: 5,
        last_status: Some(503),
        last_error: "status",
        stop: "attempts_exhausted",
        excerpt: "unavailable",
        failed_at_ms: 1_700_000_000_000,
    }
    .seal(vault, 1024, 30 * 86_400_000)
    .unwrap()
}

const MAX: u64 = 1024 * 1024;

#[test]
fn records_survive_an_unclean_stop_and_a_torn_tail_is_cut() {
    let vault = Vault::from_spec(&SecretString::new(KEYS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("dlq-spool");
    let (a, b) = (
        entry(&vault, b"{\"amount\":4200}"),
        entry(&vault, b"second"),
    );
    {
        let mut spool = Spool::open(&spool_dir, None, MAX).unwrap();
        assert!(spool.closed().is_empty());
        spool.append(std::slice::from_ref(&a)).unwrap();
        spool.append(std::slice::from_ref(&b)).unwrap();
        assert_eq!(spool.stats().entries(), 2);
        // Dropped without draining: what a SIGKILL leaves behind (the data is synced).
    }
    let raw = read_dir_records(&spool_dir).unwrap();
    assert_eq!(raw, vec![a.clone(), b.clone()]);
    let bytes: Vec<u8> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        !bytes.windows(6).any(|w| w == b"amount"),
        "the spool never holds a body in clear"
    );
    // A crash in the middle of a third append: half a record at the end of the segment.
    let c = entry(&vault, b"third");
    let third = {
        let d2 = tempfile::tempdir().unwrap();
        let mut s2 = Spool::open(d2.path(), None, MAX).unwrap();
        s2.append(std::slice::from_ref(&c)).unwrap();
        std::fs::read(d2.path().join(format!("{:020}.seg", 1))).unwrap()
    };
    let seg = spool_dir.join(format!("{:020}.seg", 1));
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let mut torn = std::fs::read(&seg).unwrap();
    torn.extend_from_slice(&third[..third.len() / 2]);
    std::fs::write(&seg, &torn).unwrap();

    let mut spool = Spool::open(&spool_dir, None, MAX).unwrap();
    let closed = spool.closed();
    assert_eq!(
        closed.len(),
        1,
        "the earlier run's segment is closed, a new one started"
    );
    let front = closed.front().unwrap();
    assert_eq!(
        front.read().unwrap(),
        vec![a.clone(), b.clone()],
        "whole records come back in order"
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        good_len,
        "torn tail cut"
    );
    assert_eq!(spool.stats().entries(), 2);
    spool.append(std::slice::from_ref(&c)).unwrap();
    assert_eq!(read_dir_records(&spool_dir).unwrap(), vec![a, b, c]);
    assert_eq!(spool.stats().entries(), 3);
    // The drainer's part: a drained segment is deleted and no longer counted.
    closed.pop().unwrap().remove(&spool.stats()).unwrap();
    assert_eq!(spool.stats().entries(), 1);
    spool.rotate().unwrap();
    closed.pop().unwrap().remove(&spool.stats()).unwrap();
    assert_eq!((spool.stats().entries(), spool.stats().bytes()), (0, 0));
    drop(spool);
    let spool = Spool::open(&spool_dir, None, MAX).unwrap();
    assert!(spool.closed().is_empty(), "a drained spool stays empty");
}

#[test]
fn the_bound_refuses_appends_and_a_legacy_spool_is_adopted_first() {
    let vault = Vault::from_spec(&SecretString::new(KEYS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An older hub's single file, in the same record format.
    let legacy = dir.path().join("dlq.spool");
    let old = entry(&vault, b"old");
    {
        let d2 = tempfile::tempdir().unwrap();
        let mut s2 = Spool::open(d2.path(), None, MAX).unwrap();
        s2.append(std::slice::from_ref(&old)).unwrap();
        std::fs::copy(d2.path().join(format!("{:020}.seg", 1)), &legacy).unwrap();
    }
    let spool_dir = dir.path().join("dlq-spool");
    let one = entry(&vault, &[b'x'; 600]);
    let record = {
        let d3 = tempfile::tempdir().unwrap();
        let mut s3 = Spool::open(d3.path(), None, MAX).unwrap();
        s3.append(std::slice::from_ref(&one)).unwrap();
        s3.stats().bytes()
    };
    let held = std::fs::metadata(&legacy).unwrap().len();
    let mut spool = Spool::open(&spool_dir, Some(&legacy), held + record * 2).unwrap();
    assert!(!legacy.exists(), "moved into the directory");
    assert_eq!(spool.closed().front().unwrap().read().unwrap(), vec![old]);
    spool.append(std::slice::from_ref(&one)).unwrap();
    spool.append(std::slice::from_ref(&one)).unwrap();
    let full = spool.append(std::slice::from_ref(&one)).unwrap_err();
    assert_eq!(full.kind(), "spool_full");
    assert_eq!(
        spool.stats().entries(),
        3,
        "a refused batch leaves no trace"
    );
    assert_eq!(read_dir_records(&spool_dir).unwrap().len(), 3);
}

#[cfg(unix)]
#[test]
fn the_spool_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("dlq-spool");
    let _ = Spool::open(&spool_dir, None, MAX).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool_dir), 0o700);
    assert_eq!(mode(&spool_dir.join(format!("{:020}.seg", 1))), 0o600);
}

#[test]
fn records_from_before_tenants_still_read() {
    let vault = Vault::from_spec(&SecretString::new(KEYS)).unwrap();
    let e = entry(&vault, b"{}");
    let mut old = serde_json::to_value(&e).unwrap();
    old.as_object_mut().unwrap().remove("tenant");
    let back: SealedEntry = serde_json::from_value(old).unwrap();
    assert_eq!(back.tenant, None);
    assert_eq!(
        SealedEntry {
            tenant: e.tenant.clone(),
            ..back
        },
        e
    );
}
