//! What a module does: a real HTTP client going through the hub as its proxy, trusting the hub CA.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{FakeProvider, TestHub};

/// A reqwest client with the hub as proxy for every scheme and the hub CA as its only root.
pub fn client(hub: &TestHub) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(hub.ca_pem.as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(hub.proxy_url()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A provider registration for `fake` claiming `host` (loopback allowed, http allowed for a
/// plain fake).
pub fn provider_json(
    name: &str,
    host: &str,
    fake: &FakeProvider,
    auth: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "hosts": [host],
        "baseUrl": fake.base_url(),
        "auth": auth,
        "config": {"allowPrivateNetwork": true, "allowInsecureUpstream": !fake.tls}
    })
}

/// Asserts a problem+json answer; returns its status and body.
pub async fn problem(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "status {status}"
    );
    (status, resp.json().await.unwrap())
}

/// Opens a raw tunnel: CONNECT, then TLS with the hub CA, returns the TLS stream.
/// A TLS client config trusting only the hub CA (its session cache enables resumption).
pub fn hub_tls_config(hub: &TestHub) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(pem_der(
            &hub.ca_pem,
        )))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(cfg)
}

pub async fn raw_tunnel(
    hub: &TestHub,
    host: &str,
    port: u16,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    raw_tunnel_with(hub, host, port, hub_tls_config(hub)).await
}

/// Opens a raw tunnel: CONNECT, then TLS with `cfg`.
pub async fn raw_tunnel_with(
    hub: &TestHub,
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(hub.proxy_addr).await.unwrap();
    tcp.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let connector = tokio_rustls::TlsConnector::from(cfg);
    connector
        .connect(
            rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Every PEM block's DER in `pem` (a chain, or a key).
pub fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut body = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            body.clear();
        } else if line.starts_with("-----END") {
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(&body)
                    .expect("PEM base64"),
            );
        } else {
            body.push_str(line.trim());
        }
    }
    out
}

pub fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

pub async fn read_response<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
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

/// A TLS client config trusting the hub CA that offers only `h2` (as gRPC clients do).
pub fn hub_h2_tls_config(hub: &TestHub) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*hub_tls_config(hub)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// An HTTP/2 module connection through the hub: CONNECT `host:port`, TLS (ALPN h2) with the hub
/// CA, the h2 handshake; the connection is driven in the background.
pub async fn h2_module(
    hub: &TestHub,
    host: &str,
    port: u16,
) -> h2::client::SendRequest<bytes::Bytes> {
    let tls = raw_tunnel_with(hub, host, port, hub_h2_tls_config(hub)).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the hub speaks h2"
    );
    let (send, conn) = h2::client::handshake(tls)
        .await
        .expect("h2 handshake with the hub");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// `NODE_PATH` holding the global Node modules when node can `require` every one of `modules`
/// there (`.ci/run` installs `ws` and `https-proxy-agent` globally), or `None`: a skip here, a
/// failure under `CI=true`.
pub fn node_path_with(modules: &[&str]) -> Option<String> {
    use std::process::Command;
    let root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let script: String = modules.iter().map(|m| format!("require('{m}');")).collect();
    let ok = root.as_ref().is_some_and(|root| {
        Command::new("node")
            .args(["-e", &script])
            .env("NODE_PATH", root)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "node with {modules:?} is missing: .ci/run installs them"
        );
        println!("SKIPPED: node or one of {modules:?} is not installed");
        return None;
    }
    root
}
