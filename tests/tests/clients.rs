//! Real clients through the hub, as module teams run them: curl, Python `requests` and Java's
//! HttpClient upload 5 MiB (sized and chunked, with their default `Expect` behaviour and with
//! `Expect: 100-continue` forced) and read the hub's refusals. The provider hashes what it
//! receives; the client prints what the provider answered.
//!
//! A client missing from the machine skips its part (`SKIPPED`), and fails the test under
//! `CI=true` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use hub_tests::client::provider_json;
use hub_tests::raw::{data, sha256};
use hub_tests::{Backend, FakeProvider, TestHub, TestPki};
use serde_json::json;

const HOST: &str = "api.clients.test";
const SIZE: usize = 5 * 1024 * 1024;

struct Setup {
    hub: TestHub,
    fake: FakeProvider,
    dir: tempfile::TempDir,
    body: PathBuf,
    sha: String,
    _pki: TestPki,
}

impl Setup {
    async fn start() -> Option<Self> {
        let pki = TestPki::new();
        let hub = TestHub::start(Backend::Sqlite, &pki).await?;
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        let mut provider = provider_json(
            "clients",
            HOST,
            &fake,
            json!({"type": "bearer", "token": "clients_secret_token"}),
        );
        // These tests are about bytes, not speed: JVMs and interpreters starting beside them on
        // two cores must not turn a 5 MiB upload into a 504.
        provider["config"]["timeoutMs"] = json!(30_000);
        hub.add_provider(provider).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &hub.ca_pem).unwrap();
        let bytes = data(42, SIZE);
        let body = dir.path().join("body.bin");
        std::fs::write(&body, &bytes).unwrap();
        Some(Self {
            sha: sha256(&bytes),
            hub,
            fake,
            dir,
            body,
            _pki: pki,
        })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.fake.port)
    }
}

/// Whether `tool` runs here; under CI its absence fails the test.
fn have(tool: &str, version_arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "{tool} is missing: .ci/run installs it"
        );
        println!("SKIPPED: {tool} is not installed");
    }
    ok
}

async fn run(mut cmd: Command) -> (String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn clients_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/clients"))
}

#[tokio::test]
async fn curl_uploads_byte_exact_with_expect_and_chunked_and_reads_refusals() {
    let Some(s) = Setup::start().await else {
        return;
    };
    if !have("curl", "--version") {
        return;
    }
    let proxy = s.hub.proxy_url();
    let curl = |extra: &[&str], url: String| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "-v",
            "--expect100-timeout",
            "30",
            "-x",
            &proxy,
            "--cacert",
        ])
        .arg(s.ca())
        .args(extra)
        .arg(url);
        c
    };
    let body = format!("@{}", s.body.display());
    // Defaults: above 1 MiB curl sends Expect: 100-continue by itself and waits for the 100.
    for (name, extra) in [
        ("default", vec!["--data-binary", body.as_str()]),
        (
            "chunked",
            vec![
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                body.as_str(),
            ],
        ),
        (
            "no-expect",
            vec!["-H", "Expect:", "--data-binary", body.as_str()],
        ),
    ] {
        let (out, err) = run(curl(&extra, s.url(&format!("/curl/{name}")))).await;
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("{name}: {e}: {out}\n{err}");
        });
        assert_eq!(answer["sha256"], s.sha, "{name}: {err}");
        if name != "no-expect" {
            assert!(
                err.contains("HTTP/1.1 100 Continue"),
                "{name}: the hub answers the 100 itself: {err}"
            );
        }
    }
    // A refusal: curl prints the body, with its code.
    let (out, _) = run(curl(
        &["-w", "\n%{http_code}"],
        "https://unknown.clients.test/v1/x".into(),
    ))
    .await;
    assert!(out.contains("\"code\":\"unknown_provider\""), "{out}");
    assert!(out.trim_end().ends_with("403"), "{out}");
    let got: Vec<(String, usize)> = s
        .fake
        .requests()
        .into_iter()
        .map(|r| {
            assert_eq!(r.header("expect"), None);
            (r.target, r.body_len)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/curl/default".into(), SIZE),
            ("/curl/chunked".into(), SIZE),
            ("/curl/no-expect".into(), SIZE)
        ]
    );
    assert!(s.fake.malformed().is_empty());
}

