//! The containerd settings: whether containerd's containers are identified, its socket, namespaces.

use std::path::PathBuf;

use super::reader::Reader;
use super::settings as s;

/// `CONTAINERD`: whether containerd's containers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerdMode {
    /// When the socket exists at start (a node without containerd is not an error).
    Auto,
    /// Always: an absent or dead containerd is reported and retried.
    On,
    /// Never.
    Off,
}

/// The validated containerd settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// `CONTAINERD`.
    pub mode: ContainerdMode,
    /// `CONTAINERD_ADDRESS`: the gRPC unix socket.
    pub address: PathBuf,
    /// `CONTAINERD_NAMESPACES`, without duplicates, in the order given.
    pub namespaces: Vec<String>,
}

fn mode(v: &str) -> Result<ContainerdMode, String> {
    match v {
        "auto" => Ok(ContainerdMode::Auto),
        "on" | "true" => Ok(ContainerdMode::On),
        "off" | "false" => Ok(ContainerdMode::Off),
        _ => Err("must be `auto`, `on` or `off`".to_owned()),
    }
}

fn address(v: &str) -> Result<PathBuf, String> {
    let path = v.strip_prefix("unix://").unwrap_or(v);
    let path = PathBuf::from(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err("must be the absolute path of containerd's socket, like /run/containerd/containerd.sock".to_owned())
    }
}

/// Whether `name` is a namespace name containerd accepts (`[A-Za-z0-9]+` joined by `.`, `_`, `-`).
fn is_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 76
        && name
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Comma-separated containerd namespaces.
pub(super) fn namespaces(v: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !is_namespace(name) {
            return Err(format!(
                "`{name}` is not a containerd namespace name (letters and digits joined by `.`, `_` or `-`)"
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    if out.is_empty() {
        return Err(
            "names no namespace (set CONTAINERD=off to identify no containerd container)"
                .to_owned(),
        );
    }
    Ok(out)
}

/// Reads the containerd settings.
pub(super) fn read(r: &mut Reader<'_>) -> Option<ContainerdConfig> {
    let mode = r.parse(s::CONTAINERD, mode);
    let address = r.parse(s::CONTAINERD_ADDRESS, address);
    let namespaces = r.parse(s::CONTAINERD_NAMESPACES, namespaces);
    Some(ContainerdConfig {
        mode: mode?,
        address: address?,
        namespaces: namespaces?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_validated_and_deduplicated() {
        assert_eq!(
            namespaces(" k8s.io, default,k8s.io,,").unwrap(),
            ["k8s.io", "default"]
        );
        assert_eq!(namespaces("my_ns-1").unwrap(), ["my_ns-1"]);
        for bad in ["", " , ", "k8s..io", "-x", "a/b", "ns with space", "é"] {
            assert!(namespaces(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn address_is_an_absolute_socket_path() {
        assert_eq!(
            address("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(address("/x/c.sock").unwrap(), PathBuf::from("/x/c.sock"));
        assert!(address("run/containerd.sock").is_err());
        assert!(address("tcp://127.0.0.1:1").is_err());
    }

    #[test]
    fn defaults_and_every_bad_setting_reported_by_name() {
        use std::collections::HashMap;
        let load = |pairs: &[(&str, &str)]| {
            let env: HashMap<&str, &str> = pairs.iter().copied().collect();
            crate::config::Config::load(["metadataproxy"], &env)
        };
        let c = load(&[]).unwrap().containerd;
        assert_eq!(c.mode, ContainerdMode::Auto);
        assert_eq!(c.address, PathBuf::from("/run/containerd/containerd.sock"));
        assert_eq!(c.namespaces, ["k8s.io", "default"]);
        let Err(crate::config::ConfigErrors::Invalid(errors)) = load(&[
            ("CONTAINERD", "maybe"),
            ("CONTAINERD_ADDRESS", "containerd.sock"),
            ("CONTAINERD_NAMESPACES", "k8s.io,a/b"),
        ]) else {
            panic!("bad containerd settings accepted");
        };
        let names: Vec<&str> = errors.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            ["CONTAINERD", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACES"]
        );
        assert!(errors[2].reason.contains("`a/b`"), "{errors:?}");
    }

    #[test]
    fn mode_values() {
        assert_eq!(mode("auto"), Ok(ContainerdMode::Auto));
        assert_eq!(mode("on"), Ok(ContainerdMode::On));
        assert_eq!(mode("off"), Ok(ContainerdMode::Off));
        assert!(mode("yes please").is_err());
    }
}
