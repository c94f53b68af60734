//! Outages that lose nothing, with the real binary and real servers: PostgreSQL cut under load
//! (a chaos TCP proxy in front of a fresh database on the shared server), the proxy SIGKILLed
//! during the outage and restarted while it lasts, the DLQ spool drained afterwards and counted
//! against every id a client was told; a spool that cannot take more (its bound, a full disk).
//!
//! Needs PostgreSQL (`HUB_TEST_POSTGRES_URL`); skipped without it, failed under `CI=true`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hub_core::provider::NewProvider;
use hub_core::secret::SecretString;
use hub_core::testing::chaos::{ChaosProxy, Mode, server_addr, via};
use hub_core::vault::Vault;

mod common;
use common::free_ports;
use common::process::{HubProcess, MASTER_KEYS, Response, try_request_bytes};

/// A fresh database on the shared server, migrated, with the providers registered; `None` when
/// PostgreSQL is not there (outside CI).
async fn database(providers: &[serde_json::Value]) -> Option<hub_core::testing::TestDb> {
    let db = hub_core::testing::fresh_postgres().await?;
    let store = hub_core::store::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let vault = Vault::from_spec(&SecretString::new(MASTER_KEYS)).unwrap();
    for p in providers {
        let new: NewProvider = serde_json::from_value(p.clone()).unwrap();
        hub_core::catalog::register(store.as_ref(), &vault, new)
            .await
            .unwrap();
    }
    Some(db)
}

/// A provider whose every attempt fails at once (nothing listens on `port`); its breaker and
/// rate limit stay out of the way (every call must reach the DLQ).
fn dead_provider(name: &str, host: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "name": name, "hosts": [host], "baseUrl": format!("http://127.0.0.1:{port}"),
        "auth": {"type": "bearer", "token": "sk_live_CHAOS_SECRET_0001"},
        "config": {
            "allowInsecureUpstream": true, "allowPrivateNetwork": true, "maxAttempts": 1,
            "rateLimitPerSec": 100000, "burst": 100000,
            "breaker": {"failureThreshold": 1000, "failureWindowMs": 1, "openMs": 1}
        }
    })
}

fn failing_call(proxy: u16, host: &str, dead: u16, body: &[u8]) -> Option<Response> {
    let mut raw = format!(
        "POST http://{host}:{dead}/v1/charges HTTP/1.1\r\nHost: {host}:{dead}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    try_request_bytes(proxy, &raw)
}

/// What the clients were told.
#[derive(Default)]
struct Told {
    ids: Vec<String>,
    unrecorded: usize,
    other: Vec<String>,
}

impl Told {
    fn note(&mut self, r: Option<Response>) {
        match r {
            Some(r) if r.status == 502 && r.body.contains("\"upstream_failed\"") => {
                let id = r
                    .header("x-hub-dlq-id")
                    .expect("a 502 upstream_failed names its entry");
                self.ids.push(id.to_owned());
            }
            Some(r) if r.body.contains("upstream_failed_unrecorded") => {
                assert_eq!(r.status, 502);
                assert!(
                    r.header("x-hub-dlq-id").is_none(),
                    "never an id that does not exist"
                );
                self.unrecorded += 1;
            }
            Some(r) => self.other.push(format!("{} {:.200}", r.status, r.body)),
            None => self.other.push("no answer".into()),
        }
    }
}

/// `threads` clients each sending `per_thread` failing calls (bounded in count).
fn load(
    proxy: u16,
    host: &str,
    dead: u16,
    threads: usize,
    per_thread: usize,
    told: &Arc<Mutex<Told>>,
) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    let r = failing_call(proxy, host, dead, b"{\"amount\":4200}");
                    told.lock().unwrap().note(r);
                }
            });
        }
    });
}

async fn dlq_ids(url: &str) -> HashSet<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM dlq_entries")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

