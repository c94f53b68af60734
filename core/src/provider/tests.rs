use proptest::prelude::*;

use super::*;

#[test]
fn host_patterns_match_case_insensitively_and_by_label() {
    let exact = HostPattern::parse("API.Stripe.com.").unwrap();
    assert_eq!(exact, HostPattern::Exact("api.stripe.com".into()));
    assert!(exact.matches("api.stripe.com"));
    assert!(!exact.matches("x.api.stripe.com"));

    let wild = HostPattern::parse("*.Example.com").unwrap();
    assert!(wild.matches("a.example.com"));
    assert!(wild.matches("a.b.example.com"));
    assert!(!wild.matches("example.com"));
    assert!(!wild.matches("badexample.com"));
}

#[test]
fn host_patterns_reject_garbage() {
    for bad in [
        "", "*", "*.com", "a..b", "-a.com", "a*.b.com", "1.2.3.4", "a b.com", "x.*.com",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn base_url_requires_https_unless_insecure_allowed() {
    let u = parse_base_url("https://API.x.com:8443/v1/", false).unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.path_prefix.as_str()),
        (true, "api.x.com", 8443, "/v1")
    );
    assert_eq!(
        parse_base_url("http://x.com", false).unwrap_err().field,
        "baseUrl"
    );
    assert!(!parse_base_url("http://127.0.0.1:81", true).unwrap().tls);
    assert!(parse_base_url("https://u:p@x.com", false).is_err());
    assert!(parse_base_url("https://x.com?a=b", false).is_err());
    assert!(parse_base_url("https://x.com/a\tb", false).is_err());
    assert!(parse_base_url("https://x.com/a\u{1}b", false).is_err());
    assert!(parse_base_url("ftp://x.com", false).is_err());
    assert!(parse_base_url("https://x.com:99999", false).is_err());
    assert_eq!(
        parse_base_url("https://[::1]:9", false).unwrap().host,
        "::1"
    );
}

#[test]
fn config_bounds_name_the_field() {
    let c = ProviderConfig {
        timeout_ms: 30_001,
        ..Default::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "config.timeoutMs");
    let c = ProviderConfig {
        total_timeout_ms: 5_000,
        timeout_ms: 10_000,
        ..Default::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "config.totalTimeoutMs");
    let c = ProviderConfig {
        max_attempts: 0,
        ..Default::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "config.maxAttempts");
    ProviderConfig::default().validate().unwrap();
}

