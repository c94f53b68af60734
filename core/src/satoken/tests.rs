//! Real keys, real signatures: ES256 keys from ring, RS256 keys from the `rsa` crate.

use std::sync::OnceLock;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

use std::path::Path;

use super::*;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "integration-hub";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
enum TestKey {
    Es(Box<EcdsaKeyPair>),
    Rs(Box<rsa::RsaPrivateKey>),
}

impl TestKey {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self::Es(Box::new(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        ))
    }

    /// One 2048-bit RSA key per test binary (generation is slow in debug builds).
    fn rs256() -> Self {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let key =
            KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap());
        Self::Rs(Box::new(key.clone()))
    }

    fn jwk(&self, kid: Option<&str>) -> Value {
        let mut jwk = match self {
            Self::Es(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Self::Rs(k) => json!({"kty": "RSA", "alg": "RS256", "use": "sig",
                                  "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be())}),
        };
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Es(_) => "ES256",
            Self::Rs(_) => "RS256",
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Es(k) => k
                .sign(&SystemRandom::new(), message)
                .unwrap()
                .as_ref()
                .to_vec(),
            Self::Rs(k) => k
                .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message))
                .unwrap(),
        }
    }

    /// A token with this header and these claims, signed by this key.
    fn token_with(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&sig))
    }

    fn token(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg()});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        self.token_with(&header, claims)
    }
}

fn now() -> i64 {
    Utc::now().timestamp()
}

/// What kubelet puts in a projected token.
fn claims(ns: &str, sa: &str) -> Value {
    let now = now();
    json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now - 10,
        "nbf": now - 10,
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": "billing-7d9f", "uid": "0b1c"},
            "serviceaccount": {"name": sa, "uid": "5e6f"},
        },
    })
}

fn jwks(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    verifier: SaVerifier,
}

fn config(path: &Path) -> SaTokenConfig {
    SaTokenConfig {
        jwks_file: Some(path.to_owned()),
        issuer: ISSUER.into(),
        audiences: vec!["other".into(), AUDIENCE.into()],
        ..SaTokenConfig::default()
    }
}

async fn fixture(keys: &[Value]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    let verifier = SaVerifier::new(config(&path)).await.unwrap();
    Fixture {
        _dir: dir,
        path,
        verifier,
    }
}

#[tokio::test]
async fn es256_token_is_accepted_with_its_identity() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("es-1"))]).await;
    let mut c = claims("billing", "invoicer");
    let exp = now() + 600;
    c["exp"] = json!(exp);
    let token = key.token(Some("es-1"), &c);
    assert!(SaVerifier::looks_like_jwt(&token));
    let id = f.verifier.verify(&token).unwrap();
    assert_eq!(
        id,
        SaIdentity {
            namespace: "billing".into(),
            service_account: "invoicer".into(),
            subject: "system:serviceaccount:billing:invoicer".into(),
            expires_at: DateTime::from_timestamp(exp, 0).unwrap(),
        }
    );
}

#[tokio::test]
async fn rs256_token_is_accepted_with_its_identity() {
    let es = TestKey::es256();
    let rs = TestKey::rs256();
    let f = fixture(&[es.jwk(Some("es-1")), rs.jwk(Some("rs-1"))]).await;
    assert_eq!(f.verifier.key_count(), 2);
    let id = f
        .verifier
        .verify(&rs.token(Some("rs-1"), &claims("ops", "deployer")))
        .unwrap();
    assert_eq!(id.namespace, "ops");
    assert_eq!(id.service_account, "deployer");
    // An RS256 token cannot be checked with the EC key of another kid.
    let err = f
        .verifier
        .verify(&rs.token(Some("es-1"), &claims("ops", "deployer")))
        .unwrap_err();
    assert_eq!(err, SaError::UnknownKey);
}

#[tokio::test]
async fn token_without_kid_uses_the_only_key_of_its_type() {
    let es = TestKey::es256();
    let rs = TestKey::rs256();
    let f = fixture(&[es.jwk(Some("es-1")), rs.jwk(None)]).await;
    f.verifier
        .verify(&es.token(None, &claims("a", "b")))
        .unwrap();
    f.verifier
        .verify(&rs.token(None, &claims("a", "b")))
        .unwrap();

    // Two EC keys: a token without kid is ambiguous.
    let es2 = TestKey::es256();
    let f = fixture(&[es.jwk(Some("es-1")), es2.jwk(Some("es-2"))]).await;
    assert_eq!(
        f.verifier.verify(&es.token(None, &claims("a", "b"))),
        Err(SaError::UnknownKey)
    );
    f.verifier
        .verify(&es2.token(Some("es-2"), &claims("a", "b")))
        .unwrap();
}