#[tokio::test]
async fn python_requests_uploads_byte_exact_and_reads_refusals() {
    let Some(s) = Setup::start().await else {
        return;
    };
    if !have("python3", "--version") {
        return;
    }
    let script = clients_dir().join("hub_client.py");
    let py = |url: String, mode: &str| {
        let mut c = Command::new("python3");
        c.arg(&script)
            .arg(s.hub.proxy_url())
            .arg(s.ca())
            .arg(url)
            .arg(&s.body)
            .arg(mode);
        c
    };
    for mode in ["plain", "expect", "chunked"] {
        let (out, err) = run(py(s.url(&format!("/py/{mode}")), mode)).await;
        let answer: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{mode}: {e}: {out}\n{err}"));
        assert_eq!(answer["status"], 200, "{mode}: {out}");
        assert_eq!(answer["body"]["sha256"], s.sha, "{mode}");
    }
    let (out, _) = run(py("https://unknown.clients.test/v1/x".into(), "refused")).await;
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["status"], 403);
    assert_eq!(answer["body"]["code"], "unknown_provider");
    assert_eq!(s.fake.requests().len(), 3);
    assert!(s.fake.malformed().is_empty());
}

#[tokio::test]
async fn java_httpclient_uploads_byte_exact_with_expect_continue_and_reads_refusals() {
    let Some(s) = Setup::start().await else {
        return;
    };
    if !have("java", "-version") {
        return;
    }
    let source = clients_dir().join("HubClient.java");
    let java = |url: String, mode: &str| {
        let mut c = Command::new("java");
        c.arg(&source)
            .arg(s.hub.proxy_addr.ip().to_string())
            .arg(s.hub.proxy_addr.port().to_string())
            .arg(s.ca())
            .arg(url)
            .arg(&s.body)
            .arg(mode);
        c
    };
    for mode in ["plain", "expect", "chunked"] {
        let (out, err) = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            run(java(s.url(&format!("/java/{mode}")), mode)),
        )
        .await
        .unwrap_or_else(|_| panic!("{mode}: the Java client hung"));
        let (status, body) = out.trim().split_once(' ').unwrap_or(("", ""));
        assert_eq!(status, "200", "{mode}: {out}\n{err}");
        let answer: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(answer["sha256"], s.sha, "{mode}");
    }
    let (out, _) = run(java("https://unknown.clients.test/v1/x".into(), "refused")).await;
    assert!(out.starts_with("403 "), "{out}");
    assert!(out.contains("\"code\":\"unknown_provider\""), "{out}");
    assert_eq!(s.fake.requests().len(), 3);
    assert!(s.fake.malformed().is_empty());
}

/// Whether python3 imports `module` here; under CI its absence fails the test.
fn have_python_module(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "python3 cannot import {module}: .ci/run installs it"
        );
        println!("SKIPPED: python3 cannot import {module}");
    }
    ok
}

