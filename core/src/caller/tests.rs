use super::*;

fn path(p: &str) -> RequestPath<'_> {
    RequestPath::parse(p).unwrap()
}

#[test]
fn literal_param_and_rest_patterns_match_what_they_name() {
    let exact = PathPattern::parse("/v1/charges").unwrap();
    assert!(exact.matches(&path("/v1/charges")));
    assert!(exact.matches(&path("/v1/charges?limit=3")));
    assert!(!exact.matches(&path("/v1/charges/ch_1")));
    assert!(!exact.matches(&path("/v1/charges/")));
    assert!(!exact.matches(&path("/v1/Charges")));

    let param = PathPattern::parse("/v1/charges/{id}/capture").unwrap();
    assert!(param.matches(&path("/v1/charges/ch_1/capture")));
    assert!(!param.matches(&path("/v1/charges//capture")));
    assert!(!param.matches(&path("/v1/charges/ch_1/refund")));

    let prefix = PathPattern::parse("/v1/**").unwrap();
    for p in ["/v1", "/v1/", "/v1/a/b/c"] {
        assert!(prefix.matches(&path(p)), "{p}");
    }
    assert!(!prefix.matches(&path("/v10")));
    assert!(!prefix.matches(&path("/v2/a")));

    let all = PathPattern::parse("/**").unwrap();
    assert!(all.is_everything());
    assert!(all.matches(&path("/")));
    assert!(all.matches(&path("/anything/at/all")));
}

#[test]
fn encoded_segments_are_compared_decoded() {
    let p = PathPattern::parse("/v1/a b").unwrap_err();
    assert!(p.contains("spaces"), "{p}");
    let p = PathPattern::parse("/v1/a%20b").unwrap();
    assert!(p.matches(&path("/v1/a%20b")));
    let p = PathPattern::parse("/v1/charges").unwrap();
    assert!(p.matches(&path("/v1/ch%61rges")));
}

