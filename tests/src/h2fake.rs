//! A fake HTTP/2 provider (TLS with ALPN `h2`, on 127.0.0.1:0) that speaks plain h2 and gRPC:
//! it records every request (headers, body bytes, when it arrived, which connection) and answers
//! by its [`H2Mode`]. gRPC answers follow the wire format: HEADERS, length-prefixed messages,
//! trailers with `grpc-status`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use http::{HeaderMap, Request, Response};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the provider answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Mode {
    /// Plain h2: 200 with a JSON body naming the path and the connection.
    Ok,
    /// As [`H2Mode::Ok`], answered this many milliseconds after the request ended (so streams
    /// the hub multiplexes are seen in flight together, however loaded the machine).
    OkAfter(u64),
    /// Plain h2: 200 with this many bytes of body, written as fast as flow control allows.
    Big(usize),
    /// gRPC: each request message is answered with one message `echo:<message>` as it arrives
    /// (unary, client streaming and bidi alike), then `grpc-status: 0` when the module ends.
    Echo,
    /// gRPC: one request message, answered with `count` messages `n:<i>`, `gap_ms` apart.
    ServerStream {
        /// Messages sent.
        count: usize,
        /// Silence between two.
        gap_ms: u64,
    },
    /// gRPC: a "trailers-only" answer with this status (no messages).
    Status(u32),
    /// gRPC: response headers, one message, then trailers with this status.
    StatusAfterHeaders(u32),
    /// Read the request, never answer.
    Stall,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct H2Recorded {
    /// `:method`.
    pub method: String,
    /// `:path`.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// Headers (names lower-case).
    pub headers: HeaderMap,
    /// Body bytes received (what arrived before the answer ended).
    pub body: Vec<u8>,
    /// Which accepted connection (0-based).
    pub connection: usize,
}

impl H2Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Inner {
    modes: Mutex<Vec<H2Mode>>,
    default: Mutex<H2Mode>,
    requests: Mutex<Vec<H2Recorded>>,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    big_bytes_sent: AtomicUsize,
}

/// The running provider.
#[derive(Clone)]
pub struct H2Provider {
    /// Its port on 127.0.0.1.
    pub port: u16,
    inner: Arc<Inner>,
}

/// A gRPC message frame: flag 0, big-endian length, bytes.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// Splits whole gRPC messages off the front of `buf`.
pub fn grpc_messages(buf: &mut BytesMut) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).to_vec());
    }
    out
}

impl H2Provider {
    /// Starts it with `tls` (its ALPN is set to `h2`).
    pub async fn start(tls: &rustls::ServerConfig) -> Self {
        let mut cfg = tls.clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            modes: Mutex::new(Vec::new()),
            default: Mutex::new(H2Mode::Ok),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            big_bytes_sent: AtomicUsize::new(0),
        });
        let inner2 = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let inner = inner2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn_no = inner.connections.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            let n = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            inner.most_in_flight.fetch_max(n, Ordering::SeqCst);
                            serve(&inner, req, respond, conn_no).await;
                            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        Self { port, inner }
    }

    /// `https://localhost:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Answers every request this way (after any scripted ones).
    pub fn set_mode(&self, mode: H2Mode) {
        *self.inner.default.lock().unwrap() = mode;
    }

    /// Answers the next requests these ways, in order.
    pub fn script(&self, modes: impl IntoIterator<Item = H2Mode>) {
        self.inner.modes.lock().unwrap().extend(modes);
    }

    /// Every request so far (bodies as far as received when the answer ended).
    pub fn requests(&self) -> Vec<H2Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Most requests in progress at once.
    pub fn most_in_flight(&self) -> usize {
        self.inner.most_in_flight.load(Ordering::SeqCst)
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Body bytes handed to h2 by [`H2Mode::Big`] answers (flow control lets no more through).
    pub fn big_bytes_sent(&self) -> usize {
        self.inner.big_bytes_sent.load(Ordering::SeqCst)
    }
}

fn mode_for(inner: &Inner) -> H2Mode {
    let mut modes = inner.modes.lock().unwrap();
    if modes.is_empty() {
        inner.default.lock().unwrap().clone()
    } else {
        modes.remove(0)
    }
}

fn grpc_head() -> Response<()> {
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

fn status_trailers(status: u32) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", status.into());
    t.insert("grpc-message", "from-provider".parse().unwrap());
    t
}

async fn serve(
    inner: &Arc<Inner>,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    connection: usize,
) {
    let (parts, mut body) = req.into_parts();
    let index = {
        let mut reqs = inner.requests.lock().unwrap();
        reqs.push(H2Recorded {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/".into(), |p| p.to_string()),
            authority: parts
                .uri
                .authority()
                .map_or(String::new(), |a| a.to_string()),
            headers: parts.headers.clone(),
            body: Vec::new(),
            connection,
        });
        reqs.len() - 1
    };
    let record = |chunk: &[u8]| {
        inner.requests.lock().unwrap()[index]
            .body
            .extend_from_slice(chunk);
    };
    match mode_for(inner) {
        mode @ (H2Mode::Ok | H2Mode::OkAfter(_)) => {
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
                record(&c);
            }
            if let H2Mode::OkAfter(ms) = mode {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let json = serde_json::json!({"path": inner.requests.lock().unwrap()[index].path, "connection": connection});
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(resp, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from(json.to_string()), true);
        }
        H2Mode::Big(len) => {
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
            }
            let resp = Response::builder().status(200).body(()).unwrap();
            let Ok(mut send) = respond.send_response(resp, false) else {
                return;
            };
            let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                send.reserve_capacity(n);
                let got = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(got)) => got.min(n),
                    _ => return,
                };
                if got == 0 {
                    continue;
                }
                if send.send_data(chunk.slice(..got), got == left).is_err() {
                    return;
                }
                inner.big_bytes_sent.fetch_add(got, Ordering::SeqCst);
                left -= got;
            }
        }
        H2Mode::Stall => {
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
                record(&c);
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        H2Mode::Status(status) => {
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
                record(&c);
            }
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", status.to_string())
                .header("grpc-message", "from-provider")
                .body(())
                .unwrap();
            let _ = respond.send_response(resp, true);
        }
        H2Mode::StatusAfterHeaders(status) => {
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
                record(&c);
            }
            let Ok(mut send) = respond.send_response(grpc_head(), false) else {
                return;
            };
            let _ = send.send_data(grpc_frame(b"partial"), false);
            let _ = send.send_trailers(status_trailers(status));
        }
        H2Mode::Echo => {
            let Ok(mut send) = respond.send_response(grpc_head(), false) else {
                return;
            };
            let mut buf = BytesMut::new();
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
                record(&c);
                buf.extend_from_slice(&c);
                for m in grpc_messages(&mut buf) {
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&m);
                    if send.send_data(grpc_frame(&out), false).is_err() {
                        return;
                    }
                }
            }
            let _ = send.send_trailers(status_trailers(0));
        }
        H2Mode::ServerStream { count, gap_ms } => {
            while let Some(Ok(c)) = body.data().await {
                let _ = body.flow_control().release_capacity(c.len());
                record(&c);
            }
            let Ok(mut send) = respond.send_response(grpc_head(), false) else {
                return;
            };
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                }
                if send
                    .send_data(grpc_frame(format!("n:{i}").as_bytes()), false)
                    .is_err()
                {
                    return;
                }
            }
            let _ = send.send_trailers(status_trailers(0));
        }
    }
}
