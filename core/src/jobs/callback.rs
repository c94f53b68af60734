//! Callbacks: when a job ends, the hub POSTs its [`JobView`](super::JobView) to the caller's
//! `X-Hub-Callback-Url`.
//!
//! A callback URL makes the hub send a request to a place a module chose: a server-side request
//! forgery vector (the hub's own admin API on loopback, a cloud metadata service on link-local).
//! So: `http`/`https` only, no userinfo; the host is resolved at delivery and *every* address is
//! checked — loopback only with `jobs.callback.allow_loopback` (tests), private ranges only with
//! `jobs.callback.allow_private` (default on: modules live there), link-local, multicast,
//! unspecified and broadcast never — and the connection is pinned to the checked address (no
//! DNS rebinding between check and connect). Redirects are not followed and no proxy is used.
//! The URL is checked at submission too, so a bad one is refused with the 202's 400 instead.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::CallbackConfig;

/// What the callback checks allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// RFC 1918, unique-local, CGNAT.
    pub allow_private: bool,
    /// 127.0.0.0/8, ::1 (tests only).
    pub allow_loopback: bool,
    /// One delivery.
    pub timeout: Duration,
}

impl From<&CallbackConfig> for CallbackPolicy {
    fn from(c: &CallbackConfig) -> Self {
        Self {
            allow_private: c.allow_private,
            allow_loopback: c.allow_loopback,
            timeout: Duration::from_millis(c.timeout_ms),
        }
    }
}

/// Why a callback URL is refused or a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The URL is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The destination address is refused by policy.
    #[error("destination {0} is not allowed")]
    Forbidden(IpAddr),
    /// The host did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The delivery failed (connect, timeout, non-2xx).
    #[error("delivery failed: {0}")]
    Delivery(String),
}

/// Whether policy allows sending to `ip`.
pub fn address_allowed(ip: IpAddr, policy: &CallbackPolicy) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                return policy.allow_loopback;
            }
            if v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast() {
                return false;
            }
            let private = v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1]));
            !private || policy.allow_private
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if v6.is_loopback() {
                return policy.allow_loopback;
            }
            let link_local = (seg[0] & 0xffc0) == 0xfe80;
            if v6.is_unspecified() || v6.is_multicast() || link_local {
                return false;
            }
            let unique_local = (seg[0] & 0xfe00) == 0xfc00;
            !unique_local || policy.allow_private
        }
    }
}

/// Checks a callback URL's shape (and its address when it is an IP literal).
pub fn validate_url(raw: &str, policy: &CallbackPolicy) -> Result<reqwest::Url, CallbackError> {
    let bad = |m: &str| CallbackError::Invalid(m.to_owned());
    if raw.len() > 2048 {
        return Err(bad("longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad("has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        check(ip, policy)?;
    } else if host.eq_ignore_ascii_case("localhost") && !policy.allow_loopback {
        return Err(bad("localhost is not allowed"));
    }
    Ok(url)
}

fn check(ip: IpAddr, policy: &CallbackPolicy) -> Result<(), CallbackError> {
    if address_allowed(ip, policy) {
        Ok(())
    } else {
        Err(CallbackError::Forbidden(ip))
    }
}

/// POSTs `body` (JSON) to `url`, pinned to a checked address; `Ok` on a 2xx.
pub async fn deliver(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    policy: &CallbackPolicy,
) -> Result<u16, CallbackError> {
    let url = validate_url(url, policy)?;
    let host = url
        .host_str()
        .ok_or_else(|| CallbackError::Invalid("has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        policy.timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| CallbackError::Resolve(host.clone()))?
    .map_err(|_| CallbackError::Resolve(host.clone()))?
    .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(CallbackError::Resolve(host));
    };
    if let Some(bad) = addrs.iter().find(|a| !address_allowed(a.ip(), policy)) {
        return Err(CallbackError::Forbidden(bad.ip()));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .timeout(policy.timeout)
        .build()
        .map_err(|e| CallbackError::Delivery(e.to_string()))?;
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| CallbackError::Delivery(reqwest_kind(&e).to_owned()))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err(CallbackError::Delivery(format!("status {status}")))
    }
}

/// A short, secret-free description of a client error (the URL is not repeated).
pub(crate) fn reqwest_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect_failed"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request_failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_loopback: bool) -> CallbackPolicy {
        CallbackPolicy {
            allow_private: true,
            allow_loopback,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn ssrf_targets_are_refused() {
        let p = policy(false);
        for bad in [
            "ftp://x.example/cb",
            "http://user:pw@x.example/cb",
            "http://127.0.0.1:8080/api",
            "http://localhost/cb",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/cb",
            "http://[fe80::1]/cb",
            "http://0.0.0.0/cb",
            "http://[::ffff:127.0.0.1]/cb",
            "not a url",
        ] {
            assert!(validate_url(bad, &p).is_err(), "{bad} must be refused");
        }
        for good in ["https://orders.internal/cb", "http://10.1.2.3:8080/cb"] {
            assert!(validate_url(good, &p).is_ok(), "{good} must pass");
        }
        assert!(validate_url("http://127.0.0.1:9/cb", &policy(true)).is_ok());
        let no_private = CallbackPolicy {
            allow_private: false,
            ..p
        };
        assert!(validate_url("http://192.168.1.5/cb", &no_private).is_err());
        assert!(validate_url("http://100.64.0.1/cb", &no_private).is_err());
    }
}
