//! HTTP/2 from modules, inside CONNECT tunnels (ALPN `h2`). Each stream is one request and goes
//! through the same Pingora `HttpProxy` and pipeline as an HTTP/1.1 request: routing, destination
//! check, admission, credentials, retries, DLQ, metrics, access line. The connection's context
//! (its tunnel target) travels in the request's extensions, since Pingora keeps a connection
//! context for HTTP/1.1 only.
//!
//! Bounds (a module cannot make the hub buffer or work without limit):
//!
//! | setting | value | why |
//! |---|---|---|
//! | `SETTINGS_MAX_CONCURRENT_STREAMS` | [`MAX_CONCURRENT_STREAMS`] | streams open at once |
//! | streams in flight (hub side) | [`MAX_CONCURRENT_STREAMS`] | a reset stream's call still runs until it notices; more are refused with `REFUSED_STREAM` (rapid reset) |
//! | refused streams per connection | [`MAX_REFUSED_STREAMS`] | then `GOAWAY ENHANCE_YOUR_CALM` and close |
//! | `SETTINGS_INITIAL_WINDOW_SIZE` | [`STREAM_WINDOW`] | unread request bytes per stream |
//! | connection window | [`CONNECTION_WINDOW`] | unread request bytes per connection |
//! | `SETTINGS_MAX_HEADER_LIST_SIZE` | [`MAX_HEADER_LIST`] | decoded header block (CONTINUATION floods end here) |
//! | send buffer per stream | [`MAX_SEND_BUFFER`] | response bytes queued for a slow reader; the relay waits for the module's window |
//! | reset streams pending accept | [`MAX_PENDING_RESETS`] | h2's rapid-reset bound before `GOAWAY` |
//! | locally reset streams | [`MAX_LOCAL_RESETS`] | misbehaving peers that trigger resets |
//! | idle connection | `KEEPALIVE_SECS` | no stream in flight |

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::Digest;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{self, H2Accept, H2Options, HttpSession};
use pingora::proxy::HttpProxy;
use tokio::sync::{Notify, Semaphore, watch};

use crate::metrics::METRICS;
use crate::pipeline::{ConnCtx, HubProxy};

/// Streams a module may have open on one connection (advertised and enforced).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams refused on one connection before the hub closes it.
pub const MAX_REFUSED_STREAMS: u32 = 1_000;
/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Per-connection receive window.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest decoded header list.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Largest response bytes queued per stream before the relay waits.
pub const MAX_SEND_BUFFER: usize = 256 * 1024;
/// Streams reset by the module before the hub accepted them (h2's rapid-reset guard).
pub const MAX_PENDING_RESETS: usize = 50;
/// Streams the hub reset because the module broke the protocol.
pub const MAX_LOCAL_RESETS: usize = 256;
/// Time allowed for the module's connection preface and SETTINGS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server settings above.
pub fn options() -> H2Options {
    let mut o = server::default_h2_options();
    o.max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS));
    o
}

/// The digest Pingora keeps per connection (shared by its streams).
fn digest_of(stream: &pingora::protocols::Stream) -> Arc<Digest> {
    Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    })
}

/// Serves one HTTP/2 connection until the module closes it, it stays idle past `idle`, it
/// breaks the protocol, or the hub shuts down (`GOAWAY`, streams in flight finish).
pub(crate) async fn serve(
    app: &Arc<HttpProxy<HubProxy>>,
    stream: pingora::protocols::Stream,
    conn: Arc<ConnCtx>,
    idle: Duration,
    shutdown: &watch::Receiver<bool>,
) {
    let digest = digest_of(&stream);
    let mut h2 = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        server::handshake(stream, Some(options())),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "h2 handshake with module failed");
            return;
        }
        Err(_) => {
            tracing::debug!("h2 handshake with module timed out");
            return;
        }
    };
    let in_flight = Arc::new(Semaphore::new(MAX_CONCURRENT_STREAMS as usize));
    let all_done = Arc::new(Notify::new());
    let mut shutdown = shutdown.clone();
    let mut draining = *shutdown.borrow();
    if draining {
        h2.graceful_shutdown();
    }
    let mut refused = 0u32;
    loop {
        let idle_wait = async {
            // Idle = no stream in flight for the keep-alive period.
            loop {
                let notified = all_done.notified();
                if in_flight.available_permits() == MAX_CONCURRENT_STREAMS as usize {
                    break;
                }
                notified.await;
            }
            tokio::time::sleep(idle).await;
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed(), if !draining => {
                h2.graceful_shutdown();
                draining = true;
                continue;
            }
            a = HttpSession::from_h2_conn(&mut h2, digest.clone()) => a,
            () = idle_wait, if !draining => return,
        };
        let mut session = match accepted {
            Ok(Some(H2Accept::Session(s))) => s,
            Ok(Some(H2Accept::Rejected)) => continue,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "h2 connection from module ended");
                return;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            // The module reset streams whose calls are still running (rapid reset) or ignores
            // the concurrency it was told: refuse, cheaply, and give up on it past a bound.
            METRICS
                .h2_streams_refused
                .with_label_values(&["concurrency"])
                .inc();
            session.shutdown_with_reason(h2::Reason::REFUSED_STREAM);
            refused += 1;
            if refused >= MAX_REFUSED_STREAMS {
                tracing::info!(
                    refused,
                    "h2 connection from module closed: too many refused streams"
                );
                h2.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                // Drive the GOAWAY out; the streams still running end with the connection.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    HttpSession::from_h2_conn(&mut h2, digest.clone()),
                )
                .await;
                return;
            }
            continue;
        };
        session
            .req_header_mut()
            .extensions_mut()
            .insert(conn.clone());
        let app = app.clone();
        let shutdown = shutdown.clone();
        let (sem, all_done) = (in_flight.clone(), all_done.clone());
        tokio::spawn(async move {
            app.process_new_http(ServerSession::new_http2(session), &shutdown)
                .await;
            drop(permit);
            if sem.available_permits() == MAX_CONCURRENT_STREAMS as usize {
                all_done.notify_waiters();
            }
        });
    }
}

/// Answers every stream of a refused tunnel's HTTP/2 connection with `problem` (in gRPC form to
/// gRPC calls), then ends it: the module's client sees the status and the `code` as it would over
/// HTTP/1.1. Bounded: the first stream within `wait`, the whole exchange within twice that.
pub(crate) async fn refuse(
    stream: pingora::protocols::Stream,
    problem: &crate::problem::Problem,
    wait: Duration,
) {
    let digest = digest_of(&stream);
    let Ok(Ok(mut h2)) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        server::handshake(stream, Some(options())),
    )
    .await
    else {
        return;
    };
    let exchange = async {
        let mut answered = false;
        loop {
            match HttpSession::from_h2_conn(&mut h2, digest.clone()).await {
                Ok(Some(H2Accept::Session(s))) => {
                    let mut session = ServerSession::new_http2(s);
                    let rid = crate::hygiene::request_id(session.req_header());
                    if let Err(e) = problem.send(&mut session, Some(&rid)).await {
                        tracing::debug!(error = %e, "could not answer the refused tunnel's stream");
                    }
                    if !answered {
                        answered = true;
                        h2.graceful_shutdown();
                    }
                }
                Ok(Some(H2Accept::Rejected)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(wait * 2, exchange).await;
}