/// Waits (at most 30 s) until every id in `ids` is a DLQ entry of the database at `url`; the
/// ids still missing then (none when all arrived).
fn wait_stored(rt: &tokio::runtime::Runtime, url: &str, ids: &HashSet<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = rt.block_on(dlq_ids(url));
        let missing: Vec<String> = ids.difference(&stored).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_database_outage_with_a_sigkill_and_a_restart_loses_no_dlq_entry() {
    let rt = runtime();
    let [dead] = free_ports::<1>();
    let host = "pay.chaos.test";
    let Some(db) = rt.block_on(database(&[dead_provider("pay", host, dead)])) else {
        return;
    };
    let chaos = rt.block_on(async { ChaosProxy::start(server_addr(db.url()).await).await });
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::proxy(dir.path(), &via(db.url(), chaos.addr()));
    let proxy = hub.start(Duration::from_secs(60));
    let told = Arc::new(Mutex::new(Told::default()));

    // Before the outage, and during it. The database first hangs (connections open, nothing
    // answers: the nastier outage), later refuses outright.
    load(proxy.proxy, host, dead, 4, 10, &told);
    chaos.set(Mode::Stall);
    load(proxy.proxy, host, dead, 4, 15, &told);

    // Readiness answers at once and says what the background checks saw.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (r, took) = proxy.readyz();
        assert_eq!(
            r.status, 200,
            "a store outage does not make the proxy unready: {}",
            r.body
        );
        assert!(
            took < Duration::from_millis(250),
            "/readyz took {took:?} during the outage"
        );
        if r.body.contains("\"store\":\"unavailable\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage never showed in /readyz: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGKILL in the middle of traffic, while the database is still down.
    let port = proxy.proxy;
    std::thread::scope(|s| {
        let t = s.spawn(|| load(port, host, dead, 2, 300, &told));
        std::thread::sleep(Duration::from_millis(150));
        proxy.kill();
        let _ = t.join();
    });

    // Restarted while the outage lasts: it routes from its snapshot within 5 s.
    let started = Instant::now();
    let proxy = hub.start(Duration::from_secs(5));
    let ready_after = started.elapsed();
    let (r, took) = proxy.readyz();
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["registrySource"], "snapshot", "{body}");
    assert!(body["registryRevision"].as_i64() > Some(0), "{body}");
    assert!(body["registryAgeSeconds"].as_u64().is_some(), "{body}");
    assert!(took < Duration::from_millis(250), "/readyz took {took:?}");
    let first = failing_call(proxy.proxy, host, dead, b"{}");
    let served_after = started.elapsed();
    assert!(
        served_after < Duration::from_secs(5),
        "the restarted proxy served after {served_after:?}"
    );
    told.lock().unwrap().note(first);
    load(proxy.proxy, host, dead, 4, 10, &told);
    chaos.set(Mode::Cut);
    load(proxy.proxy, host, dead, 4, 10, &told);
    std::thread::sleep(Duration::from_millis(1100)); // one gauge period
    let spooled = proxy.metric("integration_dlq_spool_entries").unwrap_or(0.0);
    assert!(spooled > 0.0, "the spool holds the outage's entries");
    let handoffs = proxy.histogram("integration_dlq_handoff_duration_seconds");

    // The database returns: every id a client was told is there exactly once.
    chaos.set_up(true);
    let told = std::mem::take(&mut *told.lock().unwrap());
    // Only the calls cut by the SIGKILL got no answer.
    assert!(
        told.other.iter().all(|o| o == "no answer"),
        "unexpected answers: {:?}",
        &told.other[..told.other.len().min(3)]
    );
    let ids: HashSet<String> = told.ids.iter().cloned().collect();
    assert_eq!(ids.len(), told.ids.len(), "ids are unique");
    assert!(ids.len() >= 100, "{} ids told", ids.len());
    let missing = wait_stored(&rt, db.url(), &ids);
    assert!(
        missing.is_empty(),
        "{} of {} ids missing: {missing:?}",
        missing.len(),
        ids.len()
    );
    assert_eq!(told.unrecorded, 0, "the spool had room for everything");
    let log = proxy.log();
    assert!(
        !log.contains("sk_live_CHAOS_SECRET_0001"),
        "a credential reached the log"
    );
    eprintln!(
        "chaos: {} ids told, all stored; {} requests cut by the SIGKILL; ready {ready_after:?} \
         and serving {served_after:?} after the restart during the outage; durable hand-off \
         waits of the restarted proxy (all during the outage), cumulative by bucket: {handoffs:?}",
        ids.len(),
        told.other.len()
    );
}

/// Entries that cannot be spooled are answered without an id, under the spool's own bound and
/// on a disk that is full; the ones that were spooled all reach the database.
#[test]
fn a_spool_that_cannot_take_more_answers_without_an_id() {
    let rt = runtime();
    let [dead] = free_ports::<1>();
    let host = "big.chaos.test";
    let Some(db) = rt.block_on(database(&[dead_provider("big", host, dead)])) else {
        return;
    };
    let bound = tempfile::tempdir().unwrap();
    fill_the_spool(&rt, db.url(), bound.path(), host, dead, Some("524288"));
    match Tmpfs::mount("4m") {
        Some(disk) => fill_the_spool(&rt, db.url(), disk.path(), host, dead, None),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but a tmpfs cannot be mounted for the disk-full case (needs root)")
        }
        None => eprintln!("SKIPPED: disk-full case (mounting a tmpfs needs root)"),
    }
}

