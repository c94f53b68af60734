//! What the admin tests share: a client for a test hub's admin API that keeps a transcript of
//! every answer (status line, headers, body) so a test can prove a secret never came back, raw
//! HTTP for requests a URL library would normalize, polling, and an admin server in front of
//! the DLQ/jobs suites' [`WorkHub`] (real DLQ writer, work queue and worker).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hub_core::secret::SecretString;
use hub_tests::harness::TEST_ADMIN_TOKEN;
use hub_tests::{Backend, TestHub};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::work::WorkHub;

/// Every test runs on both stores.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
/// The bootstrap token.
pub const ADMIN: &str = TEST_ADMIN_TOKEN;
/// The providers collection.
pub const PROVIDERS: &str = "/api/v1/integrations/providers";
/// The DLQ collection.
pub const DLQ: &str = "/api/v1/integrations/dlq";
/// A well-formed ULID nothing has.
pub const NOBODY: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// An answer, body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{e}: status {} body {}", self.status, self.text))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with this status and code; returns the body.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status, "{body}");
        body
    }
}

/// A client of one hub's admin API.
pub struct Api {
    base: String,
    http: reqwest::Client,
    transcript: Mutex<String>,
}

impl Api {
    /// A client for `hub` (no proxy: the admin API is called directly).
    pub fn new(hub: &TestHub) -> Self {
        Self::at(hub.admin_url())
    }

    /// A client for the admin API at `base` (`http://host:port`).
    pub fn at(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            transcript: Mutex::new(String::new()),
        }
    }

    /// `method path` with a bearer token and a JSON body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let (ct, bytes) = match body {
            Some(b) => (Some("application/json"), serde_json::to_vec(&b).unwrap()),
            None => (None, Vec::new()),
        };
        self.send_raw(method, path, token, ct, bytes, &[]).await
    }

    /// Shorthand: `send` with the bootstrap token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.send(method, path, Some(ADMIN), body).await
    }

    /// Any body, content type and extra headers.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await.expect("admin API answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        self.record(status, &headers, &text);
        Resp {
            status,
            headers,
            text,
        }
    }

    fn record(&self, status: u16, headers: &reqwest::header::HeaderMap, text: &str) {
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&format!("HTTP {status}\n"));
        for (k, v) in headers {
            t.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        t.push_str(text);
        t.push('\n');
    }

    /// Fails when any answer so far (status, headers, body) contained one of `secrets`.
    #[track_caller]
    pub fn assert_never_answered(&self, secrets: &[&str]) {
        let t = self.transcript.lock().unwrap();
        assert!(t.len() > 100, "the transcript is suspiciously short");
        for s in secrets {
            assert!(!t.contains(s), "secret {s:?} appeared in an admin answer");
        }
    }

    /// Registers a provider; returns its JSON.
    pub async fn create(&self, body: Value) -> Value {
        let r = self.admin("POST", PROVIDERS, Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()
    }

    /// Creates an API token with `role`; returns `(id, token)`.
    pub async fn token(&self, role: &str) -> (String, String) {
        let body = serde_json::json!({"name": format!("{role}-token"), "role": role});
        let r = self
            .admin("POST", "/api/v1/integrations/tokens", Some(body))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }
}

/// Sends `head` (request line and headers, CRLF-separated, no final blank line) as is over a
/// new connection; returns the status and the body. For targets a URL library would normalize.
pub async fn raw_http(hub: &TestHub, head: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(hub.admin_addr).await.unwrap();
    conn.write_all(format!("{head}\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Polls `check` every 50 ms until it holds or `within` passes; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An admin server (bootstrap token [`ADMIN`]) over a [`WorkHub`]'s store, DLQ and jobs, its
/// `POST /call` through that hub's proxy, its gauges refreshed every 100 ms. It stops when the
/// returned sender is dropped.
pub async fn admin_for(hub: &WorkHub) -> (Api, watch::Sender<bool>) {
    let state = hub_admin::AdminState::new(
        hub.store.clone(),
        hub.vault.clone(),
        "-----BEGIN CERTIFICATE-----\n(not served in these tests)\n",
        &SecretString::new(ADMIN),
        hub.bg.dlq.clone(),
        hub.bg.jobs.clone(),
    )
    .with_proxy(&hub.proxy_url())
    .unwrap()
    .with_gauge_period(Duration::from_millis(100));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = watch::channel(false);
    tokio::spawn(hub_admin::serve(listener, state, rx));
    (Api::at(base), stop)
}