#[tokio::test]
async fn time_claims_are_checked_with_leeway() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k"))]).await;
    let check = |patch: Value| {
        let mut c = claims("ns", "sa");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        f.verifier.verify(&key.token(Some("k"), &c))
    };
    let now = now();
    assert_eq!(check(json!({"exp": now - 60})), Err(SaError::Expired));
    // Within the 30 s leeway.
    assert!(check(json!({"exp": now - 5})).is_ok());
    assert_eq!(check(json!({"nbf": now + 120})), Err(SaError::NotYetValid));
    assert!(check(json!({"nbf": now + 5})).is_ok());
    assert_eq!(check(json!({"iat": now + 120})), Err(SaError::NotYetValid));
    // exp is required and must be a number.
    let mut c = claims("ns", "sa");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.verifier
            .verify(&key.token(Some("k"), &c))
            .map_err(|e| e.kind()),
        Err("malformed")
    );
    assert_eq!(
        check(json!({"exp": "tomorrow"})).map_err(|e| e.kind()),
        Err("malformed")
    );
    // Fractional NumericDates are allowed.
    assert!(check(json!({"exp": now as f64 + 100.5})).is_ok());
    // verify_at: the same token, later.
    let token = key.token(Some("k"), &claims("ns", "sa"));
    let later = Utc::now() + chrono::Duration::hours(2);
    assert_eq!(f.verifier.verify_at(&token, later), Err(SaError::Expired));
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k"))]).await;
    let check = |field: &str, v: Value| {
        let mut c = claims("ns", "sa");
        c[field] = v;
        f.verifier.verify(&key.token(Some("k"), &c))
    };
    assert_eq!(
        check("iss", json!("https://evil.example")),
        Err(SaError::WrongIssuer)
    );
    assert_eq!(
        check("iss", json!(format!("{ISSUER}/"))),
        Err(SaError::WrongIssuer)
    );
    // String form.
    assert!(check("aud", json!(AUDIENCE)).is_ok());
    assert_eq!(
        check("aud", json!("kube-apiserver")),
        Err(SaError::WrongAudience)
    );
    // Array form.
    assert!(check("aud", json!(["kube-apiserver", AUDIENCE])).is_ok());
    assert_eq!(
        check("aud", json!(["kube-apiserver", "vault"])),
        Err(SaError::WrongAudience)
    );
    assert_eq!(check("aud", json!([])), Err(SaError::WrongAudience));
    let mut c = claims("ns", "sa");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        f.verifier.verify(&key.token(Some("k"), &c)),
        Err(SaError::WrongAudience)
    );
}

