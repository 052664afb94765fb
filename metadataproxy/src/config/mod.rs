//! Configuration: Lyft-compatible settings from flags and environment, validated all at once.

mod containerd;
mod docker_url;
mod ebpf;
mod env;
mod parse;
mod reader;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use containerd::{ContainerdConfig, ContainerdMode};
pub use docker_url::{DOCKER_OFF, Endpoint, EndpointError};
pub use ebpf::{EbpfConfig, EbpfMode, OnExit};
pub use env::{Env, ProcessEnv};
pub use reader::{ConfigError, ConfigErrors};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// What the binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run the daemon.
    Serve,
    /// `metadataproxy doctor`: check the host and the configuration, then exit.
    Doctor,
}

/// What proxy mode forwards (`PROXY_ALLOWED_PATHS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyPaths {
    /// `*`: every path but the IAM and identity-credentials routes (Lyft's behaviour).
    Everything,
    /// The built-in allow-list (unset, or `default` among the entries) and/or these prefixes.
    List {
        /// Whether the built-in list is included.
        builtin: bool,
        /// Further prefixes, like `meta-data/placement` (no leading or trailing `/`).
        prefixes: Vec<String>,
    },
}

impl Default for ProxyPaths {
    /// Unset: the built-in list alone.
    fn default() -> Self {
        Self::List {
            builtin: true,
            prefixes: Vec::new(),
        }
    }
}

/// Limits on callers' connections and requests (`HTTP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `HTTP_HEADER_TIMEOUT`: time to send a request head; also the keep-alive idle limit.
    pub header_timeout: Duration,
    /// `HTTP_MAX_HEAD_BYTES`: largest request line + headers.
    pub max_head_bytes: usize,
    /// `HTTP_MAX_CONNECTIONS`: most open connections.
    pub max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_CALLER`: most open connections of one caller.
    pub max_connections_per_caller: usize,
}

impl Default for HttpLimits {
    /// The defaults of the settings table.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            max_head_bytes: 16 * 1024,
            max_connections: 4096,
            max_connections_per_caller: 256,
        }
    }
}

/// The validated configuration; nothing in it needs checking again.
#[derive(Debug, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one field per boolean setting"
)]
pub struct Config {
    /// Address the IMDS API listens on (`HOST`, `PORT`).
    pub listen: SocketAddr,
    /// `DEBUG`.
    pub debug: bool,
    /// `DOCKER_URL`: where dockerd listens; `None`: `off`.
    pub docker: Option<Endpoint>,
    /// `METADATA_URL`: upstream for proxied routes.
    pub metadata_url: http::Uri,
    /// `MOCK_API`.
    pub mock_api: bool,
    /// `MOCKED_INSTANCE_ID`.
    pub mocked_instance_id: String,
    /// `DEFAULT_ROLE`, parsed.
    pub default_role: Option<crate::role::RoleSpec>,
    /// `DEFAULT_ACCOUNT_ID` (12 digits).
    pub default_account_id: Option<String>,
    /// `AWS_ACCOUNT_MAP`.
    pub account_map: crate::role::AccountMap,
    /// `AWS_REGION`.
    pub aws_region: Option<String>,
    /// `ROLE_EXPIRATION_THRESHOLD`, as a duration.
    pub expiration_threshold: Duration,
    /// `ROLE_MAPPING_FILE`.
    pub role_mapping_file: Option<PathBuf>,
    /// `ROLE_POLICY_FILE`.
    pub role_policy_file: Option<PathBuf>,
    /// `SESSION_TAGS`, `SESSION_TAGS_TRANSITIVE`, `SOURCE_IDENTITY`.
    pub session_tags: crate::role::TagsConfig,
    /// `ROLE_REVERSE_LOOKUP`.
    pub role_reverse_lookup: bool,
    /// `HOSTNAME_MATCH_REGEX`, compiled.
    pub hostname_match_regex: regex::Regex,
    /// `ROLE_SESSION_KEY`.
    pub role_session_key: Option<crate::role::SessionKey>,
    /// `PATCH_ECS_ALLOWED_HOSTS`.
    pub patch_ecs_allowed_hosts: Option<String>,
    /// `IMDSV2_REQUIRED`.
    pub imdsv2_required: bool,
    /// `ECS_ENDPOINT`: serve `/v1/credentials` and redirect the container-credentials endpoint.
    pub ecs_endpoint: bool,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `LOG_LEVEL`, or the default derived from `DEBUG`.
    pub log_filter: String,
    /// `PROXY_ALLOWED_PATHS`.
    pub proxy_allowed_paths: ProxyPaths,
    /// `UPSTREAM_TIMEOUT`.
    pub upstream_timeout: Duration,
    /// `ROLE_SESSION_DURATION`.
    pub role_session_duration: Duration,
    /// `CREDENTIAL_CACHE_SIZE`.
    pub credential_cache_size: usize,
    /// `STS_MAX_CALLS_PER_SECOND`.
    pub sts_max_calls_per_second: std::num::NonZeroU32,
    /// Retired settings that were set: they are ignored, with a warning at start.
    pub retired: Vec<&'static str>,
    /// `ROLE_MAPPING_RELOAD_INTERVAL`.
    pub mapping_reload_interval: Duration,
    /// `DOCKER_PING_INTERVAL`.
    pub docker_ping_interval: Duration,
    /// `ADMIN_LISTEN`: where `/healthz`, `/readyz` and `/metrics` are served; `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// `HTTP_*`: limits on callers' connections and requests.
    pub http: HttpLimits,
    /// `EBPF*`: the kernel redirect and caller identification.
    pub ebpf: EbpfConfig,
    /// `CONTAINERD*`: containerd's containers and Kubernetes pods.
    pub containerd: ContainerdConfig,
}

impl Config {
    /// Reads and validates every setting from command-line arguments and the environment.
    ///
    /// `args` includes the program name. Every invalid value is reported, by name, in one error.
    pub fn load<I, T>(args: I, env: &dyn Env) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        parse::load(args, env)
    }

    /// What the command line asks for: serve, or `doctor`. Settings are not validated here.
    pub fn mode<I, T>(args: I) -> Result<Mode, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        parse::mode(args)
    }

    /// The clap command describing every flag (for `--help`).
    pub fn command() -> clap::Command {
        parse::command()
    }
}

#[cfg(test)]
mod tests;
