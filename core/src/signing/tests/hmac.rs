//! HMAC schemes: signatures checked with openssl, header handling, validation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use http::header::HeaderMap;

use super::{header_map, run_with_stdin, suite_time, tool_available};
use crate::signing::{HmacScheme, SignError, SignedPart};

fn scheme(json: &str) -> HmacScheme {
    let s: HmacScheme = serde_json::from_str(json).unwrap();
    s.validate().unwrap();
    s
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h[name].to_str().unwrap()
}

/// How openssl is told the key.
enum Key<'a> {
    Plain(&'a str),
    Hex(&'a str),
}

/// `openssl dgst -<digest> -hmac …` (or `-mac HMAC -macopt hexkey:…`) over `message`, hex; or
/// piped through `base64` when `base64`.
fn openssl_hmac(digest: &str, key: &Key<'_>, message: &[u8], base64: bool) -> String {
    let (key_args, key) = match key {
        Key::Plain(k) => ("-hmac \"$KEY\"", *k),
        Key::Hex(k) => ("-mac HMAC -macopt \"hexkey:$KEY\"", *k),
    };
    let script = if base64 {
        format!("openssl dgst -{digest} {key_args} -binary | base64 -w0")
    } else {
        format!("openssl dgst -{digest} {key_args}")
    };
    let out = run_with_stdin("sh", &["-c", &script], &[("KEY", key)], message);
    // `HMAC-SHA2-256(stdin)= ab…` (or `(stdin)= ab…`): the last field.
    out.split_whitespace().last().unwrap().to_owned()
}

fn openssl_available() -> bool {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    tool_available("openssl", ok)
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

/// Signatures of four schemes (each algorithm, encoding, secret encoding and timestamp format)
/// against openssl over the string to sign written out by hand.
#[test]
fn signatures_match_openssl() {
    if !openssl_available() {
        return;
    }
    let now = suite_time(); // 1440938160

    // SHA-256, hex, a prefix, timestamp.METHOD.path.body.
    let s = scheme(
        r#"{"secret": "whsec_plain", "signatureHeader": "X-Signature", "prefix": "sha256=",
            "timestampHeader": "X-Timestamp", "parts": ["timestamp", "method", "path", "body"],
            "separator": "."}"#,
    );
    let mut h = header_map(&[]);
    s.sign("POST", "/v1/pay?x=1", &mut h, Some(br#"{"amount":5}"#), now)
        .unwrap();
    assert_eq!(header(&h, "x-timestamp"), "1440938160");
    let want = openssl_hmac(
        "sha256",
        &Key::Plain("whsec_plain"),
        br#"1440938160.POST./v1/pay.{"amount":5}"#,
        false,
    );
    assert_eq!(header(&h, "x-signature"), format!("sha256={want}"));

    // SHA-1, base64, method\npath\nquery\ncontent-type, no timestamp.
    let s = scheme(
        r#"{"secret": "legacy", "algorithm": "sha1", "encoding": "base64",
            "signatureHeader": "X-Auth-Sig",
            "parts": ["method", "path", "query", {"header": "Content-Type"}]}"#,
    );
    let mut h = header_map(&[("content-type", "application/json")]);
    s.sign("GET", "/items?b=2&a=1", &mut h, None, now).unwrap();
    let want = openssl_hmac(
        "sha1",
        &Key::Plain("legacy"),
        b"GET\n/items\nb=2&a=1\napplication/json",
        true,
    );
    assert_eq!(header(&h, "x-auth-sig"), want);

    // SHA-512, hex secret, RFC 3339 timestamp, body hash and the API key header.
    let s = scheme(
        r#"{"secret": "00ff10ab", "secretEncoding": "hex", "algorithm": "sha512",
            "signatureHeader": "X-Sig", "timestampHeader": "X-Date", "timestampFormat": "rfc3339",
            "apiKeyHeader": "X-Api-Key", "apiKey": "key-123",
            "parts": ["timestamp", "bodySha256", {"header": "x-api-key"}]}"#,
    );
    let mut h = header_map(&[]);
    s.sign("PUT", "/", &mut h, Some(b"payload"), now).unwrap();
    assert_eq!(header(&h, "x-date"), "2015-08-30T12:36:00Z");
    assert_eq!(header(&h, "x-api-key"), "key-123");
    let body_hash = run_with_stdin("openssl", &["dgst", "-sha256"], &[], b"payload");
    let body_hash = body_hash.split_whitespace().last().unwrap();
    let message = format!("2015-08-30T12:36:00Z\n{body_hash}\nkey-123");
    let want = openssl_hmac("sha512", &Key::Hex("00ff10ab"), message.as_bytes(), false);
    assert_eq!(header(&h, "x-sig"), want);

    // SHA-256, base64 secret (binary key), base64 signature, millisecond timestamp, `|`.
    let key = [0x00, 0x01, 0xfe, 0xff, b'k', b'e', b'y', 0x80];
    let s = scheme(&format!(
        r#"{{"secret": "{}", "secretEncoding": "base64", "encoding": "base64",
            "signatureHeader": "Signature", "timestampHeader": "Request-Time",
            "timestampFormat": "unixMillis", "parts": ["timestamp", "body"], "separator": "|"}}"#,
        STANDARD.encode(key)
    ));
    let mut h = header_map(&[]);
    s.sign("POST", "/", &mut h, Some(b""), now).unwrap();
    assert_eq!(header(&h, "request-time"), "1440938160000");
    let want = openssl_hmac(
        "sha256",
        &Key::Hex(&hex::encode(key)),
        b"1440938160000|",
        true,
    );
    assert_eq!(header(&h, "signature"), want);
}

fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&key, message))
}

const FULL: &str = r#"{"secret": "s3cr3t-SECRET", "signatureHeader": "X-Signature",
    "timestampHeader": "X-Timestamp", "apiKeyHeader": "X-Api-Key", "apiKey": "api-SECRET",
    "parts": ["timestamp", "method", "path"]}"#;

/// The caller's signature, timestamp and API key headers are replaced (one value each); the
/// credential-bearing values are sensitive.
#[test]
fn callers_headers_are_replaced_not_duplicated() {
    let s = scheme(FULL);
    let mut h = header_map(&[
        ("x-signature", "forged"),
        ("X-Signature", "forged-again"),
        ("x-timestamp", "1"),
        ("x-api-key", "stolen"),
        ("accept", "*/*"),
    ]);
    s.sign("GET", "/p", &mut h, None, at(1_700_000_000))
        .unwrap();
    for (name, want) in [
        ("x-timestamp", "1700000000".to_owned()),
        ("x-api-key", "api-SECRET".to_owned()),
        (
            "x-signature",
            hmac_sha256_hex(b"s3cr3t-SECRET", b"1700000000\nGET\n/p"),
        ),
        ("accept", "*/*".to_owned()),
    ] {
        let values: Vec<_> = h.get_all(name).iter().collect();
        assert_eq!(values, [want.as_str()], "{name}");
    }
    assert!(h["x-signature"].is_sensitive());
    assert!(h["x-api-key"].is_sensitive());
    assert!(!h["x-timestamp"].is_sensitive());
}

/// A header part the request lacks signs as the empty string (documented on
/// [`SignedPart::Header`]); several values are joined by `,`.
#[test]
fn header_parts_missing_are_empty_and_repeated_are_joined() {
    let s = scheme(
        r#"{"secret": "k", "signatureHeader": "X-Sig",
            "parts": ["method", {"header": "x-missing"}, {"header": "x-multi"}, "path"]}"#,
    );
    let mut h = header_map(&[("x-multi", "a"), ("x-multi", "b c")]);
    s.sign("GET", "/p", &mut h, None, at(0)).unwrap();
    assert_eq!(
        header(&h, "x-sig"),
        hmac_sha256_hex(b"k", b"GET\n\na,b c\n/p")
    );
}

/// Signing again (a retry) with a later `now` gives a fresh timestamp and signature, still one
/// value each.
#[test]
fn retried_signing_is_fresh() {
    let s = scheme(FULL);
    let mut h = header_map(&[]);
    s.sign("POST", "/p", &mut h, Some(b"x"), at(1_000)).unwrap();
    let first = header(&h, "x-signature").to_owned();
    s.sign("POST", "/p", &mut h, Some(b"x"), at(1_030)).unwrap();
    assert_eq!(header(&h, "x-timestamp"), "1030");
    assert_ne!(header(&h, "x-signature"), first);
    assert_eq!(
        header(&h, "x-signature"),
        hmac_sha256_hex(b"s3cr3t-SECRET", b"1030\nPOST\n/p")
    );
    assert_eq!(h.len(), 3);
}

