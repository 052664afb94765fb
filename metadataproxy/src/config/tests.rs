//! Unit tests of configuration loading: defaults, Lyft's boolean rule, every error at once.

use std::collections::HashMap;
use std::time::Duration;

use super::settings::{self, SETTINGS};
use super::*;

fn load(env: &[(&str, &str)], args: &[&str]) -> Result<Config, ConfigErrors> {
    let env: HashMap<&str, &str> = env.iter().copied().collect();
    let cmdline = std::iter::once("metadataproxy").chain(args.iter().copied());
    Config::load(cmdline, &env)
}

fn invalid(env: &[(&str, &str)]) -> Vec<ConfigError> {
    match load(env, &[]) {
        Err(ConfigErrors::Invalid(errors)) => errors,
        other => panic!("expected invalid configuration, got {other:?}"),
    }
}

#[test]
fn defaults_match_lyft() {
    let c = load(&[], &[]).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:45001");
    assert!(!c.debug && !c.mock_api && !c.role_reverse_lookup && !c.imdsv2_required);
    assert_eq!(
        c.docker,
        Some(crate::config::Endpoint::Unix("/var/run/docker.sock".into()))
    );
    assert_eq!(c.metadata_url.to_string(), "http://169.254.169.254/");
    assert_eq!(c.mocked_instance_id, "mockedid");
    assert!(
        c.default_role.is_none() && c.default_account_id.is_none() && c.role_mapping_file.is_none()
    );
    assert!(c.account_map.is_empty());
    assert_eq!(c.expiration_threshold, Duration::from_secs(15 * 60));
    assert_eq!(c.hostname_match_regex.as_str(), "^.*$");
    assert_eq!(c.log_format, LogFormat::Plain);
    assert_eq!(c.log_filter, "info");
}

#[test]
fn lyft_boolean_rule() {
    for (value, expected) in [
        ("False", false),
        ("false", false),
        ("0", false),
        ("", false),
        ("true", true),
        ("True", true),
        ("1", true),
        ("yes", true),
        ("no", true),
    ] {
        let c = load(&[("MOCK_API", value)], &[]).unwrap();
        assert_eq!(c.mock_api, expected, "MOCK_API={value:?}");
    }
}

#[test]
fn every_setting_is_read_from_env_and_flag() {
    let c = load(
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "8080"),
            ("DEFAULT_ROLE", "my-role@123456789012"),
            ("DEFAULT_ACCOUNT_ID", "000000000001"),
            ("AWS_ACCOUNT_MAP", r#"{"prod": "111111111111"}"#),
            ("AWS_REGION", "cn-north-1"),
            ("ROLE_EXPIRATION_THRESHOLD", "5"),
            ("ROLE_MAPPING_FILE", "/etc/roles.json"),
            ("ROLE_SESSION_KEY", "Labels:job"),
            ("HOSTNAME_MATCH_REGEX", "^(.*)\\.example$"),
            ("DEBUG", "1"),
            ("IMDSV2_REQUIRED", "true"),
            ("LOG_FORMAT", "json"),
            (
                "PROXY_ALLOWED_PATHS",
                "meta-data/placement, /dynamic/instance-identity/",
            ),
        ],
        &[
            "--port",
            "9090",
            "--mock-api",
            "--mocked-instance-id",
            "abc",
        ],
    )
    .unwrap();
    assert_eq!(
        c.listen.to_string(),
        "127.0.0.1:9090",
        "the flag wins over the environment"
    );
    assert!(c.mock_api && c.debug && c.imdsv2_required);
    assert_eq!(c.mocked_instance_id, "abc");
    assert_eq!(c.default_role.unwrap().name(), "my-role");
    assert_eq!(c.default_account_id.as_deref(), Some("000000000001"));
    assert_eq!(c.account_map.get("prod"), Some("111111111111"));
    assert_eq!(c.aws_region.as_deref(), Some("cn-north-1"));
    assert_eq!(c.expiration_threshold, Duration::from_secs(300));
    assert_eq!(
        c.role_session_key,
        Some(crate::role::SessionKey::Label("job".into()))
    );
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_filter, "debug");
    assert_eq!(
        c.proxy_allowed_paths,
        ProxyPaths::List {
            builtin: false,
            prefixes: vec![
                "meta-data/placement".into(),
                "dynamic/instance-identity".into()
            ]
        }
    );
}

