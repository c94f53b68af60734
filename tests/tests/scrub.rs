//! A provider that hands its credential back (an echo of the request's headers, an error body
//! quoting the key) never gets it to the module or into the DLQ: the hub masks it with `*`s of
//! the same length in response headers, bodies (also when the secret straddles two chunks) and
//! DLQ excerpts, while the provider keeps receiving the real credential. Each case has a control
//! provider with `scrubResponses: false` that shows the secret would otherwise come back.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use hub_tests::client::{client, provider_json};
use hub_tests::harness::TEST_ADMIN_TOKEN;
use hub_tests::{Backend, FakeProvider, Mode, TestHub, TestPki};
use serde_json::json;
use support::dlq::{entry_of, failing_call};
use support::{SECRET, Variant, WorkHub, test_config};

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

const BEARER: &str = "tok_BEARER_4b1d9e7c";
const BASIC_USER: &str = "acct_BASICUSER_77";
const BASIC_PASS: &str = "pw_BASICPASS_9f3a";
const HEADER_KEY: &str = "key_HEADER_5c2e8a10";
/// Percent-encoded on the query string: `q%20QUERY%2Fs3cr%2Bt`.
const QUERY_KEY: &str = "q QUERY/s3cr+t";
const QUERY_SENT: &str = "q%20QUERY%2Fs3cr%2Bt";

fn stars(n: usize) -> String {
    "*".repeat(n)
}

/// Every form a credential of these tests could come back in.
fn forms() -> Vec<String> {
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASS}"));
    vec![
        BEARER.into(),
        BASIC_USER.into(),
        BASIC_PASS.into(),
        basic,
        HEADER_KEY.into(),
        QUERY_KEY.into(),
        QUERY_SENT.into(),
        SECRET.into(),
    ]
}

/// The provider's credential is not in `text` (the module's own dummy key, echoed back to it,
/// may be: it is not a secret).
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "{what} leaks the credential: {text}"
    );
}

fn assert_clean(what: &str, text: &str) {
    for f in forms() {
        assert!(!text.contains(&f), "{what} leaks {f:?}: {text}");
    }
}

/// The module's view of an answer: status, headers as text, body.
async fn answer(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap();
    (status, headers, body)
}

#[tokio::test]
async fn echoed_credentials_reach_the_module_masked_and_the_provider_real() {
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        fake.set_mode(Mode::Echo(200));
        let cases = [
            (
                "bearer",
                json!({"type": "bearer", "token": BEARER}),
                "authorization",
                format!("Bearer {BEARER}"),
            ),
            (
                "basic",
                json!({"type": "basic", "username": BASIC_USER, "password": BASIC_PASS}),
                "authorization",
                {
                    use base64::Engine;
                    let b = base64::engine::general_purpose::STANDARD
                        .encode(format!("{BASIC_USER}:{BASIC_PASS}"));
                    format!("Basic {b}")
                },
            ),
            (
                "header",
                json!({"type": "header", "name": "X-Api-Key", "value": HEADER_KEY}),
                "x-api-key",
                HEADER_KEY.to_owned(),
            ),
            (
                "query",
                json!({"type": "query", "name": "api_key", "value": QUERY_KEY}),
                "",
                String::new(),
            ),
        ];
        for (kind, auth, header, sent) in &cases {
            let host = format!("{kind}.echo.test");
            hub.add_provider(provider_json(
                &format!("echo-{kind}"),
                &host,
                &fake,
                auth.clone(),
            ))
            .await;
            let url = format!("https://{host}:{}/v1/echo?x=1", fake.port);
            let before = fake.requests().len();
            let resp = client(&hub).get(&url).send().await.unwrap();
            let length = resp.content_length();
            let (status, headers, body) = answer(resp).await;
            assert_eq!(status, 200, "{backend:?} {kind}");
            assert_eq!(
                length,
                Some(body.len() as u64),
                "the length is the provider's"
            );
            assert_clean(&format!("{backend:?} {kind}: headers"), &headers);
            assert_clean(&format!("{backend:?} {kind}: body"), &body);
            // The provider got the real thing, and was asked not to compress.
            let got = &fake.requests()[before];
            assert_eq!(got.header("accept-encoding"), Some("identity"));
            let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
            if *kind == "query" {
                assert_eq!(got.target, format!("/v1/echo?x=1&api_key={QUERY_SENT}"));
                assert_eq!(
                    echoed["target"],
                    format!("/v1/echo?x=1&api_key={}", stars(QUERY_SENT.len()))
                );
            } else {
                assert_eq!(got.header(header), Some(sent.as_str()), "{kind}");
                assert_eq!(echoed["headers"][header], stars(sent.len()), "{kind}");
                assert!(
                    headers.contains(&format!("\"x-echo-{header}\": \"{}\"", stars(sent.len()))),
                    "{kind}: {headers}"
                );
            }
        }
        // Control: the same echo with scrubbing off hands the credential back (so the checks
        // above would see a leak), and asks for no particular encoding.
        let host = "plain.echo.test";
        let mut json = provider_json(
            "echo-plain",
            host,
            &fake,
            json!({"type": "bearer", "token": BEARER}),
        );
        json["config"]["scrubResponses"] = json!(false);
        hub.add_provider(json).await;
        let before = fake.requests().len();
        let resp = client(&hub)
            .get(format!("https://{host}:{}/v1/echo", fake.port))
            .send()
            .await
            .unwrap();
        let (_, headers, body) = answer(resp).await;
        assert!(body.contains(BEARER) && headers.contains(BEARER), "{body}");
        assert_eq!(fake.requests()[before].header("accept-encoding"), None);
        assert_clean("the logs", &hub_tests::logs::contents());
    }
}

