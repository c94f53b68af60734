//! Where the hub's log lines go: stderr, with access lines batched.
//!
//! One access line per call written with its own `write(2)` was a measurable share of the
//! proxy's CPU per request (docs/PERFORMANCE.md). Access lines (target `hub::access`, below WARN)
//! are appended to a buffer instead, and a flusher thread writes the buffer every
//! `log.access_flush_ms` (or the request thread does once 64 KiB are pending): nginx's
//! `access_log ... buffer= flush=`. Every other line (warnings, errors, start-up) is written at
//! once, after whatever access lines are pending, so the output stays in order. The flusher
//! sleeps between flushes (no spinning, no channel); [`LogSink::flush`] runs at exit.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Pending bytes at which the request thread writes the batch itself.
const MAX_PENDING: usize = 64 * 1024;
/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "hub::access";

/// The log output: cheap to clone, all clones share one buffer.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Inner>,
}

struct Inner {
    /// Access lines not yet written.
    pending: Mutex<Vec<u8>>,
    /// Held while writing to the output, so batches and immediate lines never interleave; holds
    /// the spare buffer the pending one is swapped with.
    out: Mutex<Vec<u8>>,
    /// Whether access lines are batched (`log.access_flush_ms` > 0 and the flusher runs).
    batching: AtomicBool,
    target: Output,
}

/// Writes one batch of lines somewhere (stderr in the hub).
type Output = Box<dyn Fn(&[u8]) -> io::Result<()> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a log lock leaves bytes, not broken invariants: keep logging.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogSink {
    /// Lines to stderr; access lines batched every `flush_every` (zero: no batching).
    pub fn stderr(flush_every: Duration) -> Self {
        Self::to(flush_every, |bytes| io::stderr().lock().write_all(bytes))
    }

    /// Lines to `target`, which writes one batch; starts the flusher thread when batching.
    pub fn to(
        flush_every: Duration,
        target: impl Fn(&[u8]) -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        let sink = Self {
            inner: Arc::new(Inner {
                pending: Mutex::new(Vec::new()),
                out: Mutex::new(Vec::new()),
                batching: AtomicBool::new(!flush_every.is_zero()),
                target: Box::new(target),
            }),
        };
        if sink.inner.batching.load(Ordering::Relaxed) {
            // A weak handle: the thread ends once every sink clone is gone.
            let weak = Arc::downgrade(&sink.inner);
            let spawned = std::thread::Builder::new()
                .name("hub-log-flush".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(flush_every);
                        let Some(inner) = weak.upgrade() else { return };
                        inner.write_batch(None);
                    }
                });
            if let Err(e) = spawned {
                eprintln!(
                    "hub: cannot start the log flusher ({e}); access lines are written at once"
                );
                sink.inner.batching.store(false, Ordering::Relaxed);
            }
        }
        sink
    }

    /// Writes every pending line now.
    pub fn flush(&self) {
        self.inner.write_batch(None);
    }
}

impl Inner {
    /// Writes what is pending, then `line` (if any), as one ordered piece of output.
    fn write_batch(&self, line: Option<&[u8]>) {
        let mut spare = lock(&self.out);
        {
            let mut pending = lock(&self.pending);
            if pending.is_empty() && line.is_none() {
                return;
            }
            std::mem::swap(&mut *pending, &mut *spare);
        }
        if let Some(line) = line {
            spare.extend_from_slice(line);
        }
        // Nowhere left to report a failing stderr; the lines are dropped, the hub keeps serving.
        let _ = (self.target)(&spare);
        spare.clear();
        if spare.capacity() > 4 * MAX_PENDING {
            *spare = Vec::new();
        }
    }

    fn append(&self, line: &[u8]) {
        let full = {
            let mut pending = lock(&self.pending);
            pending.extend_from_slice(line);
            pending.len() >= MAX_PENDING
        };
        if full {
            self.write_batch(None);
        }
    }
}

/// One log line's writer (tracing-subscriber formats a line, then writes it once).
pub struct LineWriter<'a> {
    inner: &'a Inner,
    batched: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.batched {
            self.inner.append(buf);
        } else {
            self.inner.write_batch(Some(buf));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            inner: &self.inner,
            batched: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            inner: &self.inner,
            // Levels compare by verbosity: INFO and more verbose, never WARN or ERROR.
            batched: self.inner.batching.load(Ordering::Relaxed)
                && meta.target() == ACCESS_TARGET
                && *meta.level() >= Level::INFO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::format::FmtSpan;

    type Captured = Arc<Mutex<Vec<Vec<u8>>>>;

    fn capture(flush_every: Duration) -> (LogSink, Captured) {
        let writes: Captured = Arc::default();
        let w = writes.clone();
        let sink = LogSink::to(flush_every, move |b| {
            w.lock().unwrap().push(b.to_vec());
            Ok(())
        });
        (sink, writes)
    }

    fn subscriber(sink: LogSink) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_writer(sink)
            .with_span_events(FmtSpan::NONE)
            .with_ansi(false)
            .finish()
    }

    #[test]
    fn access_lines_leave_in_one_write_and_warnings_keep_their_place() {
        // A flush period far beyond the test: only the sink's own rules write.
        let (sink, writes) = capture(Duration::from_secs(3600));
        tracing::subscriber::with_default(subscriber(sink.clone()), || {
            tracing::info!(target: "hub::access", n = 1, "call");
            tracing::info!(target: "hub::access", n = 2, "call");
            assert!(writes.lock().unwrap().is_empty(), "access lines wait");
            tracing::warn!(target: "hub::exhausted", "failed");
            tracing::info!(target: "hub::access", n = 3, "call");
        });
        let got = writes.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "two access lines and the warning: one write");
        let text = String::from_utf8(got[0].clone()).unwrap();
        let order: Vec<_> = ["n=1", "n=2", "failed"]
            .iter()
            .map(|m| {
                text.find(m)
                    .unwrap_or_else(|| panic!("{m} missing in {text}"))
            })
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {text}");
        sink.flush();
        let got = writes.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert!(String::from_utf8_lossy(&got[1]).contains("n=3"));
        sink.flush();
        assert_eq!(writes.lock().unwrap().len(), 2, "nothing pending: no write");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_request_thread() {
        let (sink, writes) = capture(Duration::from_secs(3600));
        let line = vec![b'x'; 1000];
        let lines = MAX_PENDING.div_ceil(line.len());
        for _ in 0..lines - 1 {
            sink.inner.append(&line);
        }
        assert!(writes.lock().unwrap().is_empty(), "below 64 KiB: held");
        sink.inner.append(&line);
        let got = writes.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), lines * line.len());
    }

    #[test]
    fn zero_period_writes_every_line_at_once() {
        let (sink, writes) = capture(Duration::ZERO);
        tracing::subscriber::with_default(subscriber(sink), || {
            tracing::info!(target: "hub::access", "one");
            tracing::info!(target: "hub::access", "two");
        });
        assert_eq!(writes.lock().unwrap().len(), 2);
    }

    #[test]
    fn the_flusher_writes_pending_lines_within_its_period() {
        let (sink, writes) = capture(Duration::from_millis(5));
        sink.inner.append(b"late line\n");
        // Bounded wait for the background thread (a real thread, not the test's clock).
        for _ in 0..400 {
            if !writes.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(writes.lock().unwrap().concat(), b"late line\n");
    }
}
