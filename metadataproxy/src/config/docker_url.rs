//! `DOCKER_URL`: where the Docker Engine API is, in Lyft's spellings too, or `off`.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// `DOCKER_URL=off`: Docker is not followed (a containerd-only node).
pub const DOCKER_OFF: &str = "off";

/// Where dockerd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// Plain HTTP over TCP: `host:port`.
    Tcp(String),
}

/// Why a `DOCKER_URL` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EndpointError {
    /// The scheme is not `unix://`, `tcp://` or `http://`.
    #[error("must start with unix://, tcp:// or http://")]
    Scheme,
    /// `https://`: TLS to dockerd is not supported.
    #[error("https:// (TLS to dockerd) is not supported; use a unix socket or tcp://")]
    Tls,
    /// Nothing after the scheme.
    #[error("names no socket path or host")]
    Empty,
    /// A TCP address without a port, or with a path.
    #[error("a TCP address must be `host:port` without a path")]
    TcpAddress,
}

impl Endpoint {
    /// Parses `unix:///run/docker.sock`, Lyft's default `unix://var/run/docker.sock` (the same
    /// path: docker-py reads what follows `unix://` as absolute), `tcp://host:port` or
    /// `http://host:port`.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let url = url.trim();
        if let Some(path) = url.strip_prefix("unix://") {
            let path = path.trim_start_matches('/');
            if path.is_empty() {
                return Err(EndpointError::Empty);
            }
            return Ok(Self::Unix(PathBuf::from(format!("/{path}"))));
        }
        if url.starts_with("https://") {
            return Err(EndpointError::Tls);
        }
        let Some(addr) = url
            .strip_prefix("tcp://")
            .or_else(|| url.strip_prefix("http://"))
        else {
            return Err(EndpointError::Scheme);
        };
        let addr = addr.strip_suffix('/').unwrap_or(addr);
        if addr.is_empty() {
            return Err(EndpointError::Empty);
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || addr.contains('/') {
            return Err(EndpointError::TcpAddress);
        }
        Ok(Self::Tcp(addr.to_owned()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        let unix = |p: &str| Ok(Endpoint::Unix(PathBuf::from(p)));
        let tcp = |a: &str| Ok(Endpoint::Tcp(a.to_owned()));
        let cases = [
            ("unix://var/run/docker.sock", unix("/var/run/docker.sock")),
            ("unix:///var/run/docker.sock", unix("/var/run/docker.sock")),
            ("unix:///tmp/x/docker.sock", unix("/tmp/x/docker.sock")),
            ("tcp://127.0.0.1:2375", tcp("127.0.0.1:2375")),
            ("http://docker.local:2375/", tcp("docker.local:2375")),
            ("tcp://[::1]:2375", tcp("[::1]:2375")),
            ("unix://", Err(EndpointError::Empty)),
            ("tcp://", Err(EndpointError::Empty)),
            ("tcp://127.0.0.1", Err(EndpointError::TcpAddress)),
            ("tcp://127.0.0.1:2375/v1.41", Err(EndpointError::TcpAddress)),
            ("tcp://:2375", Err(EndpointError::TcpAddress)),
            ("https://127.0.0.1:2376", Err(EndpointError::Tls)),
            ("/var/run/docker.sock", Err(EndpointError::Scheme)),
        ];
        for (url, want) in cases {
            assert_eq!(Endpoint::parse(url), want, "{url}");
        }
    }

    #[test]
    fn displays_as_a_url() {
        let e = Endpoint::parse("unix://var/run/docker.sock").unwrap();
        assert_eq!(e.to_string(), "unix:///var/run/docker.sock");
        assert_eq!(
            Endpoint::parse("http://h:1").unwrap().to_string(),
            "tcp://h:1"
        );
    }
}
