//! Egress: turning a provider's base URL into an address to dial, safely.
//!
//! Names are resolved asynchronously (tokio's resolver, off the reactor) and the address that
//! passed the destination check is the one dialed: there is no second resolution for a
//! rebinding name to slip through. Loopback, private, link-local (incl. cloud metadata),
//! CGNAT, multicast and unspecified addresses are refused unless the provider opts in with
//! `allowPrivateNetwork`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a resolution is reused. Short: getaddrinfo does not tell us the record's TTL.
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(5);
/// Bound on cached names.
pub const DNS_CACHE_MAX: usize = 4096;

/// Why a destination cannot be dialed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// Resolver message.
        reason: String,
    },
    /// Every resolved address is in a forbidden range.
    #[error("destination {addr} is not allowed (private, loopback or link-local)")]
    Forbidden {
        /// The first refused address.
        addr: IpAddr,
    },
}

impl EgressError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Resolve { .. } => "dns",
            Self::Forbidden { .. } => "forbidden_destination",
        }
    }
}

/// Whether `ip` is a public unicast address a provider may live at.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg0 = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254 metadata)
                || (seg0 & 0xffc0) == 0xfe80 // link-local
                || (seg0 == 0x64 && v6.segments()[1] == 0xff9b) // NAT64 well-known prefix
                || seg0 == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, incl. 169.254.169.254 metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// Picks the address to dial among `addrs`: the first allowed one.
pub fn choose(addrs: &[SocketAddr], allow_private: bool) -> Result<SocketAddr, EgressError> {
    if let Some(a) = addrs.iter().find(|a| allow_private || is_public(a.ip())) {
        return Ok(*a);
    }
    Err(EgressError::Forbidden {
        addr: addrs
            .first()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |a| a.ip()),
    })
}

/// Resolved addresses of `(host, port)` and when they were resolved.
type DnsCache = HashMap<(String, u16), (Instant, Vec<SocketAddr>)>;

/// An async resolver with a small positive cache.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<DnsCache>,
}

impl Resolver {
    /// Resolves `host:port` and picks an allowed address.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        allow_private: bool,
    ) -> Result<SocketAddr, EgressError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return choose(&[SocketAddr::new(ip, port)], allow_private);
        }
        let key = (host.to_owned(), port);
        let cached = {
            let cache = self.cache.lock().expect("dns cache lock");
            cache
                .get(&key)
                .filter(|(at, _)| at.elapsed() < DNS_CACHE_TTL)
                .map(|(_, addrs)| addrs.clone())
        };
        let addrs = match cached {
            Some(a) => a,
            None => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| EgressError::Resolve {
                        host: host.to_owned(),
                        reason: e.to_string(),
                    })?
                    .collect();
                if addrs.is_empty() {
                    return Err(EgressError::Resolve {
                        host: host.to_owned(),
                        reason: "no addresses".into(),
                    });
                }
                let mut cache = self.cache.lock().expect("dns cache lock");
                if cache.len() >= DNS_CACHE_MAX {
                    cache.retain(|_, (at, _)| at.elapsed() < DNS_CACHE_TTL);
                    if cache.len() >= DNS_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key, (Instant::now(), addrs.clone()));
                addrs
            }
        };
        choose(&addrs, allow_private)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} considered public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} considered private");
        }
    }

    #[test]
    fn choose_prefers_an_allowed_address() {
        let addrs: Vec<SocketAddr> = vec![
            "10.0.0.1:443".parse().unwrap(),
            "8.8.8.8:443".parse().unwrap(),
        ];
        assert_eq!(choose(&addrs, false).unwrap(), addrs[1]);
        let only_private = &addrs[..1];
        assert!(matches!(
            choose(only_private, false),
            Err(EgressError::Forbidden { .. })
        ));
        assert_eq!(choose(only_private, true).unwrap(), addrs[0]);
    }

    #[tokio::test]
    async fn localhost_is_resolved_then_refused_without_opt_in() {
        let r = Resolver::default();
        assert!(matches!(
            r.resolve("localhost", 443, false).await,
            Err(EgressError::Forbidden { .. })
        ));
        assert!(
            r.resolve("localhost", 443, true)
                .await
                .unwrap()
                .ip()
                .is_loopback()
        );
        assert!(matches!(
            r.resolve("no-such-host.invalid", 443, true).await,
            Err(EgressError::Resolve { .. })
        ));
    }
}