fn fill_the_spool(
    rt: &tokio::runtime::Runtime,
    db_url: &str,
    data_dir: &Path,
    host: &str,
    dead: u16,
    max_bytes: Option<&str>,
) {
    let chaos = rt.block_on(async { ChaosProxy::start(server_addr(db_url).await).await });
    let mut hub = HubProcess::proxy(data_dir, &via(db_url, chaos.addr()));
    if let Some(m) = max_bytes {
        hub = hub.env("HUB_DLQ_SPOOL_MAX_BYTES", m);
    }
    let proxy = hub.start(Duration::from_secs(60));
    chaos.set_up(false);
    let body = vec![b'x'; 96 * 1024];
    let mut told = Told::default();
    for _ in 0..80 {
        told.note(failing_call(proxy.proxy, host, dead, &body));
        if told.unrecorded >= 3 {
            break;
        }
    }
    assert!(
        told.other.is_empty(),
        "unexpected answers: {:?}",
        &told.other[..told.other.len().min(3)]
    );
    assert!(!told.ids.is_empty(), "the first entries fit");
    assert!(
        told.unrecorded >= 3,
        "the spool never refused ({} ids)",
        told.ids.len()
    );
    let unrecorded = proxy
        .metric("integration_dlq_unrecorded_total")
        .unwrap_or(0.0);
    assert!(unrecorded >= 3.0, "the metric counts them: {unrecorded}");
    assert!(
        proxy.log().contains("NOT recorded in the DLQ"),
        "an error line says so"
    );
    // What curl, as a module would run it, sees: the 502, its code, and no id.
    match curl_post(
        proxy.proxy,
        &format!("http://{host}:{dead}/v1/charges"),
        &body,
    ) {
        Some(head_and_body) => {
            let lower = head_and_body.to_ascii_lowercase();
            assert!(lower.starts_with("http/1.1 502"), "{head_and_body:.300}");
            assert!(
                lower.contains("upstream_failed_unrecorded"),
                "{head_and_body:.300}"
            );
            assert!(!lower.contains("x-hub-dlq-id"), "{head_and_body:.300}");
        }
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but no curl"),
        None => eprintln!("SKIPPED: curl check (curl not installed)"),
    }
    chaos.set_up(true);
    let ids: HashSet<String> = told.ids.iter().cloned().collect();
    let missing = wait_stored(rt, db_url, &ids);
    assert!(
        missing.is_empty(),
        "spooled entries never reached the database: {missing:?}"
    );
    // With room again, calls are recorded again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = failing_call(proxy.proxy, host, dead, &body);
        if r.as_ref().and_then(|r| r.header("x-hub-dlq-id")).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool never took entries again: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `curl -i -x <proxy> --data-binary @body <url>`: the whole answer, or `None` without curl.
fn curl_post(proxy: u16, url: &str, body: &[u8]) -> Option<String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30", "-x"])
        .arg(format!("http://127.0.0.1:{proxy}"))
        .arg("--data-binary")
        .arg(format!("@{}", file.path().display()))
        .arg(url)
        .output()
        .ok()?;
    // Past curl's own `100 Continue` head, if the hub sent one.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(match text.split_once("HTTP/1.1 100 Continue\r\n\r\n") {
        Some((_, rest)) => rest.to_owned(),
        None => text,
    })
}

