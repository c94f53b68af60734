//! Database outages without touching the shared servers: a TCP proxy in front of PostgreSQL
//! that cuts every connection and refuses new ones on demand (after crates.io's `ChaosProxy`),
//! and for SQLite a second connection holding the write lock (writers then time out, as they
//! would on a stuck disk).

use std::net::SocketAddr;

use sqlx::Connection;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards TCP to an upstream, or cuts it.
pub struct ChaosProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl ChaosProxy {
    /// A proxy to `upstream`, passing traffic.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*rx.borrow() {
                    let _ = client.shutdown().await;
                    continue;
                }
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let mut down = rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection and refuses new ones (`false`), or passes traffic again (`true`).
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// `url` with its `host:port` replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// The PostgreSQL server address of a URL.
pub async fn pg_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let hostpath = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let authority = hostpath.split('/').next().unwrap();
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    tokio::net::lookup_host(authority)
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// Holds SQLite's write lock from another connection while it lives.
pub struct SqliteLock {
    conn: sqlx::SqliteConnection,
}

impl SqliteLock {
    /// Takes the write lock of the database at `url`.
    pub async fn take(url: &str) -> Self {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        Self { conn }
    }

    /// Releases it.
    pub async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut self.conn)
            .await
            .unwrap();
    }
}
