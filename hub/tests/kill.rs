//! A hub killed with SIGKILL right after answering 502 still has that call's DLQ entry after a
//! restart: the proxy answers only once the entry is spooled and fsync'd.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::free_ports;

fn start(dir: &Path, ports: (u16, u16, u16)) -> Child {
    // Both runs append to one log, shown when the hub does not come up.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hub.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("up")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HUB_PROXY_LISTEN", format!("127.0.0.1:{}", ports.0))
        .env("HUB_ADMIN_LISTEN", format!("127.0.0.1:{}", ports.1))
        .env("HUB_METRICS_LISTEN", format!("127.0.0.1:{}", ports.2))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    for port in [ports.0, ports.1] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nothing listening on {port}; hub exited: {:?}; its log:\n{}",
                exited,
                std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    child
}

fn request(port: u16, raw: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the head plus a Content-Length body (the proxy keeps the connection open).
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let cl = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + cl {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
        .map(|l| l[name.len() + 1..].trim())
}

#[test]
fn a_dlq_entry_survives_sigkill_right_after_the_502() {
    let dir = tempfile::tempdir().unwrap();
    let [proxy, admin, metrics, dead] = free_ports::<4>();
    let ports = (proxy, admin, metrics);
    let mut hub = start(dir.path(), ports);
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    // Nothing listens on `dead`: every attempt fails to connect.
    let body = serde_json::json!({
        "name": "dead", "hosts": ["dead.kill.test"], "baseUrl": format!("http://127.0.0.1:{dead}"),
        "auth": {"type": "bearer", "token": "kill-test-secret"},
        "config": {"allowInsecureUpstream": true, "allowPrivateNetwork": true, "maxAttempts": 1}
    })
    .to_string();
    let created = request(
        ports.1,
        &format!(
            "POST /api/v1/integrations/providers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        ),
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");

    let call = format!(
        "GET http://dead.kill.test:{dead}/v1/x HTTP/1.1\r\nHost: dead.kill.test:{dead}\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        let resp = request(ports.0, &call);
        if !resp.contains("unknown_provider") {
            break resp;
        }
        assert!(
            Instant::now() < deadline,
            "provider never reached the proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    let id = header(&resp, "x-hub-dlq-id")
        .expect("502 names its DLQ entry")
        .to_owned();
    hub.kill().unwrap(); // SIGKILL, no shutdown of any kind
    hub.wait().unwrap();

    let hub = start(dir.path(), ports);
    let url = format!("sqlite://{}", dir.path().join("data/hub.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let found = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dlq_entries WHERE id = ?")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
            if n == 1 || Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut hub = hub;
    let _ = hub.kill();
    let _ = hub.wait();
    assert_eq!(
        found, 1,
        "the entry told to the caller is there after SIGKILL and restart"
    );
}
