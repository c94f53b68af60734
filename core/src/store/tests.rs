//! The store suite, written once against `dyn Store` and run on both backends, each test on a
//! fresh database (a temp-dir SQLite file; a new PostgreSQL database from
//! [`testing::fresh_postgres`], skipped locally when PostgreSQL is down).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::{PgPool, SqlitePool};
use ulid::Ulid;

use super::*;
use crate::access::{
    ApiTokenInsert, AuditEntry, AuditQuery, Role, TokenId, TokenQuery, token_hash,
};
use crate::db::Pool;
use crate::provider::BreakerPolicy;
use crate::testing::{self, TestDb};

/// A store under test plus raw access to its database, for writing rows the store never would.
struct Harness {
    store: Arc<dyn Store>,
    raw: Raw,
    url: String,
    // Dropped last (fields drop in order): remove the database once the pools above are gone.
    _dir: Option<tempfile::TempDir>,
    _pg: Option<TestDb>,
}

enum Raw {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

impl Raw {
    /// The store's own pool.
    fn of(store: &SqlStore) -> Self {
        match store.db().pool() {
            Pool::Sqlite(p) => Self::Sqlite(p.clone()),
            Pool::Postgres(p) => Self::Pg(p.clone()),
        }
    }
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A nested path: connect creates the missing directories.
        let url = testing::fresh_sqlite_url(&dir.path().join("state/db"));
        let store = SqlStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            raw: Raw::of(&store),
            store: Arc::new(store),
            url,
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let db = testing::fresh_postgres().await?;
        let store = SqlStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        Some(Self {
            raw: Raw::of(&store),
            store: Arc::new(store),
            url: db.url().to_owned(),
            _dir: None,
            _pg: Some(db),
        })
    }

