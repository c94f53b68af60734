//! End-to-end: credentials in the URL path (`path`, Telegram-style `/bot{secret}`) and in the
//! request body (`body`, a form or JSON field, Slack-style): a real client through the hub's
//! CONNECT tunnel, the provider's view byte for byte, the refusals (`400 credential_placement`,
//! `413`) before anything is sent, and the DLQ hand-off keeping the caller's path and body.
//! On SQLite and on PostgreSQL.

use hub_tests::client::{client, problem, provider_json};
use hub_tests::{Backend, FakeProvider, Mode, TestHub, TestPki};
use serde_json::json;

/// The path secret: a `/`, a `:` and a `%` to encode.
const TG_SECRET: &str = "123456:ABC/DEF%42";
/// How it reaches the provider: one path segment (`:` is a path character, `/` and `%` not).
const TG_PLACED: &str = "123456:ABC%2FDEF%2542";
const SLACK_SECRET: &str = "xoxb-SLACK/SECRET 1";
const JSON_SECRET: &str = "j-JSON-SECRET";

async fn start(backend: Backend) -> Option<(TestPki, TestHub, FakeProvider)> {
    hub_tests::logs::init();
    let pki = TestPki::new();
    let hub = TestHub::start(backend, &pki).await?;
    let fake = FakeProvider::start(Some(pki.server_config.clone())).await;
    Some((pki, hub, fake))
}

/// Registers `auth` for `host` on `fake`, under the base path `/api`, with `config` merged.
async fn register(
    hub: &TestHub,
    fake: &FakeProvider,
    host: &str,
    auth: serde_json::Value,
    config: serde_json::Value,
) {
    let mut p = provider_json(host.split('.').next().unwrap(), host, fake, auth);
    p["baseUrl"] = format!("{}/api", fake.base_url()).into();
    for (k, v) in config.as_object().into_iter().flatten() {
        p["config"][k] = v.clone();
    }
    hub.add_provider(p).await;
}

fn assert_no_secret(what: &str, haystack: &str) {
    for s in [
        TG_SECRET,
        TG_PLACED,
        SLACK_SECRET,
        "xoxb-SLACK%2FSECRET",
        JSON_SECRET,
    ] {
        assert!(!haystack.contains(s), "{what} leaks {s}: {haystack}");
    }
}