#[test]
fn a_streamed_body_cannot_be_signed_when_the_scheme_covers_it() {
    for part in ["body", "bodySha256"] {
        let s = scheme(&format!(
            r#"{{"secret": "k", "signatureHeader": "X-Sig", "parts": ["path", "{part}"]}}"#
        ));
        assert!(s.needs_body());
        let mut h = header_map(&[("x-sig", "forged")]);
        let err = s.sign("POST", "/", &mut h, None, at(0)).unwrap_err();
        assert_eq!(err, SignError::BodyRequired);
        assert!(h.is_empty());
    }
    let s = scheme(r#"{"secret": "k", "signatureHeader": "X-Sig", "parts": ["path"]}"#);
    assert!(!s.needs_body());
    let mut h = header_map(&[]);
    s.sign("POST", "/", &mut h, None, at(0)).unwrap();
    assert_eq!(header(&h, "x-sig"), hmac_sha256_hex(b"k", b"/"));
}

#[test]
fn deserializes_with_defaults_and_round_trips_through_sealable_json() {
    let s = scheme(
        r#"{"secret": "k", "signatureHeader": "X-Sig", "parts": ["method", {"header": "x-foo"}, "bodySha256"]}"#,
    );
    assert_eq!(s.separator, "\n");
    assert_eq!(
        s.parts,
        [
            SignedPart::Method,
            SignedPart::Header("x-foo".into()),
            SignedPart::BodySha256
        ]
    );
    assert_eq!(
        serde_json::from_value::<HmacScheme>(s.sealable_json()).unwrap(),
        s
    );
    let full = scheme(FULL);
    assert_eq!(
        serde_json::from_value::<HmacScheme>(full.sealable_json()).unwrap(),
        full
    );
    assert_eq!(full.secrets().len(), 2);
    assert_eq!(s.secrets().len(), 1);
    for bad in [
        r#"{"secret": "k", "signatureHeader": "X", "parts": ["method"], "bogus": 1}"#,
        r#"{"secret": "k", "signatureHeader": "X", "parts": ["verb"]}"#,
        r#"{"secret": "k", "signatureHeader": "X", "parts": ["method"], "algorithm": "md5"}"#,
    ] {
        assert!(serde_json::from_str::<HmacScheme>(bad).is_err(), "{bad}");
    }
}

#[test]
fn debug_and_errors_show_no_secret() {
    let s = scheme(FULL);
    assert!(!format!("{s:?}").contains("SECRET"), "{s:?}");
    // Unvalidated schemes whose secret or API key cannot be used.
    let mut bad = s.clone();
    bad.api_key = Some("api-SECRET\n".into());
    let err = bad
        .sign("GET", "/", &mut header_map(&[]), None, at(0))
        .unwrap_err();
    assert!(!err.to_string().contains("SECRET"), "{err}");
    let mut bad = s.clone();
    bad.secret_encoding = crate::signing::SecretEncoding::Hex;
    let err = bad
        .sign("GET", "/", &mut header_map(&[]), None, at(0))
        .unwrap_err();
    assert_eq!(err.to_string(), "the secret is not valid hex");
    assert!(!bad.validate().unwrap_err().message.contains("SECRET"));
}

#[test]
fn validate_names_the_field() {
    let cases: [(&str, &str); 16] = [
        (r#""secret": """#, "auth.secret"),
        (r#""secret": "zz", "secretEncoding": "hex""#, "auth.secret"),
        (
            r#""secret": "!!", "secretEncoding": "base64""#,
            "auth.secret",
        ),
        (r#""signatureHeader": "X Sig""#, "auth.signatureHeader"),
        (r#""signatureHeader": "Host""#, "auth.signatureHeader"),
        (
            r#""timestampHeader": "content-length""#,
            "auth.timestampHeader",
        ),
        (r#""timestampHeader": "x-sig""#, "auth.timestampHeader"),
        (r#""apiKeyHeader": "X-Key""#, "auth.apiKey"),
        (r#""apiKey": "k""#, "auth.apiKeyHeader"),
        (
            r#""apiKeyHeader": "Transfer-Encoding", "apiKey": "k""#,
            "auth.apiKeyHeader",
        ),
        (
            r#""apiKeyHeader": "X-Key", "apiKey": "a\nb""#,
            "auth.apiKey",
        ),
        (r#""parts": []"#, "auth.parts"),
        (r#""parts": ["method", "timestamp"]"#, "auth.parts[1]"),
        (
            r#""parts": [{"header": "bad header"}]"#,
            "auth.parts[0].header",
        ),
        (r#""parts": [{"header": "X-SIG"}]"#, "auth.parts[0].header"),
        (r#""prefix": "é""#, "auth.prefix"),
    ];
    for (field_json, field) in cases {
        // Later keys override earlier ones: not with serde's derive, so build the object.
        let mut base: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"secret": "k", "signatureHeader": "X-Sig", "parts": ["method"]}"#,
        )
        .unwrap();
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{field_json}}}")).unwrap();
        base.extend(extra);
        let s: HmacScheme = serde_json::from_value(base.into()).unwrap();
        assert_eq!(s.validate().unwrap_err().field, field, "{field_json}");
    }
}