/// grpcio (PyPI), client and server, through the hub: the client offers only `h2` in its tunnel
/// (found with `grpc_proxy`), the provider is a grpcio TLS server that reports the credential it
/// received. Unary, server streaming and lock-step bidi streaming; an unknown provider is
/// PERMISSION_DENIED with the hub's code.
#[tokio::test]
async fn grpcio_unary_server_streaming_and_bidi_pass_with_the_credential_injected() {
    if !have("python3", "--version") || !have_python_module("grpc") {
        return;
    }
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let script = clients_dir().join("grpc_e2e.py");
    /// Kills the server when the test ends, however it ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Killed(
        Command::new("python3")
            .arg(&script)
            .arg("server")
            .arg("--cert")
            .arg(&pki.leaf_cert_file)
            .arg("--key")
            .arg(&pki.leaf_key_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    let out = server.0.stdout.take().unwrap();
    let line = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map(|_| line)
        }),
    )
    .await
    .expect("the grpcio server starts")
    .unwrap()
    .unwrap();
    let port: u16 = line.trim().parse().expect("its port");
    const TOKEN: &str = "grpcio_secret_token";
    hub.add_provider(json!({
        "name": "grpcio",
        "hosts": ["api.grpc.test"],
        "baseUrl": format!("https://localhost:{port}"),
        "auth": {"type": "bearer", "token": TOKEN},
        "config": {"allowPrivateNetwork": true},
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hub-ca.pem");
    std::fs::write(&ca, &hub.ca_pem).unwrap();
    let mut client = Command::new("python3");
    client
        .arg(&script)
        .arg("client")
        .arg("--target")
        .arg("api.grpc.test:443")
        .arg("--ca")
        .arg(&ca)
        .arg("--unknown")
        .arg("nobody.grpc.test:443")
        .env("grpc_proxy", hub.proxy_url())
        .env_remove("no_grpc_proxy")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY");
    let (out, err) = tokio::time::timeout(std::time::Duration::from_secs(120), run(client))
        .await
        .expect("the grpcio client finishes");
    let got: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    // The provider echoes the Authorization it received; the hub masks the credential in the
    // answer. A mask exactly as long as `Bearer <token>` is the scrubber matching that exact
    // value, so the provider did receive the injected credential (and the module never sees it).
    let auth = "*".repeat(format!("Bearer {TOKEN}").len());
    assert_eq!(got["unary"], format!("{auth}|hello"), "{got}");
    assert_eq!(
        got["list"],
        json!([
            format!("{auth}|q|0"),
            format!("{auth}|q|1"),
            format!("{auth}|q|2")
        ])
    );
    assert_eq!(
        got["chat"],
        json!([
            format!("{auth}|one"),
            format!("{auth}|two"),
            format!("{auth}|three")
        ])
    );
    assert_eq!(got["unknown"], "PERMISSION_DENIED", "{got}");
    assert!(
        got["unknown_details"]
            .as_str()
            .unwrap()
            .starts_with("unknown_provider"),
        "{got}"
    );
    assert!(!err.contains(TOKEN) && !out.contains(TOKEN));
}

/// curl, as module teams run it: by default a client offering h2 and HTTP/1.1 gets HTTP/1.1
/// (the hub cannot send `100 Continue` over h2); with `proxy.prefer_h2` it gets h2, and the call
/// goes through the pipeline (credential injected, upload byte exact).
#[tokio::test]
async fn curl_gets_h2_only_when_the_hub_prefers_it() {
    if !have("curl", "--version") {
        return;
    }
    for prefer in [false, true] {
        let pki = TestPki::new();
        let Some(hub) = hub_tests::harness::HubBuilder::new(Backend::Sqlite, &pki)
            .configure(|c| c.proxy.prefer_h2 = prefer)
            .start()
            .await
        else {
            return;
        };
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        hub.add_provider(provider_json(
            "curl-h2",
            HOST,
            &fake,
            json!({"type": "bearer", "token": "curl_h2_token"}),
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &hub.ca_pem).unwrap();
        let mut c = Command::new("curl");
        c.args(["-sS", "--http2", "-x", &hub.proxy_url(), "--cacert"])
            .arg(&ca)
            .args([
                "-w",
                "\n%{http_version} %{http_code}",
                "--data-binary",
                "hello-h2",
            ])
            .arg(format!("https://{HOST}:{}/curl/h2", fake.port));
        let (out, err) = run(c).await;
        let last = out.lines().last().unwrap_or_default().to_owned();
        let want = if prefer { "2 200" } else { "1.1 200" };
        assert_eq!(last, want, "prefer_h2={prefer}: {out}\n{err}");
        let got = fake.requests();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, b"hello-h2");
        assert_eq!(got[0].header("authorization"), Some("Bearer curl_h2_token"));
    }
}

/// `proxy.callers: required`: each runtime sends the caller credential the documented way
/// (docs/MODULES.md "Caller credentials") and gets through; without it, 407.
#[tokio::test]
async fn real_clients_send_the_caller_credential_from_their_proxy_settings() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start_callers_required(Backend::Sqlite, &pki).await else {
        return;
    };
    let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
    let provider = hub
        .add_provider(provider_json(
            "clients",
            HOST,
            &fake,
            json!({"type": "bearer", "token": "clients_secret_token"}),
        ))
        .await;
    let (_, token) = hub.caller_granted_everything("billing", provider.id).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &hub.ca_pem).unwrap();
    let body = dir.path().join("body.bin");
    std::fs::write(&body, b"{}").unwrap();
    let with_creds = format!("http://billing:{token}@{}", hub.proxy_addr);
    let url = |p: &str| format!("https://{HOST}:{}{p}", fake.port);
    let mut expected = 0;

    if have("curl", "--version") {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg("-x")
            .arg(&with_creds)
            .arg(url("/curl"));
        let (out, _) = run(c).await;
        assert_eq!(out.trim(), "200", "curl with user:token in -x");
        expected += 1;
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--cacert",
        ])
        .arg(&ca)
        .arg("-x")
        .arg(hub.proxy_url())
        .arg(url("/curl-anon"));
        // curl reports the CONNECT's 407 as its own failure (exit 56); %{http_connect} has it.
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "407");
    }
    if have("python3", "--version") {
        let mut c = Command::new("python3");
        c.arg(clients_dir().join("hub_client.py"))
            .arg(&with_creds)
            .arg(&ca)
            .arg(url("/py"))
            .arg(&body)
            .arg("plain");
        let (out, err) = run(c).await;
        let answer: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        assert_eq!(
            answer["status"], 200,
            "requests with user:token in proxies: {out}"
        );
        expected += 1;
    }
    if have("java", "-version") {
        let mut c = Command::new("java");
        c.arg("-Djdk.http.auth.tunneling.disabledSchemes=")
            .arg(clients_dir().join("HubClient.java"))
            .arg(hub.proxy_addr.ip().to_string())
            .arg(hub.proxy_addr.port().to_string())
            .arg(&ca)
            .arg(url("/java"))
            .arg(&body)
            .arg("plain")
            .env("HUB_CALLER", "billing")
            .env("HUB_CALLER_TOKEN", &token);
        let (out, err) = run(c).await;
        assert!(
            out.starts_with("200 "),
            "Java with an Authenticator: {out}\n{err}"
        );
        expected += 1;
    }
    if let Some(node_path) = hub_tests::client::node_path_with(&["https-proxy-agent"]) {
        // https-proxy-agent sends the URL's user:token as Basic on the CONNECT.
        let script = r#"
const fs = require('fs'), https = require('https');
const { HttpsProxyAgent } = require('https-proxy-agent');
const [proxy, ca, url] = process.argv.slice(1);
const agent = new HttpsProxyAgent(proxy, { ca: fs.readFileSync(ca) });
https.get(url, { agent, ca: fs.readFileSync(ca) }, (res) => {
  res.resume();
  res.on('end', () => { console.log(res.statusCode); process.exit(0); });
}).on('error', (e) => { console.error(e.message); process.exit(1); });
"#;
        let mut c = Command::new("node");
        c.arg("-e")
            .arg(script)
            .arg(&with_creds)
            .arg(&ca)
            .arg(url("/node"))
            .env("NODE_PATH", node_path);
        let (out, _) = run(c).await;
        assert_eq!(
            out.trim(),
            "200",
            "node https-proxy-agent with user:token in the URL"
        );
        expected += 1;
    }
    assert_eq!(fake.requests().len(), expected);
    for r in fake.requests() {
        assert!(r.header("proxy-authorization").is_none());
        assert_eq!(
            r.header("authorization"),
            Some("Bearer clients_secret_token")
        );
    }
    assert!(!hub_tests::logs::contents().contains(&token));
}

