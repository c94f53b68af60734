//! Test support for this crate: the admin router over a fresh SQLite store (with the DLQ and
//! jobs services and a DLQ writer on it) and a stand-in for the hub proxy, and one-call
//! requests. The end-to-end suite (`tests/tests/admin.rs`) runs the real server against the
//! real proxy on both databases; these tests cover the contract.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, header};
use hub_core::config::HubConfig;
use hub_core::dlq::{DlqSender, FailedCall};
use hub_core::jobs::{Background, Db, JobSubmitter, NewJob, SqlQueue};
use hub_core::secret::SecretString;
use hub_core::state::{Clock, LocalState};
use hub_core::store::{self, Store};
use hub_core::testing;
use hub_core::vault::Vault;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;
use ulid::Ulid;

use crate::{AdminState, router};

/// The bootstrap token of every test app.
pub const BOOTSTRAP: &str = "test-bootstrap-token";
/// The vault key ring of every test app.
const KEYS: &str = "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A router over its own database.
pub struct TestApp {
    pub router: Router,
    pub store: Arc<dyn Store>,
    /// The DLQ and jobs services the app reads.
    pub bg: Background,
    dlq_writer: DlqSender,
    _dir: tempfile::TempDir,
}

/// A response, body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type without parameters.
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl TestApp {
    /// A fresh app; `POST /call` goes to a stand-in proxy answering `200 {"ok":true}`.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = testing::fresh_sqlite_url(dir.path());
        let store = store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let vault = Arc::new(Vault::from_spec(&SecretString::new(KEYS)).unwrap());
        let db = Db::connect(&url).await.unwrap();
        let config = HubConfig {
            data_dir: dir.path().to_owned(),
            ..HubConfig::default()
        };
        let queue = Arc::new(SqlQueue::new(
            db.clone(),
            Duration::from_secs(30),
            Clock::system(),
        ));
        let bg = Background::with_queue(db, queue, vault.clone(), &config, Clock::system());
        let (dlq_writer, _) = bg.spawn_writer().unwrap();
        let state = AdminState::new(
            store.clone(),
            vault,
            "-----BEGIN CERTIFICATE-----\n",
            &SecretString::new(BOOTSTRAP),
            bg.dlq.clone(),
            bg.jobs.clone(),
        )
        .with_shared_state(Arc::new(LocalState::new()))
        .with_proxy(&stand_in_proxy().await)
        .unwrap();
        Self {
            router: router(state),
            store,
            bg,
            dlq_writer,
            _dir: dir,
        }
    }

    /// Sends a request; `body` as JSON when given.
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b).unwrap())),
            None => req.body(Body::empty()),
        };
        self.raw(req.unwrap()).await
    }

    /// Sends a prepared request.
    pub async fn raw(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Registers a provider as the bootstrap admin; returns its JSON.
    pub async fn provider(&self, name: &str) -> Value {
        let body = serde_json::json!({
            "name": name,
            "hosts": [format!("api.{name}.test")],
            "baseUrl": format!("https://api.{name}.test"),
            "auth": {"type": "bearer", "token": format!("sk_{name}_SECRET")},
        });
        let r = self
            .send(
                "POST",
                "/api/v1/integrations/providers",
                Some(BOOTSTRAP),
                Some(body),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

impl TestApp {
    /// Hands a failed call of `provider` (its JSON) to the DLQ writer and waits until it is
    /// stored. `body: None` records a call whose body was too large (kept truncated: not
    /// replayable).
    pub async fn dlq_entry(&self, provider: &Value, body: Option<&[u8]>) -> Ulid {
        let id = Ulid::new();
        let call = FailedCall {
            id,
            provider_id: provider["id"].as_str().unwrap().parse().unwrap(),
            provider: provider["name"].as_str().unwrap().to_owned(),
            tenant: provider["tenant"].as_str().map(str::to_owned),
            method: "POST".into(),
            path: "/v1/charges?limit=3".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.map(Bytes::copy_from_slice),
            body_truncated: body.is_none(),
            idempotency_key: Some(format!("idem-{id}")),
            request_id: format!("req-{id}"),
            attempts: 2,
            last_status: Some(503),
            last_error: "status",
            stop: "attempts_exhausted",
            excerpt: "{\"error\":\"unavailable\"}".into(),
            failed_at: chrono::Utc::now(),
        };
        self.dlq_writer
            .send_durable(call, Duration::from_secs(5))
            .await
            .unwrap();
        for _ in 0..200 {
            if self.bg.dlq.get(id).await.is_ok() {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("DLQ entry {id} was not stored");
    }

    /// Submits an asynchronous job for `provider` (as the proxy does for `Prefer:
    /// respond-async`); returns its id.
    pub async fn job(&self, provider: &Value) -> Ulid {
        let job = NewJob {
            provider_id: provider["id"].as_str().unwrap().parse().unwrap(),
            provider: provider["name"].as_str().unwrap().to_owned(),
            tenant: provider["tenant"].as_str().map(str::to_owned),
            method: "POST".into(),
            path: "/v1/reports".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{\"month\":11}"),
            idempotency_key: None,
            request_id: "req-job".into(),
            callback_url: None,
        };
        self.bg.jobs.submit(job).await.unwrap().id
    }
}

/// A stand-in for the hub proxy: answers every request `200 {"ok":true}` and closes.
async fn stand_in_proxy() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                let complete = |seen: &[u8]| {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    seen.len() >= end + 4 + length
                };
                while !complete(&seen) {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = br#"{"ok":true}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: r1\r\n\
                     connection: close\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body).await;
            });
        }
    });
    format!("http://{addr}")
}
