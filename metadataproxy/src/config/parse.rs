//! Turning raw setting values into a validated [`Config`], collecting every error.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, Command};

use super::reader::Reader;
use super::settings::{self as s, Kind, SETTINGS, Setting};
use super::{Config, DOCKER_OFF, Endpoint, Env, HttpLimits, LogFormat, ProxyPaths};
use crate::role::{AccountMap, RoleSpec, SessionKey, TagsConfig, WorkloadField};

pub(super) fn command() -> Command {
    let mut cmd = Command::new("metadataproxy")
        .version(env!("CARGO_PKG_VERSION"))
        .about("EC2 instance metadata service that gives every container its own scoped IAM credentials")
        .after_help("Every option can also be set by the environment variable named in its help.")
        .subcommand(Command::new(DOCTOR).about(
            "Check this host and the configuration (BTF, cgroup v2, bpffs, capabilities, Docker, AWS credentials, STS); print what is wrong and how to fix it",
        ));
    for setting in SETTINGS {
        cmd = cmd.arg(arg(setting));
    }
    cmd
}

/// The `doctor` subcommand's name.
const DOCTOR: &str = "doctor";

/// What the command line asks for, without validating the settings.
pub(super) fn mode<I, T>(args: I) -> Result<super::Mode, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Ok(match matches.subcommand_name() {
        Some(DOCTOR) => super::Mode::Doctor,
        _ => super::Mode::Serve,
    })
}

fn arg(setting: &'static Setting) -> Arg {
    let mut help = format!("{} [env: {}]", setting.help, setting.env);
    if let Some(default) = setting.default {
        let _ = write!(help, " [default: {default}]");
    }
    let arg = Arg::new(setting.env)
        .long(setting.flag)
        .global(true)
        .help(help)
        .action(ArgAction::Set);
    match setting.kind {
        Kind::Value => arg.value_name("VALUE"),
        Kind::Bool => arg
            .value_name("BOOL")
            .num_args(0..=1)
            .default_missing_value("true"),
    }
}

fn integer(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |v| match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be between {min} and {max}")),
        Err(_) => Err(format!("not a whole number (expected {min} to {max})")),
    }
}

fn usize_in(min: u64, max: u64) -> impl Fn(&str) -> Result<usize, String> {
    let int = integer(min, max);
    move |v| int(v).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
}

fn account_id(v: &str) -> Result<String, String> {
    if v.len() == 12 && v.bytes().all(|b| b.is_ascii_digit()) {
        Ok(v.to_owned())
    } else {
        Err("an AWS account id is exactly 12 digits".to_owned())
    }
}

fn metadata_url(v: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = v.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("must be an http:// URL (the metadata service speaks plain HTTP)".to_owned());
    }
    if uri.authority().is_none() {
        return Err("has no host".to_owned());
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err("must not have a path or query (give only scheme, host and port)".to_owned());
    }
    Ok(uri)
}

fn docker_url(v: &str) -> Result<Option<Endpoint>, String> {
    if v == DOCKER_OFF {
        return Ok(None);
    }
    Endpoint::parse(v).map(Some).map_err(|e| e.to_string())
}

fn session_key(v: &str) -> Result<SessionKey, String> {
    let (kind, key) = if let Some(k) = v.strip_prefix("Env:") {
        (SessionKey::Env as fn(String) -> SessionKey, k)
    } else if let Some(k) = v.strip_prefix("Labels:") {
        (SessionKey::Label as fn(String) -> SessionKey, k)
    } else {
        return Err("must be `Env:KEY` or `Labels:KEY`".to_owned());
    };
    if key.is_empty() {
        Err("names no key after the prefix".to_owned())
    } else {
        Ok(kind(key.to_owned()))
    }
}

/// `SESSION_TAGS`, `SESSION_TAGS_TRANSITIVE` and `SOURCE_IDENTITY` (errors recorded in `r`).
fn session_tags(r: &mut Reader<'_>) -> TagsConfig {
    let tags = r
        .parse(s::SESSION_TAGS, |v| {
            TagsConfig::parse_tags(v).map_err(|e| e.to_string())
        })
        .unwrap_or_default();
    // With SESSION_TAGS invalid, its keys are unknown: its own error says what to fix.
    let transitive = if r.has_errors_for(s::SESSION_TAGS) {
        Vec::new()
    } else {
        r.parse(s::SESSION_TAGS_TRANSITIVE, |v| {
            TagsConfig::parse_transitive(v, &tags).map_err(|e| e.to_string())
        })
        .unwrap_or_default()
    };
    let source_identity = r.parse(s::SOURCE_IDENTITY, WorkloadField::parse);
    TagsConfig {
        tags,
        transitive,
        source_identity,
    }
}

fn log_format(v: &str) -> Result<LogFormat, String> {
    match v {
        "plain" | "text" => Ok(LogFormat::Plain),
        "json" => Ok(LogFormat::Json),
        _ => Err("must be `plain` or `json`".to_owned()),
    }
}

