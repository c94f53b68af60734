//! `hub up` as a newcomer runs it: a fresh directory, no configuration, no servers. It must
//! create its data directory, CA and development keys, answer on the proxy, admin and metrics
//! listeners, never print its secrets, and stop cleanly on SIGTERM.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::free_ports;

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(port: u16, raw: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn hub_up_starts_from_nothing_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let [proxy, admin, metrics] = free_ports::<3>();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("up")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HUB_PROXY_LISTEN", format!("127.0.0.1:{proxy}"))
        .env("HUB_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("HUB_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        // Access lines batched far beyond this test: only a later line (shutdown logs some) or
        // the flush at exit can write them.
        .env("HUB_LOG_ACCESS_FLUSH_MS", "10000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(proxy);
    wait_for(admin);
    wait_for(metrics);

    let data = dir.path().join("data");
    for f in [
        "ca.pem",
        "ca-key.pem",
        "master.key",
        "admin.token",
        "hub.db",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    for f in ["ca-key.pem", "master.key", "admin.token"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} is {mode:o}");
    }
    assert!(
        http_get(
            admin,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .starts_with("HTTP/1.1 200")
    );
    let ca = http_get(
        admin,
        "GET /api/v1/integrations/ca.pem HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let denied = http_get(
        proxy,
        "GET http://api.nobody.test/ HTTP/1.1\r\nHost: api.nobody.test\r\n\r\n",
    );
    assert!(
        denied.starts_with("HTTP/1.1 403") && denied.contains("unknown_provider"),
        "{denied}"
    );
    let m = http_get(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(m.contains("integration_requests_total"), "{m}");

    // SIGTERM: a clean, prompt exit.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "hub did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");

    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("GENERATED A DEVELOPMENT MASTER KEY"),
        "the dev key is announced loudly"
    );
    assert!(logs.contains("ca.pem"), "the log says where the CA is");
    assert!(
        logs.lines().any(|l| l.contains(r#""target":"hub::access""#)
            && l.contains(r#""code":"unknown_provider""#)),
        "the refused call's access line is not lost in the batch"
    );
    let key_line = std::fs::read_to_string(data.join("master.key")).unwrap();
    let key_b64 = key_line.trim().rsplit(':').next().unwrap().to_owned();
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let ca_key = std::fs::read_to_string(data.join("ca-key.pem")).unwrap();
    let ca_key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!logs.contains(&key_b64), "master key in the logs");
    assert!(!logs.contains(token.trim()), "admin token in the logs");
    assert!(!logs.contains(&ca_key_body[..32]), "CA key in the logs");
}
