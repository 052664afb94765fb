//! The table of every setting: environment name, command-line flag, default and help.
//!
//! One table drives the command line, the environment lookup and the configuration reference,
//! so the three cannot drift apart.

use std::net::Ipv4Addr;

/// The default redirect target's address (`EBPF_TARGET` unset): link-local, outside the addresses
/// AWS uses (169.254.169.254 IMDS, .169.253 DNS, .169.123 NTP, .169.250/.251, .170.2 ECS, .170.23
/// EKS Pod Identity). The daemon adds it to `lo` as a /32, so every caller reaches it: host
/// processes and host-network containers locally, bridge containers through their default route.
pub const DEFAULT_EBPF_TARGET_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 45);

/// How a setting's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text, a number, a URL, JSON…
    Value,
    /// Lyft's boolean rule: `False`, `false`, `0` and the empty string are false, anything else true.
    /// On the command line the flag alone means true.
    Bool,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Environment variable name (Lyft's name for Lyft's settings).
    pub env: &'static str,
    /// Long command-line flag, without the dashes.
    pub flag: &'static str,
    /// Default, as it would be written in the environment; `None` means unset.
    pub default: Option<&'static str>,
    /// How the value is written.
    pub kind: Kind,
    /// Whether Lyft's metadataproxy 2.2.0 has this setting.
    pub lyft: bool,
    /// One-line description.
    pub help: &'static str,
}

const fn lyft(
    env: &'static str,
    flag: &'static str,
    default: Option<&'static str>,
    kind: Kind,
    help: &'static str,
) -> Setting {
    Setting {
        env,
        flag,
        default,
        kind,
        lyft: true,
        help,
    }
}

const fn ours(
    env: &'static str,
    flag: &'static str,
    default: Option<&'static str>,
    kind: Kind,
    help: &'static str,
) -> Setting {
    Setting {
        env,
        flag,
        default,
        kind,
        lyft: false,
        help,
    }
}