#[tokio::test]
async fn tampered_or_foreign_signatures_are_refused() {
    let es = TestKey::es256();
    let rs = TestKey::rs256();
    let f = fixture(&[es.jwk(Some("es")), rs.jwk(Some("rs"))]).await;
    for (key, kid) in [(&es, "es"), (&rs, "rs")] {
        let token = key.token(Some(kid), &claims("ns", "sa"));
        let (signing_input, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[10] ^= 0x01;
        let flipped = format!("{signing_input}.{}", b64(&sig));
        assert_eq!(f.verifier.verify(&flipped), Err(SaError::BadSignature));
        // A changed claim under the original signature.
        let (h, _) = signing_input.split_once('.').unwrap();
        let mut c = claims("kube-system", "admin");
        c["exp"] = json!(now() + 3600);
        let swapped = format!(
            "{h}.{}.{}",
            b64(c.to_string().as_bytes()),
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(f.verifier.verify(&swapped), Err(SaError::BadSignature));
        // No signature at all.
        let bare = format!("{signing_input}.");
        assert_eq!(f.verifier.verify(&bare), Err(SaError::BadSignature));
    }
    // Signed by a key that is not in the JWKS, under a kid that is.
    let stranger = TestKey::es256();
    assert_eq!(
        f.verifier
            .verify(&stranger.token(Some("es"), &claims("ns", "sa"))),
        Err(SaError::BadSignature)
    );
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k1"))]).await;
    assert_eq!(
        f.verifier
            .verify(&key.token(Some("k2"), &claims("ns", "sa"))),
        Err(SaError::UnknownKey)
    );
}

#[tokio::test]
async fn other_algorithms_are_refused() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k"))]).await;
    let body = b64(claims("ns", "sa").to_string().as_bytes());
    let unsigned = |alg: &str| {
        format!(
            "{}.{body}.",
            b64(json!({"alg": alg, "kid": "k"}).to_string().as_bytes())
        )
    };
    let none = unsigned("none");
    assert!(SaVerifier::looks_like_jwt(&none));
    assert_eq!(
        f.verifier.verify(&none),
        Err(SaError::UnsupportedAlgorithm("none".into()))
    );
    // HS256 keyed with the public key's bytes (the classic confusion attack): refused on alg.
    let h = b64(json!({"alg": "HS256", "kid": "k"}).to_string().as_bytes());
    let hmac_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        key.jwk(None).to_string().as_bytes(),
    );
    let tag = ring::hmac::sign(&hmac_key, format!("{h}.{body}").as_bytes());
    let hs = format!("{h}.{body}.{}", b64(tag.as_ref()));
    assert_eq!(
        f.verifier.verify(&hs),
        Err(SaError::UnsupportedAlgorithm("HS256".into()))
    );
    for alg in ["RS384", "ES384", "PS256", "EdDSA"] {
        assert_eq!(
            f.verifier.verify(&unsigned(alg)),
            Err(SaError::UnsupportedAlgorithm(alg.into()))
        );
    }
    // An unregistered name is not echoed.
    let err = f.verifier.verify(&unsigned("x-secret-alg")).unwrap_err();
    assert_eq!(err, SaError::UnsupportedAlgorithm("other".into()));
    assert!(!err.to_string().contains("x-secret-alg"));
    // Critical header extensions are not understood, so refused.
    let crit = key.token_with(
        &json!({"alg": "ES256", "kid": "k", "crit": ["b64"], "b64": false}),
        &claims("ns", "sa"),
    );
    assert_eq!(
        f.verifier.verify(&crit).map_err(|e| e.kind()),
        Err("malformed")
    );
}

#[tokio::test]
async fn subject_must_be_a_consistent_service_account() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k"))]).await;
    let check = |c: &Value| f.verifier.verify(&key.token(Some("k"), c));
    for sub in [
        "system:node:worker-1",
        "alice@example.com",
        "system:serviceaccount:billing",
        "system:serviceaccount::invoicer",
        "system:serviceaccount:billing:",
        "system:serviceaccount:billing:invoicer:extra",
        "system:serviceaccount:Billing:invoicer",
    ] {
        let mut c = claims("billing", "invoicer");
        c["sub"] = json!(sub);
        assert_eq!(check(&c), Err(SaError::NotAServiceAccount), "{sub}");
    }
    let mut c = claims("billing", "invoicer");
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(check(&c), Err(SaError::NotAServiceAccount));

    // The kubernetes.io claim must agree with the subject.
    let mut c = claims("billing", "invoicer");
    c["kubernetes.io"]["namespace"] = json!("kube-system");
    assert_eq!(check(&c), Err(SaError::NotAServiceAccount));
    let mut c = claims("billing", "invoicer");
    c["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
    assert_eq!(check(&c), Err(SaError::NotAServiceAccount));
    let mut c = claims("billing", "invoicer");
    c["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("serviceaccount");
    assert_eq!(check(&c), Err(SaError::NotAServiceAccount));
    // Without the claim, the subject alone decides.
    let mut c = claims("billing", "invoicer");
    c.as_object_mut().unwrap().remove("kubernetes.io");
    assert_eq!(check(&c).unwrap().service_account, "invoicer");
}

#[tokio::test]
async fn oversized_and_malformed_tokens_are_refused() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k"))]).await;
    let mut c = claims("ns", "sa");
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let big = key.token(Some("k"), &c);
    assert!(SaVerifier::looks_like_jwt(&big));
    assert_eq!(f.verifier.verify(&big), Err(SaError::TooLarge));

    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        "e30.e30.",
        "bm90IGpzb24.e30.x",
    ] {
        assert_eq!(
            f.verifier.verify(bad).map_err(|e| e.kind()),
            Err("malformed"),
            "{bad}"
        );
        // `e30` is `{}`: JWT-shaped (so refused as a JWT), but without `alg`.
        assert_eq!(SaVerifier::looks_like_jwt(bad), bad == "e30.e30.", "{bad}");
    }
    // Opaque hub tokens are not JWTs.
    assert!(!SaVerifier::looks_like_jwt("hub_2Xk9aZ8q7T0pLmN3"));
    assert!(!SaVerifier::looks_like_jwt("a.b.c"));
}

