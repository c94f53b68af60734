use super::*;
use crate::provider::Auth;

fn openssl() -> bool {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required in CI"
        );
        eprintln!("SKIPPED: openssl not found");
    }
    ok
}

fn genkey(dir: &std::path::Path, alg: &[&str]) -> String {
    let path = dir.join("key.pem");
    let out = std::process::Command::new("openssl")
        .args(["genpkey"])
        .args(alg)
        .arg("-out")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path).unwrap()
}

/// Verifies a compact JWS with `openssl dgst -verify` (an implementation other than ours).
fn verify_with_openssl(dir: &std::path::Path, jwt: &str, es: bool) -> serde_json::Value {
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap()
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let input = format!("{}.{}", parts[0], parts[1]);
    let mut sig = b64(parts[2]);
    if es {
        // JWS ES256 is r||s; openssl wants DER.
        let int = |b: &[u8]| {
            let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
            let mut v = if b.first().is_some_and(|x| x & 0x80 != 0) {
                vec![0]
            } else {
                vec![]
            };
            v.extend(b);
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let (r, s) = sig.split_at(32);
        let body: Vec<u8> = [int(r), int(s)].concat();
        sig = [vec![0x30, body.len() as u8], body].concat();
    }
    std::fs::write(dir.join("in"), &input).unwrap();
    std::fs::write(dir.join("sig"), &sig).unwrap();
    let pubkey = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("pub.pem"))
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("pub.pem"))
        .arg("-signature")
        .arg(dir.join("sig"))
        .arg(dir.join("in"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl rejected the signature: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let header: serde_json::Value = serde_json::from_slice(&b64(parts[0])).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&b64(parts[1])).unwrap();
    serde_json::json!({"header": header, "claims": claims})
}

