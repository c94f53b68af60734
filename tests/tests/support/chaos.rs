//! Database outages without touching the shared servers: a TCP proxy in front of PostgreSQL
//! that cuts every connection and refuses new ones on demand (after crates.io's `ChaosProxy`),
//! and for SQLite a second connection holding the write lock (writers then time out, as they
//! would on a stuck disk).

use std::net::SocketAddr;

use sqlx::Connection;

pub use hub_core::testing::chaos::{ChaosProxy, via};

/// The PostgreSQL server address of a URL.
pub async fn pg_addr(url: &str) -> SocketAddr {
    hub_core::testing::chaos::server_addr(url).await
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