#[test]
fn every_bad_value_is_reported_by_name_at_once() {
    let errors = invalid(&[
        ("PORT", "abc"),
        ("HOST", "not-an-ip"),
        ("ROLE_EXPIRATION_THRESHOLD", "-1"),
        ("AWS_ACCOUNT_MAP", "{"),
        ("DEFAULT_ACCOUNT_ID", "12345"),
        ("METADATA_URL", "ftp://x"),
        ("HOSTNAME_MATCH_REGEX", "("),
        ("ROLE_SESSION_KEY", "Foo:bar"),
        ("LOG_FORMAT", "xml"),
        ("DEFAULT_ROLE", "@123"),
        ("DOCKER_URL", "/var/run/docker.sock"),
        ("CREDENTIAL_CACHE_SIZE", "0"),
    ]);
    let names: Vec<&str> = errors.iter().map(|e| e.name).collect();
    for expected in [
        "PORT",
        "HOST",
        "ROLE_EXPIRATION_THRESHOLD",
        "AWS_ACCOUNT_MAP",
        "DEFAULT_ACCOUNT_ID",
        "METADATA_URL",
        "HOSTNAME_MATCH_REGEX",
        "ROLE_SESSION_KEY",
        "LOG_FORMAT",
        "DEFAULT_ROLE",
        "DOCKER_URL",
        "CREDENTIAL_CACHE_SIZE",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(names.len(), 12, "{errors:?}");
    let text = ConfigErrors::Invalid(errors).to_string();
    assert!(text.contains("PORT=\"abc\""), "{text}");
}

#[test]
fn threshold_must_be_shorter_than_the_session() {
    let errors = invalid(&[
        ("ROLE_EXPIRATION_THRESHOLD", "60"),
        ("ROLE_SESSION_DURATION", "3600"),
    ]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].name, "ROLE_EXPIRATION_THRESHOLD");
}

#[test]
fn sts_call_cap_is_a_whole_number_from_1_to_10000() {
    let c = load(&[], &[]).unwrap();
    assert_eq!(c.sts_max_calls_per_second.get(), 10);
    let c = load(&[("STS_MAX_CALLS_PER_SECOND", "250")], &[]).unwrap();
    assert_eq!(c.sts_max_calls_per_second.get(), 250);
    let c = load(&[], &["--sts-max-calls-per-second", "3"]).unwrap();
    assert_eq!(c.sts_max_calls_per_second.get(), 3);
    for (value, why) in [
        ("0", "must be between 1 and 10000"),
        ("10001", "must be between 1 and 10000"),
        ("2.5", "not a whole number (expected 1 to 10000)"),
        ("fast", "not a whole number (expected 1 to 10000)"),
    ] {
        let errors = invalid(&[("STS_MAX_CALLS_PER_SECOND", value)]);
        assert_eq!(errors.len(), 1, "{value}: {errors:?}");
        let text = ConfigErrors::Invalid(errors).to_string();
        assert!(
            text.contains(&format!("STS_MAX_CALLS_PER_SECOND=\"{value}\": {why}")),
            "{value}: {text}"
        );
    }
}

#[test]
fn empty_values_fall_back_to_defaults() {
    let c = load(
        &[("PORT", ""), ("DEFAULT_ROLE", ""), ("AWS_ACCOUNT_MAP", "")],
        &[],
    )
    .unwrap();
    assert_eq!(c.listen.port(), 45001);
    assert!(c.default_role.is_none());
}

#[test]
fn metadata_url_must_be_plain_http_without_path() {
    assert_eq!(
        invalid(&[("METADATA_URL", "http://x/latest")])[0].name,
        "METADATA_URL"
    );
    assert!(load(&[("METADATA_URL", "http://127.0.0.1:8080")], &[]).is_ok());
}

#[test]
fn unknown_flag_is_a_cli_error() {
    assert!(matches!(
        load(&[], &["--no-such-flag"]),
        Err(ConfigErrors::Cli(_))
    ));
}

#[test]
fn settings_table_has_unique_names_and_every_lyft_variable() {
    let mut envs: Vec<&str> = SETTINGS.iter().map(|s| s.env).collect();
    let mut flags: Vec<&str> = SETTINGS.iter().map(|s| s.flag).collect();
    envs.sort_unstable();
    flags.sort_unstable();
    let (n_env, n_flag) = (envs.len(), flags.len());
    envs.dedup();
    flags.dedup();
    assert_eq!((envs.len(), flags.len()), (n_env, n_flag));
    for lyft in [
        "HOST",
        "PORT",
        "DEBUG",
        "DOCKER_URL",
        "METADATA_URL",
        "MOCK_API",
        "MOCKED_INSTANCE_ID",
        "DEFAULT_ROLE",
        "DEFAULT_ACCOUNT_ID",
        "AWS_ACCOUNT_MAP",
        "AWS_REGION",
        "ROLE_EXPIRATION_THRESHOLD",
        "ROLE_MAPPING_FILE",
        "ROLE_REVERSE_LOOKUP",
        "HOSTNAME_MATCH_REGEX",
        "ROLE_SESSION_KEY",
        "PATCH_ECS_ALLOWED_HOSTS",
    ] {
        assert!(SETTINGS.iter().any(|s| s.env == lyft && s.lyft), "{lyft}");
    }
}