fn assertion_of(req: &TokenRequest) -> String {
    assert_eq!(
        req.form[0].1.expose(),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    req.form
        .iter()
        .find(|(k, _)| k == "assertion")
        .unwrap()
        .1
        .expose()
        .to_owned()
}

#[test]
fn a_service_account_json_signs_an_rs256_assertion_openssl_verifies() {
    if !openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pem = genkey(
        dir.path(),
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let sa = serde_json::json!({
        "type": "service_account", "client_email": "hub@project.iam.gserviceaccount.com",
        "private_key": pem, "private_key_id": "kid-1", "token_uri": "https://oauth2.example.test/token"
    });
    let auth: Auth = serde_json::from_value(serde_json::json!({
        "type": "oauth2_jwt_bearer", "serviceAccountJson": sa.to_string(),
        "scopes": ["https://www.googleapis.com/auth/cloud-platform", "email"]
    }))
    .unwrap();
    auth.validate().unwrap();
    let grant = auth.oauth().unwrap();
    let req = grant.request(1_700_000_000, None).unwrap();
    assert_eq!(req.url, "https://oauth2.example.test/token");
    assert!(req.authorization.is_none());
    let v = verify_with_openssl(dir.path(), &assertion_of(&req), false);
    assert_eq!(v["header"]["alg"], "RS256");
    assert_eq!(v["header"]["kid"], "kid-1");
    assert_eq!(v["claims"]["iss"], "hub@project.iam.gserviceaccount.com");
    assert_eq!(v["claims"]["aud"], "https://oauth2.example.test/token");
    assert_eq!(v["claims"]["iat"], 1_700_000_000);
    assert_eq!(v["claims"]["exp"], 1_700_003_600);
    assert_eq!(
        v["claims"]["scope"],
        "https://www.googleapis.com/auth/cloud-platform email"
    );
    // Sealing round-trips.
    let back = Auth::from_sealed_json(&auth.to_sealable_json()).unwrap();
    assert_eq!(back, auth);
}

#[test]
fn an_es256_key_signs_an_assertion_openssl_verifies() {
    if !openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pem = genkey(
        dir.path(),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let auth: Auth = serde_json::from_value(serde_json::json!({
        "type": "oauth2_jwt_bearer", "tokenUrl": "https://idp.test/token", "issuer": "svc",
        "subject": "user@example.com", "audience": "https://idp.test/", "privateKey": pem,
        "algorithm": "ES256"
    }))
    .unwrap();
    auth.validate().unwrap();
    let req = auth.oauth().unwrap().request(100, None).unwrap();
    let v = verify_with_openssl(dir.path(), &assertion_of(&req), true);
    assert_eq!(v["header"]["alg"], "ES256");
    assert_eq!(v["claims"]["sub"], "user@example.com");
    assert_eq!(v["claims"]["aud"], "https://idp.test/");
}

#[test]
fn a_key_that_cannot_sign_is_refused_at_validation() {
    let auth: Auth = serde_json::from_value(serde_json::json!({
        "type": "oauth2_jwt_bearer", "tokenUrl": "https://idp.test/token", "issuer": "svc",
        "privateKey": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    }))
    .unwrap();
    let e = auth.validate().unwrap_err();
    assert_eq!(e.field, "auth.privateKey");
    assert!(!e.message.contains("AAAA"));
}

#[test]
fn client_credentials_form_and_basic_client_auth() {
    let auth: Auth = serde_json::from_value(serde_json::json!({
        "type": "oauth2_client_credentials", "tokenUrl": "https://idp.test/oauth/token",
        "clientId": "my client", "clientSecret": "s3cr:et&", "scopes": ["a", "b:c"],
        "audience": "https://api.test", "extraParams": {"x": "1 2"}
    }))
    .unwrap();
    auth.validate().unwrap();
    let req = auth.oauth().unwrap().request(0, None).unwrap();
    assert_eq!(
        req.body(),
        "grant_type=client_credentials&scope=a+b%3Ac&audience=https%3A%2F%2Fapi.test&x=1+2"
    );
    // RFC 6749 2.3.1: id and secret form-encoded before base64.
    let expected = base64::engine::general_purpose::STANDARD.encode("my+client:s3cr%3Aet%26");
    assert_eq!(
        req.authorization.as_ref().unwrap().expose(),
        format!("Basic {expected}")
    );
    assert!(!format!("{req:?}").contains("s3cr"));
    let back = Auth::from_sealed_json(&auth.to_sealable_json()).unwrap();
    assert_eq!(back, auth);
    assert_eq!(auth.secrets().len(), 1);
}

#[test]
fn refresh_token_in_the_body_with_client_secret_and_the_newest_refresh_token() {
    let auth: Auth = serde_json::from_value(serde_json::json!({
        "type": "oauth2_refresh_token", "tokenUrl": "https://idp.test/token",
        "clientId": "id", "clientSecret": "sec", "clientAuth": "body", "refreshToken": "rt-1"
    }))
    .unwrap();
    auth.validate().unwrap();
    let grant = auth.oauth().unwrap();
    assert!(grant.rotates());
    let req = grant.request(0, None).unwrap();
    assert_eq!(
        req.body(),
        "grant_type=refresh_token&refresh_token=rt-1&client_id=id&client_secret=sec"
    );
    assert!(req.authorization.is_none());
    let newer = SecretString::from("rt-2");
    let req = grant.request(0, Some(&newer)).unwrap();
    assert!(req.body().contains("refresh_token=rt-2"));
    let back = Auth::from_sealed_json(&auth.to_sealable_json()).unwrap();
    assert_eq!(back, auth);
}

#[test]
fn unknown_fields_and_bad_urls_are_refused() {
    let r: Result<Auth, _> = serde_json::from_value(serde_json::json!({
        "type": "oauth2_client_credentials", "tokenUrl": "https://idp.test/t",
        "clientId": "a", "clientSecret": "b", "bogus": 1
    }));
    assert!(r.is_err());
    let auth: Auth = serde_json::from_value(serde_json::json!({
        "type": "oauth2_client_credentials", "tokenUrl": "ftp://idp.test/t",
        "clientId": "a", "clientSecret": "b"
    }))
    .unwrap();
    assert_eq!(auth.validate().unwrap_err().field, "auth.tokenUrl");
}

#[test]
fn token_responses() {
    let ok = parse_response(
        200,
        br#"{"access_token":"at","token_type":"bearer","expires_in":"120","refresh_token":"rt"}"#,
    )
    .unwrap();
    assert_eq!(ok.access_token.expose(), "at");
    assert_eq!(ok.lifetime, Duration::from_secs(120));
    assert_eq!(ok.refresh_token.unwrap().expose(), "rt");
    let no_exp = parse_response(200, br#"{"access_token":"at","token_type":"Bearer"}"#).unwrap();
    assert_eq!(no_exp.lifetime, DEFAULT_LIFETIME);
    assert_eq!(
        parse_response(200, br#"{"access_token":"at","token_type":"mac"}"#).unwrap_err(),
        TokenError::Malformed("token_type is not Bearer")
    );
    assert_eq!(
        parse_response(
            400,
            br#"{"error":"invalid_grant","error_description":"secret rt"}"#
        )
        .unwrap_err(),
        TokenError::Refused {
            status: 400,
            code: Some("invalid_grant".into())
        }
    );
    // A code outside RFC 6749's list (it could be anything, even a secret) is dropped.
    assert_eq!(
        parse_response(401, br#"{"error":"sk_live_123"}"#).unwrap_err(),
        TokenError::Refused {
            status: 401,
            code: None
        }
    );
    assert!(parse_response(200, b"<html>").is_err());
}
