//! Captures every log line the hub emits in this test process (JSON, as in production) so tests
//! can assert on them — above all, that no secret ever appears.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("HUB_TEST_LOG_STDERR").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per process; later calls are no-ops). Set
/// `HUB_TEST_LOG_STDERR=1` to also see the lines on stderr.
pub fn init() {
    BUFFER.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(hub::log_filter("debug"))
            .with_writer(move || sink.clone())
            .try_init();
        buf
    });
}

/// Everything logged so far.
pub fn contents() -> String {
    BUFFER
        .get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}