#[tokio::test]
async fn error_messages_never_contain_the_token() {
    let key = TestKey::es256();
    let f = fixture(&[key.jwk(Some("k"))]).await;
    let good = key.token(Some("k"), &claims("ns", "sa"));
    let sig = good.rsplit_once('.').unwrap().1.to_owned();
    let mut expired = claims("ns", "sa");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims("ns", "sa");
    wrong_aud["aud"] = json!("kube-apiserver");
    let mut flipped = URL_SAFE_NO_PAD.decode(&sig).unwrap();
    flipped[0] ^= 0x80;
    let tokens = [
        key.token(Some("k"), &expired),
        key.token(Some("k"), &wrong_aud),
        key.token(Some("secret-kid"), &claims("ns", "sa")),
        format!("{}.{}", good.rsplit_once('.').unwrap().0, b64(&flipped)),
        format!("{}.!!", good.rsplit_once('.').unwrap().0),
    ];
    for token in &tokens {
        let err = f.verifier.verify(token).unwrap_err();
        let shown = format!("{err} {err:?}");
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(!shown.contains(part), "{shown}");
        }
        assert!(!shown.contains("secret-kid"));
        assert!(!shown.contains(&sig));
        assert!(!err.kind().is_empty());
    }
}

#[tokio::test]
async fn refresh_picks_up_a_rotated_key_and_keeps_keys_on_failure() {
    let old = TestKey::es256();
    let f = fixture(&[old.jwk(Some("old"))]).await;
    let new = TestKey::rs256();
    let token = new.token(Some("new"), &claims("ns", "sa"));
    assert_eq!(f.verifier.verify(&token), Err(SaError::UnknownKey));

    // Rotation: the new key joins, then the old one leaves.
    std::fs::write(&f.path, jwks(&[old.jwk(Some("old")), new.jwk(Some("new"))])).unwrap();
    f.verifier.refresh().await.unwrap();
    f.verifier.verify(&token).unwrap();
    std::fs::write(&f.path, jwks(&[new.jwk(Some("new"))])).unwrap();
    f.verifier.refresh().await.unwrap();
    assert_eq!(
        f.verifier
            .verify(&old.token(Some("old"), &claims("ns", "sa"))),
        Err(SaError::UnknownKey)
    );

    // A broken or empty document is refused and the keys in use stay.
    std::fs::write(&f.path, b"{not json").unwrap();
    assert_eq!(
        f.verifier.refresh().await.map_err(|e| e.kind()),
        Err("jwks")
    );
    std::fs::write(&f.path, jwks(&[json!({"kty": "oct", "k": "c2VjcmV0"})])).unwrap();
    assert_eq!(
        f.verifier.refresh().await.map_err(|e| e.kind()),
        Err("jwks")
    );
    std::fs::remove_file(&f.path).unwrap();
    assert_eq!(
        f.verifier.refresh().await.map_err(|e| e.kind()),
        Err("jwks")
    );
    f.verifier.verify(&token).unwrap();
}

