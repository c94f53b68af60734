use super::*;

#[test]
fn empty_yaml_is_all_defaults() {
    let c = HubConfig::from_yaml("", "t").unwrap();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:3128");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.defaults.rate_limit_per_sec, 100);
    assert!(c.database_url().starts_with("sqlite://./data/hub.db"));
    c.validate().unwrap();
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let err = HubConfig::from_yaml("proxy:\n  listne: 127.0.0.1:1\n", "hub.yaml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("listne"), "{msg}");
    assert!(msg.contains("hub.yaml"), "{msg}");
    let err = HubConfig::from_yaml("bogus: 1\n", "hub.yaml").unwrap_err();
    assert!(err.to_string().contains("bogus"));
}

#[test]
fn wrong_types_name_the_key() {
    let err = HubConfig::from_yaml("proxy:\n  registry_poll_ms: soon\n", "x").unwrap_err();
    assert!(err.to_string().contains("registry_poll_ms"), "{err}");
}

#[test]
fn env_overrides_win() {
    let mut c = HubConfig::default();
    let env = |k: &str| match k {
        "HUB_PROXY_LISTEN" => Some("127.0.0.1:4000".to_owned()),
        "HUB_DATABASE_URL" => Some("postgres://localhost/x".to_owned()),
        "INTEGRATION_RATE_LIMIT_PER_SEC" => Some("7".to_owned()),
        "HUB_DATA_DIR" => Some("/tmp/hubdata".to_owned()),
        "HUB_LOG_ACCESS_FLUSH_MS" => Some("0".to_owned()),
        _ => None,
    };
    assert_eq!(c.log.access_flush_ms, 50);
    c.apply_env(env).unwrap();
    assert_eq!(c.log.access_flush_ms, 0);
    assert_eq!(c.proxy.listen.port(), 4000);
    assert_eq!(c.database_url(), "postgres://localhost/x");
    assert_eq!(c.defaults.rate_limit_per_sec, 7);
    assert_eq!(c.ca_cert_path(), PathBuf::from("/tmp/hubdata/ca.pem"));
}

#[test]
fn bad_env_names_the_variable() {
    let mut c = HubConfig::default();
    let err = c
        .apply_env(|k| (k == "HUB_ADMIN_LISTEN").then(|| "nope".to_owned()))
        .unwrap_err();
    assert!(err.to_string().contains("HUB_ADMIN_LISTEN"), "{err}");
}

#[test]
fn cross_field_rules() {
    let mut c = HubConfig::default();
    c.admin.listen = c.proxy.listen;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            key: "admin.listen",
            ..
        })
    ));
    let mut c = HubConfig::default();
    c.ca.cert_file = Some("x.pem".into());
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            key: "ca.key_file",
            ..
        })
    ));
    let mut c = HubConfig::default();
    c.redis.url = Some("http://x".into());
    assert!(c.validate().is_err());
    let mut c = HubConfig::default();
    c.proxy.worker_threads = 1025;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            key: "proxy.worker_threads",
            ..
        })
    ));
    let mut c = HubConfig::default();
    c.log.access_flush_ms = 10_001;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            key: "log.access_flush_ms",
            ..
        })
    ));
}

#[test]
fn the_documented_default_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hub.yaml");
    let c = HubConfig::from_file(&path).unwrap();
    c.validate().unwrap();
    assert_eq!(c.proxy.listen.to_string(), DEFAULT_PROXY_LISTEN);
}

#[test]
fn admin_proxy_url_defaults_to_the_proxy_listener() {
    let mut c = HubConfig::default();
    assert_eq!(c.admin_proxy_url(), "http://127.0.0.1:3128");
    c.proxy.listen = "0.0.0.0:3129".parse().unwrap();
    assert_eq!(c.admin_proxy_url(), "http://127.0.0.1:3129");
    c.proxy.listen = "[::]:3129".parse().unwrap();
    assert_eq!(c.admin_proxy_url(), "http://[::1]:3129");
    c.apply_env(|k| (k == "HUB_ADMIN_PROXY_URL").then(|| "http://proxy.hub:3128".to_owned()))
        .unwrap();
    assert_eq!(c.admin_proxy_url(), "http://proxy.hub:3128");
    c.validate().unwrap();
    for bad in [
        "https://proxy:3128",
        "proxy:3128",
        "http://",
        "http://u@p:1",
        "http://p:1/x",
    ] {
        c.admin.proxy_url = Some(bad.to_owned());
        assert!(
            matches!(
                c.validate(),
                Err(ConfigError::Invalid {
                    key: "admin.proxy_url",
                    ..
                })
            ),
            "{bad}"
        );
    }
}

#[test]
fn redis_bounds_have_defaults_env_overrides_and_limits() {
    let c = HubConfig::from_yaml("redis:\n  command_timeout_ms: 20\n", "t").unwrap();
    assert_eq!(
        (c.redis.command_timeout_ms, c.redis.fallback_instances),
        (20, 1)
    );
    let mut c = HubConfig::default();
    assert_eq!(c.redis.command_timeout_ms, 50);
    c.apply_env(|k| match k {
        "HUB_REDIS_COMMAND_TIMEOUT_MS" => Some("75".to_owned()),
        "HUB_REDIS_FALLBACK_INSTANCES" => Some("3".to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        (c.redis.command_timeout_ms, c.redis.fallback_instances),
        (75, 3)
    );
    c.validate().unwrap();
    for (timeout, instances, key) in [
        (0, 1, "redis.command_timeout_ms"),
        (1_001, 1, "redis.command_timeout_ms"),
        (50, 0, "redis.fallback_instances"),
    ] {
        c.redis.command_timeout_ms = timeout;
        c.redis.fallback_instances = instances;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key: k, .. }) if k == key),
            "{timeout} {instances}"
        );
    }
    let err = c
        .apply_env(|k| (k == "HUB_REDIS_FALLBACK_INSTANCES").then(|| "many".to_owned()))
        .unwrap_err();
    assert!(
        err.to_string().contains("HUB_REDIS_FALLBACK_INSTANCES"),
        "{err}"
    );
}
