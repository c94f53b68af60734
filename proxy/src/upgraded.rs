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
    /// The proxy stopped (SIGTERM): closed [`DRAIN_GRACE`] after the drain began.
    Shutdown,
    /// A read or write failed.
    Error,
    /// Its caller was revoked, expired or re-keyed (see `callers::Revoker`).
    Revoked,
}

impl End {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
            Self::Revoked => "revoked",
        }
    }
}

/// How long an upgraded connection or a passthrough tunnel lives on once its proxy drains
/// (SIGTERM): time for a message in flight, well inside the drain's 30 s. Modules reconnect (to
/// another replica); without it every open WebSocket would hold a rollout for the whole drain.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// One proxy's "stopping" signal, as its long-lived connections see it.
#[derive(Debug, Clone)]
pub struct Drain(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Drain {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Drain {
    /// The proxy stops accepting: long-lived connections end after [`DRAIN_GRACE`].
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    /// Resolves [`DRAIN_GRACE`] after the drain starts; never, if it does not.
    pub async fn ended(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(DRAIN_GRACE).await;
    }
}

/// What ends a long-lived connection from outside: the proxy's drain ([`End::Shutdown`]) or its
/// caller's revocation ([`End::Revoked`]); never resolves while neither happens.
pub async fn stopped(drain: &Drain, revoker: Option<&crate::callers::Revoker>) -> End {
    let revoked = async {
        match revoker {
            Some(r) => r.revoked().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = drain.ended() => End::Shutdown,
        () = revoked => End::Revoked,
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

/// What a relay moved before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Why it ended.
    pub end: End,
    /// Bytes from the module to the provider.
    pub to_provider: u64,
    /// Bytes from the provider to the module.
    pub to_module: u64,
}

/// Relays bytes both ways between `module` and `provider` until both directions have ended or
/// the pair has been silent for `idle` (no byte in either direction; any byte resets it). When
/// one side ends its writes (EOF), the other side's write half is shut down and the opposite
/// direction goes on (half-close). A failed read or write ends the relay with [`End::Error`].
pub async fn relay_streams<M, P>(
    module: M,
    provider: P,
    idle: std::time::Duration,
    drain: Drain,
    revoker: Option<crate::callers::Revoker>,
) -> Relayed
where
    M: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
    P: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::time::Instant;

    /// Copies `from` into `to` until EOF (then shuts `to` down), counting into `count` and
    /// stamping `last` on every chunk.
    async fn pump(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        count: &AtomicU64,
        last: &Mutex<Instant>,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            *last.lock().expect("relay clock lock") = Instant::now();
            to.write_all(&buf[..n]).await?;
            to.flush().await?;
            count.fetch_add(n as u64, Ordering::Relaxed);
            *last.lock().expect("relay clock lock") = Instant::now();
        }
    }

    let (module_r, module_w) = tokio::io::split(module);
    let (provider_r, provider_w) = tokio::io::split(provider);
    let to_provider = AtomicU64::new(0);
    let to_module = AtomicU64::new(0);
    let last = Mutex::new(Instant::now());
    let both = async {
        tokio::try_join!(
            pump(module_r, provider_w, &to_provider, &last),
            pump(provider_r, module_w, &to_module, &last),
        )
    };
    let watchdog = async {
        loop {
            let deadline = *last.lock().expect("relay clock lock") + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        r = both => if r.is_ok() { End::Closed } else { End::Error },
        () = watchdog => End::IdleTimeout,
        end = stopped(&drain, revoker.as_ref()) => end,
    };
    Relayed {
        end,
        to_provider: to_provider.load(Ordering::Relaxed),
        to_module: to_module.load(Ordering::Relaxed),
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

#[cfg(test)]
mod relay_tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
    use tokio::time::Instant;

    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_a_busy_relay_after_its_grace_and_not_before() {
        let (module, mut module_end) = duplex(64);
        let (provider, mut provider_end) = duplex(64);
        let drain = Drain::default();
        let relay = tokio::spawn(relay_streams(module, provider, IDLE, drain.clone(), None));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        drain.start();
        // Traffic keeps flowing during the grace (idle never fires: a byte every second).
        let mut buf = [0u8; 1];
        while started.elapsed() < DRAIN_GRACE - Duration::from_secs(1) {
            module_end.write_all(b"x").await.unwrap();
            provider_end.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(!relay.is_finished(), "still open within the grace");
        let r = relay.await.unwrap();
        assert_eq!(r.end, End::Shutdown);
        assert_eq!(started.elapsed(), DRAIN_GRACE);
        assert_eq!(r.to_provider, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_go_both_ways_and_a_half_close_reaches_the_other_side() {
        let (module, mut module_end) = duplex(64);
        let (provider, mut provider_end) = duplex(64);
        let relay = tokio::spawn(relay_streams(
            module,
            provider,
            IDLE,
            Drain::default(),
            None,
        ));
        // More than the duplex buffer: the relay has to keep pumping.
        let request = vec![7u8; 1000];
        let mut got = Vec::new();
        let (written, read) = tokio::join!(
            async {
                module_end.write_all(&request).await?;
                module_end.shutdown().await
            },
            provider_end.read_to_end(&mut got)
        );
        written.unwrap();
        read.unwrap();
        assert_eq!(
            got, request,
            "the provider sees the module's bytes, then EOF"
        );
        // The module's half-close does not end the other direction.
        provider_end
            .write_all(b"answer after the half-close")
            .await
            .unwrap();
        provider_end.shutdown().await.unwrap();
        let mut answer = Vec::new();
        module_end.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer after the half-close");
        let r = relay.await.unwrap();
        assert_eq!(
            r,
            Relayed {
                end: End::Closed,
                to_provider: 1000,
                to_module: 27
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_pair_is_cut_after_exactly_the_idle_time() {
        let (module, _module_end) = duplex(64);
        let (provider, _provider_end) = duplex(64);
        let start = Instant::now();
        let r = relay_streams(module, provider, IDLE, Drain::default(), None).await;
        assert_eq!(r.end, End::IdleTimeout);
        assert_eq!(start.elapsed(), IDLE);
        assert_eq!((r.to_provider, r.to_module), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_either_direction_resets_the_idle_time() {
        let (module, mut module_end) = duplex(64);
        let (provider, mut provider_end) = duplex(64);
        let start = Instant::now();
        let relay = tokio::spawn(relay_streams(
            module,
            provider,
            IDLE,
            Drain::default(),
            None,
        ));
        let mut byte = [0u8; 1];
        // A byte every 0.6 × idle, alternating directions, for 3 × idle in all.
        for i in 0..5 {
            tokio::time::sleep(IDLE * 6 / 10).await;
            if i % 2 == 0 {
                module_end.write_all(b"m").await.unwrap();
                provider_end.read_exact(&mut byte).await.unwrap();
            } else {
                provider_end.write_all(b"p").await.unwrap();
                module_end.read_exact(&mut byte).await.unwrap();
            }
        }
        let last = start.elapsed();
        assert_eq!(last, IDLE * 3);
        let r = relay.await.unwrap();
        assert_eq!(r.end, End::IdleTimeout);
        assert_eq!(
            start.elapsed(),
            last + IDLE,
            "cut one idle time after the last byte"
        );
        assert_eq!((r.to_provider, r.to_module), (3, 2));
        // The cut closes both sides.
        assert_eq!(module_end.read(&mut byte).await.unwrap(), 0);
        assert_eq!(provider_end.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_stops_reading_is_silence_too() {
        let (module, mut module_end) = duplex(64);
        // The provider never reads: its 16-byte buffer fills and the relay's write blocks.
        let (provider, _provider_end) = duplex(16);
        let start = Instant::now();
        let relay = tokio::spawn(relay_streams(
            module,
            provider,
            IDLE,
            Drain::default(),
            None,
        ));
        module_end.write_all(&[1u8; 48]).await.unwrap();
        let r = relay.await.unwrap();
        assert_eq!(r.end, End::IdleTimeout);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_ends_the_relay_as_an_error() {
        let (module, mut module_end) = duplex(64);
        let (provider, provider_end) = duplex(64);
        let start = Instant::now();
        let relay = tokio::spawn(relay_streams(
            module,
            provider,
            IDLE,
            Drain::default(),
            None,
        ));
        drop(provider_end);
        // The provider is gone: the relay's next write to it fails.
        let _ = module_end.write_all(b"into the void").await;
        let r = relay.await.unwrap();
        assert_eq!(r.end, End::Error);
        assert!(start.elapsed() < IDLE);
    }
}