#[test]
fn paths_a_provider_could_resolve_elsewhere_match_nothing() {
    for bad in [
        "/v1/charges/../refunds",
        "/v1/./charges",
        "/v1/%2e%2e/refunds",
        "/v1/a%2Fb",
        "/v1/a%5Cb",
        "/v1/a\\b",
        "/v1/%zz",
        "/v1/%ff",
        "v1/charges",
    ] {
        assert!(RequestPath::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn bad_patterns_say_what_is_wrong() {
    for (bad, says) in [
        ("v1", "start with /"),
        ("/v1/**/x", "last segment"),
        ("/v1/*", "final **"),
        ("/v1/{}", "param"),
        ("/v1/{a", "param"),
        ("/v1/..", "dot"),
        ("/v1?x=1", "query"),
    ] {
        let e = PathPattern::parse(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn methods_parse_strictly() {
    assert_eq!(
        Methods::try_from(vec!["*".to_owned()]).unwrap(),
        Methods::Any
    );
    assert!(Methods::try_from(vec!["*".into(), "GET".into()]).is_err());
    assert!(Methods::try_from(vec!["get".into()]).is_err());
    assert!(Methods::try_from(Vec::new()).is_err());
    let m = Methods::try_from(vec!["GET".into(), "GET".into(), "POST".into()]).unwrap();
    assert_eq!(m.to_vec(), ["GET", "POST"]);
    assert!(m.allows("POST") && !m.allows("DELETE"));
}

fn caller(name: &str, tenant: &str, groups: &[&str]) -> CallerRecord {
    CallerRecord {
        id: Ulid::new(),
        name: name.into(),
        tenant: tenant.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        token_hash: None,
        service_account: None,
        expires_at: None,
        revoked_at: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn grant(tenant: &str, subject: Subject, provider: ProviderId, paths: &[&str]) -> GrantRecord {
    GrantRecord {
        id: Ulid::new(),
        tenant: tenant.into(),
        subject,
        provider_id: provider,
        methods: Methods::Only(vec!["GET".into()]),
        paths: paths
            .iter()
            .map(|p| PathPattern::parse(p).unwrap())
            .collect(),
        limits: GrantLimits::default(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[test]
fn grants_cover_their_caller_or_group_within_the_tenant_only() {
    let a = caller("billing", "acme", &["payments"]);
    let b = caller("billing-beta", "beta", &["payments"]);
    let p = Ulid::new();
    let to_group = grant("acme", Subject::Group("payments".into()), p, &["/v1/**"]);
    assert!(to_group.covers(&a));
    assert!(!to_group.covers(&b), "same group name, other tenant");
    let to_a = grant("acme", Subject::Caller(a.id), p, &["/v1/charges"]);
    assert!(to_a.covers(&a) && !to_a.covers(&b));
    assert!(to_a.allows("GET", &path("/v1/charges")));
    assert!(!to_a.allows("POST", &path("/v1/charges")));
    assert!(!to_a.unrestricted());
}

#[test]
fn allowance_diff_names_what_a_change_allows_and_removes() {
    let a = caller("billing", "acme", &["payments"]);
    let mut revoked = caller("old", "acme", &["payments"]);
    revoked.revoked_at = Some(Utc::now());
    let p = Ulid::new();
    let g = grant("acme", Subject::Group("payments".into()), p, &["/v1/**"]);
    let name = |_: &ProviderId| Some("stripe".to_owned());
    let before = allowances(&[a.clone(), revoked.clone()], &[], name, Utc::now());
    let after = allowances(&[a, revoked], &[g], name, Utc::now());
    assert_eq!(after.len(), 1, "revoked callers are allowed nothing");
    let diff = allowance_diff(&before, &after);
    assert_eq!(diff["allows"][0]["caller"], "billing");
    assert_eq!(diff["allows"][0]["paths"][0], "/v1/**");
    assert_eq!(diff["removes"].as_array().unwrap().len(), 0);
}

#[test]
fn caller_tokens_are_prefixed_random_and_names_plain() {
    let t = new_caller_token();
    assert!(t.starts_with(CALLER_TOKEN_PREFIX) && t.len() > 40);
    assert_ne!(t, new_caller_token());
    assert!(valid_name("billing-svc.v2"));
    for bad in ["", "Billing", "-x", "a:b", "a b", &"x".repeat(64)] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn the_evaluator_prefers_the_callers_own_grant_and_says_why_it_refuses() {
    let a = caller("billing", "acme", &["payments"]);
    let p = Ulid::new();
    let by_group = grant("acme", Subject::Group("payments".into()), p, &["/v1/**"]);
    let own = grant("acme", Subject::Caller(a.id), p, &["/v1/charges"]);
    let grants = vec![by_group.clone(), own.clone()];
    let id = |g: &GrantRecord| g.id;
    let got = evaluate(&grants, |g| g, &a, "GET", "/v1/charges?x=1").unwrap();
    assert_eq!(id(got), own.id);
    let got = evaluate(&grants, |g| g, &a, "GET", "/v1/refunds").unwrap();
    assert_eq!(id(got), by_group.id);
    assert_eq!(
        evaluate(&grants, |g| g, &a, "POST", "/v1/charges").unwrap_err(),
        Refusal::NotAllowed
    );
    assert!(matches!(
        evaluate(&grants, |g| g, &a, "GET", "/v1/../admin").unwrap_err(),
        Refusal::Path(_)
    ));
    let other = caller("other", "acme", &[]);
    assert_eq!(
        evaluate(&grants, |g| g, &other, "GET", "/v1/charges").unwrap_err(),
        Refusal::NoGrant
    );
    let d = Refusal::NotAllowed.detail("billing", "stripe", "POST", "/v1/charges");
    assert!(d.contains("billing") && d.contains("POST /v1/charges") && d.contains("stripe"));
}