/// A small tmpfs (a disk that fills), unmounted on drop; `None` without the right to mount.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_proxy_without_store_or_snapshot_refuses_to_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let [nothing] = free_ports::<1>();
    let hub = HubProcess::proxy(
        dir.path(),
        &format!("postgres://postgres@127.0.0.1:{nothing}/hub"),
    );
    let mut running = hub.spawn(free_ports::<1>()[0], free_ports::<1>()[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = running.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "it kept running without a registry"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = running.log();
    assert!(
        log.contains("no last-known-good snapshot"),
        "the message says why: {log}"
    );
}

/// What the services do not need on the request path does not stop them from starting: the
/// admin with its database down answers 503 on store-backed routes (no crash loop), a proxy with
/// RabbitMQ down serves.
#[test]
fn services_start_during_outages_of_what_they_can_do_without() {
    let rt = runtime();
    let [nothing, dead] = free_ports::<2>();
    let dir = tempfile::tempdir().unwrap();
    let token = "hub_chaos_admin_token_0123456789";
    let down = format!("postgres://postgres@127.0.0.1:{nothing}/hub");
    let admin = HubProcess::admin(&dir.path().join("admin"), &down, token)
        .start_listening(Duration::from_secs(10));
    let started = Instant::now();
    let r = try_request_bytes(
        admin.admin,
        format!(
            "GET /api/v1/integrations/providers HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("the admin answers");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    let health = try_request_bytes(
        admin.admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("healthz");
    assert_eq!(health.status, 200, "alive while the database is down");
    assert!(!admin.log().contains(token), "the token reached the log");

    let host = "amqp.chaos.test";
    let Some(db) = rt.block_on(database(&[dead_provider("amqpless", host, dead)])) else {
        return;
    };
    let proxy = HubProcess::proxy(&dir.path().join("proxy"), db.url())
        .env(
            "HUB_AMQP_URL",
            &format!("amqp://guest:guest@127.0.0.1:{nothing}/%2f"),
        )
        .start(Duration::from_secs(10));
    let r = failing_call(proxy.proxy, host, dead, b"{}").expect("an answer");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.header("x-hub-dlq-id").is_some());
}

/// Deletes every key under `prefix` (the test's own) from the shared Redis.
async fn drop_redis_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A fresh database with one dead provider behind a chaos proxy, Valkey under a key prefix of
/// its own, and proxies over both.
struct RedisOutage {
    db: hub_core::testing::TestDb,
    chaos: ChaosProxy,
    dir: tempfile::TempDir,
    prefix: String,
    redis_url: String,
    host: String,
    dead: u16,
}

impl RedisOutage {
    fn new(rt: &tokio::runtime::Runtime, name: &str) -> Option<Self> {
        let [dead] = free_ports::<1>();
        let host = format!("{name}.chaos.test");
        let redis_url = rt.block_on(hub_core::testing::redis_url())?;
        let db = rt.block_on(database(&[dead_provider(name, &host, dead)]))?;
        let chaos = rt.block_on(async { ChaosProxy::start(server_addr(db.url()).await).await });
        Some(Self {
            db,
            chaos,
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("chaos-{}:", ulid::Ulid::new()),
            redis_url,
            host,
            dead,
        })
    }

    /// A proxy named `name` (its own data dir) over the database (through the chaos proxy) and
    /// Valkey.
    fn proxy(&self, name: &str) -> HubProcess {
        HubProcess::proxy(
            &self.dir.path().join(name),
            &via(self.db.url(), self.chaos.addr()),
        )
        .env("HUB_REDIS_URL", &self.redis_url)
        .env("HUB_REDIS_KEY_PREFIX", &self.prefix)
    }
}

/// A pod replaced during a database outage has an empty data dir: it starts from the registry
/// snapshot the proxies keep in Valkey.
#[test]
fn a_proxy_on_a_fresh_node_starts_from_the_snapshot_in_redis_during_an_outage() {
    let rt = runtime();
    let Some(t) = RedisOutage::new(&rt, "fresh") else {
        return;
    };
    let (chaos, prefix, redis_url) = (&t.chaos, &t.prefix, &t.redis_url);
    let (host, dead) = (t.host.as_str(), t.dead);
    let hub = |name: &str| t.proxy(name);
    let first = hub("first").start(Duration::from_secs(60));
    let key = format!("{prefix}registry:snapshot");
    let copied = rt.block_on(async {
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("EXISTS")
            .arg(&key)
            .query_async::<bool>(&mut conn)
            .await
            .unwrap()
    });
    assert!(
        copied,
        "the first proxy copied its snapshot to Redis: {}",
        first.log()
    );
    chaos.set(Mode::Cut);
    let started = Instant::now();
    let second = hub("second").start(Duration::from_secs(5));
    let (r, _) = second.readyz();
    assert!(
        r.body.contains("\"registrySource\":\"snapshot\""),
        "{}",
        r.body
    );
    let call = failing_call(second.proxy, host, dead, b"{}").expect("an answer");
    assert_eq!(call.status, 502, "{}", call.body);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        second.log().contains("\"from\":\"redis\""),
        "the snapshot came from Redis: {}",
        second.log()
    );
    drop((first, second));
    rt.block_on(drop_redis_keys(redis_url, prefix));
}

/// A provider that counts what reaches it, by path, and answers 200 at once.
struct Counter {
    port: u16,
    seen: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl Counter {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let counts = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let counts = counts.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 2048];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        if head.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    // The request line's path names the run (the Host is the base URL's).
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                    *counts.lock().unwrap().entry(path).or_insert(0) += 1;
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Self { port, seen }
    }

    fn count(&self, path: &str) -> usize {
        self.seen.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Two proxies share 50/s + burst 50 through Valkey while every Valkey call is slower than the
/// bound: each admits only its share, so over 5 s the provider never gets more than
/// 50 × 5 + 50 = 300, however much more is offered (150/s to each proxy). Ten runs.
#[test]
fn two_proxies_hold_a_shared_limit_while_redis_is_slower_than_its_bound() {
    const RUNS: usize = 10;
    const CEILING: usize = 50 * 5 + 50;
    let rt = runtime();
    let Some(redis_url) = rt.block_on(hub_core::testing::redis_url()) else {
        return;
    };
    let counter = Counter::start();
    let provider = |name: String, host: &str| {
        serde_json::json!({
            "name": name, "hosts": [host], "baseUrl": format!("http://127.0.0.1:{}", counter.port),
            "config": {"allowInsecureUpstream": true, "allowPrivateNetwork": true,
                       "maxAttempts": 1, "rateLimitPerSec": 50, "burst": 50}
        })
    };
    let hosts: Vec<String> = (0..=RUNS).map(|i| format!("rl{i}.chaos.test")).collect();
    let providers: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| provider(format!("rl{i}"), h))
        .collect();
    let Some(db) = rt.block_on(database(&providers)) else {
        return;
    };
    let prefix = format!("chaos-{}:", ulid::Ulid::new());
    let redis = rt.block_on(async { ChaosProxy::start(server_addr(&redis_url).await).await });
    let redis_via = via(&redis_url, redis.addr());
    let dir = tempfile::tempdir().unwrap();
    let proxies: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            HubProcess::proxy(&dir.path().join(n), db.url())
                .env("HUB_REDIS_URL", &redis_via)
                .env("HUB_REDIS_KEY_PREFIX", &prefix)
                .env("HUB_REDIS_FALLBACK_INSTANCES", "2")
                .start(Duration::from_secs(60))
        })
        .collect();
    let call = |port: u16, host: &str| {
        try_request_bytes(
            port,
            format!("GET http://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    // Both instances admit through Valkey once, so each is counted in its instance registry.
    for p in &proxies {
        let r = call(p.proxy, &hosts[RUNS]).expect("an answer");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    std::thread::sleep(Duration::from_millis(1500));
    redis.set(Mode::Delay(Duration::from_millis(60)));
    // (received, ceiling): the ceiling is burst + rate × the run's actual span (a lane that
    // falls behind its schedule on a busy machine stretches the window a little past 5 s).
    let mut runs = Vec::new();
    for host in &hosts[..RUNS] {
        let start = Instant::now();
        let last = Mutex::new(start);
        std::thread::scope(|s| {
            for p in &proxies {
                for lane in 0..3u32 {
                    let port = p.proxy;
                    let last = &last;
                    s.spawn(move || {
                        // 50/s per lane, 3 lanes: 150/s to each proxy for 5 s.
                        for i in 0..250u32 {
                            let due = start + Duration::from_millis(u64::from(i * 20 + lane * 7));
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            let _ = call(port, host);
                            let mut l = last.lock().unwrap();
                            *l = (*l).max(Instant::now());
                        }
                    });
                }
            }
        });
        let span = last
            .into_inner()
            .unwrap()
            .duration_since(start)
            .as_secs_f64();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ceiling = 50 + (50.0 * span).ceil() as usize;
        runs.push((counter.count("/v1/x"), ceiling));
        counter.seen.lock().unwrap().clear();
    }
    let fallbacks: f64 = proxies
        .iter()
        .map(|p| {
            p.metric("integration_state_backend_fallbacks_total")
                .unwrap_or(0.0)
        })
        .sum();
    eprintln!(
        "shared limit with Redis slowed past its bound: (provider received, ceiling) per run \
         {runs:?}; {fallbacks} fallback admissions"
    );
    assert!(
        fallbacks > 0.0,
        "Redis was slower than the bound: admissions fell back"
    );
    assert!(
        runs.iter().all(|&(n, ceiling)| n <= ceiling),
        "over the shared limit: {runs:?}"
    );
    assert!(
        runs.iter().all(|&(n, _)| n >= CEILING / 3),
        "the limit still admits its share: {runs:?}"
    );
    drop(proxies);
    rt.block_on(drop_redis_keys(&redis_url, &prefix));
}

/// A proxy stopped (SIGTERM) during a database outage whose data dir then disappears (a
/// Kubernetes pod deleted: its `emptyDir` goes with it) hands its spooled entries over to Valkey;
/// another proxy stores them once the database is back. Every id a client was told arrives.
#[test]
fn a_proxy_stopped_during_an_outage_hands_its_spool_over_through_redis() {
    let rt = runtime();
    let Some(t) = RedisOutage::new(&rt, "handover") else {
        return;
    };
    let (db, chaos, dir, prefix, redis_url) = (&t.db, &t.chaos, &t.dir, &t.prefix, &t.redis_url);
    let (host, dead) = (t.host.as_str(), t.dead);
    let hub = |name: &str| t.proxy(name);
    let first = hub("first").start(Duration::from_secs(60));
    chaos.set(Mode::Cut);
    let told = Arc::new(Mutex::new(Told::default()));
    load(first.proxy, host, dead, 2, 20, &told);
    let status = first.terminate(Duration::from_secs(60));
    assert!(status.success(), "a clean stop");
    let log = std::fs::read_to_string(dir.path().join("first/hub.log")).unwrap();
    assert!(log.contains("handed over to Valkey"), "{log}");
    // What went to Valkey (the hand-over, the registry copy) and to disk holds no credential.
    let in_valkey = rt.block_on(async {
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let handed: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(format!("{prefix}dlq:handover"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let snapshot: Vec<u8> = redis::cmd("GET")
            .arg(format!("{prefix}registry:snapshot"))
            .query_async(&mut conn)
            .await
            .unwrap();
        (handed, snapshot)
    });
    assert_eq!(in_valkey.0.len(), 40, "every told entry handed over");
    let on_disk = std::fs::read(dir.path().join("first/registry.snapshot.json")).unwrap();
    for (what, bytes) in [
        ("the hand-over", in_valkey.0.concat()),
        ("the registry copy in Valkey", in_valkey.1),
        ("the registry snapshot file", on_disk),
        ("the log", log.into_bytes()),
    ] {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("sk_live_CHAOS_SECRET_0001"),
            "a provider credential in {what}"
        );
    }
    // The pod is gone, and its emptyDir with it.
    std::fs::remove_dir_all(dir.path().join("first")).unwrap();

    let second = hub("second").start(Duration::from_secs(10));
    chaos.set(Mode::Pass);
    let told = std::mem::take(&mut *told.lock().unwrap());
    assert!(
        told.other.is_empty(),
        "{:?}",
        &told.other[..told.other.len().min(3)]
    );
    let ids: HashSet<String> = told.ids.iter().cloned().collect();
    assert_eq!(ids.len(), 40);
    let missing = wait_stored(&rt, db.url(), &ids);
    assert!(
        missing.is_empty(),
        "{} of {} ids missing; second proxy's log:\n{}",
        missing.len(),
        ids.len(),
        second.log()
    );
    drop(second);
    rt.block_on(drop_redis_keys(redis_url, prefix));
}
