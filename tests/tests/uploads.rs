//! Large uploads through the hub in bounded memory: 8 concurrent 100 MiB bodies, sized and
//! chunked, in tunnels and in absolute-form, hashed on both ends. Alone in its test binary so the
//! process's peak RSS is this test's (other suites run their own processes).

use std::time::{Duration, Instant};

use hub_tests::client::{provider_json, raw_tunnel};
use hub_tests::raw::{Conn, read_response_within};
use hub_tests::{Backend, FakeProvider, TestHub, TestPki};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TLS_HOST: &str = "api.big.test";
const PLAIN_HOST: &str = "plain.big.test";

struct Setup {
    hub: TestHub,
    tls: FakeProvider,
    plain: FakeProvider,
}

impl Setup {
    async fn open(&self, tunnel: bool) -> Conn {
        if tunnel {
            Box::new(raw_tunnel(&self.hub, TLS_HOST, self.tls.port).await)
        } else {
            Box::new(TcpStream::connect(self.hub.proxy_addr).await.unwrap())
        }
    }

    fn target(&self, tunnel: bool, path: &str) -> (String, String) {
        if tunnel {
            (path.to_owned(), format!("{TLS_HOST}:{}", self.tls.port))
        } else {
            let host = format!("{PLAIN_HOST}:{}", self.plain.port);
            (format!("http://{host}{path}"), host)
        }
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `len` bytes of seeded data as the body of one upload on `conn`, never holding it whole;
/// returns the SHA-256 of what was sent.
async fn stream_upload(
    conn: &mut Conn,
    head: String,
    len: usize,
    chunked: bool,
    seed: u64,
) -> String {
    use rand::RngCore;
    use sha2::Digest;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hasher = sha2::Sha256::new();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut block = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        rng.fill_bytes(&mut block[..n]);
        hasher.update(&block[..n]);
        if chunked {
            conn.write_all(format!("{n:x}\r\n").as_bytes())
                .await
                .unwrap();
            conn.write_all(&block[..n]).await.unwrap();
            conn.write_all(b"\r\n").await.unwrap();
        } else {
            conn.write_all(&block[..n]).await.unwrap();
        }
        left -= n;
    }
    if chunked {
        conn.write_all(b"0\r\n\r\n").await.unwrap();
    }
    conn.flush().await.unwrap();
    hex::encode(hasher.finalize())
}

#[tokio::test]
async fn eight_concurrent_100_mib_uploads_stream_through_in_bounded_memory() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start(Backend::Sqlite, &pki).await else {
        return;
    };
    let tls = FakeProvider::start(Some(pki.server_config.clone())).await;
    let plain = FakeProvider::start(None).await;
    for (name, host, fake) in [("big", TLS_HOST, &tls), ("bigplain", PLAIN_HOST, &plain)] {
        let mut p = provider_json(name, host, fake, json!({"type": "none"}));
        p["config"]["timeoutMs"] = json!(30000);
        p["config"]["totalTimeoutMs"] = json!(600000);
        hub.add_provider(p).await;
    }
    let s = Setup { hub, tls, plain };
    const LEN: usize = 100 * 1024 * 1024;
    let before = peak_rss_kib();
    let started = Instant::now();
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let tunnel = i % 2 == 0;
            let chunked = i % 4 < 2;
            let mut conn = s.open(tunnel).await;
            let (target, host) = s.target(tunnel, &format!("/big/{i}"));
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_owned()
            } else {
                format!("Content-Length: {LEN}")
            };
            let head = format!("PUT {target} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n\r\n");
            let sent = stream_upload(&mut conn, head, LEN, chunked, i).await;
            let resp = read_response_within(&mut conn, Duration::from_secs(120))
                .await
                .expect("an answer");
            assert_eq!(resp.status, 200, "{}", resp.head);
            assert_eq!(
                resp.json()["sha256"],
                sent,
                "upload {i} (tunnel {tunnel}, chunked {chunked})"
            );
            assert_eq!(resp.json()["len"], LEN);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let growth_mib = (peak_rss_kib() - before) / 1024;
    println!(
        "8 x 100 MiB in {:.1} s; peak RSS grew {growth_mib} MiB",
        started.elapsed().as_secs_f64()
    );
    // 800 MiB went through; the hub holds at most a replay buffer (1 MiB) per upload plus the
    // buffers of the connections, the fake provider keeps 1 MiB of each body, the clients a
    // 256 KiB block each (~33 MiB measured). Buffering even one body whole would pass 100 MiB.
    assert!(growth_mib < 64, "peak RSS grew {growth_mib} MiB");
    for fake in [&s.tls, &s.plain] {
        assert_eq!(fake.malformed(), Vec::<String>::new());
        assert_eq!(fake.requests().len(), 4);
    }
}