#[test]
fn readme_configuration_reference_matches_the_code() {
    let readme = include_str!("../../../README.md");
    let begin = "<!-- settings:begin -->\n";
    let end = "<!-- settings:end -->";
    let table = readme
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(table, _)| table)
        .expect("README.md has the settings markers");
    let expected = settings::markdown_table();
    assert!(
        table == expected,
        "README.md's configuration reference is out of date; replace it between the markers with:\n{expected}"
    );
}

#[test]
fn proxy_allowed_paths_default_everything_and_lists() {
    let paths = |v: Option<&str>| {
        let env: Vec<(&str, &str)> = v.map(|v| ("PROXY_ALLOWED_PATHS", v)).into_iter().collect();
        load(&env, &[]).unwrap().proxy_allowed_paths
    };
    assert_eq!(
        paths(None),
        ProxyPaths::default(),
        "unset: the built-in list"
    );
    assert_eq!(paths(Some("")), ProxyPaths::default());
    assert_eq!(paths(Some(" * ")), ProxyPaths::Everything);
    assert_eq!(
        paths(Some("default, meta-data/public-keys/")),
        ProxyPaths::List {
            builtin: true,
            prefixes: vec!["meta-data/public-keys".into()]
        }
    );
    for bad in [
        "*,meta-data/mac",
        "meta-data/../user-data",
        "meta-data//mac",
        "a b",
    ] {
        let errors = invalid(&[("PROXY_ALLOWED_PATHS", bad)]);
        assert!(
            errors.iter().any(|e| e.name == "PROXY_ALLOWED_PATHS"),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn the_default_redirect_target_is_the_link_address_every_caller_reaches() {
    // Regression (issue 11, item 4): the default was 127.0.0.1:PORT, which inside a bridge
    // container is the container's own loopback.
    let config = load(&[("PORT", "45009")], &[]).expect("valid");
    assert_eq!(config.ebpf.target4.to_string(), "169.254.170.45:45009");
    assert_eq!(
        config.ebpf.target6.map(|t| t.to_string()).as_deref(),
        Some("[::ffff:169.254.170.45]:45009"),
        "IPv6 callers are sent to the same address, IPv4-mapped"
    );
    assert_eq!(
        config.ebpf.link_address,
        Some(settings::DEFAULT_EBPF_TARGET_IP)
    );
    for host in ["127.0.0.1", "172.17.0.1", "::1", "0.0.0.0"] {
        let config = load(&[("HOST", host)], &[]).expect("valid");
        assert!(!config.ebpf.target4.ip().is_loopback(), "HOST={host}");
        assert_eq!(config.ebpf.target4.ip(), &settings::DEFAULT_EBPF_TARGET_IP);
    }
}

#[test]
fn an_overridden_target_is_not_added_to_lo_and_target6_follows_it() {
    let config = load(&[("EBPF_TARGET", "172.17.0.1:45001")], &[]).expect("valid");
    assert_eq!(config.ebpf.link_address, None);
    assert_eq!(
        config.ebpf.target6.map(|t| t.to_string()).as_deref(),
        Some("[::ffff:172.17.0.1]:45001")
    );
    let config = load(&[("EBPF_TARGET6", "off")], &[]).expect("valid");
    assert_eq!(config.ebpf.target6, None);
    assert!(config.ebpf.link_address.is_some());
    let config = load(&[("EBPF_TARGET6", "[::1]:45003")], &[]).expect("valid");
    assert_eq!(
        config.ebpf.target6.map(|t| t.to_string()).as_deref(),
        Some("[::1]:45003")
    );
    let errors = invalid(&[("EBPF_TARGET6", "[::ffff:0.0.0.0]:45001")]);
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn ebpf_direct_callers_are_addresses_and_networks() {
    let nets = |v: &str| -> Vec<String> {
        load(&[("EBPF_DIRECT_CALLERS", v)], &[])
            .unwrap()
            .ebpf
            .direct_callers
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert!(nets("").is_empty(), "unset: nobody");
    assert!(load(&[], &[]).unwrap().ebpf.direct_callers.is_empty());
    assert_eq!(
        nets(" 127.0.0.1, 10.1.2.3/16 ,fd00::/8,::1,::ffff:192.0.2.7,::ffff:10.0.0.0/104"),
        [
            "127.0.0.1/32",
            "10.1.0.0/16",
            "fd00::/8",
            "::1/128",
            "192.0.2.7/32",
            "10.0.0.0/8"
        ]
    );
    for bad in ["localhost", "10.0.0.0/33", "127.0.0.1:80", "10.0.0.1/8/2"] {
        let errors = invalid(&[("EBPF_DIRECT_CALLERS", bad)]);
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert_eq!(errors[0].name, "EBPF_DIRECT_CALLERS");
        assert!(errors[0].reason.contains("not an address or CIDR"), "{bad}");
    }
}
