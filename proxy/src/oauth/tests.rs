//! The token manager's timing and single flight on tokio's paused clock, against a counting
//! endpoint (the HTTP endpoint, Redis and real identity providers: `tests/tests/oauth.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hub_core::oauth::share::LocalShare;
use hub_core::provider::Auth;
use hub_core::state::LocalState;

use super::*;

/// Issues `at-<n>` tokens of `lifetime` after `delay`, or fails while `down`; like the HTTP
/// endpoint, gives up when the call's deadline comes first.
struct Counting {
    calls: AtomicUsize,
    lifetime: Duration,
    delay: Duration,
    down: AtomicBool,
}

impl Counting {
    fn new(lifetime: Duration) -> Arc<Self> {
        Self::slow(lifetime, Duration::from_millis(50))
    }
    fn slow(lifetime: Duration, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            lifetime,
            delay,
            down: AtomicBool::new(false),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Endpoint for Counting {
    async fn issue(
        &self,
        _provider: &Provider,
        _grant: Grant<'_>,
        _refresh_token: Option<&SecretString>,
        deadline: Instant,
    ) -> Result<Issued, Failure> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if Instant::now() + self.delay > deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(Failure::Budget);
        }
        tokio::time::sleep(self.delay).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(Failure::Unreachable("the token endpoint cannot be reached"));
        }
        Ok(Issued {
            access_token: format!("at-{n}").into(),
            lifetime: self.lifetime,
            refresh_token: None,
        })
    }
}

fn vault() -> Arc<Vault> {
    Arc::new(
        Vault::from_spec(&SecretString::from(
            "t1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ))
        .unwrap(),
    )
}

fn provider(when: &str) -> Arc<Provider> {
    let mut p = Provider::for_tests("idp-test");
    p.auth = Some(
        serde_json::from_value::<Auth>(serde_json::json!({
            "type": "oauth2_client_credentials", "tokenUrl": "https://idp.test/token",
            "clientId": "id", "clientSecret": "client-secret", "whenIdpDown": when
        }))
        .unwrap(),
    );
    Arc::new(p)
}

fn tokens(endpoint: Arc<Counting>) -> Arc<Tokens> {
    Arc::new(Tokens::with_endpoint(
        TokensOptions {
            share: Arc::new(LocalShare::default()),
            vault: vault(),
            store: None,
            state: Arc::new(LocalState::new()),
            extra_roots: None,
        },
        endpoint,
    ))
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

async fn value(t: &Tokens, p: &Provider) -> Result<String, Problem> {
    t.token(p, soon()).await.map(|t| {
        t.expect("an oauth provider has a token")
            .value
            .expose()
            .to_owned()
    })
}

#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_calls_make_one_token_request() {
    let endpoint = Counting::new(Duration::from_secs(3600));
    let t = tokens(endpoint.clone());
    let p = provider("fail");
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (t, p) = (t.clone(), p.clone());
            tokio::spawn(async move { value(&t, &p).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), "at-1");
    }
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_is_refreshed_at_about_80_percent_and_never_injected_expired() {
    let endpoint = Counting::new(Duration::from_secs(100));
    let t = tokens(endpoint.clone());
    let p = provider("fail");
    assert_eq!(value(&t, &p).await.unwrap(), "at-1");
    // Refresh point: 75-80 s after issue (80 % minus up to 5 % jitter).
    tokio::time::advance(Duration::from_secs(74)).await;
    assert_eq!(value(&t, &p).await.unwrap(), "at-1");
    assert_eq!(endpoint.calls(), 1);
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(value(&t, &p).await.unwrap(), "at-2", "refreshed early");
    assert_eq!(endpoint.calls(), 2);
    // The endpoint goes down: once at-2 is due, calls fail (whenIdpDown: fail) although it is
    // still valid, and fast.
    endpoint.down.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(81)).await;
    let started = Instant::now();
    let e = value(&t, &p).await.unwrap_err();
    assert_eq!(e.status, 503);
    assert_eq!(e.code, "credentials_unavailable");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!e.detail.contains("client-secret"));
}

#[tokio::test(start_paused = true)]
async fn use_valid_token_keeps_the_token_until_it_expires_then_fails() {
    let endpoint = Counting::new(Duration::from_secs(100));
    let t = tokens(endpoint.clone());
    let p = provider("useValidToken");
    assert_eq!(value(&t, &p).await.unwrap(), "at-1");
    endpoint.down.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(85)).await;
    assert_eq!(value(&t, &p).await.unwrap(), "at-1", "still valid: kept");
    // Within EXPIRY_MARGIN of expiry it is no longer injected.
    tokio::time::advance(Duration::from_secs(11)).await;
    let e = value(&t, &p).await.unwrap_err();
    assert_eq!(e.code, "credentials_unavailable");
}

#[tokio::test(start_paused = true)]
async fn an_idp_outage_costs_a_bounded_number_of_token_requests() {
    let endpoint = Counting::new(Duration::from_secs(100));
    endpoint.down.store(true, Ordering::SeqCst);
    let t = tokens(endpoint.clone());
    let p = provider("fail");
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(value(&t, &p).await.unwrap_err().status, 503);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The endpoint's breaker opens after its failure threshold (5): the rest fail at once.
    assert_eq!(endpoint.calls(), 5);
    // After its open period a probe goes out again, and a working endpoint closes it.
    endpoint.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(value(&t, &p).await.unwrap(), "at-6");
}

#[tokio::test(start_paused = true)]
async fn invalidation_replaces_only_the_token_that_was_refused() {
    let endpoint = Counting::new(Duration::from_secs(3600));
    let t = tokens(endpoint.clone());
    let p = provider("fail");
    let first = t.token(&p, soon()).await.unwrap().unwrap();
    t.invalidate(&p, &first).await;
    let second = t.token(&p, soon()).await.unwrap().unwrap();
    assert_eq!(second.value.expose(), "at-2");
    // A late 401 for the first token does not throw away the second.
    t.invalidate(&p, &first).await;
    assert_eq!(value(&t, &p).await.unwrap(), "at-2");
    assert_eq!(endpoint.calls(), 2);
    // A new provider version (new credentials) never uses the old token.
    let mut changed = Provider::for_tests("idp-test");
    changed.id = p.id;
    changed.version = p.version + 1;
    changed.auth = p.auth.clone();
    assert_eq!(value(&t, &changed).await.unwrap(), "at-3");
}

#[tokio::test(start_paused = true)]
async fn providers_without_oauth_have_no_token() {
    let t = tokens(Counting::new(Duration::from_secs(1)));
    let p = Provider::for_tests("plain");
    assert!(t.token(&p, soon()).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn callers_with_tiny_budgets_do_not_open_the_endpoints_breaker() {
    let endpoint = Counting::slow(Duration::from_secs(3600), Duration::from_millis(200));
    let t = tokens(endpoint.clone());
    let p = provider("fail");
    for _ in 0..10 {
        let e = t
            .token(&p, Instant::now() + Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.code, "credentials_unavailable");
    }
    // Ten budget timeouts later the endpoint is still asked (its breaker did not open).
    assert_eq!(value(&t, &p).await.unwrap(), "at-11");
    assert_eq!(endpoint.calls(), 11);
}
