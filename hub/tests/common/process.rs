#![allow(dead_code)] // each test binary uses its own part of it
//! The real `hub` binary as a test drives it: started with a builder (subcommand, database,
//! Redis, data directory, extra settings), waited for until `/readyz` answers, killed with
//! SIGKILL, restarted over the same data directory; plain HTTP/1.1 calls through its proxy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_ports;

/// The vault ring every chaos hub uses (tests open rows and register providers with it).
pub const MASTER_KEYS: &str = "chaos1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// How to start a hub process.
#[derive(Debug, Clone)]
pub struct HubProcess {
    command: &'static str,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
}

/// A running hub process.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The proxy port.
    pub proxy: u16,
    /// The metrics/probes port.
    pub metrics: u16,
    /// The admin port (`hub admin`).
    pub admin: u16,
    log: PathBuf,
}

impl HubProcess {
    /// `hub <command>` with its data in `data_dir` (the embedded default for `up`), no worker.
    pub fn new(command: &'static str, data_dir: &Path) -> Self {
        Self {
            command,
            data_dir: data_dir.to_owned(),
            env: vec![
                ("HUB_MASTER_KEYS".into(), MASTER_KEYS.into()),
                ("HUB_JOBS_WORKERS".into(), "0".into()),
                ("HUB_LOG".into(), "info".into()),
            ],
        }
    }

    /// `hub proxy` over `database_url`, its data in `data_dir`, no worker.
    pub fn proxy(data_dir: &Path, database_url: &str) -> Self {
        Self::new("proxy", data_dir).env("HUB_DATABASE_URL", database_url)
    }

    /// `hub admin` over `database_url` with the bootstrap token `token`.
    pub fn admin(data_dir: &Path, database_url: &str, token: &str) -> Self {
        Self::new("admin", data_dir)
            .env("HUB_DATABASE_URL", database_url)
            .env("HUB_ADMIN_TOKEN", token)
    }

    /// Sets an environment variable (a config key's override).
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts it and waits (at most `within`) until `/readyz` answers 200 and, for a command
    /// that serves the admin API (`up`, `admin`), until the admin listens too: the proxy's
    /// readiness says nothing of the admin, which `up` binds after it.
    pub fn start(&self, within: Duration) -> Running {
        let [proxy, metrics] = free_ports::<2>();
        let mut running = self.spawn(proxy, metrics);
        let waited = running.wait_ready(within);
        if self.command != "proxy" {
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", running.admin)).is_err() {
                let exited = running.try_wait();
                assert!(
                    exited.is_none() && waited + start.elapsed() < within,
                    "the admin is not listening on {} within {within:?}; exited: {exited:?}; log:\n{}",
                    running.admin,
                    running.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        running
    }

    /// Starts it and waits (at most `within`) until something listens on its main port (the
    /// admin's `/readyz` is 503 while its database is down).
    pub fn start_listening(&self, within: Duration) -> Running {
        let [proxy, metrics] = free_ports::<2>();
        let mut running = self.spawn(proxy, metrics);
        let port = if self.command == "admin" {
            running.admin
        } else {
            running.proxy
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = running.try_wait();
            assert!(
                exited.is_none() && start.elapsed() < within,
                "nothing listening on {port} within {within:?}; exited: {exited:?}; log:\n{}",
                running.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        running
    }

    /// Starts it without waiting.
    pub fn spawn(&self, proxy: u16, metrics: u16) -> Running {
        let [admin] = free_ports::<1>();
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = self.data_dir.join("hub.log");
        let sink = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
        cmd.arg(self.command)
            .current_dir(&self.data_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HUB_DATA_DIR", &self.data_dir)
            .env("HUB_PROXY_LISTEN", format!("127.0.0.1:{proxy}"))
            .env("HUB_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
            .env("HUB_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(sink));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Running {
            child: cmd.spawn().unwrap(),
            proxy,
            metrics,
            admin,
            log,
        }
    }
}

impl Running {
    /// Waits until `/readyz` answers 200; panics with the log when it does not within `within`.
    pub fn wait_ready(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(r) = try_request(
                self.metrics,
                "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ) && r.status == 200
            {
                return start.elapsed();
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < within,
                "hub not ready within {within:?}; exited: {exited:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /readyz` and how long it took.
    pub fn readyz(&self) -> (Response, Duration) {
        let t = Instant::now();
        let r = request(
            self.metrics,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        (r, t.elapsed())
    }

    /// The value of one metric (first sample whose line starts with `series`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let r = request(
            self.metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        r.body.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
    }

    /// Its data directory's log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// A histogram's cumulative buckets: `(le, count)`.
    pub fn histogram(&self, name: &str) -> Vec<(String, f64)> {
        let r = request(
            self.metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let prefix = format!("{name}_bucket{{le=\"");
        r.body
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.to_owned(), count.trim().parse().ok()?))
            })
            .collect()
    }

    /// SIGTERM, then waits (at most `within`) for the exit; the exit status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "no exit within {within:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers (lower-case names), body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` (which must say `Connection: close`) and reads the answer to EOF; `None` when
/// the connection fails or the answer does not parse.
pub fn try_request(port: u16, raw: &str) -> Option<Response> {
    try_request_bytes(port, raw.as_bytes())
}

/// [`try_request`] with a binary request.
pub fn try_request_bytes(port: u16, raw: &[u8]) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(raw).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// [`try_request`] that panics when there is no answer.
pub fn request(port: u16, raw: &str) -> Response {
    try_request(port, raw).unwrap_or_else(|| panic!("no answer from port {port} to {raw:?}"))
}
