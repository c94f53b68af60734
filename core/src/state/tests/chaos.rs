//! A TCP proxy in front of the test Redis that delays, stalls or cuts traffic on demand (after
//! crates.io's `ChaosProxy`): Redis "goes slow" or "goes away" for one test without touching
//! the Redis other tests share. Loopback only; each connection is two bounded copy loops that
//! end with either side or on `Cut`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Forward everything.
    Pass,
    /// Forward every chunk, each direction, after this delay (a round trip takes about twice
    /// it: Redis "slower than the bound").
    Delay(Duration),
    /// Hold every byte, both directions, until the mode changes.
    Stall,
    /// Close every connection and refuse new ones (Redis stopped).
    Cut,
}

/// Forwards connections to `upstream` according to its [`Mode`].
pub(super) struct ChaosProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl ChaosProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let rx = mode.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Cut {
                    continue; // dropped: the client sees the connection close
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone()));
                tokio::spawn(pump(sr, cw, rx.clone()));
            }
        });
        Self { addr, mode }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
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
            Err(_) => Mode::Cut,
        };
        let go_on = match now {
            Mode::Pass => true,
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Mode::Stall | Mode::Cut => false,
        };
        if !go_on || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
