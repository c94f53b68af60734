//! AWS SigV4: the published test suite, botocore's signer, and the request mutations.

use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use super::{header_map, run_with_stdin, suite_time, tool_available};
use crate::signing::{AwsSigV4, Payload, SignError, UNSIGNED_PAYLOAD};

/// Every request of the AWS SigV4 test suite (testdata/aws4, sub-directories flattened).
const SUITE: &[&str] = &[
    "get-header-key-duplicate",
    "get-header-value-multiline",
    "get-header-value-order",
    "get-header-value-trim",
    "get-unreserved",
    "get-utf8",
    "get-vanilla",
    "get-vanilla-empty-query-key",
    "get-vanilla-query",
    "get-vanilla-query-order-encoded",
    "get-vanilla-query-order-key",
    "get-vanilla-query-order-key-case",
    "get-vanilla-query-order-value",
    "get-vanilla-query-unreserved",
    "get-vanilla-utf8-query",
    "get-vanilla-with-session-token",
    "get-relative",
    "get-relative-relative",
    "get-slash",
    "get-slash-dot-slash",
    "get-slash-pointless-dot",
    "get-slashes",
    "get-space",
    "get-special-character",
    "post-header-key-case",
    "post-header-key-sort",
    "post-header-value-case",
    "post-sts-header-after",
    "post-sts-header-before",
    "post-vanilla",
    "post-vanilla-empty-query-value",
    "post-vanilla-query",
    "post-x-www-form-urlencoded",
    "post-x-www-form-urlencoded-parameters",
];

const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn creds(service: &str, token: Option<&str>) -> AwsSigV4 {
    AwsSigV4 {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: SUITE_SECRET.into(),
        session_token: token.map(Into::into),
        region: "us-east-1".into(),
        service: service.into(),
    }
}

