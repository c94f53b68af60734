//! Vault tests. Here: sealing, binding and tamper detection. Beside: the key spec, where keys
//! load from, and rotation against the real SQLite and PostgreSQL stores.

mod load;
mod rotation;
mod spec;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ulid::Ulid;

use super::*;

/// `id:base64([byte; 32])`.
fn entry(id: &str, byte: u8) -> String {
    format!("{id}:{}", STANDARD.encode([byte; KEY_LEN]))
}

fn vault(spec: &str) -> Vault {
    Vault::from_spec(&SecretString::new(spec)).unwrap()
}

fn spec_error(spec: &str) -> String {
    match Vault::from_spec(&SecretString::new(spec)) {
        Err(e @ VaultError::BadKeySpec { .. }) => e.to_string(),
        other => panic!("expected a spec error, got {other:?}"),
    }
}

fn bearer(token: &str) -> Auth {
    Auth::Bearer {
        token: SecretString::new(token),
    }
}

fn all_auths() -> Vec<Auth> {
    vec![
        bearer("sk_live_abc"),
        Auth::Basic {
            username: SecretString::new("user"),
            password: SecretString::new("p@ss:word"),
        },
        Auth::Header {
            name: "X-Api-Key".into(),
            value: SecretString::new("hdr-secret"),
        },
        Auth::Query {
            name: "api_key".into(),
            value: SecretString::new("q-secret"),
        },
        serde_json::from_value(serde_json::json!({
            "type": "oauth2_client_credentials", "tokenUrl": "https://idp.test/token",
            "clientId": "id", "clientSecret": "cc-secret", "scopes": ["a"]
        }))
        .unwrap(),
        serde_json::from_value(serde_json::json!({
            "type": "oauth2_refresh_token", "tokenUrl": "https://idp.test/token",
            "clientId": "id", "refreshToken": "rt-secret"
        }))
        .unwrap(),
        serde_json::from_value(serde_json::json!({
            "type": "aws_sigv4", "accessKeyId": "AKID", "secretAccessKey": "aws-secret",
            "region": "us-east-1", "service": "s3"
        }))
        .unwrap(),
        serde_json::from_value(serde_json::json!({
            "type": "hmac", "secret": "hmac-secret", "signatureHeader": "X-Signature",
            "parts": ["method", "path"]
        }))
        .unwrap(),
        Auth::Path {
            template: "/bot{secret}".into(),
            value: SecretString::new("123456:ABC/DEF%"),
        },
        Auth::Body {
            format: crate::provider::BodyFormat::Form,
            field: "token".into(),
            value: SecretString::new("xoxb-1"),
        },
        Auth::Body {
            format: crate::provider::BodyFormat::Json,
            field: "api_key".into(),
            value: SecretString::new("j-1"),
        },
    ]
}

#[test]
fn round_trip() {
    let v = vault(&entry("k1", 1));
    let sealed = v.seal(b"ctx", b"hello").unwrap();
    assert_eq!(sealed.key_id, "k1");
    assert_eq!(sealed.ciphertext.len(), NONCE_LEN + 5 + TAG_LEN);
    assert_eq!(v.open(b"ctx", &sealed).unwrap().as_slice(), b"hello");

    let empty = v.seal(b"ctx", b"").unwrap();
    assert_eq!(empty.ciphertext.len(), NONCE_LEN + TAG_LEN);
    assert!(v.open(b"ctx", &empty).unwrap().is_empty());
}

#[test]
fn auth_round_trip_for_every_scheme() {
    let v = vault(&entry("k1", 1));
    let id = Ulid::new();
    for auth in all_auths() {
        let sealed = v.seal_auth(id, &auth).unwrap().unwrap();
        assert_eq!(v.open_auth(id, &sealed).unwrap(), auth);
    }
    assert!(v.seal_auth(id, &Auth::None).unwrap().is_none());
}

#[test]
fn credentials_aad_is_domain_separated() {
    let id = Ulid::new();
    assert_eq!(
        credentials_aad(id),
        format!("hub/credentials/v1/{id}").into_bytes()
    );
}

#[test]
fn every_seal_draws_a_fresh_nonce() {
    let v = vault(&entry("k1", 1));
    let a = v.seal(b"ctx", b"same").unwrap();
    let b = v.seal(b"ctx", b"same").unwrap();
    assert_ne!(a.ciphertext, b.ciphertext);
    let mut nonces: Vec<Vec<u8>> = (0..1000)
        .map(|_| v.seal(b"ctx", b"same").unwrap().ciphertext[..NONCE_LEN].to_vec())
        .collect();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 1000);
}

#[test]
fn ciphertext_bound_to_another_provider_does_not_open() {
    let v = vault(&entry("k1", 1));
    let (mine, theirs) = (Ulid::new(), Ulid::new());
    let sealed = v.seal_auth(mine, &bearer("tok")).unwrap().unwrap();
    let err = v.open_auth(theirs, &sealed).unwrap_err();
    assert!(matches!(err, VaultError::Decrypt), "{err:?}");
    assert!(matches!(
        v.open(b"other", &sealed),
        Err(VaultError::Decrypt)
    ));
    assert!(matches!(v.open(b"", &sealed), Err(VaultError::Decrypt)));
}