async fn path_credentials_go_in_the_providers_path_only(backend: Backend) {
    let Some((_pki, hub, fake)) = start(backend).await else {
        return;
    };
    register(
        &hub,
        &fake,
        "tg.fake.test",
        json!({"type": "path", "template": "/bot{secret}", "value": TG_SECRET}),
        json!({}),
    )
    .await;
    let base = format!("https://tg.fake.test:{}", fake.port);
    let http = client(&hub);
    // The placeholder is the caller's choice, empty included; elsewhere it stays as it is.
    for (sent, received) in [
        (
            "/botPLACEHOLDER/getMe?note=botPLACEHOLDER",
            format!("/api/bot{TG_PLACED}/getMe?note=botPLACEHOLDER"),
        ),
        ("/bot/getMe", format!("/api/bot{TG_PLACED}/getMe")),
        (
            "/bot{secret}/sendMessage/botX",
            format!("/api/bot{TG_PLACED}/sendMessage/botX"),
        ),
    ] {
        let resp = http
            .post(format!("{base}{sent}"))
            .header("x-note", "PLACEHOLDER")
            .header("content-type", "application/json")
            .body(r#"{"text":"PLACEHOLDER"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{backend:?} {sent}");
        let got = fake.requests().pop().unwrap();
        assert_eq!(got.target, received, "{backend:?} {sent}");
        assert_eq!(got.header("x-note"), Some("PLACEHOLDER"));
        assert_eq!(got.body, br#"{"text":"PLACEHOLDER"}"#);
        assert_eq!(got.header("content-length"), Some("22"));
    }
    // A path off the template: refused, nothing sent.
    let before = fake.requests().len();
    for off in ["/getMe", "/api/botX/getMe", "/Bot/getMe"] {
        let resp = http.get(format!("{base}{off}")).send().await.unwrap();
        let (status, body) = problem(resp).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("credential_placement")),
            "{off}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("/bot{secret}"), "{detail}");
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "nothing reached the provider"
    );

    // A call that still fails: the DLQ gets the caller's path, never the secret.
    register(
        &hub,
        &fake,
        "tgdown.fake.test",
        json!({"type": "path", "template": "/bot{secret}", "value": TG_SECRET}),
        json!({"maxAttempts": 2, "backoffBaseMs": 0}),
    )
    .await;
    fake.set_mode(Mode::Status(503));
    let resp = http
        .get(format!(
            "https://tgdown.fake.test:{}/botPH/getUpdates?offset=3",
            fake.port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let call = hub.exhausted.lock().await.recv().await.unwrap();
    assert_eq!(call.attempts, 2);
    assert_eq!(call.path, "/botPH/getUpdates?offset=3");
    assert_no_secret("the DLQ entry", &format!("{call:?}"));
    for r in &fake.requests()[fake.requests().len() - 2..] {
        assert_eq!(r.target, format!("/api/bot{TG_PLACED}/getUpdates?offset=3"));
    }
    assert_no_secret("the logs", &hub_tests::logs::contents());
}

async fn body_credentials_replace_the_callers_field(backend: Backend) {
    let Some((_pki, hub, fake)) = start(backend).await else {
        return;
    };
    register(
        &hub,
        &fake,
        "slack.fake.test",
        json!({"type": "body", "format": "form", "field": "token", "value": SLACK_SECRET}),
        json!({"maxAttempts": 2, "backoffBaseMs": 0, "idempotencyHeader": "Idempotency-Key"}),
    )
    .await;
    register(
        &hub,
        &fake,
        "jsonapi.fake.test",
        json!({"type": "body", "format": "json", "field": "token", "value": JSON_SECRET}),
        json!({}),
    )
    .await;
    let slack = format!("https://slack.fake.test:{}/chat.postMessage", fake.port);
    let jsonapi = format!("https://jsonapi.fake.test:{}/v1/send", fake.port);
    let http = client(&hub);
    let form = "application/x-www-form-urlencoded";

    // Form: every caller `token` out, the provider's appended; the rest byte for byte. The first
    // attempt fails: the retry (a POST with an idempotency key) carries the same injected body.
    fake.script([Mode::Status(503)]);
    let resp = http
        .post(&slack)
        .header("idempotency-key", "k-1")
        .header("content-type", form)
        .body("channel=C1&token=dummy&text=token%3Ddummy+x&token=again")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected = "channel=C1&text=token%3Ddummy+x&token=xoxb-SLACK%2FSECRET+1";
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "one retry");
    for got in &reqs {
        assert_eq!(got.target, "/api/chat.postMessage");
        assert_eq!(String::from_utf8_lossy(&got.body), expected);
        assert_eq!(
            got.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
        assert_eq!(got.header("transfer-encoding"), None);
        assert_eq!(got.header("content-type"), Some(form));
    }

    // An empty body becomes the field, with the form's content type.
    let resp = http.post(&slack).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = fake.requests().pop().unwrap();
    assert_eq!(got.body, b"token=xoxb-SLACK%2FSECRET+1");
    assert_eq!(got.header("content-type"), Some(form));
    assert_eq!(got.header("content-length"), Some("27"));

    // JSON: the field set in the object (keys sorted: serde_json without preserve_order).
    let resp = http
        .post(&jsonapi)
        .header("content-type", "application/json")
        .body(r#"{"text":"token","token":"dummy","n":[1,{"token":"inner"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = fake.requests().pop().unwrap();
    let expected =
        format!(r#"{{"n":[1,{{"token":"inner"}}],"text":"token","token":"{JSON_SECRET}"}}"#);
    assert_eq!(String::from_utf8_lossy(&got.body), expected);
    assert_eq!(
        got.header("content-length"),
        Some(expected.len().to_string().as_str())
    );

    // Refusals, before anything is sent.
    let before = fake.requests().len();
    let cases = [
        (
            jsonapi.as_str(),
            Some("application/json"),
            b"[1,2]".to_vec(),
            400,
            "not one",
        ),
        (
            jsonapi.as_str(),
            Some(form),
            b"a=1".to_vec(),
            400,
            "content type",
        ),
        (
            slack.as_str(),
            Some("application/json"),
            b"{}".to_vec(),
            400,
            "content type",
        ),
        (slack.as_str(), None, b"token=x".to_vec(), 400, "missing"),
        (
            slack.as_str(),
            Some(form),
            vec![b'a'; 1024 * 1024 + 10],
            413,
            "at most 1048576 bytes",
        ),
    ];
    for (url, ct, body, status, why) in cases {
        let mut req = http.post(url).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (got, p) = problem(req.send().await.unwrap()).await;
        let code = if status == 413 {
            "body_too_large"
        } else {
            "credential_placement"
        };
        assert_eq!((got, p["code"].as_str()), (status, Some(code)), "{why}");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{detail}");
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "nothing reached the provider"
    );

    // A call that still fails: the DLQ keeps the caller's body (a replay injects again).
    fake.set_mode(Mode::Status(503));
    let sent = "token=dummy&channel=C2";
    let resp = http
        .post(&slack)
        .header("idempotency-key", "k-2")
        .header("content-type", form)
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let call = hub.exhausted.lock().await.recv().await.unwrap();
    assert_eq!(
        (call.attempts, call.path.as_str()),
        (2, "/chat.postMessage")
    );
    assert_eq!(call.body.as_deref(), Some(sent.as_bytes()));
    assert!(!call.body_truncated);
    assert_no_secret("the DLQ entry", &format!("{call:?}"));
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.body, b"channel=C2&token=xoxb-SLACK%2FSECRET+1");
    assert_no_secret("the logs", &hub_tests::logs::contents());
}

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use hub_tests::Backend;
            #[tokio::test]
            async fn sqlite() { super::$scenario(Backend::Sqlite).await }
            #[tokio::test]
            async fn postgres() { super::$scenario(Backend::Postgres).await }
        }
    )*};
}

on_both!(
    path_credentials_go_in_the_providers_path_only,
    body_credentials_replace_the_callers_field,
);