/// The `PROXY_ALLOWED_PATHS` value that forwards everything.
const EVERYTHING: &str = "*";
/// The `PROXY_ALLOWED_PATHS` entry that stands for the built-in list.
const BUILTIN: &str = "default";

/// `*`, or a comma-separated list of path prefixes where `default` stands for the built-in list.
fn proxy_paths(v: &str) -> Result<ProxyPaths, String> {
    let entries: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if entries.contains(&EVERYTHING) {
        return if entries.len() == 1 {
            Ok(ProxyPaths::Everything)
        } else {
            Err("`*` (forward everything) cannot be combined with other entries".to_owned())
        };
    }
    let mut builtin = entries.is_empty();
    let mut prefixes = Vec::new();
    for p in entries {
        if p == BUILTIN {
            builtin = true;
            continue;
        }
        let p = p.trim_matches('/');
        let bad = p
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
        if bad {
            return Err(format!(
                "`{p}` is not a plain path prefix like `meta-data/placement` (nor `default` or `*`)"
            ));
        }
        prefixes.push(p.to_owned());
    }
    Ok(ProxyPaths::List { builtin, prefixes })
}

/// `off`, or an `address:port` (IPv6 in brackets).
fn admin_listen(v: &str) -> Result<Option<SocketAddr>, String> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| {
        "not an address:port like `127.0.0.1:45002` or `[::1]:45002`, nor `off`".to_owned()
    })
}

fn log_filter(v: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(v)
        .map(|_| v.to_owned())
        .map_err(|e| e.to_string())
}

