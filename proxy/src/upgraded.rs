//! Long-lived connections per provider: upgraded connections (WebSocket) and passthrough
//! tunnels. Each holds a [`Slot`] for as long as it lives; a provider has at most
//! `config.maxUpgradedConnections` of them per proxy instance (one more is refused with
//! `429 too_many_upgraded_connections`). The slot keeps `integration_upgraded_open` true and
//! counts the end in `integration_upgraded_total`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use hub_core::provider::ProviderId;

use crate::metrics::METRICS;
use crate::registry::Provider;

/// What kind of long-lived connection a slot is for (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An HTTP/1.1 `Upgrade: websocket` (or RFC 8441 extended CONNECT) relayed frame by frame.
    WebSocket,
    /// A `tls: passthrough` provider's tunnel, relayed byte by byte.
    Passthrough,
}

impl Kind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Passthrough => "passthrough",
        }
    }
}

/// How a long-lived connection ended (the `outcome` label and the access line's `cut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Either side closed.
    Closed,
    /// Silent for longer than `config.upgradedIdleTimeoutMs`.
    IdleTimeout,
    /// A read or write failed.
    Error,
}

impl End {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Error => "error",
        }
    }
}

/// Open long-lived connections per provider, in this process.
static OPEN: LazyLock<Mutex<HashMap<(ProviderId, Kind), u32>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One open long-lived connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    provider: ProviderId,
    name: String,
    kind: Kind,
    end: Option<End>,
}

impl Slot {
    /// A slot for one more `kind` connection to `provider`, or `None` at its cap (counted as
    /// `refused`). The cap is per provider and covers both kinds.
    pub fn take(provider: &Provider, kind: Kind) -> Option<Self> {
        let cap = provider.config.max_upgraded_connections;
        {
            let mut open = OPEN.lock().expect("upgraded slots lock");
            let total: u32 = [Kind::WebSocket, Kind::Passthrough]
                .iter()
                .map(|k| open.get(&(provider.id, *k)).copied().unwrap_or(0))
                .sum();
            if total >= cap {
                drop(open);
                METRICS
                    .upgraded_total
                    .with_label_values(&[&provider.name, kind.as_str(), "refused"])
                    .inc();
                return None;
            }
            *open.entry((provider.id, kind)).or_insert(0) += 1;
        }
        METRICS
            .upgraded_open
            .with_label_values(&[&provider.name, kind.as_str()])
            .inc();
        Some(Self {
            provider: provider.id,
            name: provider.name.clone(),
            kind,
            end: None,
        })
    }

    /// Says how the connection ended (counted when the slot is dropped; `error` if never said).
    pub fn ended(&mut self, end: End) {
        self.end = Some(end);
    }

    /// Counts bytes relayed in one direction (`to_provider` or `to_module`).
    pub fn count_bytes(&self, direction: &'static str, n: u64) {
        if n > 0 {
            METRICS
                .upgraded_bytes
                .with_label_values(&[&self.name, self.kind.as_str(), direction])
                .inc_by(n);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut open = OPEN.lock().expect("upgraded slots lock");
            if let Some(n) = open.get_mut(&(self.provider, self.kind)) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&(self.provider, self.kind));
                }
            }
        }
        METRICS
            .upgraded_open
            .with_label_values(&[&self.name, self.kind.as_str()])
            .dec();
        METRICS
            .upgraded_total
            .with_label_values(&[
                &self.name,
                self.kind.as_str(),
                self.end.unwrap_or(End::Error).as_str(),
            ])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_has_at_most_its_cap_of_long_lived_connections() {
        let mut p = crate::registry::Provider::for_tests("capped");
        p.config.max_upgraded_connections = 2;
        let a = Slot::take(&p, Kind::WebSocket).expect("first");
        let mut b = Slot::take(&p, Kind::Passthrough).expect("second");
        assert!(Slot::take(&p, Kind::WebSocket).is_none(), "over the cap");
        b.ended(End::Closed);
        drop(b);
        let c = Slot::take(&p, Kind::WebSocket).expect("a freed slot is reused");
        let open = |k: Kind| {
            METRICS
                .upgraded_open
                .with_label_values(&["capped", k.as_str()])
                .get()
        };
        assert_eq!((open(Kind::WebSocket), open(Kind::Passthrough)), (2, 0));
        let ended = |o: &str| {
            METRICS
                .upgraded_total
                .with_label_values(&["capped", "passthrough", o])
                .get()
        };
        assert_eq!(ended("closed"), 1);
        drop((a, c));
        assert_eq!(open(Kind::WebSocket), 0);
        assert_eq!(
            METRICS
                .upgraded_total
                .with_label_values(&["capped", "websocket", "refused"])
                .get(),
            1
        );
    }
}