#[test]
fn config_rejects_unknown_fields() {
    let err =
        serde_json::from_str::<ProviderConfig>(r#"{"timeoutMs": 1000, "bogus": 1}"#).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    let c: ProviderConfig = serde_json::from_str(r#"{"timeoutMs": 1000}"#).unwrap();
    assert_eq!(c.max_attempts, 5);
    assert_eq!(c.breaker.open_ms, 60_000);
}

#[test]
fn auth_round_trips_through_sealable_json_and_never_debugs_secrets() {
    let auths: Vec<Auth> = vec![
        serde_json::from_str(r#"{"type":"bearer","token":"tok-SECRET"}"#).unwrap(),
        serde_json::from_str(r#"{"type":"basic","username":"u-SECRET","password":"p-SECRET"}"#)
            .unwrap(),
        serde_json::from_str(r#"{"type":"header","name":"X-Api-Key","value":"h-SECRET"}"#).unwrap(),
        serde_json::from_str(r#"{"type":"query","name":"api_key","value":"q-SECRET"}"#).unwrap(),
        serde_json::from_str(r#"{"type":"path","template":"/bot{secret}","value":"1:p-SECRET"}"#)
            .unwrap(),
        serde_json::from_str(
            r#"{"type":"body","format":"form","field":"token","value":"xoxb-SECRET"}"#,
        )
        .unwrap(),
        serde_json::from_str(r#"{"type":"body","format":"json","field":"key","value":"j-SECRET"}"#)
            .unwrap(),
        Auth::None,
    ];
    for a in auths {
        a.validate().unwrap();
        assert!(!format!("{a:?}").contains("SECRET"));
        assert_eq!(Auth::from_sealed_json(&a.to_sealable_json()).unwrap(), a);
    }
    let bad: Auth = serde_json::from_str(r#"{"type":"header","name":"Host","value":"x"}"#).unwrap();
    assert_eq!(bad.validate().unwrap_err().field, "auth.name");
    let bad: Auth = serde_json::from_str(r#"{"type":"bearer","token":"a\nb"}"#).unwrap();
    assert_eq!(bad.validate().unwrap_err().field, "auth.token");
    for (json, field) in [
        (
            r#"{"type":"path","template":"/bot","value":"x"}"#,
            "auth.template",
        ),
        (
            r#"{"type":"path","template":"/a b/{secret}","value":"x"}"#,
            "auth.template",
        ),
        (
            r#"{"type":"path","template":"/{secret}","value":""}"#,
            "auth.value",
        ),
        (
            r#"{"type":"body","format":"json","field":"","value":"x"}"#,
            "auth.field",
        ),
        (
            r#"{"type":"body","format":"form","field":"t","value":"a\rb"}"#,
            "auth.value",
        ),
    ] {
        let bad: Auth = serde_json::from_str(json).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, field, "{json}");
    }
    assert!(
        serde_json::from_str::<Auth>(r#"{"type":"body","format":"xml","field":"t","value":"x"}"#)
            .is_err()
    );
}

#[test]
fn path_and_body_auth_types_are_named_and_list_their_fields() {
    for t in [AuthType::Path, AuthType::Body] {
        assert_eq!(AuthType::parse(t.as_str()), Some(t));
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        assert!(!t.is_oauth());
    }
    assert_eq!(AuthType::Path.fields(), ["template", "value"]);
    assert_eq!(AuthType::Body.fields(), ["format", "field", "value"]);
    let a: Auth =
        serde_json::from_str(r#"{"type":"path","template":"/bot{secret}","value":"s"}"#).unwrap();
    assert_eq!(a.auth_type(), AuthType::Path);
    assert_eq!(a.secrets().len(), 1);
    assert_eq!(a.secrets()[0].expose(), "s");
}

#[test]
fn names_are_boring() {
    validate_name("stripe-eu_1").unwrap();
    for bad in ["", "Stripe", "-x", "a b", &"x".repeat(65)] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

proptest! {
    #[test]
    fn wildcard_matches_exactly_its_subdomains(sub in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}", base in "[a-z]{1,10}\\.[a-z]{2,5}") {
        let p = HostPattern::parse(&format!("*.{base}")).unwrap();
        let full = format!("{sub}.{base}");
        prop_assert!(p.matches(&full));
        prop_assert!(p.matches(&normalize_host(&full.to_uppercase())));
        prop_assert!(!p.matches(&base));
        let glued = format!("{sub}{base}");
        prop_assert!(!p.matches(&glued));
    }

    #[test]
    fn host_parse_never_panics(s in "\\PC{0,80}") {
        let _ = HostPattern::parse(&s);
        let _ = parse_base_url(&s, true);
        let _ = split_host_port(&s);
    }
}

#[test]
fn protocol_settings_parse_and_passthrough_refuses_credentials() {
    let c: ProviderConfig = serde_json::from_value(serde_json::json!({
        "httpVersion": "h2", "tls": "passthrough", "upgradedIdleTimeoutMs": 1000,
        "maxUpgradedConnections": 3
    }))
    .unwrap();
    assert_eq!(
        (c.http_version, c.tls, c.max_upgraded_connections),
        (HttpVersion::H2, TlsMode::Passthrough, 3)
    );
    assert!(c.validate().is_ok());
    assert!(
        serde_json::from_value::<ProviderConfig>(serde_json::json!({"httpVersion": "h3"})).is_err()
    );
    assert_eq!(
        ProviderConfig {
            max_upgraded_connections: 0,
            ..ProviderConfig::default()
        }
        .validate()
        .unwrap_err()
        .field,
        "config.maxUpgradedConnections"
    );
    assert_eq!(
        validate_tls_mode(&c, AuthType::Bearer).unwrap_err().field,
        "config.tls"
    );
    assert!(validate_tls_mode(&c, AuthType::None).is_ok());
    assert!(validate_tls_mode(&ProviderConfig::default(), AuthType::Bearer).is_ok());
}