#[expect(
    clippy::too_many_lines,
    reason = "one line per setting; splitting it would scatter the table"
)]
pub(super) fn load<I, T>(args: I, env: &dyn Env) -> Result<Config, super::ConfigErrors>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let mut r = Reader::new(&matches, env);

    let host = r.parse(s::HOST, |v| {
        v.parse::<IpAddr>()
            .map_err(|_| "not an IP address".to_owned())
    });
    let port = r.parse(s::PORT, |v| {
        v.parse::<u16>()
            .map_err(|_| "not a port number (0 to 65535)".to_owned())
    });
    let debug = r.boolean(s::DEBUG);
    let docker_url = r.parse(s::DOCKER_URL, docker_url);
    let metadata_url = r.parse(s::METADATA_URL, metadata_url);
    let mock_api = r.boolean(s::MOCK_API);
    let mocked_instance_id = r.optional(s::MOCKED_INSTANCE_ID).unwrap_or_default();
    let default_role = r.parse(s::DEFAULT_ROLE, |v| {
        RoleSpec::parse(v).map_err(|e| e.to_string())
    });
    let default_account_id = r.parse(s::DEFAULT_ACCOUNT_ID, account_id);
    let account_map = r.parse(s::AWS_ACCOUNT_MAP, |v| {
        AccountMap::parse_json(v).map_err(|e| e.to_string())
    });
    let aws_region = r.parse(s::AWS_REGION, |v| {
        let ok = v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(v.to_owned())
        } else {
            Err("not a region name like `us-east-1`".to_owned())
        }
    });
    let threshold = r.parse(s::ROLE_EXPIRATION_THRESHOLD, integer(0, 720));
    let role_mapping_file = r.optional(s::ROLE_MAPPING_FILE).map(PathBuf::from);
    let role_policy_file = r.optional(s::ROLE_POLICY_FILE).map(PathBuf::from);
    let session_tags = session_tags(&mut r);
    let role_reverse_lookup = r.boolean(s::ROLE_REVERSE_LOOKUP);
    let hostname_match_regex = r.parse(s::HOSTNAME_MATCH_REGEX, |v| {
        regex::Regex::new(v).map_err(|e| e.to_string())
    });
    let role_session_key = r.parse(s::ROLE_SESSION_KEY, session_key);
    let patch_ecs_allowed_hosts = r.optional(s::PATCH_ECS_ALLOWED_HOSTS);
    let imdsv2_required = r.boolean(s::IMDSV2_REQUIRED);
    let ecs_endpoint = r.boolean(s::ECS_ENDPOINT);
    let log_format = r.parse(s::LOG_FORMAT, log_format);
    let log_filter = r.parse(s::LOG_LEVEL, log_filter);
    let proxy_allowed_paths = r
        .parse(s::PROXY_ALLOWED_PATHS, proxy_paths)
        .unwrap_or_default();
    let upstream_timeout = r.parse(s::UPSTREAM_TIMEOUT, integer(1, 300));
    let session_duration = r.parse(s::ROLE_SESSION_DURATION, integer(900, 43_200));
    let credential_cache_size = r.parse(s::CREDENTIAL_CACHE_SIZE, usize_in(1, 10_000_000));
    let sts_max_calls_per_second = r.parse(s::STS_MAX_CALLS_PER_SECOND, |v| {
        integer(1, 10_000)(v).map(|n| {
            std::num::NonZeroU32::new(u32::try_from(n).unwrap_or(1))
                .unwrap_or(std::num::NonZeroU32::MIN)
        })
    });
    // Accepted so configurations that set them still start; the daemon warns that they are
    // ignored (IMDSv2 tokens are sealed, not stored, so there is nothing left to bound).
    let retired: Vec<&'static str> = s::RETIRED
        .iter()
        .copied()
        .filter(|name| r.optional(name).is_some())
        .collect();
    let reload = r.parse(s::ROLE_MAPPING_RELOAD_INTERVAL, integer(1, 3600));
    let docker_ping = r.parse(s::DOCKER_PING_INTERVAL, integer(1, 3600));
    let admin_listen = r.parse(s::ADMIN_LISTEN, admin_listen);
    let http = (
        r.parse(s::HTTP_HEADER_TIMEOUT, integer(1, 3600)),
        r.parse(s::HTTP_MAX_HEAD_BYTES, usize_in(8192, 1 << 20)),
        r.parse(s::HTTP_MAX_CONNECTIONS, usize_in(1, 1_000_000)),
        r.parse(s::HTTP_MAX_CONNECTIONS_PER_CALLER, usize_in(1, 1_000_000)),
    );
    let http = match http {
        (Some(t), Some(head), Some(total), Some(per_caller)) => Some(HttpLimits {
            header_timeout: Duration::from_secs(t),
            max_head_bytes: head,
            max_connections: total,
            max_connections_per_caller: per_caller,
        }),
        _ => None,
    };
    let ebpf = super::ebpf::read(&mut r, port);
    let containerd = super::containerd::read(&mut r);
    if let (Some(Some(admin)), Some(host), Some(port)) = (admin_listen, host, port)
        && admin.port() == port
        && admin.is_ipv4() == host.is_ipv4()
        && (admin.ip() == host || admin.ip().is_unspecified() || host.is_unspecified())
    {
        let value = r.raw(s::ADMIN_LISTEN).unwrap_or_default();
        r.fail(
            s::ADMIN_LISTEN,
            &value,
            "is the IMDS listener's address (HOST, PORT): give the admin listener its own port",
        );
    }

    // Cross-setting rule: a refresh threshold at or beyond the session length would refresh forever.
    if let (Some(t), Some(d)) = (threshold, session_duration)
        && t * 60 >= d
    {
        {
            let value = r.raw(s::ROLE_EXPIRATION_THRESHOLD).unwrap_or_default();
            r.fail(
                s::ROLE_EXPIRATION_THRESHOLD,
                &value,
                &format!("{t} minutes is not shorter than ROLE_SESSION_DURATION ({d} s)"),
            );
        }
    }

    let errors = r.take_errors();
    let (
        Some(host),
        Some(port),
        Some(docker_url),
        Some(metadata_url),
        Some(account_map),
        Some(threshold),
        Some(hostname_match_regex),
        Some(log_format),
        Some(upstream_timeout),
        Some(session_duration),
        Some(credential_cache_size),
        Some(sts_max_calls_per_second),
        Some(reload),
        Some(docker_ping),
        Some(admin_listen),
        Some(http),
        Some(ebpf),
        Some(containerd),
    ) = (
        host,
        port,
        docker_url,
        metadata_url,
        account_map,
        threshold,
        hostname_match_regex,
        log_format,
        upstream_timeout,
        session_duration,
        credential_cache_size,
        sts_max_calls_per_second,
        reload,
        docker_ping,
        admin_listen,
        http,
        ebpf,
        containerd,
    )
    else {
        return Err(super::ConfigErrors::Invalid(errors));
    };
    if !errors.is_empty() {
        return Err(super::ConfigErrors::Invalid(errors));
    }
    let log_filter =
        log_filter.unwrap_or_else(|| if debug { "debug".into() } else { "info".into() });
    Ok(Config {
        listen: SocketAddr::new(host, port),
        debug,
        docker: docker_url,
        metadata_url,
        mock_api,
        mocked_instance_id,
        default_role,
        default_account_id,
        account_map,
        aws_region,
        expiration_threshold: Duration::from_secs(threshold * 60),
        role_mapping_file,
        role_policy_file,
        session_tags,
        role_reverse_lookup,
        hostname_match_regex,
        role_session_key,
        patch_ecs_allowed_hosts,
        imdsv2_required,
        ecs_endpoint,
        log_format,
        log_filter,
        proxy_allowed_paths,
        upstream_timeout: Duration::from_secs(upstream_timeout),
        role_session_duration: Duration::from_secs(session_duration),
        credential_cache_size,
        sts_max_calls_per_second,
        retired,
        mapping_reload_interval: Duration::from_secs(reload),
        docker_ping_interval: Duration::from_secs(docker_ping),
        admin_listen,
        http,
        ebpf,
        containerd,
    })
}