#[tokio::test]
async fn unknown_kid_wakes_the_refresh_task() {
    let old = TestKey::es256();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[old.jwk(Some("old"))])).unwrap();
    let mut cfg = config(&path);
    cfg.refresh_secs = 3600;
    let verifier = Arc::new(
        SaVerifier::with_early_refresh_min(cfg, Duration::from_millis(200))
            .await
            .unwrap(),
    );
    let (stop_tx, stop) = watch::channel(false);
    let task = verifier.spawn_refresh(stop);

    let new = TestKey::es256();
    std::fs::write(&path, jwks(&[new.jwk(Some("new"))])).unwrap();
    let token = new.token(Some("new"), &claims("ns", "sa"));
    assert_eq!(verifier.verify(&token), Err(SaError::UnknownKey));
    let mut accepted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if verifier.verify(&token).is_ok() {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the early refresh did not load the new key");
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn jwks_is_fetched_from_a_url_with_the_bearer_token() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let key = TestKey::es256();
    let body = jwks(&[key.jwk(Some("k"))]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0);
            req.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
        String::from_utf8(req).unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "reader-token\n").unwrap();
    let verifier = SaVerifier::new(SaTokenConfig {
        jwks_url: Some(format!("http://{addr}/openid/v1/jwks")),
        jwks_token_file: Some(token_file),
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        ..SaTokenConfig::default()
    })
    .await
    .unwrap();
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /openid/v1/jwks HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer reader-token\r\n"),
        "{request}"
    );
    verifier
        .verify(&key.token(Some("k"), &claims("ns", "sa")))
        .unwrap();

    // Nothing listens any more: the error names the failure, not the token.
    let err = verifier.refresh().await.unwrap_err();
    assert_eq!(err.kind(), "jwks");
    assert!(!err.to_string().contains("reader-token"));
}

#[tokio::test]
async fn config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[TestKey::es256().jwk(None)])).unwrap();
    let base = config(&path);
    let cases: Vec<SaTokenConfig> = vec![
        SaTokenConfig {
            jwks_file: None,
            ..base.clone()
        },
        SaTokenConfig {
            jwks_url: Some("https://kubernetes.default.svc/openid/v1/jwks".into()),
            ..base.clone()
        },
        SaTokenConfig {
            jwks_ca_file: Some(path.clone()),
            ..base.clone()
        },
        SaTokenConfig {
            jwks_file: None,
            jwks_url: Some("http://kubernetes.default.svc/openid/v1/jwks".into()),
            ..base.clone()
        },
        SaTokenConfig {
            issuer: " ".into(),
            ..base.clone()
        },
        SaTokenConfig {
            audiences: vec![],
            ..base.clone()
        },
        SaTokenConfig {
            refresh_secs: 0,
            ..base.clone()
        },
        SaTokenConfig {
            leeway_secs: 3600,
            ..base.clone()
        },
    ];
    for cfg in cases {
        let err = SaVerifier::new(cfg.clone()).await.unwrap_err();
        assert_eq!(err.kind(), "config", "{cfg:?}: {err}");
    }
    let err = SaVerifier::new(SaTokenConfig {
        jwks_file: Some(dir.path().join("missing.json")),
        ..base.clone()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "jwks");

    // The YAML shape: snake_case keys, defaults, unknown keys refused.
    let cfg: SaTokenConfig = serde_yaml::from_str(
        "jwks_file: /etc/hub/jwks.json\nissuer: https://issuer\naudiences: [integration-hub]\n",
    )
    .unwrap();
    assert_eq!(cfg.leeway_secs, DEFAULT_LEEWAY_SECS);
    assert_eq!(cfg.refresh_secs, DEFAULT_REFRESH_SECS);
    assert!(serde_yaml::from_str::<SaTokenConfig>("issuer: x\naudience: y\n").is_err());
}

#[tokio::test]
async fn jwks_keys_that_cannot_serve_are_skipped() {
    let es = TestKey::es256();
    let mut enc = es.jwk(Some("enc"));
    enc["use"] = json!("enc");
    let mut es384 = es.jwk(Some("p384"));
    es384["crv"] = json!("P-384");
    let weak = json!({"kty": "RSA", "kid": "weak", "n": b64(&[0xc5; 128]), "e": "AQAB"});
    let f = fixture(&[
        enc,
        es384,
        weak,
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
        es.jwk(Some("good")),
    ])
    .await;
    assert_eq!(f.verifier.key_count(), 1);
    f.verifier
        .verify(&es.token(Some("good"), &claims("ns", "sa")))
        .unwrap();
    assert_eq!(
        f.verifier
            .verify(&es.token(Some("enc"), &claims("ns", "sa"))),
        Err(SaError::UnknownKey)
    );
}

#[test]
fn verifier_is_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<SaVerifier>();
    assert_eq!(SaError::BadSignature.kind(), "bad_signature");
}
