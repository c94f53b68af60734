//! Tenant-scoped API tokens over the real thing: two tenants (acme, beta), each with a provider,
//! a caller, a grant, a DLQ entry made by a real failing call of its caller through the proxy,
//! and a job (an asynchronous call); an operator token scoped to acme lists and reads only
//! acme's (plus the global provider, read-only), gets 404 for beta's, acts on acme's DLQ only,
//! and cannot create a tenant or a token (nor can an admin token scoped to acme). The DLQ's
//! `tenant` and `caller` filters. SQLite and PostgreSQL.

use hub_tests::{FakeProvider, Mode};
use serde_json::{Value, json};
use ulid::Ulid;

use crate::support::{Api, DLQ, PROVIDERS, admin_for};
use crate::work::dlq::entry_of;
use crate::work::{SECRET, Variant, WorkHub, test_config};

const API: &str = "/api/v1/integrations";

/// One tenant's things.
struct Tenant {
    provider: String,
    caller: String,
    grant: String,
    entry: Ulid,
    job: String,
    _fake: FakeProvider,
}

fn ids(page: &Value, key: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|e| e[key].as_str().unwrap().to_owned())
        .collect()
}

/// A caller's module: credentials in its proxy URL, plain `HTTP_PROXY` to the hub.
fn module(hub: &WorkHub, caller: &str, token: &str) -> reqwest::Client {
    let url = format!("http://{caller}:{token}@{}", hub.proxy_addr);
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(url).unwrap())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Tenant `name`: a provider failing with 503, a caller granted everything on it, one failed
/// call of that caller (its DLQ entry stored) and one asynchronous call (a job).
async fn tenant(hub: &WorkHub, api: &Api, name: &str) -> Tenant {
    let r = api
        .admin(
            "POST",
            &format!("{API}/tenants"),
            Some(json!({"name": name})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let fake = FakeProvider::start(Some(hub.pki.server_config.clone())).await;
    fake.set_mode(Mode::Status(503));
    let host = format!("api.{name}.test");
    let mut p = hub_tests::client::provider_json(
        &format!("{name}-api"),
        &host,
        &fake,
        json!({"type": "bearer", "token": SECRET}),
    );
    p["tenant"] = name.into();
    p["config"]["maxAttempts"] = 1.into();
    p["config"]["breaker"] = json!({"failureThreshold": 1000});
    let provider = api.create(p).await["id"].as_str().unwrap().to_owned();
    let c = api
        .admin(
            "POST",
            &format!("{API}/callers"),
            Some(json!({"name": format!("{name}-app"), "tenant": name})),
        )
        .await
        .json();
    let (caller, token) = (
        c["id"].as_str().unwrap().to_owned(),
        c["token"].as_str().unwrap().to_owned(),
    );
    let g = api
        .admin(
            "POST",
            &format!("{API}/grants"),
            Some(
                json!({"caller": caller, "provider": provider, "methods": ["*"], "paths": ["/**"]}),
            ),
        )
        .await;
    assert_eq!(g.status, 201, "{}", g.text);
    let grant = g.json()["id"].as_str().unwrap().to_owned();
    hub.registry.refresh().await.unwrap();
    let resp = module(hub, &format!("{name}-app"), &token)
        .post(format!("http://{host}/v1/charges"))
        .header("content-type", "application/json")
        .body(r#"{"amount":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "the call fails after its attempt");
    let entry: Ulid = resp.headers()["x-hub-dlq-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    entry_of(hub, entry).await;
    let resp = module(hub, &format!("{name}-app"), &token)
        .post(format!("http://{host}/v1/reports"))
        .header("prefer", "respond-async")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job = resp.headers()["x-hub-job-id"].to_str().unwrap().to_owned();
    Tenant {
        provider,
        caller,
        grant,
        entry,
        job,
        _fake: fake,
    }
}

async fn a_scoped_operator_sees_only_its_tenant(v: Variant) {
    let Some(hub) = WorkHub::start(v, test_config()).await else {
        return;
    };
    let (api, _stop) = admin_for(&hub).await;
    let acme = tenant(&hub, &api, "acme").await;
    let beta = tenant(&hub, &api, "beta").await;
    let shared = api
        .create(
            json!({"name": "shared", "global": true, "hosts": ["api.shared.test"],
                       "baseUrl": "https://api.shared.test"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Entries record their tenant and their (authenticated) caller; the filters use them.
    let e = api
        .admin("GET", &format!("{DLQ}/{}", acme.entry), None)
        .await
        .json();
    assert_eq!(
        (&e["tenant"], &e["caller"]),
        (&json!("acme"), &json!("acme-app")),
        "{e}"
    );
    let only = |q: &str| format!("{DLQ}?{q}");
    for (q, expected) in [
        ("tenant=acme", vec![acme.entry]),
        ("tenant=beta", vec![beta.entry]),
        ("caller=beta-app", vec![beta.entry]),
        ("caller=acme-app&tenant=acme", vec![acme.entry]),
        ("caller=acme-app&tenant=beta", vec![]),
        ("caller=nobody", vec![]),
        ("", vec![beta.entry, acme.entry]),
    ] {
        let page = api.admin("GET", &only(q), None).await.json();
        let want: Vec<String> = expected.iter().map(Ulid::to_string).collect();
        assert_eq!(ids(&page, "id"), want, "?{q}");
    }

    let j = api
        .admin("GET", &format!("{API}/jobs/{}", beta.job), None)
        .await
        .json();
    assert_eq!(j["tenant"], "beta", "{j}");

    // Tokens: a tenant that exists, or 422 naming the field.
    let tokens = format!("{API}/tokens");
    let r = api
        .admin(
            "POST",
            &tokens,
            Some(json!({"name": "x", "role": "operator", "tenant": "nope"})),
        )
        .await;
    assert_eq!(r.problem(422, "validation_failed")["field"], "tenant");
    let scoped = |role: &str| {
        let api = &api;
        let tokens = tokens.clone();
        let role = role.to_owned();
        async move {
            let body = json!({"name": format!("acme-{role}"), "role": role, "tenant": "acme"});
            let t = api.admin("POST", &tokens, Some(body)).await.json();
            assert_eq!(t["tenant"], "acme", "{t}");
            t["token"].as_str().unwrap().to_owned()
        }
    };
    let op = scoped("operator").await;
    let listed = api.admin("GET", &tokens, None).await.json();
    assert_eq!(listed["items"][0]["tenant"], "acme", "{listed}");
    let get = |path: String| {
        let api = &api;
        let op = op.clone();
        async move { api.send("GET", &path, Some(&op), None).await }
    };

    // Providers: acme's and the global one, nothing of beta's.
    let page = get(PROVIDERS.to_owned()).await.json();
    assert_eq!(ids(&page, "id"), [acme.provider.as_str(), shared.as_str()]);
    assert_eq!(
        get(format!("{PROVIDERS}/{}", acme.provider)).await.status,
        200
    );
    assert_eq!(get(format!("{PROVIDERS}/{shared}")).await.status, 200);
    for path in [
        format!("{PROVIDERS}/{}", beta.provider),
        format!("{PROVIDERS}/{}/health", beta.provider),
    ] {
        get(path).await.problem(404, "not_found");
    }
    assert_eq!(
        get(format!("{PROVIDERS}/{}/health", acme.provider))
            .await
            .json()["dlqDepth"],
        1
    );

    // Callers and grants.
    let page = get(format!("{API}/callers")).await.json();
    assert_eq!(ids(&page, "id"), [acme.caller.as_str()]);
    let page = get(format!("{API}/callers?tenant=beta")).await.json();
    assert_eq!(page, json!({"items": [], "nextCursor": null}));
    get(format!("{API}/callers/{}", beta.caller))
        .await
        .problem(404, "not_found");
    assert_eq!(
        get(format!("{API}/callers/{}", acme.caller)).await.status,
        200
    );
    let page = get(format!("{API}/grants")).await.json();
    assert_eq!(ids(&page, "id"), [acme.grant.as_str()]);
    get(format!("{API}/grants/{}", beta.grant))
        .await
        .problem(404, "not_found");
    let why = get(format!(
        "{API}/explain?caller=beta-app&method=GET&url=https://api.beta.test/"
    ))
    .await
    .json();
    assert_eq!(
        why["allowed"], false,
        "beta's caller does not exist for acme: {why}"
    );
    assert!(why["caller"].is_null(), "{why}");
    let tenants = get(format!("{API}/tenants")).await.json();
    assert_eq!(ids(&tenants, "name"), ["acme"]);

    // The DLQ: acme's entry only; beta's does not exist for it.
    let page = get(DLQ.to_owned()).await.json();
    assert_eq!(ids(&page, "id"), [acme.entry.to_string()]);
    let page = get(format!("{DLQ}?tenant=beta")).await.json();
    assert_eq!(page["items"], json!([]));
    assert_eq!(get(format!("{DLQ}/{}", acme.entry)).await.status, 200);
    for (method, path) in [
        ("GET", format!("{DLQ}/{}", beta.entry)),
        ("GET", format!("{DLQ}/{}/body", beta.entry)),
        ("POST", format!("{DLQ}/{}/retry", beta.entry)),
        ("DELETE", format!("{DLQ}/{}", beta.entry)),
    ] {
        api.send(method, &path, Some(&op), None)
            .await
            .problem(404, "not_found");
    }
    let r = api
        .send("POST", &format!("{DLQ}/retry-all"), Some(&op), None)
        .await;
    assert_eq!((r.status, r.json()), (202, json!({"queued": 1})));
    let b = api
        .admin("GET", &format!("{DLQ}/{}", beta.entry), None)
        .await
        .json();
    assert_eq!(b["status"], "pending", "beta's entry was not queued: {b}");

    // Jobs.
    assert_eq!(get(format!("{API}/jobs/{}", acme.job)).await.status, 200);
    get(format!("{API}/jobs/{}", beta.job))
        .await
        .problem(404, "not_found");

    // Nothing spanning tenants: not as an operator, not as an admin of acme.
    let boss = scoped("admin").await;
    for token in [&op, &boss] {
        for (method, path, body) in [
            ("POST", format!("{API}/tenants"), json!({"name": "gamma"})),
            (
                "POST",
                tokens.clone(),
                json!({"name": "x", "role": "viewer"}),
            ),
        ] {
            api.send(method, &path, Some(token), Some(body))
                .await
                .problem(403, "forbidden");
        }
    }
    let r = api
        .send("GET", &format!("{API}/audit"), Some(&boss), None)
        .await;
    r.problem(403, "forbidden");

    // An admin of acme changes acme, reads but never changes the global provider, and what it
    // creates lands in acme.
    let r = api
        .send(
            "PATCH",
            &format!("{PROVIDERS}/{shared}"),
            Some(&boss),
            Some(json!({"status": "disabled"})),
        )
        .await;
    let detail = r.problem(403, "forbidden")["detail"].clone();
    assert!(detail.as_str().unwrap().contains("global"), "{detail}");
    api.send(
        "DELETE",
        &format!("{PROVIDERS}/{}", beta.provider),
        Some(&boss),
        None,
    )
    .await
    .problem(404, "not_found");
    let c = api
        .send(
            "POST",
            &format!("{API}/callers"),
            Some(&boss),
            Some(json!({"name": "acme-batch"})),
        )
        .await;
    assert_eq!(
        (c.status, &c.json()["tenant"]),
        (201, &json!("acme")),
        "{}",
        c.text
    );
    api.send(
        "POST",
        &format!("{API}/callers"),
        Some(&boss),
        Some(json!({"name": "beta-batch", "tenant": "beta"})),
    )
    .await
    .problem(403, "forbidden");
    api.send(
        "POST",
        PROVIDERS,
        Some(&boss),
        Some(
            json!({"name": "g2", "global": true, "hosts": ["api.g2.test"],
                    "baseUrl": "https://api.g2.test"}),
        ),
    )
    .await
    .problem(403, "forbidden");
}

mod a_scoped_operator_sees_only_its_tenant {
    use super::Variant;
    #[tokio::test]
    async fn sqlite() {
        super::a_scoped_operator_sees_only_its_tenant(Variant::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::a_scoped_operator_sees_only_its_tenant(Variant::Postgres).await
    }
}
