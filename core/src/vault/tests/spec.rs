//! The key spec: accepted forms, errors that name the entry but never the key, generation, and
//! what `Debug` shows.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::*;

#[test]
fn spec_accepts_commas_newlines_blanks_and_comments() {
    let spec = format!(
        "# rotated 2025-01\r\n {} ,\n\n{}\r\n,{}\n",
        entry("new_key-2", 2),
        entry("old", 1),
        entry("A", 3)
    );
    let v = vault(&spec);
    assert_eq!(v.active_key_id(), "new_key-2");
    assert_eq!(v.key_ids(), ["new_key-2", "old", "A"]);
    let max_id = "x".repeat(MAX_KEY_ID_LEN);
    assert_eq!(vault(&entry(&max_id, 1)).active_key_id(), max_id);
}

/// Every spec error: the entry is named, the key material is not.
#[test]
fn spec_errors_name_the_entry_but_never_the_key() {
    let short_key = STANDARD.encode([0xAB; 16]);
    let long_key = STANDARD.encode([0xCD; 48]);
    let huge_key = STANDARD.encode([0xEF; 200]);
    let bad_b64 = "c2VjcmV0LWtleS1tYXRlcmlhbCE!!!#";
    let good = entry("k1", 1);
    let cases: Vec<(String, &str, &str)> = vec![
        (String::new(), "no keys", ""),
        (" , \n\n# only a comment\n".into(), "no keys", ""),
        (
            format!("{good},k2:{bad_b64}"),
            "entry 2 (id \"k2\"): key is not valid standard base64",
            bad_b64,
        ),
        (
            format!("k2:{short_key}"),
            "entry 1 (id \"k2\"): key must be 32 bytes, got 16",
            short_key.as_str(),
        ),
        (
            format!("{good},k2:{long_key}"),
            "entry 2 (id \"k2\"): key must be 32 bytes, got 48",
            long_key.as_str(),
        ),
        (
            format!("k2:{huge_key}"),
            "entry 1 (id \"k2\"): key must be 32 bytes, got more",
            huge_key.as_str(),
        ),
        (
            format!("{good}\n{}", entry("k1", 9)),
            "entry 2 (id \"k1\"): duplicate key id (also entry 1)",
            "",
        ),
        (
            format!("{good},{short_key}"),
            "entry 2: expected `id:base64key`",
            short_key.as_str(),
        ),
        (
            format!("{good},{}", entry(&"x".repeat(33), 2)),
            "entry 2: key id must be",
            "",
        ),
        (entry("bad id", 2), "entry 1: key id must be", ""),
        (
            format!(":{short_key}"),
            "entry 1: key id must be",
            short_key.as_str(),
        ),
        // A key pasted where the id goes is not echoed either.
        (
            format!("{short_key}:{short_key}"),
            "entry 1: key id must be",
            short_key.as_str(),
        ),
    ];
    let good_key = good.split_once(':').unwrap().1.to_owned();
    for (spec, expected, material) in cases {
        let message = spec_error(&spec);
        assert!(message.contains(expected), "{spec:?}: {message}");
        assert!(!message.contains(&good_key), "{message}");
        if !material.is_empty() {
            assert!(!message.contains(material), "{message}");
            // Nor any recognisable part of it.
            assert!(!message.contains(&material[..8]), "{message}");
        }
        let err = Vault::from_spec(&SecretString::new(spec)).unwrap_err();
        assert_eq!(err.kind(), "bad_key_spec");
        assert!(!format!("{err:?}").contains(&good_key));
    }
}

#[test]
fn generated_entries_parse_and_differ() {
    let a = Vault::generate_spec_entry("k-2025").unwrap();
    let b = Vault::generate_spec_entry("k-2025").unwrap();
    assert_ne!(a.expose(), b.expose());
    assert!(a.expose().starts_with("k-2025:"));
    assert_eq!(format!("{a:?}"), "[redacted]");
    let v = Vault::from_spec(&a).unwrap();
    assert_eq!(v.active_key_id(), "k-2025");
    for bad in ["", "has space", "a:b", &"x".repeat(33)] {
        let err = Vault::generate_spec_entry(bad).unwrap_err();
        assert_eq!(err.kind(), "bad_key_spec");
    }
}

#[test]
fn debug_output_shows_ids_only() {
    let entry_a = Vault::generate_spec_entry("alpha").unwrap();
    let entry_b = Vault::generate_spec_entry("beta").unwrap();
    let v = Vault::from_spec(&SecretString::new(format!(
        "{},{}",
        entry_a.expose(),
        entry_b.expose()
    )))
    .unwrap();
    let shown = format!("{v:?} {v:#?}");
    assert_eq!(
        format!("{v:?}"),
        r#"Vault { active: "alpha", keys: ["alpha", "beta"] }"#
    );
    for e in [&entry_a, &entry_b] {
        let b64 = e.expose().split_once(':').unwrap().1;
        let raw = STANDARD.decode(b64).unwrap();
        assert!(!shown.contains(b64));
        assert!(!shown.contains(&hex::encode(&raw)));
        let byte_list = format!("{:?}", &raw[..4]);
        assert!(!shown.contains(byte_list.trim_end_matches(']')));
    }

    let sealed = v.seal(b"ctx", b"plaintext-secret").unwrap();
    let mut tampered = sealed.clone();
    tampered.ciphertext[0] ^= 1;
    let errors = [
        v.open(b"ctx", &tampered).unwrap_err(),
        v.open(b"other", &sealed).unwrap_err(),
        VaultError::UnknownKey {
            key_id: "k9".into(),
        },
        VaultError::Truncated { len: 3, min: 28 },
    ];
    for err in errors {
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("plaintext-secret"), "{shown}");
            for e in [&entry_a, &entry_b] {
                assert!(!shown.contains(e.expose().split_once(':').unwrap().1));
            }
        }
    }
}

#[test]
fn error_kinds_are_distinct() {
    let errors = [
        VaultError::UnknownKey { key_id: "k".into() },
        VaultError::Decrypt,
        VaultError::Truncated { len: 0, min: 28 },
        VaultError::bad_spec("x"),
        VaultError::Io {
            path: "/x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        },
        VaultError::BadPlaintext {
            category: "data",
            column: 1,
        },
        VaultError::Encrypt("x"),
    ];
    let mut kinds: Vec<_> = errors.iter().map(VaultError::kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), errors.len());
}
