//! Load for `bench/run` where oha has no mode: HTTP/2 with many streams over few connections
//! (`h2`) and WebSocket echo round trips (`ws`), through a CONNECT proxy or direct; and the
//! WebSocket echo provider (`ws-echo`). Prints oha's JSON shape (the fields `bench/report.py`
//! reads), so the table treats these modes like the others.
//!
//! ```text
//! loadgen h2 --url https://api.bench.test:18443/json [--proxy 127.0.0.1:18401] --ca ca.pem \
//!     --conns 4 --streams 16 --seconds 10 [--header 'Authorization: Bearer x']
//! loadgen ws --url wss://ws.bench.test:18444/ [--proxy ...] --ca ca.pem --conns 64 --seconds 10
//! loadgen ws-echo --listen 127.0.0.1:18444 --cert leaf.pem --key key.pem
//! ```
//! Every run is bounded by `--seconds` (plus 10 s to wind down).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args(BTreeMap<String, Vec<String>>);

impl Args {
    fn parse() -> (String, Self) {
        let mut it = std::env::args().skip(1);
        let mode = it.next().unwrap_or_default();
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while let Some(k) = it.next() {
            let k = k.trim_start_matches("--").to_owned();
            let v = it.next().unwrap_or_else(|| panic!("--{k} needs a value"));
            map.entry(k).or_default().push(v);
        }
        (mode, Self(map))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.last()).map(String::as_str)
    }
    fn req(&self, k: &str) -> &str {
        self.get(k).unwrap_or_else(|| panic!("--{k} is required"))
    }
    fn num(&self, k: &str, default: u64) -> u64 {
        self.get(k)
            .map_or(default, |v| v.parse().expect("a number"))
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0.get(k).cloned().unwrap_or_default()
    }
}

fn tls_client(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read_to_string(ca).expect("the CA file");
    for der in hub_tests::client::pem_ders(&pem) {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TCP to the proxy and CONNECT, or TCP straight to the target; then TLS for `host`.
async fn open(
    proxy: Option<&str>,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = match proxy {
        Some(p) => {
            let mut tcp = TcpStream::connect(p).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(
                format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut b).await? == 0 || head.len() > 4096 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head).into_owned(),
                ));
            }
            tcp
        }
        None => {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            tcp
        }
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

fn host_port(url: &str) -> (String, u16, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (auth, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (h, p) = auth.rsplit_once(':').expect("host:port in --url");
    (h.to_owned(), p.parse().unwrap(), format!("/{path}"))
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latencies.extend(o.latencies);
        for (k, v) in o.codes {
            *self.codes.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn print(mut self, took: Duration) {
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies[i].as_secs_f64()
        };
        let n = self.codes.values().sum::<u64>();
        let out = serde_json::json!({
            "summary": {"requestsPerSec": n as f64 / took.as_secs_f64()},
            "latencyPercentiles": {"p50": pct(0.5), "p99": pct(0.99)},
            "statusCodeDistribution": self.codes.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "errorDistribution": self.errors,
        });
        println!("{out}");
    }
}

async fn h2_mode(a: &Args) {
    let (host, port, path) = host_port(a.req("url"));
    let tls = tls_client(a.req("ca"), &[b"h2"]);
    let (conns, streams) = (a.num("conns", 4), a.num("streams", 16));
    let until = Instant::now() + Duration::from_secs(a.num("seconds", 10));
    let headers: Vec<(String, String)> = a
        .all("header")
        .iter()
        .filter_map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let tls = tls.clone();
        let stream = open(a.get("proxy"), &host, port, tls)
            .await
            .expect("connection");
        let (send, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        for _ in 0..streams {
            let send = send.clone();
            let uri = format!("https://{host}:{port}{path}");
            let headers = headers.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                while Instant::now() < until {
                    let mut req = http::Request::get(&uri);
                    for (k, v) in &headers {
                        req = req.header(k, v);
                    }
                    let sent = Instant::now();
                    let r = async {
                        let mut ready = send.clone().ready().await?;
                        let (resp, _) = ready.send_request(req.body(()).unwrap(), true)?;
                        let resp = resp.await?;
                        let status = resp.status().as_u16();
                        let mut body = resp.into_body();
                        while let Some(c) = body.data().await {
                            let c = c?;
                            let _ = body.flow_control().release_capacity(c.len());
                        }
                        Ok::<_, h2::Error>(status)
                    };
                    match r.await {
                        Ok(s) => {
                            t.latencies.push(sent.elapsed());
                            *t.codes.entry(s).or_default() += 1;
                        }
                        Err(e) => *t.errors.entry(e.to_string()).or_default() += 1,
                    }
                }
                t
            }));
        }
    }
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(Ok(t)) =
            tokio::time::timeout(Duration::from_secs(a.num("seconds", 10) + 10), t).await
        {
            all.merge(t);
        }
    }
    all.print(started.elapsed());
}

async fn ws_mode(a: &Args) {
    let (host, port, path) = host_port(a.req("url"));
    let tls = tls_client(a.req("ca"), &[b"http/1.1"]);
    let until = Instant::now() + Duration::from_secs(a.num("seconds", 10));
    let msg = Bytes::from(vec![b'm'; a.num("bytes", 200) as usize]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.num("conns", 64) {
        let stream = open(a.get("proxy"), &host, port, tls.clone())
            .await
            .expect("connection");
        let url = format!("wss://{host}:{port}{path}");
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("websocket handshake");
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < until {
                let sent = Instant::now();
                let r = async {
                    ws.send(tokio_tungstenite::tungstenite::Message::Binary(msg.clone()))
                        .await?;
                    match ws.next().await {
                        Some(Ok(m)) if m.len() == msg.len() => Ok(()),
                        Some(Err(e)) => Err(e),
                        _ => Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed),
                    }
                };
                match r.await {
                    Ok(()) => {
                        t.latencies.push(sent.elapsed());
                        *t.codes.entry(200).or_default() += 1;
                    }
                    Err(e) => {
                        *t.errors.entry(e.to_string()).or_default() += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            t
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(Ok(t)) =
            tokio::time::timeout(Duration::from_secs(a.num("seconds", 10) + 10), t).await
        {
            all.merge(t);
        }
    }
    all.print(started.elapsed());
}

async fn ws_echo(a: &Args) {
    let certs: Vec<_> =
        hub_tests::client::pem_ders(&std::fs::read_to_string(a.req("cert")).unwrap())
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
    let key_pem = std::fs::read_to_string(a.req("key")).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        hub_tests::client::pem_ders(&key_pem).remove(0).into(),
    );
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(a.req("listen"))
        .await
        .unwrap();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            echo(tls).await;
        });
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_binary() || m.is_text()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mode, args) = Args::parse();
    match mode.as_str() {
        "h2" => h2_mode(&args).await,
        "ws" => ws_mode(&args).await,
        "ws-echo" => ws_echo(&args).await,
        _ => {
            eprintln!("usage: loadgen h2|ws|ws-echo --… (see the source's header)");
            std::process::exit(2);
        }
    }
}