    async fn exec(&self, sql: &str) {
        let affected = match &self.raw {
            Raw::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
            Raw::Pg(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
        };
        assert!(affected > 0, "{sql} changed nothing");
    }

    /// Runs a statement that may change no rows (DDL).
    async fn ddl(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(pool) => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
            Raw::Pg(pool) => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match &self.raw {
            Raw::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Raw::Pg(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }
}

/// Runs each listed suite function on both backends: `store:` ones take the `Arc<dyn Store>`,
/// `harness:` ones also need raw SQL.
macro_rules! suite {
    (store: [$($s:ident),* $(,)?], harness: [$($h:ident),* $(,)?] $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s() {
                    let h = super::Harness::sqlite().await;
                    super::$s(h.store.clone()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $h() {
                    let h = super::Harness::sqlite().await;
                    super::$h(&h).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s() {
                    let Some(h) = super::Harness::postgres().await else { return };
                    super::$s(h.store.clone()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $h() {
                    let Some(h) = super::Harness::postgres().await else { return };
                    super::$h(&h).await;
                }
            )*
        }
    };
}

suite! {
    store: [
        round_trip_keeps_every_field,
        duplicate_host_is_a_conflict_naming_the_owner,
        duplicate_name_is_a_conflict,
        wildcard_and_exact_hosts_are_distinct,
        update_changes_only_the_given_fields,
        update_replaces_hosts_atomically,
        update_with_old_version_is_stale,
        writes_to_missing_or_deleted_providers_are_not_found,
        registry_revision_moves_on_every_write_and_only_then,
        pagination_is_stable_under_concurrent_inserts,
        list_filters_by_status_and_literal_name_substring,
        migrate_is_idempotent,
        api_tokens_are_found_by_hash_listed_and_revoked,
        scoped_tokens_keep_their_tenant_until_revoked,
        audit_is_newest_first_paged_and_filtered,
        provider_writes_commit_their_audit_entry_or_nothing,
    ],
    harness: [
        an_audit_entry_that_cannot_be_stored_undoes_the_write,
        soft_delete_hides_frees_and_wipes,
        corrupt_config_is_an_error_not_a_panic,
    ],
}

fn host(h: &str) -> HostPattern {
    HostPattern::parse(h).unwrap()
}

fn sealed(tag: u8) -> SealedCredentials {
    SealedCredentials {
        key_id: format!("key-{tag}"),
        ciphertext: vec![0, tag, 0xff, 0x80, 7],
    }
}

fn insert(name: &str, hosts: &[&str]) -> ProviderInsert {
    ProviderInsert {
        id: Ulid::new(),
        name: name.to_owned(),
        tenant: Some(crate::caller::DEFAULT_TENANT.to_owned()),
        hosts: hosts.iter().map(|h| host(h)).collect(),
        base_url: format!("https://{name}.example.com/v1"),
        auth_type: AuthType::Bearer,
        credentials: Some(sealed(1)),
        config: ProviderConfig::default(),
        status: ProviderStatus::Active,
    }
}

/// `ProviderRecord` has no `PartialEq`; its `Debug` shows everything but the sealed bytes.
fn assert_same(a: &ProviderRecord, b: &ProviderRecord) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(a.credentials, b.credentials);
}

fn expect_conflict(result: Result<ProviderRecord, StoreError>) -> (String, String) {
    match result {
        Err(StoreError::Conflict { field, message }) => (field, message),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn round_trip_keeps_every_field(store: Arc<dyn Store>) {
    let mut new = insert("stripe", &["api.stripe.com", "*.stripe.com"]);
    new.status = ProviderStatus::Disabled;
    new.config = ProviderConfig {
        timeout_ms: 2_000,
        rate_limit_per_sec: Some(7),
        daily_quota: Some(10_000_000_000),
        idempotency_header: Some("Idempotency-Key".into()),
        breaker: BreakerPolicy {
            failure_threshold: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let created = store.create_provider(new.clone(), None).await.unwrap();
    assert_eq!(created.id, new.id);
    assert_eq!(created.name, "stripe");
    assert_eq!(created.hosts, new.hosts);
    assert_eq!(created.base_url, new.base_url);
    assert_eq!(created.auth_type, AuthType::Bearer);
    assert_eq!(created.credentials, Some(sealed(1)));
    assert_eq!(created.config, new.config);
    assert_eq!(created.status, ProviderStatus::Disabled);
    assert_eq!(created.version, 1);
    assert_eq!(created.updated_at, created.created_at);
    assert_eq!(created.credentials_updated_at, Some(created.created_at));
    assert!((Utc::now() - created.created_at).num_seconds().abs() < 60);

    let got = store.get_provider(new.id).await.unwrap().unwrap();
    assert_same(&got, &created);

    let mut plain = insert("plain", &["plain.example.com"]);
    plain.auth_type = AuthType::None;
    plain.credentials = None;
    let plain = store.create_provider(plain, None).await.unwrap();
    assert_eq!(plain.credentials, None);
    assert_eq!(plain.credentials_updated_at, None);

    let page = store
        .list_providers(&ProviderQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert_same(&page[0], &created);
    assert_same(&page[1], &plain);
    let live = store.live_providers().await.unwrap();
    assert_eq!(live.len(), 2);
    assert_same(&live[0], &created);

    assert!(store.get_provider(Ulid::new()).await.unwrap().is_none());
    store.ping().await.unwrap();
}

async fn duplicate_host_is_a_conflict_naming_the_owner(store: Arc<dyn Store>) {
    let stripe = store
        .create_provider(insert("stripe", &["api.stripe.com", "*.stripe.com"]), None)
        .await
        .unwrap();
    let revision = store.registry_revision().await.unwrap();

    let other = insert("other", &["other.example.com", "*.stripe.com"]);
    let (field, message) = expect_conflict(store.create_provider(other.clone(), None).await);
    assert_eq!(field, "hosts[1]");
    assert_eq!(
        message,
        format!(
            "host *.stripe.com is already claimed by provider stripe ({})",
            stripe.id
        )
    );

    // Nothing of the failed create remains: no row, no host claim, no revision bump.
    assert!(store.get_provider(other.id).await.unwrap().is_none());
    assert_eq!(store.registry_revision().await.unwrap(), revision);
    store
        .create_provider(insert("other", &["other.example.com"]), None)
        .await
        .unwrap();
}

async fn duplicate_name_is_a_conflict(store: Arc<dyn Store>) {
    let stripe = store
        .create_provider(insert("stripe", &["api.stripe.com"]), None)
        .await
        .unwrap();
    let result = store
        .create_provider(insert("stripe", &["other.stripe.com"]), None)
        .await;
    assert_eq!(result.as_ref().unwrap_err().kind(), "conflict");
    let (field, message) = expect_conflict(result);
    assert_eq!(field, "name");
    assert!(message.contains(&stripe.id.to_string()), "{message}");
    // The host of the failed create is still free.
    store
        .create_provider(insert("stripe-eu", &["other.stripe.com"]), None)
        .await
        .unwrap();
}

async fn wildcard_and_exact_hosts_are_distinct(store: Arc<dyn Store>) {
    store
        .create_provider(insert("apex", &["x.com"]), None)
        .await
        .unwrap();
    let wild = store
        .create_provider(insert("wild", &["*.x.com"]), None)
        .await
        .unwrap();
    store
        .create_provider(insert("api", &["api.x.com"]), None)
        .await
        .unwrap();
    let (field, message) = expect_conflict(
        store
            .create_provider(insert("again", &["*.X.com"]), None)
            .await,
    );
    assert_eq!(field, "hosts[0]");
    assert!(
        message.contains(&format!("wild ({})", wild.id)),
        "{message}"
    );
}

async fn soft_delete_hides_frees_and_wipes(h: &Harness) {
    let store = &h.store;
    let gone = store
        .create_provider(insert("stripe", &["api.stripe.com", "*.stripe.com"]), None)
        .await
        .unwrap();
    store.delete_provider(gone.id, None).await.unwrap();

    assert!(store.get_provider(gone.id).await.unwrap().is_none());
    let all = ProviderQuery {
        limit: 100,
        ..Default::default()
    };
    assert!(store.list_providers(&all).await.unwrap().is_empty());
    assert!(store.live_providers().await.unwrap().is_empty());

    let id = gone.id;
    let kept_wiped = h
        .count(&format!(
            "SELECT COUNT(*) FROM providers WHERE id = '{id}' AND deleted_at IS NOT NULL \
             AND credentials IS NULL AND credentials_key_id IS NULL"
        ))
        .await;
    assert_eq!(
        kept_wiped, 1,
        "the row stays for audit, without credentials"
    );
    let hosts = h
        .count(&format!(
            "SELECT COUNT(*) FROM provider_hosts WHERE provider_id = '{id}'"
        ))
        .await;
    assert_eq!(hosts, 0);

    // Name and hosts are free again.
    let reborn = store
        .create_provider(insert("stripe", &["*.stripe.com", "api.stripe.com"]), None)
        .await
        .unwrap();
    assert_ne!(reborn.id, gone.id);
    assert!(matches!(
        store.delete_provider(gone.id, None).await,
        Err(StoreError::NotFound)
    ));
}

async fn update_changes_only_the_given_fields(store: Arc<dyn Store>) {
    let created = store
        .create_provider(insert("stripe", &["api.stripe.com"]), None)
        .await
        .unwrap();

    let moved = store
        .update_provider(
            created.id,
            ProviderChange {
                base_url: Some("https://eu.stripe.com".into()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(moved.base_url, "https://eu.stripe.com");
    assert_eq!(moved.version, 2);
    assert!(moved.updated_at >= created.updated_at);
    let unchanged = ProviderRecord {
        base_url: created.base_url.clone(),
        version: created.version,
        updated_at: created.updated_at,
        ..moved.clone()
    };
    assert_same(&unchanged, &created);

    let config = ProviderConfig {
        max_attempts: 2,
        ..Default::default()
    };
    let paused = store
        .update_provider(
            created.id,
            ProviderChange {
                status: Some(ProviderStatus::Disabled),
                config: Some(config.clone()),
                name: Some("stripe-eu".into()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            paused.status,
            &paused.config,
            paused.name.as_str(),
            paused.version
        ),
        (ProviderStatus::Disabled, &config, "stripe-eu", 3)
    );
    assert_eq!(paused.credentials, Some(sealed(1)));
    assert_eq!(
        paused.credentials_updated_at,
        created.credentials_updated_at
    );

    let rekeyed = store
        .update_provider(
            created.id,
            ProviderChange {
                credentials: Some((AuthType::Header, Some(sealed(2)))),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(rekeyed.auth_type, AuthType::Header);
    assert_eq!(rekeyed.credentials, Some(sealed(2)));
    assert!(rekeyed.credentials_updated_at >= created.credentials_updated_at);
    assert_eq!(rekeyed.config, config);

    let cleared = store
        .update_provider(
            created.id,
            ProviderChange {
                credentials: Some((AuthType::None, None)),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (cleared.auth_type, cleared.credentials),
        (AuthType::None, None)
    );

    // Even an empty change is a write: the version moves.
    let touched = store
        .update_provider(created.id, ProviderChange::default(), None)
        .await
        .unwrap();
    assert_eq!(touched.version, 6);
    assert_same(
        &store.get_provider(created.id).await.unwrap().unwrap(),
        &touched,
    );
}

async fn update_replaces_hosts_atomically(store: Arc<dyn Store>) {
    let a = store
        .create_provider(insert("a", &["a1.com", "a2.com"]), None)
        .await
        .unwrap();
    let b = store
        .create_provider(insert("b", &["b1.com"]), None)
        .await
        .unwrap();

    let a2 = store
        .update_provider(
            a.id,
            ProviderChange {
                hosts: Some(vec![host("a2.com"), host("*.a3.com")]),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(a2.hosts, vec![host("a2.com"), host("*.a3.com")]);
    // The dropped host is free, the kept and new ones are claimed.
    store
        .create_provider(insert("c", &["a1.com"]), None)
        .await
        .unwrap();
    let (field, message) = expect_conflict(
        store
            .update_provider(
                b.id,
                ProviderChange {
                    hosts: Some(vec![host("b2.com"), host("*.a3.com")]),
                    base_url: Some("https://changed.example.com".into()),
                    ..Default::default()
                },
                None,
            )
            .await,
    );
    assert_eq!(field, "hosts[1]");
    assert!(
        message.contains(&format!("provider a ({})", a.id)),
        "{message}"
    );
    // The failed update changed nothing, b2.com included.
    assert_same(&store.get_provider(b.id).await.unwrap().unwrap(), &b);
    store
        .create_provider(insert("d", &["b2.com"]), None)
        .await
        .unwrap();

    let (field, _) = expect_conflict(
        store
            .update_provider(
                b.id,
                ProviderChange {
                    name: Some("a".into()),
                    ..Default::default()
                },
                None,
            )
            .await,
    );
    assert_eq!(field, "name");

    // A provider never conflicts with itself.
    store
        .update_provider(
            a.id,
            ProviderChange {
                name: Some("a".into()),
                hosts: Some(vec![host("*.a3.com"), host("a2.com")]),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
}

async fn update_with_old_version_is_stale(store: Arc<dyn Store>) {
    let p = store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    let at = |v: i64| ProviderChange {
        base_url: Some(format!("https://p.com/{v}")),
        expected_version: Some(v),
        ..Default::default()
    };
    assert_eq!(
        store
            .update_provider(p.id, at(1), None)
            .await
            .unwrap()
            .version,
        2
    );
    let stale = store.update_provider(p.id, at(1), None).await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    let now = store.get_provider(p.id).await.unwrap().unwrap();
    assert_eq!((now.version, now.base_url.as_str()), (2, "https://p.com/1"));
    assert_eq!(
        store
            .update_provider(p.id, at(2), None)
            .await
            .unwrap()
            .version,
        3
    );
}

async fn writes_to_missing_or_deleted_providers_are_not_found(store: Arc<dyn Store>) {
    let missing = Ulid::new();
    let r = store
        .update_provider(missing, ProviderChange::default(), None)
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert!(matches!(
        store.delete_provider(missing, None).await,
        Err(StoreError::NotFound)
    ));

    let p = store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    store.delete_provider(p.id, None).await.unwrap();
    let versioned = ProviderChange {
        expected_version: Some(p.version),
        status: Some(ProviderStatus::Disabled),
        ..Default::default()
    };
    let r = store.update_provider(p.id, versioned, None).await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
}

async fn registry_revision_moves_on_every_write_and_only_then(store: Arc<dyn Store>) {
    let mut last = store.registry_revision().await.unwrap();
    let mut moved = async |what: &str| {
        let now = store.registry_revision().await.unwrap();
        assert!(now > last, "{what}: revision {now} after {last}");
        last = now;
    };

    let p = store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    moved("create").await;
    store
        .update_provider(p.id, ProviderChange::default(), None)
        .await
        .unwrap();
    moved("update").await;
    let q = store
        .create_provider(insert("q", &["q.com"]), None)
        .await
        .unwrap();
    moved("second create").await;
    store.delete_provider(q.id, None).await.unwrap();
    moved("delete").await;

    // Reads and failed writes leave it alone.
    let before = store.registry_revision().await.unwrap();
    store.get_provider(p.id).await.unwrap();
    store.live_providers().await.unwrap();
    store
        .create_provider(insert("p", &["x.com"]), None)
        .await
        .unwrap_err();
    store.delete_provider(q.id, None).await.unwrap_err();
    let stale = ProviderChange {
        expected_version: Some(1),
        ..Default::default()
    };
    store.update_provider(p.id, stale, None).await.unwrap_err();
    assert_eq!(store.registry_revision().await.unwrap(), before);
}

async fn pagination_is_stable_under_concurrent_inserts(store: Arc<dyn Store>) {
    let mut existing = HashSet::new();
    for i in 0..40 {
        let p = store
            .create_provider(insert(&format!("p{i:03}"), &[&format!("p{i}.com")]), None)
            .await
            .unwrap();
        existing.insert(p.id);
    }

    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for i in 0..40 {
                store
                    .create_provider(insert(&format!("q{i:03}"), &[&format!("q{i}.com")]), None)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let mut seen: Vec<ProviderId> = Vec::new();
    let mut after = None;
    for pages in 1.. {
        // Every non-empty page moves past at least one of the 80 rows (pages run short once the
        // reader catches up with the writer): a cursor that does not advance fails, not hangs.
        assert!(pages <= 81, "paging does not end");
        let page = store
            .list_providers(&ProviderQuery {
                after,
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|p| p.id));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.unwrap();

    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ids out of order or repeated"
    );
    let seen: HashSet<_> = seen.into_iter().collect();
    assert!(
        existing.is_subset(&seen),
        "a page skipped a provider that existed at the start"
    );
    assert_eq!(store.live_providers().await.unwrap().len(), 80);
}

async fn list_filters_by_status_and_literal_name_substring(store: Arc<dyn Store>) {
    for (name, status) in [
        ("alpha_1", ProviderStatus::Active),
        ("alphax1", ProviderStatus::Disabled),
        ("beta", ProviderStatus::Active),
    ] {
        let mut p = insert(name, &[&format!("{name}.com")]);
        p.status = status;
        store.create_provider(p, None).await.unwrap();
    }
    let names = async |status, name_contains: Option<&str>, limit| {
        let query = ProviderQuery {
            status,
            name_contains: name_contains.map(str::to_owned),
            visible_to: None,
            after: None,
            limit,
        };
        let page = store.list_providers(&query).await.unwrap();
        let mut names: Vec<String> = page.into_iter().map(|p| p.name).collect();
        names.sort();
        names
    };
    assert_eq!(
        names(Some(ProviderStatus::Active), None, 10).await,
        ["alpha_1", "beta"]
    );
    assert_eq!(
        names(Some(ProviderStatus::Disabled), None, 10).await,
        ["alphax1"]
    );
    assert_eq!(names(None, Some("_"), 10).await, ["alpha_1"]);
    assert!(names(None, Some("%"), 10).await.is_empty());
    assert_eq!(names(None, Some("alpha"), 10).await, ["alpha_1", "alphax1"]);
    assert_eq!(
        names(Some(ProviderStatus::Active), Some("alpha"), 10).await,
        ["alpha_1"]
    );
    // The limit is clamped to 1..=MAX_PAGE_SIZE.
    assert_eq!(names(None, None, 0).await.len(), 1);
    assert_eq!(names(None, None, u32::MAX).await.len(), 3);
}

async fn corrupt_config_is_an_error_not_a_panic(h: &Harness) {
    let store = &h.store;
    let p = store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    let id = p.id;
    h.exec(&format!(
        r#"UPDATE providers SET config = '{{"timeoutMs": "soon"}}' WHERE id = '{id}'"#
    ))
    .await;

    let corrupt = |r: Result<_, StoreError>| match r {
        Err(StoreError::Corrupt { id: bad, detail }) => {
            assert_eq!(bad, id.to_string());
            assert!(detail.contains("config"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };
    corrupt(store.get_provider(id).await.map(|_| ()));
    corrupt(store.live_providers().await.map(|_| ()));
    corrupt(
        store
            .list_providers(&ProviderQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );

    // Writing a whole new config repairs the row.
    store
        .update_provider(
            id,
            ProviderChange {
                config: Some(ProviderConfig::default()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert!(store.get_provider(id).await.unwrap().is_some());
}

async fn migrate_is_idempotent(store: Arc<dyn Store>) {
    let p = store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.get_provider(p.id).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifies_registry_changes() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    let mut listener = sqlx::postgres::PgListener::connect(&h.url).await.unwrap();
    listener.listen(REGISTRY_CHANNEL).await.unwrap();

    h.store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    let revision = h.store.registry_revision().await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no notification within 5 s")
        .unwrap();
    assert_eq!(note.channel(), REGISTRY_CHANNEL);
    assert_eq!(note.payload(), revision.to_string());
}

#[tokio::test]
async fn connect_rejects_unknown_schemes() {
    let err = connect("mysql://localhost/hub").await.err().unwrap();
    assert_eq!(err.kind(), "unsupported_url");
}

#[tokio::test]
async fn unreachable_postgres_fails_fast() {
    let started = std::time::Instant::now();
    let err = SqlStore::connect("postgres://postgres@127.0.0.1:1/hub")
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), "database");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_with_foreign_keys() {
    let h = Harness::sqlite().await;
    let Raw::Sqlite(pool) = &h.raw else {
        unreachable!()
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
}

#[tokio::test]
async fn sqlite_in_memory_url_works() {
    let store = connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let p = store
        .create_provider(insert("p", &["p.com"]), None)
        .await
        .unwrap();
    assert!(store.get_provider(p.id).await.unwrap().is_some());
}

fn token_insert(name: &str, role: Role) -> ApiTokenInsert {
    ApiTokenInsert {
        id: TokenId::new(),
        name: name.into(),
        role,
        tenant: None,
        hash: token_hash(&format!("secret-{name}")),
        created_by: "bootstrap".into(),
    }
}

async fn api_tokens_are_found_by_hash_listed_and_revoked(store: Arc<dyn Store>) {
    let revision = store.registry_revision().await.unwrap();
    let a = store
        .create_api_token(token_insert("a", Role::Viewer))
        .await
        .unwrap();
    assert_eq!((a.name.as_str(), a.role), ("a", Role::Viewer));
    assert_eq!(a.created_by, "bootstrap");
    assert!(a.revoked_at.is_none());
    let found = store
        .api_token_by_hash(&token_hash("secret-a"))
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(&a));
    assert!(
        store
            .api_token_by_hash(&token_hash("secret-b"))
            .await
            .unwrap()
            .is_none()
    );

    let mut dup = token_insert("a2", Role::Admin);
    dup.hash = token_hash("secret-a");
    assert!(matches!(
        store.create_api_token(dup).await,
        Err(StoreError::Conflict { .. })
    ));

    let mut ids = vec![a.id];
    for i in 0..4 {
        let t = store
            .create_api_token(token_insert(&format!("t{i}"), Role::Operator))
            .await
            .unwrap();
        ids.push(t.id);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_api_tokens(&TokenQuery { after, limit: 2 })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|t| t.id));
    }
    assert_eq!(seen, ids, "every token once, in id order");

    store.revoke_api_token(a.id).await.unwrap();
    let revoked_at = store
        .api_token_by_hash(&token_hash("secret-a"))
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .expect("revoked");
    store.revoke_api_token(a.id).await.unwrap();
    let again = store
        .api_token_by_hash(&token_hash("secret-a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(revoked_at),
        "revoking twice keeps the first time"
    );
    assert!(matches!(
        store.revoke_api_token(TokenId::new()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.registry_revision().await.unwrap(),
        revision,
        "tokens are not registry state"
    );
}

async fn scoped_tokens_keep_their_tenant_until_revoked(store: Arc<dyn Store>) {
    let audit = || AuditEntry {
        actor: "bootstrap".into(),
        action: "tenant".into(),
        target_id: Some("acme".into()),
        detail: serde_json::json!({}),
    };
    let acme = crate::caller::Tenant {
        name: "acme".into(),
        created_at: Utc::now(),
    };
    store.create_tenant(acme, audit()).await.unwrap();
    let mut insert = token_insert("acme-ops", Role::Operator);
    insert.tenant = Some("acme".into());
    let t = store.create_api_token(insert).await.unwrap();
    assert_eq!(t.tenant.as_deref(), Some("acme"));
    let found = store
        .api_token_by_hash(&token_hash("secret-acme-ops"))
        .await
        .unwrap();
    assert_eq!(found.and_then(|t| t.tenant).as_deref(), Some("acme"));
    let mut nowhere = token_insert("nowhere", Role::Viewer);
    nowhere.tenant = Some("nope".into());
    assert!(
        store.create_api_token(nowhere).await.is_err(),
        "the tenant must exist"
    );
    assert!(matches!(
        store.delete_tenant("acme", audit()).await,
        Err(StoreError::Conflict { .. })
    ));
    store.revoke_api_token(t.id).await.unwrap();
    store.delete_tenant("acme", audit()).await.unwrap();
}

async fn audit_is_newest_first_paged_and_filtered(store: Arc<dyn Store>) {
    let mut appended = Vec::new();
    for i in 0..5 {
        let entry = AuditEntry {
            actor: "bootstrap".into(),
            action: "provider.update".into(),
            target_id: Some(if i % 2 == 0 { "p-even" } else { "p-odd" }.into()),
            detail: serde_json::json!({"fields": ["config"], "i": i}),
        };
        let rec = store.append_audit(entry.clone()).await.unwrap();
        assert_eq!(rec.entry, entry);
        appended.push(rec);
    }
    let untargeted = AuditEntry {
        actor: "01JTOKEN".into(),
        action: "token.create".into(),
        target_id: None,
        detail: serde_json::json!({}),
    };
    appended.push(store.append_audit(untargeted).await.unwrap());
    assert!(appended.windows(2).all(|w| w[0].id < w[1].id), "ids grow");

    let all = store
        .list_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let newest_first: Vec<_> = appended.iter().rev().cloned().collect();
    assert_eq!(all, newest_first, "newest first, every field kept");

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_audit(&AuditQuery {
                before,
                limit: 4,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, all.iter().map(|r| r.id).collect::<Vec<_>>());

    let even = store
        .list_audit(&AuditQuery {
            target_id: Some("p-even".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        even.iter()
            .map(|r| r.entry.detail["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4, 2, 0]
    );
}

fn audit(action: &str, target: ProviderId) -> AuditEntry {
    AuditEntry {
        actor: "01JTOKEN".into(),
        action: action.into(),
        target_id: Some(target.to_string()),
        detail: serde_json::json!({"fields": ["name"], "status": "active"}),
    }
}

async fn audit_trail(store: &dyn Store) -> Vec<AuditEntry> {
    let page = store
        .list_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    page.into_iter().rev().map(|r| r.entry).collect()
}

/// A provider write appends its audit entry in its own transaction: a refused write (conflict,
/// stale version, missing row) leaves neither a change nor an entry.
async fn provider_writes_commit_their_audit_entry_or_nothing(store: Arc<dyn Store>) {
    let first = insert("stripe", &["api.stripe.com"]);
    let created = store
        .create_provider(first.clone(), Some(audit("provider.create", first.id)))
        .await
        .unwrap();
    let mut expected = vec![audit("provider.create", created.id)];
    assert_eq!(audit_trail(&*store).await, expected);

    // Same name: refused before the insert.
    let same_name = insert("stripe", &["other.stripe.com"]);
    expect_conflict(
        store
            .create_provider(
                same_name.clone(),
                Some(audit("provider.create", same_name.id)),
            )
            .await,
    );
    // Free name, taken host: refused after the provider row was inserted; both roll back.
    let same_host = insert("stripe-eu", &["api.stripe.com"]);
    expect_conflict(
        store
            .create_provider(
                same_host.clone(),
                Some(audit("provider.create", same_host.id)),
            )
            .await,
    );
    assert!(store.get_provider(same_host.id).await.unwrap().is_none());
    let stale = ProviderChange {
        name: Some("renamed".into()),
        expected_version: Some(7),
        ..ProviderChange::default()
    };
    let r = store
        .update_provider(
            created.id,
            stale,
            Some(audit("provider.update", created.id)),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Stale)), "{r:?}");
    let missing = Ulid::new();
    let r = store
        .delete_provider(missing, Some(audit("provider.delete", missing)))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert_eq!(
        audit_trail(&*store).await,
        expected,
        "no entry for a refused write"
    );

    let renamed = ProviderChange {
        name: Some("renamed".into()),
        ..ProviderChange::default()
    };
    store
        .update_provider(
            created.id,
            renamed,
            Some(audit("provider.update", created.id)),
        )
        .await
        .unwrap();
    store
        .delete_provider(created.id, Some(audit("provider.delete", created.id)))
        .await
        .unwrap();
    expected.push(audit("provider.update", created.id));
    expected.push(audit("provider.delete", created.id));
    assert_eq!(audit_trail(&*store).await, expected);
}

/// The other way round: when the audit entry cannot be stored, the provider write it records
/// does not happen either.
async fn an_audit_entry_that_cannot_be_stored_undoes_the_write(h: &Harness) {
    let store = &h.store;
    let kept = insert("kept", &["kept.com"]);
    store.create_provider(kept.clone(), None).await.unwrap();
    let revision = store.registry_revision().await.unwrap();
    h.ddl("ALTER TABLE audit_log RENAME TO audit_log_gone")
        .await;

    let new = insert("p", &["p.com"]);
    let r = store
        .create_provider(new.clone(), Some(audit("provider.create", new.id)))
        .await;
    assert!(matches!(r, Err(StoreError::Database(_))), "{r:?}");
    assert!(store.get_provider(new.id).await.unwrap().is_none());
    let change = ProviderChange {
        name: Some("renamed".into()),
        ..ProviderChange::default()
    };
    store
        .update_provider(kept.id, change, Some(audit("provider.update", kept.id)))
        .await
        .unwrap_err();
    store
        .delete_provider(kept.id, Some(audit("provider.delete", kept.id)))
        .await
        .unwrap_err();
    let after = store.get_provider(kept.id).await.unwrap().unwrap();
    assert_eq!(after.name, "kept");
    assert_eq!(after.version, 1);
    assert_eq!(store.registry_revision().await.unwrap(), revision);
    // Without an entry to store, the same writes go through.
    store.create_provider(new, None).await.unwrap();
}

/// Migrations 1–3 (a database from before tenants) in a directory of their own.
fn migrations_before_tenants(backend: &str) -> tempfile::TempDir {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../migrations/{backend}"));
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// An existing database (providers, hosts, audit) migrates with nothing lost: its providers
/// land in the default tenant, their hosts stay claimed there, and another tenant may claim
/// the same host.
#[tokio::test]
async fn a_database_from_before_tenants_migrates_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = testing::fresh_sqlite_url(&dir.path().join("old.db"));
    let pg = testing::fresh_postgres().await;
    let mut urls = vec![("sqlite", sqlite_url)];
    if let Some(db) = &pg {
        urls.push(("postgres", db.url().to_owned()));
    }
    for (backend, url) in urls {
        let old = migrations_before_tenants(backend);
        let store = SqlStore::connect(&url).await.unwrap();
        let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        match store.db().pool() {
            Pool::Sqlite(p) => migrator.run(p).await.unwrap(),
            Pool::Postgres(p) => migrator.run(p).await.unwrap(),
        }
        // What a hub before tenants wrote (JSON as text on SQLite, jsonb on PostgreSQL).
        let now = Utc::now();
        let id = Ulid::new().to_string();
        let hosts = serde_json::json!(["api.old.test"]);
        let config = serde_json::to_value(ProviderConfig::default()).unwrap();
        let insert = "INSERT INTO providers (id, name, hosts, base_url, auth_type, config, status, \
                      version, created_at, updated_at) VALUES (?, 'old', ?, 'https://api.old.test', \
                      'none', ?, 'active', 3, ?, ?)";
        match store.db().pool() {
            Pool::Sqlite(p) => {
                sqlx::query(insert)
                    .bind(&id)
                    .bind(hosts.to_string())
                    .bind(config.to_string())
                    .bind(now)
                    .bind(now)
                    .execute(p)
                    .await
                    .unwrap();
                sqlx::query(
                    "INSERT INTO provider_hosts (host, provider_id) VALUES ('api.old.test', ?)",
                )
                .bind(&id)
                .execute(p)
                .await
                .unwrap();
            }
            Pool::Postgres(p) => {
                sqlx::query(&crate::db::pg(insert))
                    .bind(&id)
                    .bind(sqlx::types::Json(&hosts))
                    .bind(sqlx::types::Json(&config))
                    .bind(now)
                    .bind(now)
                    .execute(p)
                    .await
                    .unwrap();
                sqlx::query(
                    "INSERT INTO provider_hosts (host, provider_id) VALUES ('api.old.test', $1)",
                )
                .bind(&id)
                .execute(p)
                .await
                .unwrap();
            }
        }
        // Now the current hub starts: the remaining migrations run.
        store.migrate().await.unwrap();
        let live = store.live_providers().await.unwrap();
        assert_eq!(live.len(), 1, "{backend}");
        let p = &live[0];
        assert_eq!((p.name.as_str(), p.version), ("old", 3), "{backend}");
        assert_eq!(
            p.tenant.as_deref(),
            Some(crate::caller::DEFAULT_TENANT),
            "{backend}"
        );
        assert_eq!(p.hosts, vec![host("api.old.test")], "{backend}");
        let tenants = store.list_tenants().await.unwrap();
        assert!(tenants.iter().any(|t| t.name == "default"), "{backend}");
        // The host is still claimed in the default tenant...
        let mut dup = insert_in("dup", &["api.old.test"], Some("default"));
        dup.id = Ulid::new();
        assert!(
            matches!(
                store.create_provider(dup, None).await,
                Err(StoreError::Conflict { .. })
            ),
            "{backend}"
        );
        // ...and free in another tenant.
        store
            .create_tenant(
                crate::caller::Tenant {
                    name: "acme".into(),
                    created_at: Utc::now(),
                },
                audit_entry("tenant.create"),
            )
            .await
            .unwrap();
        let acme = insert_in("acme-old", &["api.old.test"], Some("acme"));
        store.create_provider(acme, None).await.unwrap();
        assert_eq!(store.live_providers().await.unwrap().len(), 2, "{backend}");
    }
}

fn insert_in(name: &str, hosts: &[&str], tenant: Option<&str>) -> ProviderInsert {
    ProviderInsert {
        tenant: tenant.map(str::to_owned),
        ..insert(name, hosts)
    }
}

fn audit_entry(action: &str) -> AuditEntry {
    AuditEntry {
        actor: "test".into(),
        action: action.into(),
        target_id: None,
        detail: serde_json::json!({}),
    }
}