#[tokio::test]
async fn a_secret_straddling_two_chunks_is_masked_and_the_rest_is_not_delayed() {
    const GAP_MS: u64 = 1_500;
    for backend in BACKENDS {
        let pki = TestPki::new();
        let Some(hub) = TestHub::start(backend, &pki).await else {
            continue;
        };
        let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
        let (first, second) = SECRET.split_at(10);
        let parts = vec![
            format!("data: your key is {first}").into_bytes(),
            format!("{second}, keep it safe\n\n").into_bytes(),
        ];
        fake.set_mode(Mode::Chunks {
            status: 200,
            parts,
            gap_ms: GAP_MS,
        });
        let auth = json!({"type": "bearer", "token": SECRET});
        hub.add_provider(provider_json("chunky", "chunky.test", &fake, auth.clone()))
            .await;
        let mut resp = client(&hub)
            .get(format!("https://chunky.test:{}/v1/stream", fake.port))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // What cannot be the key's start comes at once: only the possible start waits.
        let sent = Instant::now();
        let early = resp.chunk().await.unwrap().unwrap();
        assert!(
            sent.elapsed() < Duration::from_millis(GAP_MS / 2),
            "the first chunk waited for the second ({:?})",
            sent.elapsed()
        );
        assert_eq!(&early[..], b"data: your key is ");
        let mut body = early.to_vec();
        while let Some(c) = resp.chunk().await.unwrap() {
            body.extend_from_slice(&c);
        }
        let body = String::from_utf8(body).unwrap();
        assert_eq!(
            body,
            format!(
                "data: your key is {}, keep it safe\n\n",
                stars(SECRET.len())
            )
        );
        assert_eq!(
            fake.requests()[0].header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
        // Control: unscrubbed, the two halves join into the key.
        let mut json = provider_json("chunky-plain", "plain.chunky.test", &fake, auth);
        json["config"]["scrubResponses"] = json!(false);
        hub.add_provider(json).await;
        let body = client(&hub)
            .get(format!("https://plain.chunky.test:{}/v1/stream", fake.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains(SECRET), "{body}");
    }
}

/// `(status, body)` of an admin API GET.
async fn admin_get(hub: &WorkHub, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/integrations{path}", hub.admin_url()))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The stored row's text columns, as the database has them.
async fn raw_row(hub: &WorkHub, id: &str) -> String {
    let sql = "SELECT excerpt || ' ' || headers || ' ' || path FROM dlq_entries WHERE id = ?";
    if hub.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&hub.url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&hub.url).await.unwrap();
        sqlx::query_scalar(&sql.replacen('?', "$1", 1))
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

async fn a_failed_calls_dlq_entry_keeps_no_echoed_secret(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (fake, rec) = hub
        .provider("echo", "api.echo.test", json!({"maxAttempts": 1}))
        .await;
    fake.set_mode(Mode::Echo(503));
    let id = failing_call(&hub, "api.echo.test", "idem-scrub").await;
    let e = entry_of(&hub, id).await;
    // The excerpt is the provider's echo, the credential masked where it stood.
    let run = stars("Bearer ".len() + SECRET.len());
    let masked = format!("\"authorization\":\"{run}\"");
    assert!(e.excerpt.contains(&masked), "{}", e.excerpt);
    assert_no_secret("the entry", &serde_json::to_string(&e).unwrap());
    let row = raw_row(&hub, &id.to_string()).await;
    assert!(row.contains(&masked), "{row}");
    assert_no_secret("the stored row", &row);
    let (status, one) = admin_get(&hub, &format!("/dlq/{id}")).await;
    assert_eq!(status, 200, "{one}");
    // (JSON in JSON: the excerpt's quotes are escaped.)
    assert!(one.contains(&run), "{one}");
    assert_no_secret("GET /dlq/{id}", &one);
    let (status, list) = admin_get(&hub, &format!("/dlq?providerId={}", rec.id)).await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list.contains(&id.to_string()) && list.contains(&run),
        "{list}"
    );
    assert_no_secret("GET /dlq", &list);
    assert_eq!(
        fake.requests()[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    // Control: with scrubbing off the same echo puts the credential in the excerpt.
    let (plain, _) = hub
        .provider(
            "echo-plain",
            "plain.echo.test",
            json!({"maxAttempts": 1, "scrubResponses": false}),
        )
        .await;
    plain.set_mode(Mode::Echo(503));
    let id = failing_call(&hub, "plain.echo.test", "idem-plain").await;
    assert!(entry_of(&hub, id).await.excerpt.contains(SECRET));
    assert_no_secret("the logs", &hub_tests::logs::contents());
}

on_databases!(a_failed_calls_dlq_entry_keeps_no_echoed_secret);