fn suite_file(name: &str, ext: &str) -> String {
    let path = format!(
        "{}/src/signing/testdata/aws4/{name}.{ext}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A `.req` file: method, target, headers (folded lines appended with their newline), body.
struct SuiteRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_req(raw: &str) -> SuiteRequest {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let (method, rest) = request_line.split_once(' ').unwrap();
    let target = &rest[..rest.rfind(" HTTP/").unwrap()];
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().unwrap();
            last.1.push('\n');
            last.1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    SuiteRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// The published canonical request, string to sign and authorization of every suite request.
/// (`get-vanilla-with-session-token` signs an `x-amz-security-token` its `.req` does not show:
/// the value is taken from its `.creq`, as the suite intends.)
#[test]
fn aws_test_suite_vectors() {
    let signer = creds("service", None);
    let mut failures = Vec::new();
    for name in SUITE {
        let req = parse_req(&suite_file(name, "req"));
        let creq = suite_file(name, "creq");
        let mut headers = req.headers.clone();
        let token_line = creq
            .lines()
            .find_map(|l| l.strip_prefix("x-amz-security-token:"));
        let has_token = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-amz-security-token"));
        if let (Some(token), false) = (token_line, has_token) {
            headers.push(("X-Amz-Security-Token".into(), token.into()));
        }
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let payload_hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, &req.body));
        let parts = signer
            .canonical_parts(
                &req.method,
                &req.target,
                &signed,
                &payload_hash,
                suite_time(),
            )
            .unwrap();
        for (what, ours, theirs) in [
            ("creq", &parts.canonical_request, creq),
            ("sts", &parts.string_to_sign, suite_file(name, "sts")),
            ("authz", &parts.authorization, suite_file(name, "authz")),
        ] {
            if *ours != theirs {
                failures.push(format!(
                    "{name}.{what}:\n ours: {ours:?}\n want: {theirs:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Requests for the botocore comparison: service, token, method, target, extra headers, body.
struct BotoCase {
    service: &'static str,
    token: Option<&'static str>,
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static [u8]>,
}

const BOTO_CASES: &[BotoCase] = &[
    BotoCase {
        service: "execute-api",
        token: None,
        method: "GET",
        target: "/prod/items?b=2&a=1%20x&a=0&empty",
        headers: &[("x-amz-target", "Items.List")],
        body: Some(b""),
    },
    BotoCase {
        service: "sqs",
        token: Some("FQoGZXIvYXdzEXAMPLE//token+with/slashes=="),
        method: "POST",
        target: "/",
        headers: &[("content-type", "application/x-www-form-urlencoded")],
        body: Some(b"Action=SendMessage&MessageBody=hello%20world"),
    },
    BotoCase {
        service: "execute-api",
        token: None,
        method: "POST",
        target: "/upload/./a%20b//c/../d",
        headers: &[("content-type", "application/octet-stream")],
        body: None,
    },
    BotoCase {
        service: "s3",
        token: None,
        method: "PUT",
        target: "/bucket/my%20key//x.txt",
        headers: &[
            ("content-type", "text/plain"),
            ("x-amz-meta-owner", "  team   a "),
        ],
        body: Some(b"hello s3"),
    },
    BotoCase {
        service: "s3",
        token: Some("IQoJb3JpZ2luX2VjEXAMPLESESSION"),
        method: "GET",
        target: "/bucket?list-type=2&prefix=a%2Fb%2F",
        headers: &[],
        body: Some(b""),
    },
    BotoCase {
        service: "s3",
        token: None,
        method: "PUT",
        target: "/bucket/big.bin",
        headers: &[("content-type", "application/octet-stream")],
        body: None,
    },
];

/// Signs each request with botocore (`SigV4Auth`, or `S3SigV4Auth` for s3) given exactly the
/// headers we signed, at a patched current time; prints its Authorization and payload hash.
const BOTOCORE_SCRIPT: &str = r#"
import datetime, hashlib, json, sys, types
from unittest import mock
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

now = datetime.datetime(2015, 8, 30, 12, 36, 0, tzinfo=datetime.timezone.utc)
out = []
for case in json.load(sys.stdin):
    body = bytes.fromhex(case["body"]) if case["body"] is not None else b""
    req = AWSRequest(method=case["method"], url=case["url"], data=body)
    for name, value in case["headers"]:
        req.headers[name] = value
    unsigned = case["body"] is None
    if case["service"] == "s3":
        auth_class = S3SigV4Auth
        if unsigned:
            req.context["client_config"] = types.SimpleNamespace(s3={"payload_signing_enabled": False})
    else:
        auth_class = SigV4Auth
        if unsigned:
            req.context["payload_signing_enabled"] = False
    auth = auth_class(Credentials(case["akid"], case["secret"], case["token"]), case["service"], case["region"])
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        auth.add_auth(req)
    out.append({"authorization": req.headers["Authorization"],
                "payload": "UNSIGNED-PAYLOAD" if unsigned else hashlib.sha256(body).hexdigest()})
print(json.dumps(out))
"#;

fn botocore_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import botocore.auth, botocore.awsrequest"])
        .output()
        .is_ok_and(|o| o.status.success());
    tool_available("python3 with botocore", ok)
}

/// Our `sign` against botocore's signer on the same requests: same Authorization, and the
/// x-amz-content-sha256 we send is the payload hash botocore computes.
#[test]
fn sign_matches_botocore() {
    if !botocore_available() {
        return;
    }
    let mut ours = Vec::new();
    let mut cases = Vec::new();
    for case in BOTO_CASES {
        let signer = creds(case.service, case.token);
        let host = format!("{}.us-east-1.amazonaws.com", case.service);
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_str(&host).unwrap());
        for (name, value) in case.headers {
            headers.append(*name, HeaderValue::from_static(value));
        }
        let payload = case.body.map_or(Payload::Unsigned, Payload::Bytes);
        signer
            .sign(
                case.method,
                case.target,
                &mut headers,
                payload,
                suite_time(),
            )
            .unwrap();
        let sent: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| *n != AUTHORIZATION)
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        cases.push(serde_json::json!({
            "service": case.service, "region": "us-east-1", "akid": "AKIDEXAMPLE",
            "secret": SUITE_SECRET, "token": case.token, "method": case.method,
            "url": format!("https://{host}{}", case.target), "headers": sent,
            "body": case.body.map(hex::encode),
        }));
        ours.push((
            headers[AUTHORIZATION].to_str().unwrap().to_owned(),
            headers["x-amz-content-sha256"].to_str().unwrap().to_owned(),
        ));
    }
    let stdin = serde_json::to_vec(&cases).unwrap();
    let out = run_with_stdin("python3", &["-c", BOTOCORE_SCRIPT], &[], &stdin);
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for ((case, (authz, payload)), boto) in BOTO_CASES.iter().zip(&ours).zip(&theirs) {
        let what = format!("{} {} {}", case.service, case.method, case.target);
        assert_eq!(authz, &boto["authorization"], "{what}");
        assert_eq!(payload, &boto["payload"], "{what}");
    }
}

/// The caller's own signature headers are replaced, not duplicated; other x-amz-* headers are
/// kept and signed; credential-bearing values are sensitive.
#[test]
fn sign_replaces_callers_headers_and_marks_secrets_sensitive() {
    let signer = creds("execute-api", Some("session-TOKEN"));
    let mut headers = header_map(&[
        ("host", "api.example.com"),
        ("authorization", "Bearer forged"),
        ("x-amz-date", "19990101T000000Z"),
        ("x-amz-date", "19990101T000001Z"),
        ("x-amz-security-token", "forged"),
        ("x-amz-content-sha256", "forged"),
        ("x-amz-target", "Svc.Op"),
        ("accept", "application/json"),
    ]);
    signer
        .sign(
            "POST",
            "/v1/x",
            &mut headers,
            Payload::Bytes(b"{}"),
            suite_time(),
        )
        .unwrap();
    for (name, want) in [
        ("x-amz-date", "20150830T123600Z"),
        ("x-amz-security-token", "session-TOKEN"),
        (
            "x-amz-content-sha256",
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        ),
        ("x-amz-target", "Svc.Op"),
    ] {
        let values: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(values, [want], "{name}");
    }
    assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
    let authz = headers[AUTHORIZATION].to_str().unwrap();
    assert!(
        authz.contains(
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target,"
        ),
        "{authz}"
    );
    assert!(headers[AUTHORIZATION].is_sensitive());
    assert!(headers["x-amz-security-token"].is_sensitive());
    assert!(!headers["x-amz-date"].is_sensitive());
}

/// What `sign` sends is what `canonical_parts` computes over the signed headers it sets.
#[test]
fn sign_agrees_with_canonical_parts() {
    let signer = creds("sqs", None);
    let mut headers = header_map(&[
        ("host", "sqs.us-east-1.amazonaws.com"),
        ("content-type", "text/plain"),
        ("user-agent", "not signed"),
    ]);
    signer
        .sign(
            "PUT",
            "/q?x=1",
            &mut headers,
            Payload::Unsigned,
            suite_time(),
        )
        .unwrap();
    let parts = signer
        .canonical_parts(
            "PUT",
            "/q?x=1",
            &[
                ("host", "sqs.us-east-1.amazonaws.com"),
                ("content-type", "text/plain"),
                ("x-amz-date", "20150830T123600Z"),
                ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
            ],
            UNSIGNED_PAYLOAD,
            suite_time(),
        )
        .unwrap();
    assert_eq!(headers[AUTHORIZATION], parts.authorization.as_str());
    assert!(parts.canonical_request.ends_with("\nUNSIGNED-PAYLOAD"));
    assert_eq!(headers["x-amz-content-sha256"], UNSIGNED_PAYLOAD);
    assert!(headers.get("x-amz-security-token").is_none());
}

/// S3 signs the path as sent; other services normalize it and encode it once more.
#[test]
fn s3_path_is_neither_normalized_nor_re_encoded() {
    let uri = |service: &str| {
        let parts = creds(service, None)
            .canonical_parts("GET", "/a//b/../c%20d", &[("host", "h")], "x", suite_time())
            .unwrap();
        parts.canonical_request.lines().nth(1).unwrap().to_owned()
    };
    assert_eq!(uri("s3"), "/a//b/../c%20d");
    assert_eq!(uri("execute-api"), "/a/c%2520d");
}

#[test]
fn sign_errors_name_the_problem() {
    let signer = creds("s3", Some("TOKEN-SECRET"));
    let mut headers = header_map(&[("authorization", "Bearer x")]);
    let err = signer
        .sign("GET", "/", &mut headers, Payload::Unsigned, suite_time())
        .unwrap_err();
    assert_eq!(err, SignError::MissingHost);
    assert!(headers.is_empty(), "the caller's authorization is removed");

    let mut headers = header_map(&[("host", "h")]);
    headers.insert(
        "x-amz-meta-name",
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    );
    let err = signer
        .sign("GET", "/", &mut headers, Payload::Unsigned, suite_time())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "header x-amz-meta-name must be visible ASCII to be signed"
    );

    let mut headers = header_map(&[("host", "h")]);
    let err = signer
        .sign(
            "GET",
            "http://h/",
            &mut headers,
            Payload::Unsigned,
            suite_time(),
        )
        .unwrap_err();
    assert_eq!(err, SignError::InvalidTarget);

    // An unvalidated token that cannot be a header value: the error names the header only.
    let bad = creds("s3", Some("TOKEN-SECRET\n"));
    let mut headers = header_map(&[("host", "h")]);
    let err = bad
        .sign("GET", "/", &mut headers, Payload::Unsigned, suite_time())
        .unwrap_err();
    assert!(!err.to_string().contains("SECRET"), "{err}");
    assert!(headers.get(AUTHORIZATION).is_none());
}

#[test]
fn validate_names_the_field() {
    creds("execute-api", Some("tok")).validate().unwrap();
    type Mutation = fn(&mut AwsSigV4);
    let cases: [(Mutation, &str); 7] = [
        (|c| c.access_key_id = "".into(), "auth.accessKeyId"),
        (|c| c.access_key_id = "AKID/X".into(), "auth.accessKeyId"),
        (|c| c.secret_access_key = "".into(), "auth.secretAccessKey"),
        (
            |c| c.session_token = Some("a\nb".into()),
            "auth.sessionToken",
        ),
        (|c| c.session_token = Some("é".into()), "auth.sessionToken"),
        (|c| c.region = "US-EAST-1".into(), "auth.region"),
        (|c| c.service = "".into(), "auth.service"),
    ];
    for (mutate, field) in cases {
        let mut c = creds("execute-api", Some("tok"));
        mutate(&mut c);
        assert_eq!(c.validate().unwrap_err().field, field);
    }
}

#[test]
fn round_trips_through_sealable_json_and_never_debugs_secrets() {
    let json = r#"{"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "key-SECRET",
        "sessionToken": "tok-SECRET", "region": "eu-west-1", "service": "execute-api"}"#;
    let c: AwsSigV4 = serde_json::from_str(json).unwrap();
    c.validate().unwrap();
    assert!(!format!("{c:?}").contains("SECRET"), "{c:?}");
    assert_eq!(
        serde_json::from_value::<AwsSigV4>(c.sealable_json()).unwrap(),
        c
    );
    assert_eq!(c.secrets().len(), 3);
    let without: AwsSigV4 = serde_json::from_str(
        r#"{"accessKeyId": "A", "secretAccessKey": "k", "region": "r", "service": "s"}"#,
    )
    .unwrap();
    assert_eq!(
        serde_json::from_value::<AwsSigV4>(without.sealable_json()).unwrap(),
        without
    );
    assert_eq!(without.secrets().len(), 2);
    assert!(serde_json::from_str::<AwsSigV4>(r#"{"accessKeyId": "A", "bogus": 1}"#).is_err());

    let parts = c
        .canonical_parts(
            "GET",
            "/",
            &[("host", "h"), ("x-amz-security-token", "tok-SECRET")],
            "x",
            suite_time(),
        )
        .unwrap();
    assert!(!format!("{parts:?}").contains("SECRET"), "{parts:?}");
}
