//! The spool survives a crash: records written before an unclean stop are read back, a torn
//! tail is cut, and bodies are never in clear.

use ulid::Ulid;

use super::Spool;
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

#[test]
fn records_survive_an_unclean_stop_and_a_torn_tail_is_cut() {
    let vault = Vault::from_spec(&SecretString::new(KEYS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.spool");
    let (a, b) = (
        entry(&vault, b"{\"amount\":4200}"),
        entry(&vault, b"second"),
    );
    {
        let (mut spool, old) = Spool::open(&path).unwrap();
        assert!(old.is_empty());
        spool.append(std::slice::from_ref(&a)).unwrap();
        spool.append(std::slice::from_ref(&b)).unwrap();
        // Dropped without clear(): what a SIGKILL leaves behind (the data is synced).
    }
    let raw = std::fs::read(&path).unwrap();
    assert!(
        !raw.windows(6).any(|w| w == b"amount"),
        "the spool never holds a body in clear"
    );
    // A crash in the middle of a third append.
    let c = entry(&vault, b"third");
    let mut torn = raw.clone();
    let mut third = Vec::new();
    {
        let dir2 = tempfile::tempdir().unwrap();
        let p2 = dir2.path().join("x.spool");
        let (mut s2, _) = Spool::open(&p2).unwrap();
        s2.append(std::slice::from_ref(&c)).unwrap();
        third.extend_from_slice(&std::fs::read(&p2).unwrap());
    }
    torn.extend_from_slice(&third[..third.len() / 2]);
    std::fs::write(&path, &torn).unwrap();

    let (mut spool, old) = Spool::open(&path).unwrap();
    assert_eq!(
        old,
        vec![a.clone(), b.clone()],
        "whole records come back in order"
    );
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        raw.len(),
        "torn tail cut"
    );
    spool.append(std::slice::from_ref(&c)).unwrap();
    assert_eq!(spool.read_all().unwrap(), vec![a, b, c]);
    assert_eq!(spool.len(), 3);
    spool.clear().unwrap();
    assert!(spool.is_empty());
    drop(spool);
    let (_, old) = Spool::open(&path).unwrap();
    assert!(old.is_empty(), "a cleared spool stays empty");
}

#[cfg(unix)]
#[test]
fn the_spool_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.spool");
    let _ = Spool::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
