//! A hub killed with SIGKILL right after answering 502 still has that call's DLQ entry after a
//! restart: the proxy answers only once the entry is spooled and fsync'd.

use std::time::{Duration, Instant};

mod common;
use common::free_ports;
use common::process::{HubProcess, request};

#[test]
fn a_dlq_entry_survives_sigkill_right_after_the_502() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let [dead] = free_ports::<1>();
    let token = "hub_kill_test_admin_token_0123456789";
    let hub = HubProcess::new("up", &data).env("HUB_ADMIN_TOKEN", token);
    let running = hub.start(Duration::from_secs(30));
    // Nothing listens on `dead`: every attempt fails to connect.
    let body = serde_json::json!({
        "name": "dead", "hosts": ["dead.kill.test"], "baseUrl": format!("http://127.0.0.1:{dead}"),
        "auth": {"type": "bearer", "token": "kill-test-secret"},
        "config": {"allowInsecureUpstream": true, "allowPrivateNetwork": true, "maxAttempts": 1}
    })
    .to_string();
    let created = request(
        running.admin,
        &format!(
            "POST /api/v1/integrations/providers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(created.status, 201, "{}", created.body);

    let call = format!(
        "GET http://dead.kill.test:{dead}/v1/x HTTP/1.1\r\nHost: dead.kill.test:{dead}\r\nConnection: close\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        let resp = request(running.proxy, &call);
        if !resp.body.contains("unknown_provider") {
            break resp;
        }
        assert!(
            Instant::now() < deadline,
            "provider never reached the proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(resp.status, 502, "{}", resp.body);
    let id = resp
        .header("x-hub-dlq-id")
        .expect("502 names its DLQ entry")
        .to_owned();
    running.kill(); // SIGKILL, no shutdown of any kind

    let _restarted = hub.start(Duration::from_secs(30));
    let url = format!("sqlite://{}", data.join("hub.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let found = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dlq_entries WHERE id = ?")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
            if n == 1 || Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(
        found, 1,
        "the entry told to the caller is there after SIGKILL and restart"
    );
}