#[test]
fn a_flipped_bit_anywhere_fails() {
    let v = vault(&entry("k1", 1));
    let sealed = v.seal(b"ctx", b"some credentials").unwrap();
    for i in 0..sealed.ciphertext.len() {
        for bit in [0x01u8, 0x80] {
            let mut tampered = sealed.clone();
            tampered.ciphertext[i] ^= bit;
            let err = v.open(b"ctx", &tampered).unwrap_err();
            assert!(matches!(err, VaultError::Decrypt), "byte {i}: {err:?}");
        }
    }
    let mut longer = sealed.clone();
    longer.ciphertext.push(0);
    assert!(matches!(v.open(b"ctx", &longer), Err(VaultError::Decrypt)));
}

#[test]
fn truncated_ciphertext_fails() {
    let v = vault(&entry("k1", 1));
    let sealed = v.seal(b"ctx", b"some credentials").unwrap();
    for len in 0..NONCE_LEN + TAG_LEN {
        let short = SealedCredentials {
            key_id: "k1".into(),
            ciphertext: sealed.ciphertext[..len].to_vec(),
        };
        let err = v.open(b"ctx", &short).unwrap_err();
        assert!(
            matches!(err, VaultError::Truncated { len: l, min: 28 } if l == len),
            "{err:?}"
        );
        assert_eq!(err.kind(), "truncated");
    }
    // Long enough to parse, but cut: the tag no longer matches.
    let cut = SealedCredentials {
        key_id: "k1".into(),
        ciphertext: sealed.ciphertext[..NONCE_LEN + TAG_LEN].to_vec(),
    };
    assert!(matches!(v.open(b"ctx", &cut), Err(VaultError::Decrypt)));
}

#[test]
fn unknown_key_id_fails() {
    let v = vault(&entry("k1", 1));
    let mut sealed = v.seal(b"ctx", b"x").unwrap();
    sealed.key_id = "k9".into();
    let err = v.open(b"ctx", &sealed).unwrap_err();
    assert!(matches!(&err, VaultError::UnknownKey { key_id } if key_id == "k9"));
    assert_eq!(err.kind(), "unknown_key");
}

#[test]
fn wrong_key_under_the_same_id_fails() {
    let sealed = vault(&entry("k1", 1)).seal(b"ctx", b"x").unwrap();
    let err = vault(&entry("k1", 2)).open(b"ctx", &sealed).unwrap_err();
    assert!(matches!(err, VaultError::Decrypt), "{err:?}");
}

#[test]
fn relabelled_key_id_fails() {
    let v = vault(&format!("{},{}", entry("k2", 2), entry("k1", 1)));
    let mut sealed = v.seal(b"ctx", b"x").unwrap();
    sealed.key_id = "k1".into();
    assert!(matches!(v.open(b"ctx", &sealed), Err(VaultError::Decrypt)));
}

#[test]
fn old_key_still_opens_after_a_new_active_key() {
    let id = Ulid::new();
    let old = vault(&entry("k1", 1));
    let sealed = old.seal_auth(id, &bearer("tok")).unwrap().unwrap();

    let ring = vault(&format!("{}\n{}", entry("k2", 2), entry("k1", 1)));
    assert_eq!(ring.active_key_id(), "k2");
    assert_eq!(ring.key_ids(), ["k2", "k1"]);
    assert!(ring.has_key("k1") && !ring.has_key("k3"));
    assert_eq!(ring.open_auth(id, &sealed).unwrap(), bearer("tok"));
    let resealed = ring.seal_auth(id, &bearer("tok")).unwrap().unwrap();
    assert_eq!(resealed.key_id, "k2");
    assert!(matches!(
        old.open_auth(id, &resealed),
        Err(VaultError::UnknownKey { .. })
    ));
}

#[test]
fn plaintext_that_is_not_auth_json_is_reported_without_echoing_it() {
    let v = vault(&entry("k1", 1));
    let id = Ulid::new();
    for plaintext in [
        &br#"{"type":"nonsense-variant","token":"sk_live_leak"}"#[..],
        br#"{"type":"bearer","token":"sk_live_leak","extra":"sk_live_leak"}"#,
        br#"{"type":"bearer","token":["sk_live_leak"]}"#,
        b"sk_live_leak",
    ] {
        let sealed = v.seal(&credentials_aad(id), plaintext).unwrap();
        let err = v.open_auth(id, &sealed).unwrap_err();
        assert_eq!(err.kind(), "bad_plaintext", "{err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("sk_live_leak"), "{shown}");
            assert!(!shown.contains("nonsense"), "{shown}");
            assert!(!shown.contains("extra"), "{shown}");
        }
    }
}