/// An OAuth2 provider as a module meets it with curl: a dummy key in, the hub's access token at
/// the provider; a token the provider revokes mid-life costs the module nothing (one refresh,
/// one more attempt); the body curl prints holds no token even when the provider echoes it.
#[tokio::test]
async fn curl_through_an_oauth2_provider_gets_the_hubs_token() {
    if !have("curl", "--version") {
        return;
    }
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let idp = hub_tests::FakeIdp::start(pki.server_config.clone()).await;
    let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider_json(
        "curl-oauth",
        "api.oauth.test",
        &fake,
        json!({"type": "oauth2_client_credentials", "tokenUrl": idp.token_url(),
               "clientId": "hub", "clientSecret": "curl_client_secret_1234"}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &hub.ca_pem).unwrap();
    let url = format!("https://api.oauth.test:{}/v1/me", fake.port);
    let curl = || {
        let mut c = Command::new("curl");
        c.args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-x", &hub.proxy_url(), "-H", "Authorization: Bearer dummy"])
            .arg(&url);
        c
    };
    let (out, _) = run(curl()).await;
    assert!(out.ends_with("\n200"), "{out}");
    fake.script([hub_tests::Mode::Status(401), hub_tests::Mode::Echo(200)]);
    let (out, _) = run(curl()).await;
    assert!(out.ends_with("\n200"), "{out}");
    assert!(
        !out.contains(&idp.marker),
        "the echoed token is masked: {out}"
    );
    let seen: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    let token = |n: usize| format!("Bearer at-{n}-{}", idp.marker);
    assert_eq!(seen, vec![token(1), token(1), token(2)]);
    assert_eq!(idp.calls().len(), 2);
}
