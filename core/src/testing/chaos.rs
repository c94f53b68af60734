//! A TCP proxy in front of a real server (PostgreSQL, Redis) that passes, delays, stalls or
//! cuts traffic on demand (after crates.io's `ChaosProxy`): a dependency "goes slow" or "goes
//! away" for one test without touching the server other tests share.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Forward every chunk after this delay (each direction: a round trip gains twice it).
    Delay(Duration),
    /// Hold every byte, both directions, until the mode changes.
    Stall,
    /// Close every connection and refuse new ones (the server stopped).
    Cut,
}

/// Forwards connections to an upstream according to its [`Mode`].
#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// A proxy to `upstream` on an ephemeral loopback port, passing traffic.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (mode, _) = watch::channel(Mode::Pass);
        let rx = mode.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Cut {
                    continue; // dropped: the client sees the connection close
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone()));
                tokio::spawn(pump(sr, cw, rx.clone()));
            }
        });
        Self { addr, mode, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what happens to traffic, on open connections too.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Cuts every connection and refuses new ones (`false`), or passes traffic again (`true`).
    pub fn set_up(&self, up: bool) {
        self.set(if up { Mode::Pass } else { Mode::Cut });
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m == Mode::Cut) => return,
        };
        let now = match mode.wait_for(|m| *m != Mode::Stall).await {
            Ok(m) => *m,
            Err(_) => return,
        };
        match now {
            Mode::Cut | Mode::Stall => return,
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Pass => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `url` with its `host:port` replaced by `addr` (to point a client at a [`ChaosProxy`]).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// The server address of a URL (`host:port`, the scheme's default port when omitted).
pub async fn server_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL with a scheme").1;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split(['/', '?']).next().unwrap_or(hostport);
    let default = match url.split_once("://").map(|(s, _)| s) {
        Some("redis" | "rediss") => 6379,
        Some("amqp") => 5672,
        _ => 5432,
    };
    let target = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default}")
    };
    tokio::net::lookup_host(target)
        .await
        .expect("resolve the server")
        .next()
        .expect("an address")
}
