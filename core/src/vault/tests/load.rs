//! Where the ring loads from: env, key file, dev key (generated once, mode 0600).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ulid::Ulid;

use super::*;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn dev_key_is_generated_once_with_mode_0600_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data").join("nested");
    let (first, source) = Vault::load(None, None, &data_dir).unwrap();
    let path = data_dir.join(DEV_KEY_FILE);
    assert_eq!(source, KeySource::GeneratedDev { path: path.clone() });
    assert!(source.is_dev());
    assert!(first.active_key_id().starts_with("dev-"));
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600);
    // Only the key file is left behind, no temporary.
    let names: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [DEV_KEY_FILE]);

    let (second, source) = Vault::load(None, None, &data_dir).unwrap();
    assert_eq!(source, KeySource::DevFile { path: path.clone() });
    assert_eq!(second.key_ids(), first.key_ids());
    let id = Ulid::new();
    let sealed = first.seal_auth(id, &bearer("tok")).unwrap().unwrap();
    assert_eq!(second.open_auth(id, &sealed).unwrap(), bearer("tok"));
    let sealed = second.seal_auth(id, &bearer("tok")).unwrap().unwrap();
    assert_eq!(first.open_auth(id, &sealed).unwrap(), bearer("tok"));
}

#[test]
fn env_beats_file_beats_dev_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let key_file = tmp.path().join("keys");
    std::fs::write(
        &key_file,
        format!("{}\n{}\n", entry("file", 1), entry("older", 2)),
    )
    .unwrap();
    let env = || Some(SecretString::new(entry("env", 3)));

    let (v, source) = Vault::load(env(), Some(&key_file), &data_dir).unwrap();
    assert_eq!((v.active_key_id(), source), ("env", KeySource::Env));

    let (v, source) = Vault::load(None, Some(&key_file), &data_dir).unwrap();
    assert_eq!(v.key_ids(), ["file", "older"]);
    assert_eq!(
        source,
        KeySource::File {
            path: key_file.clone()
        }
    );
    assert!(!source.is_dev());
    // Neither of those touched the data dir.
    assert!(!data_dir.exists());

    let (v, source) = Vault::load(None, None, &data_dir).unwrap();
    assert!(matches!(source, KeySource::GeneratedDev { .. }));
    assert!(v.active_key_id().starts_with("dev-"));
    // Once a dev key exists, env and file still win over it.
    let (v, _) = Vault::load(env(), None, &data_dir).unwrap();
    assert_eq!(v.active_key_id(), "env");
    let (v, _) = Vault::load(None, Some(&key_file), &data_dir).unwrap();
    assert_eq!(v.active_key_id(), "file");
}

#[test]
fn set_but_empty_env_is_an_error_not_the_dev_key() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Vault::load(Some(SecretString::new("")), None, tmp.path()).unwrap_err();
    assert_eq!(err.kind(), "bad_key_spec");
    assert!(
        err.to_string().contains("HUB_MASTER_KEYS: no keys"),
        "{err}"
    );
    assert!(!tmp.path().join(DEV_KEY_FILE).exists());
}

#[test]
fn key_file_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let err = Vault::load(None, Some(&missing), tmp.path()).unwrap_err();
    assert!(
        matches!(&err, VaultError::Io { path, source } if *path == missing && source.kind() == std::io::ErrorKind::NotFound)
    );
    assert_eq!(err.kind(), "io");
    assert!(err.to_string().contains("missing"));

    let bad = tmp.path().join("bad");
    let short_key = STANDARD.encode([0x5A; 16]);
    std::fs::write(&bad, format!("{}\nk2:{short_key}\n", entry("k1", 1))).unwrap();
    let err = Vault::load(None, Some(&bad), tmp.path()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&bad.display().to_string()), "{message}");
    assert!(message.contains("entry 2 (id \"k2\")"), "{message}");
    assert!(!message.contains(&short_key), "{message}");
    // A broken dev key file is an error too, never silently replaced.
    std::fs::write(tmp.path().join(DEV_KEY_FILE), "garbage").unwrap();
    let err = Vault::load(None, None, tmp.path()).unwrap_err();
    assert_eq!(err.kind(), "bad_key_spec");
}

#[cfg(unix)]
#[test]
fn world_readable_key_file_still_loads() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("keys");
    std::fs::write(&key_file, entry("k1", 1)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (v, _) = Vault::load(None, Some(&key_file), tmp.path()).unwrap();
    assert_eq!(v.active_key_id(), "k1");
}