pub const HOST: &str = "HOST";
pub const PORT: &str = "PORT";
pub const DEBUG: &str = "DEBUG";
pub const DOCKER_URL: &str = "DOCKER_URL";
pub const DOCKER_PING_INTERVAL: &str = "DOCKER_PING_INTERVAL";
pub const METADATA_URL: &str = "METADATA_URL";
pub const MOCK_API: &str = "MOCK_API";
pub const MOCKED_INSTANCE_ID: &str = "MOCKED_INSTANCE_ID";
pub const DEFAULT_ROLE: &str = "DEFAULT_ROLE";
pub const DEFAULT_ACCOUNT_ID: &str = "DEFAULT_ACCOUNT_ID";
pub const AWS_ACCOUNT_MAP: &str = "AWS_ACCOUNT_MAP";
pub const AWS_REGION: &str = "AWS_REGION";
pub const ROLE_EXPIRATION_THRESHOLD: &str = "ROLE_EXPIRATION_THRESHOLD";
pub const ROLE_MAPPING_FILE: &str = "ROLE_MAPPING_FILE";
pub const ROLE_REVERSE_LOOKUP: &str = "ROLE_REVERSE_LOOKUP";
pub const HOSTNAME_MATCH_REGEX: &str = "HOSTNAME_MATCH_REGEX";
pub const ROLE_SESSION_KEY: &str = "ROLE_SESSION_KEY";
pub const PATCH_ECS_ALLOWED_HOSTS: &str = "PATCH_ECS_ALLOWED_HOSTS";
pub const IMDSV2_REQUIRED: &str = "IMDSV2_REQUIRED";
pub const ECS_ENDPOINT: &str = "ECS_ENDPOINT";
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const LOG_LEVEL: &str = "LOG_LEVEL";
pub const PROXY_ALLOWED_PATHS: &str = "PROXY_ALLOWED_PATHS";
pub const UPSTREAM_TIMEOUT: &str = "UPSTREAM_TIMEOUT";
pub const ROLE_SESSION_DURATION: &str = "ROLE_SESSION_DURATION";
pub const CREDENTIAL_CACHE_SIZE: &str = "CREDENTIAL_CACHE_SIZE";
pub const STS_MAX_CALLS_PER_SECOND: &str = "STS_MAX_CALLS_PER_SECOND";
pub const TOKEN_MAX_TOTAL: &str = "TOKEN_MAX_TOTAL";
pub const TOKEN_MAX_PER_CALLER: &str = "TOKEN_MAX_PER_CALLER";
/// Settings that no longer do anything: accepted (so configurations that set them still start)
/// and named in a warning at start.
pub const RETIRED: &[&str] = &[TOKEN_MAX_TOTAL, TOKEN_MAX_PER_CALLER];
pub const ROLE_MAPPING_RELOAD_INTERVAL: &str = "ROLE_MAPPING_RELOAD_INTERVAL";
pub const ROLE_POLICY_FILE: &str = "ROLE_POLICY_FILE";
pub const SESSION_TAGS: &str = "SESSION_TAGS";
pub const SESSION_TAGS_TRANSITIVE: &str = "SESSION_TAGS_TRANSITIVE";
pub const SOURCE_IDENTITY: &str = "SOURCE_IDENTITY";
pub const ADMIN_LISTEN: &str = "ADMIN_LISTEN";
pub const HTTP_HEADER_TIMEOUT: &str = "HTTP_HEADER_TIMEOUT";
pub const HTTP_MAX_HEAD_BYTES: &str = "HTTP_MAX_HEAD_BYTES";
pub const HTTP_MAX_CONNECTIONS: &str = "HTTP_MAX_CONNECTIONS";
pub const HTTP_MAX_CONNECTIONS_PER_CALLER: &str = "HTTP_MAX_CONNECTIONS_PER_CALLER";
pub const EBPF: &str = "EBPF";
pub const EBPF_CGROUPS: &str = "EBPF_CGROUPS";
pub const EBPF_REDIRECT_HOST: &str = "EBPF_REDIRECT_HOST";
pub const EBPF_TARGET: &str = "EBPF_TARGET";
pub const EBPF_TARGET6: &str = "EBPF_TARGET6";
pub const EBPF_MAP_SIZE: &str = "EBPF_MAP_SIZE";
pub const EBPF_PIN_DIR: &str = "EBPF_PIN_DIR";
pub const EBPF_ON_EXIT: &str = "EBPF_ON_EXIT";
pub const EBPF_OBJECT: &str = "EBPF_OBJECT";
pub const EBPF_DIRECT_CALLERS: &str = "EBPF_DIRECT_CALLERS";
pub const CONTAINERD: &str = "CONTAINERD";
pub const CONTAINERD_ADDRESS: &str = "CONTAINERD_ADDRESS";
pub const CONTAINERD_NAMESPACES: &str = "CONTAINERD_NAMESPACES";

