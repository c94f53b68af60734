//! Signing tests. Reference values come from outside this code: AWS's SigV4 test suite
//! (`testdata/aws4`), botocore's signer and openssl, run by the tests themselves. A missing
//! python3/botocore or openssl skips those checks (`SKIPPED`) unless `CI=true`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use chrono::{DateTime, TimeZone as _, Utc};
use http::header::{HeaderMap, HeaderName, HeaderValue};

mod hmac;
mod sigv4;

/// 2015-08-30T12:36:00Z, the AWS test suite's time.
fn suite_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2015, 8, 30, 12, 36, 0).unwrap()
}

/// Whether an external reference tool is usable; under `CI=true` its absence fails the test.
fn tool_available(what: &str, available: bool) -> bool {
    if !available {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but {what} is missing: .ci/run installs it"
        );
        println!("SKIPPED: {what} is missing");
    }
    available
}

/// Runs `program args` with `stdin` fed in; its stdout. Panics (with stderr) when it fails.
fn run_with_stdin(program: &str, args: &[&str], envs: &[(&str, &str)], stdin: &[u8]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A header map of `pairs`, in order (repeated names appended).
fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}
