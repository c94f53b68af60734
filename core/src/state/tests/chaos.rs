//! The chaos TCP proxy the Redis suites put in front of the test Redis (one implementation, in
//! `crate::testing::chaos`, shared with the DLQ and end-to-end suites).

use ::redis::{Client, ConnectionAddr, ConnectionInfo};

pub(super) use crate::testing::chaos::{ChaosProxy, Mode};

/// The test Redis behind a fresh chaos proxy, and the connection info that goes through it.
pub(super) async fn proxied(url: &str) -> Option<(ChaosProxy, ConnectionInfo)> {
    let info = Client::open(url).unwrap().get_connection_info().clone();
    let ConnectionAddr::Tcp(host, port) = &info.addr else {
        eprintln!("SKIPPED: test Redis is not on TCP");
        return None;
    };
    let upstream = tokio::net::lookup_host((host.as_str(), *port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = ChaosProxy::start(upstream).await;
    let mut via = info;
    via.addr = ConnectionAddr::Tcp("127.0.0.1".to_owned(), proxy.addr().port());
    Some((proxy, via))
}