/// Every setting, Lyft's first (in the order of its README), then ours.
pub const SETTINGS: &[Setting] = &[
    lyft(
        HOST,
        "host",
        Some("0.0.0.0"),
        Kind::Value,
        "IP address to listen on",
    ),
    lyft(
        PORT,
        "port",
        Some("45001"),
        Kind::Value,
        "TCP port to listen on",
    ),
    lyft(
        DEFAULT_ROLE,
        "default-role",
        None,
        Kind::Value,
        "role for callers that have none; unset: no credentials",
    ),
    lyft(
        DEFAULT_ACCOUNT_ID,
        "default-account-id",
        None,
        Kind::Value,
        "account for bare role names; unset: look the role up with iam:GetRole",
    ),
    lyft(
        ROLE_SESSION_KEY,
        "role-session-key",
        None,
        Kind::Value,
        "`Env:KEY` or `Labels:KEY` of a container giving its role session name",
    ),
    lyft(
        DEBUG,
        "debug",
        Some("false"),
        Kind::Bool,
        "verbose logging (secrets are still redacted)",
    ),
    lyft(
        DOCKER_URL,
        "docker-url",
        Some("unix://var/run/docker.sock"),
        Kind::Value,
        "Docker daemon URL: unix:///path (Lyft's unix://var/run/docker.sock is /var/run/docker.sock) or tcp://host:port; `off` on a node without Docker",
    ),
    ours(
        DOCKER_PING_INTERVAL,
        "docker-ping-interval",
        Some("10"),
        Kind::Value,
        "seconds between liveness checks of Docker while following its events (it lists the running containers); no answer within that time (a hung dockerd, a dead link), or the index differing from the listing at two checks in a row (the event stream's connection died alone), means not ready, reconnect and full resynchronisation",
    ),
    lyft(
        METADATA_URL,
        "metadata-url",
        Some("http://169.254.169.254"),
        Kind::Value,
        "upstream metadata service for proxied routes",
    ),
    lyft(
        MOCK_API,
        "mock-api",
        Some("false"),
        Kind::Bool,
        "serve a mock metadata tree instead of proxying non-IAM routes",
    ),
    lyft(
        MOCKED_INSTANCE_ID,
        "mocked-instance-id",
        Some("mockedid"),
        Kind::Value,
        "mocked instance-id is `i-` followed by this",
    ),
    lyft(
        AWS_ACCOUNT_MAP,
        "aws-account-map",
        Some("{}"),
        Kind::Value,
        "JSON object of account alias to account id, for `role@alias`",
    ),
    lyft(
        AWS_REGION,
        "aws-region",
        None,
        Kind::Value,
        "region of the STS endpoint (regional endpoint; any partition)",
    ),
    lyft(
        ROLE_EXPIRATION_THRESHOLD,
        "role-expiration-threshold",
        Some("15"),
        Kind::Value,
        "minutes before expiry at which credentials are refreshed; callers always get more than this left",
    ),
    lyft(
        ROLE_MAPPING_FILE,
        "role-mapping-file",
        None,
        Kind::Value,
        "JSON file mapping caller IP (or `cgroup:/path`) to a role; reloaded when it changes",
    ),
    lyft(
        ROLE_REVERSE_LOOKUP,
        "role-reverse-lookup",
        Some("false"),
        Kind::Bool,
        "match callers to containers by reverse DNS",
    ),
    lyft(
        HOSTNAME_MATCH_REGEX,
        "hostname-match-regex",
        Some("^.*$"),
        Kind::Value,
        "limits reverse-lookup matches",
    ),
    lyft(
        PATCH_ECS_ALLOWED_HOSTS,
        "patch-ecs-allowed-hosts",
        None,
        Kind::Value,
        "extra host allowed in the daemon's own AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ),
    ours(
        IMDSV2_REQUIRED,
        "imdsv2-required",
        Some("false"),
        Kind::Bool,
        "refuse requests without an IMDSv2 session token (401)",
    ),
    ours(
        ECS_ENDPOINT,
        "ecs-endpoint",
        Some("false"),
        Kind::Bool,
        "serve containers' own credentials at `GET /v1/credentials`, for SDKs given AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials and their container's AWS_CONTAINER_AUTHORIZATION_TOKEN (or the file named by its AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE); the eBPF redirect then also covers 169.254.170.23:80 and [fd00:ec2::23]:80",
    ),
    ours(
        LOG_FORMAT,
        "log-format",
        Some("plain"),
        Kind::Value,
        "`plain` or `json`",
    ),
    ours(
        LOG_LEVEL,
        "log-level",
        None,
        Kind::Value,
        "tracing filter, e.g. `info` or `metadataproxy=debug`; default `info` (`debug` with DEBUG)",
    ),
    ours(
        PROXY_ALLOWED_PATHS,
        "proxy-allowed-paths",
        None,
        Kind::Value,
        "comma-separated path prefixes (after the version, e.g. `meta-data/placement`) that proxy mode forwards; unset: only what SDKs and agents read (see Proxy allow-list), never `user-data`, the signed identity documents or tags; `default` in the list stands for that list; `*` forwards everything but the IAM and identity-credentials routes (Lyft)",
    ),
    ours(
        UPSTREAM_TIMEOUT,
        "upstream-timeout",
        Some("2"),
        Kind::Value,
        "seconds to wait for the upstream metadata service",
    ),
    ours(
        ROLE_SESSION_DURATION,
        "role-session-duration",
        Some("3600"),
        Kind::Value,
        "seconds of validity requested from sts:AssumeRole (900 to 43200)",
    ),
    ours(
        CREDENTIAL_CACHE_SIZE,
        "credential-cache-size",
        Some("4096"),
        Kind::Value,
        "most credential sets kept (least recently used are dropped)",
    ),
    ours(
        STS_MAX_CALLS_PER_SECOND,
        "sts-max-calls-per-second",
        Some("10"),
        Kind::Value,
        "most sts:AssumeRole calls the daemon starts per second (1 to 10000), spaced evenly; a caller waiting for credentials goes before prefetches and background refreshes. The account's STS quota is shared by every node: keep nodes × this below it",
    ),
    ours(
        TOKEN_MAX_TOTAL,
        "token-max-total",
        None,
        Kind::Value,
        "retired, ignored with a warning: IMDSv2 tokens are sealed (they carry their expiry and a keyed tag binding them to their caller) and the daemon stores none, so there is no count to bound",
    ),
    ours(
        TOKEN_MAX_PER_CALLER,
        "token-max-per-caller",
        None,
        Kind::Value,
        "retired, ignored with a warning: as TOKEN_MAX_TOTAL, no token is stored, so no caller's tokens can crowd out another's",
    ),
    ours(
        HTTP_HEADER_TIMEOUT,
        "http-header-timeout",
        Some("5"),
        Kind::Value,
        "seconds a caller may take to send a request's line and headers (else 408 and closed); also the longest a keep-alive connection stays idle",
    ),
    ours(
        HTTP_MAX_HEAD_BYTES,
        "http-max-head-bytes",
        Some("16384"),
        Kind::Value,
        "largest request line + headers, in bytes (8192 to 1048576); larger gets 431. Request bodies are refused (413)",
    ),
    ours(
        HTTP_MAX_CONNECTIONS,
        "http-max-connections",
        Some("4096"),
        Kind::Value,
        "most open caller connections; beyond it a new connection gets 503 and is closed",
    ),
    ours(
        HTTP_MAX_CONNECTIONS_PER_CALLER,
        "http-max-connections-per-caller",
        Some("256"),
        Kind::Value,
        "most open connections of one caller (the cgroup the kernel recorded for its connection; else its address, every loopback address counting as one caller); beyond it 503, so one caller cannot starve the others",
    ),
    ours(
        ROLE_MAPPING_RELOAD_INTERVAL,
        "role-mapping-reload-interval",
        Some("1"),
        Kind::Value,
        "seconds between checks of ROLE_MAPPING_FILE and ROLE_POLICY_FILE for changes",
    ),
    ours(
        ROLE_POLICY_FILE,
        "role-policy-file",
        None,
        Kind::Value,
        "JSON file of rules saying which workloads (by Kubernetes namespace, pod, container name, image, labels, cgroup) may assume which roles; set, anything it does not allow is refused with 403 and an audit line; reloaded when it changes, a broken version keeps the last good one; unset: every role is allowed",
    ),
    ours(
        SESSION_TAGS,
        "session-tags",
        None,
        Kind::Value,
        "STS session tags for each container's sessions, `key=Source,…` with Source one of Name, Image, Namespace, PodName, PodUid, Labels:KEY, Env:KEY (e.g. `kubernetes-namespace=Namespace,kubernetes-pod-name=PodName`); values made to fit STS's rules; unset: no tags",
    ),
    ours(
        SESSION_TAGS_TRANSITIVE,
        "session-tags-transitive",
        None,
        Kind::Value,
        "keys of SESSION_TAGS that are transitive (kept through role chaining), comma-separated",
    ),
    ours(
        SOURCE_IDENTITY,
        "source-identity",
        None,
        Kind::Value,
        "STS SourceIdentity of each container's sessions, from one Source as in SESSION_TAGS (e.g. `PodName` or `Name`), so CloudTrail names the workload; the role's trust policy must allow sts:SetSourceIdentity; unset: none",
    ),
    ours(
        ADMIN_LISTEN,
        "admin-listen",
        Some("127.0.0.1:45002"),
        Kind::Value,
        "address:port of the admin listener (`/healthz`, `/readyz`, `/metrics`; never credentials), or `off`",
    ),
    ours(
        EBPF,
        "ebpf",
        Some("required"),
        Kind::Value,
        "`required`: redirect 169.254.169.254 with eBPF or refuse to start; `auto`: IP-only mode (logged) when eBPF is unusable; `off`: IP-only mode",
    ),
    ours(
        EBPF_CGROUPS,
        "ebpf-cgroups",
        Some("/"),
        Kind::Value,
        "comma-separated cgroup v2 paths (relative to the cgroup2 mount) the redirect is attached to",
    ),
    ours(
        EBPF_REDIRECT_HOST,
        "ebpf-redirect-host",
        Some("false"),
        Kind::Bool,
        "`false`: only containers (docker, containerd, kubepods, podman cgroups) and cgroups named by `cgroup:` keys of ROLE_MAPPING_FILE are redirected; other host processes keep their destination (on EC2, the real IMDS; a new host cgroup is redirected until inotify reports it and it is scanned, milliseconds); `true`: every process in EBPF_CGROUPS but the daemon",
    ),
    ours(
        EBPF_TARGET,
        "ebpf-target",
        None,
        Kind::Value,
        "IPv4 address:port the redirect sends callers to (every caller must reach it from its network namespace; the daemon also listens there). Default 169.254.170.45:PORT, which the daemon adds to `lo` when it is missing and leaves there; unset, callers in the daemon's own network namespace go to 127.0.0.1:PORT when the daemon listens there (loopback: their closed connections' ports are reused at once)",
    ),
    ours(
        EBPF_TARGET6,
        "ebpf-target6",
        None,
        Kind::Value,
        "[IPv6]:port for connections to [fd00:ec2::254]:80 (the daemon also listens there), or `off` (they are then refused); default the IPv4-mapped EBPF_TARGET, [::ffff:169.254.170.45]:PORT, reached over IPv4 from every network namespace",
    ),
    ours(
        EBPF_MAP_SIZE,
        "ebpf-map-size",
        Some("65536"),
        Kind::Value,
        "entries of each eBPF connection map (least recently used entries are dropped); a new value replaces the pinned maps at the next start, with no gap in the redirect",
    ),
    ours(
        EBPF_PIN_DIR,
        "ebpf-pin-dir",
        Some("/sys/fs/bpf/metadataproxy"),
        Kind::Value,
        "bpffs directory where the programs' links and maps are pinned, so the redirect outlives the process",
    ),
    ours(
        EBPF_ON_EXIT,
        "ebpf-on-exit",
        Some("keep-blocking"),
        Kind::Value,
        "on clean shutdown, `keep-blocking` (callers' metadata connections fail until a daemon is back) or `detach`",
    ),
    ours(
        EBPF_OBJECT,
        "ebpf-object",
        None,
        Kind::Value,
        "eBPF object file to load instead of the one built into the binary",
    ),
    ours(
        EBPF_DIRECT_CALLERS,
        "ebpf-direct-callers",
        None,
        Kind::Value,
        "comma-separated addresses or CIDRs (`127.0.0.1`, `10.1.0.0/16`, `fd00::/8`) whose connections straight to the daemon (not through the eBPF redirect: no kernel record of the caller) may still be identified by address (mapping-file IP keys, Docker IP lookup, reverse DNS, DEFAULT_ROLE); unset: with the redirect attached, such connections get 403 on the credential, `iam/*`, token and ECS routes. Without the redirect (EBPF=off, or an `auto` fallback) every caller is identified by address",
    ),
    ours(
        CONTAINERD,
        "containerd",
        Some("auto"),
        Kind::Value,
        "`auto`: identify containerd containers (Kubernetes pods included) when CONTAINERD_ADDRESS exists at start; `on`: always (retried until reachable); `off`",
    ),
    ours(
        CONTAINERD_ADDRESS,
        "containerd-address",
        Some("/run/containerd/containerd.sock"),
        Kind::Value,
        "containerd's gRPC socket (an absolute path)",
    ),
    ours(
        CONTAINERD_NAMESPACES,
        "containerd-namespaces",
        Some("k8s.io,default"),
        Kind::Value,
        "comma-separated containerd namespaces whose containers are identified (`k8s.io`: Kubernetes; Docker's own `moby` is left to DOCKER_URL)",
    ),
];

/// The setting with this environment name.
pub fn by_env(env: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == env)
}

/// The configuration reference as a Markdown table (README.md carries it; a test keeps them equal).
pub fn markdown_table() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| variable | flag | default | Lyft 2.2.0 | meaning |\n| --- | --- | --- | --- | --- |\n",
    );
    for s in SETTINGS {
        let default = s
            .default
            .map_or_else(|| "unset".to_owned(), |d| format!("`{d}`"));
        let lyft = if s.lyft { "yes" } else { "new" };
        let help = s.help.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| `{}` | `--{}` | {default} | {lyft} | {help} |",
            s.env, s.flag
        );
    }
    out
}
