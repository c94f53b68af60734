//! What a module does: a real HTTP client going through the hub as its proxy, trusting the hub CA.

use std::time::Duration;

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
