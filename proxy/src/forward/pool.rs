//! Idle upstream connections, kept per proxy thread.
//!
//! Pingora's connector pools connections process-wide and, per request, spawns a task that
//! watches the idle connection, hands it back through a lock and checks the peer address with
//! `getpeername`: a spawn, a task switch and three syscalls that the profile showed on every
//! request. Here a released connection goes into its thread's list under a key that already
//! pins the peer (provider, its version, the checked address); taking it is a lookup plus one
//! non-blocking read that tells a connection the provider closed while idle (as Pingora's
//! `test_reusable_stream` does). Connections stay on the thread (and reactor) that made them.
//! With no watcher, a closed idle connection is noticed when next taken, or by the sweep that
//! runs on this thread's next use after [`SWEEP_EVERY`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::future::Future;
use std::task::{Context, Waker};

use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How long a connection may idle in the pool (the idle timeout the hub gave Pingora's pool).
pub const IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per key and thread; the oldest goes beyond it.
pub const MAX_PER_KEY: usize = 64;
/// How often a thread drops its expired connections of every key.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Idle {
    by_key: HashMap<u64, Vec<(Instant, Stream)>>,
    last_sweep: Option<Instant>,
}

thread_local! {
    static IDLE_CONNECTIONS: RefCell<Idle> = RefCell::new(Idle::default());
}

impl Idle {
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.by_key.retain(|_, list| {
            list.retain(|(since, _)| now.duration_since(*since) < IDLE);
            !list.is_empty()
        });
    }
}

/// Whether an idle connection is still usable: nothing to read yet (a closed connection reads
/// EOF at once, an error or unexpected bytes make it unusable too).
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // Polled once, outside tokio's cooperative budget (which could fake a pending read).
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}

/// The most recently released usable connection for `key`, if any.
pub fn take(key: u64) -> Option<Stream> {
    let now = Instant::now();
    IDLE_CONNECTIONS.with_borrow_mut(|idle| {
        idle.sweep(now);
        let list = idle.by_key.get_mut(&key)?;
        let found = loop {
            let Some((since, mut stream)) = list.pop() else {
                break None;
            };
            if now.duration_since(since) < IDLE && still_open(&mut stream) {
                break Some(stream);
            }
        };
        if list.is_empty() {
            idle.by_key.remove(&key);
        }
        found
    })
}

/// Keeps `stream` for the next call under `key`.
pub fn put(key: u64, stream: Stream) {
    let now = Instant::now();
    IDLE_CONNECTIONS.with_borrow_mut(|idle| {
        idle.sweep(now);
        let list = idle.by_key.entry(key).or_default();
        if list.len() >= MAX_PER_KEY {
            list.remove(0);
        }
        list.push((now, stream));
    });
}

/// Idle connections held by this thread (tests).
#[cfg(test)]
pub fn held(key: u64) -> usize {
    IDLE_CONNECTIONS.with_borrow(|idle| idle.by_key.get(&key).map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Box::new(L4Stream::from(client)), server)
    }

    #[tokio::test]
    async fn a_released_connection_is_taken_again_newest_first() {
        let key = 1;
        let (a, _sa) = pair().await;
        let (b, mut sb) = pair().await;
        put(key, a);
        put(key, b);
        assert_eq!(held(key), 2);
        let mut got = take(key).expect("pooled");
        // The newest (b): what the server writes on b arrives on the taken stream.
        sb.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), got.read_exact(&mut byte))
            .await
            .expect("the taken stream is b")
            .unwrap();
        assert_eq!(&byte, b"x");
        assert_eq!(held(key), 1);
        assert!(take(2).is_none(), "other keys see nothing");
    }

    #[tokio::test]
    async fn a_connection_the_provider_closed_is_dropped_not_returned() {
        let key = 3;
        let (a, sa) = pair().await;
        put(key, a);
        drop(sa);
        // On loopback the FIN is there once close returns; let the reactor see the event.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(take(key).is_none());
        assert_eq!(held(key), 0);
    }

    #[tokio::test]
    async fn the_pool_is_bounded_per_key() {
        let key = 4;
        let mut servers = Vec::new();
        for _ in 0..MAX_PER_KEY + 3 {
            let (c, s) = pair().await;
            put(key, c);
            servers.push(s);
        }
        assert_eq!(held(key), MAX_PER_KEY);
    }
}
