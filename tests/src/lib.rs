//! Test harness shared by the integration tests: real peers (moto, an upstream IMDS stand-in, dockerd,
//! containerd and its CRI plugin), the
//! daemon binary, and a byte-exact HTTP client that can pick its loopback source address.
//!
//! Run the suite with `cargo xtask test`: it provides `MOTO_SERVER`, `METADATAPROXY_BIN` and
//! `METADATAPROXY_VENV`. Without them every test panics (never skips) and says so.

mod accept;
mod containerd;
mod creds;
mod cri;
mod daemon;
mod delay;
mod docker;
mod docker_faults;
mod faulty_sts;
mod freeze;
mod http;
mod kernel;
mod mapping;
mod moto;
mod net;
mod upstream;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use containerd::{ContainerdD, ExecResult};
pub use creds::{ImdsCredentials, fetch_credentials, parse_time};
pub use cri::{Cri, Pod, PodSpec};
pub use daemon::{Daemon, DaemonBuilder, Exited};
pub use delay::SlowRelay;
pub use docker::{DockerD, IMAGE, cgroup2_mount};
pub use docker_faults::FaultyDockerRelay;
pub use faulty_sts::{
    DENIED_CALLER_ACCOUNT, DENIED_CALLER_ARN, DENIED_CALLER_INSTANCE, Fault, FaultySts, Outcome,
    StsAttempt,
};
pub use freeze::FreezableRelay;
pub use http::{KeepAlive, Response, get, put_token, raw_http, request, token};
pub use kernel::{
    BpfFs, ECS_IP, ECS_IP6, METADATA_ADDRESS_LOCK, METADATA_IP, MetadataAddress,
    hold_metadata_address, ipv6_unavailable,
};
pub use mapping::MappingFile;
pub use moto::{AssumedRole, Moto};
pub use net::{free_port, loopback, other_local_ipv4};
pub use upstream::{HOST_ACCESS_KEY_ID, HOST_ROLE, RecordedRequest, Upstream};

/// moto's default account id.
pub const ACCOUNT: &str = "123456789012";
/// A loopback address where nothing listens (the discard port): the default for every upstream a
/// test does not provide, so nothing can ever leave this machine.
pub const NOWHERE: &str = "http://127.0.0.1:9";

/// The IAM credentials routes.
pub const CREDS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// The instance profile info route.
pub const INFO_PATH: &str = "/latest/meta-data/iam/info";

/// Source addresses the tests bind their client sockets to (all loopback, all reach the daemon).
pub const SRC_1: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const SRC_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const SRC_3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
pub const SRC_4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// A path from the environment `cargo xtask test` sets; panics with instructions when missing.
pub fn required_path(var: &str) -> PathBuf {
    let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        panic!(
            "{var} is not set: run the integration tests with `cargo xtask test` \
             (it builds the daemon, makes .venv with moto and sets {var})"
        );
    };
    let path = PathBuf::from(value);
    assert!(
        path.exists(),
        "{var}={} does not exist: run `cargo xtask test` to build and set it up",
        path.display()
    );
    path
}

/// The effective uid of this process, from `/proc/self/status` (`"?"` when unreadable).
pub fn effective_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// `PATH` for child processes (the only variable inherited from the test environment).
pub fn path_var() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned())
}

/// The usual arrangement: moto with `roles` created, and a daemon (mock API, `DEFAULT_ACCOUNT_ID`,
/// STS and IAM at moto) identifying callers through `mapping`.
pub async fn moto_and_daemon(
    roles: &[&str],
    mapping: &serde_json::Value,
) -> (Moto, MappingFile, Daemon) {
    let moto = Moto::start().await;
    for role in roles {
        moto.create_role(role, "/").await;
    }
    let mapping = MappingFile::new(mapping);
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    (moto, mapping, daemon)
}
