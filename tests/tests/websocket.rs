//! WebSocket through the hub: a real echo provider (tokio-tungstenite over TLS or plain TCP on
//! loopback) and real clients (tokio-tungstenite in a CONNECT tunnel, the same over a hand-made
//! absolute-form handshake, Python `websockets` and Node's `ws` with `https-proxy-agent` through
//! their proxy support; those two skip when missing, and fail under `CI=true`). The provider
//! records the upgrade request's headers: the credential is the hub's, injected on the upgrade.

use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hub_tests::client::raw_tunnel;
use hub_tests::{Backend, TestHub, TestPki};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

/// The headers of each upgrade request a provider got, lowercase names.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

const TOKEN: &str = "tok_WS_SECRET_3f9a";

/// A WebSocket echo provider: echoes text and binary messages; with `refuse` set, answers the
/// upgrade with that status instead.
struct WsProvider {
    port: u16,
    tls: bool,
    seen: Seen,
    refuse: Arc<AtomicU16>,
    /// Upgraded connections whose echo loop has ended.
    ended: Arc<AtomicUsize>,
}

impl WsProvider {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicU16::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (s, r, t, e) = (seen.clone(), refuse.clone(), tls.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (seen, refuse, ended) = (s.clone(), r.clone(), e.clone());
                match &t {
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                echo(tls, seen, refuse, ended).await;
                            }
                        });
                    }
                    None => {
                        tokio::spawn(echo(tcp, seen, refuse, ended));
                    }
                }
            }
        });
        Self {
            port,
            tls: tls.is_some(),
            seen,
            refuse,
            ended,
        }
    }

    fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.port)
    }

    fn seen(&self) -> Vec<Vec<(String, String)>> {
        self.seen.lock().unwrap().clone()
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    seen: Seen,
    refuse: Arc<AtomicU16>,
    ended: Arc<AtomicUsize>,
) {
    // The signature is tungstenite's callback.
    #[allow(clippy::result_large_err)]
    let record = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        seen.lock().unwrap().push(headers);
        match refuse.load(Ordering::Relaxed) {
            0 => Ok(resp),
            status => {
                let mut e = ErrorResponse::new(Some("refused by the provider".to_owned()));
                *e.status_mut() = status.try_into().unwrap();
                Err(e)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
    ended.fetch_add(1, Ordering::Relaxed);
}

fn provider(
    name: &str,
    host: &str,
    p: &WsProvider,
    config: serde_json::Value,
) -> serde_json::Value {
    let mut c = json!({"allowPrivateNetwork": true, "allowInsecureUpstream": !p.tls});
    for (k, v) in config.as_object().unwrap() {
        c[k] = v.clone();
    }
    json!({
        "name": name,
        "hosts": [host],
        "baseUrl": p.base_url(),
        "auth": {"type": "bearer", "token": TOKEN},
        "config": c,
    })
}

type Tunnelled = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A module's `wss://` connection: CONNECT through the hub, TLS trusting the hub CA, the
/// WebSocket handshake by tokio-tungstenite.
async fn wss(hub: &TestHub, host: &str, path: &str) -> Result<Tunnelled, WsError> {
    let tls = raw_tunnel(hub, host, 443).await;
    let connect = client_async(format!("wss://{host}{path}"), tls);
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("the handshake ends in time")?;
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    Ok(ws)
}

/// Sends text, binary and a 1 MiB binary message and checks each echo.
async fn echo_both_ways<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for msg in [
        Message::text("hello through the hub"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("é".repeat(10_000)),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the echo arrives")
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}

fn status_of(e: WsError) -> (u16, String) {
    match e {
        WsError::Http(resp) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected an HTTP answer, got {other:?}"),
    }
}

/// `integration_upgraded_open` for `provider`'s WebSockets.
async fn open_gauge(hub: &TestHub, provider: &str) -> i64 {
    let text = reqwest::get(format!("http://{}/metrics", hub.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("integration_upgraded_open{"))
        .filter(|l| l.contains(&format!("provider=\"{provider}\"")))
        .filter(|l| l.contains("kind=\"websocket\""))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The access lines of `provider`, as JSON, once at least `n` are written.
async fn access_lines(provider: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = hub_tests::logs::contents()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["target"] == "hub::access" && l["provider"] == provider)
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hub_with(pki: &TestPki) -> Option<TestHub> {
    TestHub::start(Backend::Sqlite, pki).await
}

#[tokio::test]
async fn echo_in_a_tunnel_with_the_credential_injected_on_the_upgrade_and_logged_at_close() {
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider("ws-tunnel", "ws.tunnel.test", &p, json!({})))
        .await;
    assert_eq!(open_gauge(&hub, "ws-tunnel").await, 0);
    let mut ws = wss(&hub, "ws.tunnel.test", "/v1/stream?x=1").await.unwrap();
    assert_eq!(open_gauge(&hub, "ws-tunnel").await, 1);
    echo_both_ways(&mut ws).await;
    ws.close(None).await.unwrap();
    // The close handshake completes through the hub, then the connection ends.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the connection ends after the close handshake");

    let seen = p.seen();
    assert_eq!(seen.len(), 1);
    let header = |name: &str| {
        seen[0]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{seen:?}"
    );
    assert!(header("sec-websocket-key").is_some());
    assert_eq!(header("sec-websocket-version"), Some("13"));
    assert_eq!(
        header("host"),
        Some(format!("localhost:{}", p.port).as_str())
    );
    assert!(header("x-request-id").is_some());

    let lines = access_lines("ws-tunnel", 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["kind"], "websocket", "{line}");
    assert_eq!(line["tunnel"], true, "{line}");
    assert_eq!(line["cut"], "", "{line}");
    let mib = 1024 * 1024;
    assert!(line["bytes_in"].as_u64().unwrap() > mib, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > mib, "{line}");
    assert!(line["total_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert_eq!(open_gauge(&hub, "ws-tunnel").await, 0);
    assert!(
        !hub_tests::logs::contents().contains(TOKEN),
        "the provider's token is in a log line"
    );
}

/// The 101 head of an absolute-form upgrade, read byte by byte (frames may follow it).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("the head arrives")
            .unwrap();
        assert_eq!(n, 1, "the connection ended in the head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn echo_in_absolute_form_to_a_plain_provider() {
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(None).await;
    hub.add_provider(provider("ws-plain", "ws.plain.test", &p, json!({})))
        .await;
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    // What an HTTP proxy client (e.g. Node's http-proxy-agent) sends for ws://.
    tcp.write_all(
        b"GET http://ws.plain.test/echo HTTP/1.1\r\nHost: ws.plain.test\r\n\
          Upgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    // RFC 6455 §1.3's example key and its accept value: the provider's answer, relayed.
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(lower.contains("upgrade: websocket"), "{head}");
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    echo_both_ways(&mut ws).await;
    ws.close(None).await.unwrap();
    let seen = p.seen();
    assert_eq!(
        seen[0]
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone()),
        Some(format!("Bearer {TOKEN}"))
    );
    let lines = access_lines("ws-plain", 1).await;
    assert_eq!(lines[0]["status"], 101, "{:?}", lines[0]);
    assert_eq!(lines[0]["tunnel"], false);
    assert_eq!(lines[0]["kind"], "websocket");
}

#[tokio::test]
async fn a_refused_upgrade_is_the_modules_answer_and_nothing_hangs() {
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    p.refuse.store(403, Ordering::Relaxed);
    hub.add_provider(provider("ws-refused", "ws.refused.test", &p, json!({})))
        .await;
    let (status, _) = status_of(wss(&hub, "ws.refused.test", "/").await.unwrap_err());
    assert_eq!(status, 403);
    let lines = access_lines("ws-refused", 1).await;
    assert_eq!(lines[0]["status"], 403, "{:?}", lines[0]);
    assert_eq!(open_gauge(&hub, "ws-refused").await, 0);
    // The provider failing its side is a failure, answered as any call's.
    p.refuse.store(503, Ordering::Relaxed);
    let (status, body) = status_of(wss(&hub, "ws.refused.test", "/").await.unwrap_err());
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_failed"), "{body}");
    // An upgrade cannot be answered later.
    p.refuse.store(0, Ordering::Relaxed);
    let mut req = "wss://ws.refused.test/".into_client_request().unwrap();
    req.headers_mut()
        .insert("prefer", "respond-async".parse().unwrap());
    let tls = raw_tunnel(&hub, "ws.refused.test", 443).await;
    let (status, body) = status_of(client_async(req, tls).await.unwrap_err());
    assert_eq!(status, 400, "{body}");
    assert_eq!(p.seen().len(), 2, "the provider never saw it");
}

#[tokio::test]
async fn upgrades_past_the_providers_cap_get_429() {
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider(
        "ws-capped",
        "ws.capped.test",
        &p,
        json!({"maxUpgradedConnections": 1}),
    ))
    .await;
    let mut first = wss(&hub, "ws.capped.test", "/").await.unwrap();
    let (status, body) = status_of(wss(&hub, "ws.capped.test", "/").await.unwrap_err());
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_upgraded_connections"), "{body}");
    // The first one still works; once it is closed, its slot is free again.
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_gauge(&hub, "ws-capped").await != 0 {
        assert!(Instant::now() < deadline, "the slot is freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = wss(&hub, "ws.capped.test", "/").await.unwrap();
    echo_both_ways(&mut again).await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_hub_after_the_idle_timeout() {
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider(
        "ws-idle",
        "ws.idle.test",
        &p,
        json!({"upgradedIdleTimeoutMs": 300}),
    ))
    .await;
    let mut ws = wss(&hub, "ws.idle.test", "/").await.unwrap();
    // Traffic within the timeout keeps it open.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        assert!(ws.next().await.unwrap().is_ok());
    }
    let silent = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the hub closes the connection");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let after = silent.elapsed();
    assert!(after >= Duration::from_millis(250), "{after:?}");
    let lines = access_lines("ws-idle", 1).await;
    assert_eq!(lines[0]["cut"], "idle_timeout", "{:?}", lines[0]);
    assert_eq!(lines[0]["status"], 101);
    assert_eq!(open_gauge(&hub, "ws-idle").await, 0);
}

#[tokio::test]
async fn python_websockets_through_the_hub() {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sys, websockets; sys.exit(int(websockets.__version__.split('.')[0]) < 15)",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "python3 websockets >= 15 is missing: .ci/run installs it"
        );
        println!("SKIPPED: python3 websockets >= 15 is not installed");
        return;
    }
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider("ws-python", "ws.python.test", &p, json!({})))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &hub.ca_pem).unwrap();
    let script = r#"
import asyncio, os, ssl, sys
from websockets.asyncio.client import connect

async def main():
    ctx = ssl.create_default_context(cafile=os.environ["HUB_CA"])
    # The module's configuration: HTTPS_PROXY, as for any HTTPS call.
    async with connect("wss://ws.python.test/chat", ssl=ctx, open_timeout=10) as ws:
        await ws.send("hello from python")
        print(await ws.recv())
        await ws.send(b"\x00\x01binary")
        print((await ws.recv()).hex())

asyncio.run(main())
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .env("HUB_CA", &ca)
        .env("HTTPS_PROXY", hub.proxy_url())
        .env("https_proxy", hub.proxy_url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "hello from python\n000162696e617279\n");
    assert_eq!(
        p.seen()[0]
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone()),
        Some(format!("Bearer {TOKEN}"))
    );
    let lines = access_lines("ws-python", 1).await;
    assert_eq!(lines[0]["status"], 101, "{:?}", lines[0]);
    assert_eq!(lines[0]["kind"], "websocket");
}

#[tokio::test]
async fn a_module_that_vanishes_frees_its_slot_and_the_providers_connection() {
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider("ws-vanish", "ws.vanish.test", &p, json!({})))
        .await;
    let mut ws = wss(&hub, "ws.vanish.test", "/").await.unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    assert_eq!(open_gauge(&hub, "ws-vanish").await, 1);
    // No close frame, no close_notify: the socket just goes away.
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_gauge(&hub, "ws-vanish").await != 0 {
        assert!(Instant::now() < deadline, "the slot is freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = access_lines("ws-vanish", 1).await;
    assert_eq!(lines[0]["status"], 101, "{:?}", lines[0]);
    while p.ended.load(Ordering::Relaxed) != 1 {
        assert!(Instant::now() < deadline, "the provider's side is closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn node_ws_with_https_proxy_agent_through_the_hub() {
    let Some(node_path) = hub_tests::client::node_path_with(&["ws", "https-proxy-agent"]) else {
        return;
    };
    let pki = TestPki::new();
    let Some(hub) = hub_with(&pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    hub.add_provider(provider("ws-node", "ws.node.test", &p, json!({})))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &hub.ca_pem).unwrap();
    // As docs/MODULES.md tells a Node module to configure it.
    let script = r#"
const fs = require('fs');
const WebSocket = require('ws');
const { HttpsProxyAgent } = require('https-proxy-agent');
const ws = new WebSocket('wss://ws.node.test/chat', {
  agent: new HttpsProxyAgent(process.env.HTTPS_PROXY),
  ca: fs.readFileSync(process.env.HUB_CA),
});
const got = [];
ws.on('open', () => ws.send('hello from node'));
ws.on('message', (data, binary) => {
  got.push(data.toString());
  if (got.length === 1) ws.send(Buffer.from([0, 1, 2]));
  else ws.close(1000);
});
ws.on('close', () => { console.log(got.join('|')); process.exit(0); });
ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
setTimeout(() => { console.error('timeout'); process.exit(2); }, 10000);
"#;
    let mut cmd = Command::new("node");
    cmd.args(["-e", script])
        .env("NODE_PATH", node_path)
        .env("HUB_CA", &ca)
        .env("HTTPS_PROXY", hub.proxy_url());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "hello from node|\u{0}\u{1}\u{2}\n");
    assert_eq!(
        p.seen()[0]
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone()),
        Some(format!("Bearer {TOKEN}"))
    );
    let lines = access_lines("ws-node", 1).await;
    assert_eq!(lines[0]["status"], 101, "{:?}", lines[0]);
    assert_eq!(lines[0]["cut"], "", "{:?}", lines[0]);
}

/// A WebSocket outlives the request that opened it: revoking its caller ends it (and a
/// passthrough tunnel likewise) within the registry propagation bound, with `revoked` in the
/// access line.
#[tokio::test]
async fn revoking_the_caller_ends_its_open_websocket() {
    let pki = TestPki::new();
    let Some(hub) = TestHub::start_callers_required(Backend::Sqlite, &pki).await else {
        return;
    };
    let p = WsProvider::start(Some(pki.server_config.clone())).await;
    let rec = hub
        .add_provider(provider("ws-revoke", "ws.revoke.test", &p, json!({})))
        .await;
    let (caller, token) = hub.caller_granted_everything("streamer", rec.id).await;
    // CONNECT with the caller's credential, then the WebSocket handshake inside.
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    tcp.write_all(
        format!(
            "CONNECT ws.revoke.test:443 HTTP/1.1\r\nHost: ws.revoke.test:443\r\n\
             Proxy-Authorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let tls = tokio_rustls::TlsConnector::from(hub_tests::client::hub_tls_config(&hub))
        .connect(
            rustls::pki_types::ServerName::try_from("ws.revoke.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut ws, resp) = client_async("wss://ws.revoke.test/echo", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    hub.revoke_caller(caller).await;
    let revoked = Instant::now();
    // No sync: the proxy's poller installs the revision (100 ms on SQLite here).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket of a revoked caller is ended");
    assert!(
        revoked.elapsed() <= Duration::from_secs(2),
        "{:?}",
        revoked.elapsed()
    );
    let lines = access_lines("ws-revoke", 1).await;
    assert_eq!(lines[0]["cut"], "revoked", "{}", lines[0]);
    assert_eq!(lines[0]["caller"], "streamer");
}
