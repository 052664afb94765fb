//! The real container source: the Docker Engine API through bollard, over a unix socket or TCP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::config::Endpoint;
use crate::containers::{Connection, ContainerInfo, ContainerSource, Event, SourceError};
use futures_util::future::BoxFuture;

/// Seconds a single API call may take (the event stream itself is not bounded).
const CALL_TIMEOUT_SECS: u64 = 10;

/// dockerd at `DOCKER_URL`.
#[derive(Debug, Clone)]
pub struct DockerApi {
    endpoint: Endpoint,
}

impl DockerApi {
    /// The Docker daemon at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    fn client(&self, version: &ClientVersion) -> Result<Docker, BollardError> {
        match &self.endpoint {
            Endpoint::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), CALL_TIMEOUT_SECS, version)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(&format!("tcp://{addr}"), CALL_TIMEOUT_SECS, version)
            }
        }
    }

    async fn open(&self) -> Result<Docker, BollardError> {
        let docker = self.client(bollard::API_DEFAULT_VERSION)?;
        match docker.negotiate_version().await {
            Ok(docker) => Ok(docker),
            // Older daemons (Docker 20.10: API 1.41) refuse a newer version outright, naming
            // the newest they speak; newer ones lower ours in `negotiate_version`.
            Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message,
            }) if max_version(&message).is_some() => {
                let version = max_version(&message).unwrap_or(*bollard::API_DEFAULT_VERSION);
                self.client(&version)?.negotiate_version().await
            }
            Err(e) => Err(e),
        }
    }
}

impl DockerApi {
    /// dockerd's version and API version (what `doctor` reports).
    pub async fn version(&self) -> Result<(String, String), SourceError> {
        let docker = self
            .open()
            .await
            .map_err(|e| SourceError::Connect(e.into()))?;
        let v = docker.version().await.map_err(|source| SourceError::Api {
            call: "version",
            source: source.into(),
        })?;
        Ok((
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default(),
        ))
    }
}

/// The version in "… Maximum supported API version is 1.41".
fn max_version(message: &str) -> Option<ClientVersion> {
    let (_, tail) = message.split_once("Maximum supported API version is ")?;
    let (major, minor) = tail.trim().split_once('.')?;
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<usize>()
            .ok()
    };
    Some(ClientVersion {
        major_version: digits(major)?,
        minor_version: digits(minor)?,
    })
}

impl ContainerSource for DockerApi {
    fn describe(&self) -> String {
        self.endpoint.to_string()
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, SourceError>> {
        Box::pin(async move {
            let docker = self
                .open()
                .await
                .map_err(|e| SourceError::Connect(e.into()))?;
            let version = docker.client_version();
            tracing::debug!(api = %format_args!("{}.{}", version.major_version, version.minor_version), "Docker API version negotiated");
            Ok(Box::new(BollardConnection {
                docker,
                endpoint: self.endpoint.clone(),
            }) as Box<dyn Connection>)
        })
    }
}

/// One negotiated bollard client.
#[derive(Debug)]
struct BollardConnection {
    docker: Docker,
    /// Where `docker` connects: the listing makes its own request there.
    endpoint: Endpoint,
}

impl Connection for BollardConnection {
    fn events(&self, since: SystemTime) -> BoxStream<'static, Result<Event, SourceError>> {
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let filters = HashMap::from([
            (
                "type".to_owned(),
                vec!["container".into(), "network".into()],
            ),
            (
                "event".to_owned(),
                ["start", "die", "destroy", "rename", "connect", "disconnect"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        self.docker
            .events(Some(options))
            .filter_map(|item| {
                std::future::ready(match item {
                    Ok(message) => event(&message).map(Ok),
                    Err(source) => Some(Err(SourceError::Api {
                        call: "GET /events",
                        source: source.into(),
                    })),
                })
            })
            .boxed()
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            super::listing::running_ids(
                &self.endpoint,
                self.docker.client_version(),
                Duration::from_secs(CALL_TIMEOUT_SECS),
            )
            .await
            .map_err(|source| SourceError::Api {
                call: "GET /containers/json",
                source: source.into(),
            })
        })
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, SourceError>> {
        Box::pin(async move {
            match self.docker.inspect_container(id, None).await {
                Ok(response) => {
                    let mut info = info(response);
                    if info.running {
                        info.cgroup = verified_cgroup(&info);
                    }
                    Ok(Some(info))
                }
                Err(e) => inspect_failed(id, e),
            }
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, SourceError>> {
        Box::pin(async move { self.running().await.map(Some) })
    }
}

/// What a failed inspection means: `None` when the container no longer exists; an error about
/// that container alone when dockerd answered, but with an error or a description that does not
/// decode (the connection works: the other containers are served); otherwise the connection
/// failed.
fn inspect_failed(id: &str, e: BollardError) -> Result<Option<ContainerInfo>, SourceError> {
    const CALL: &str = "GET /containers/{id}/json";
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => Ok(None),
        BollardError::DockerResponseServerError { .. }
        | BollardError::JsonDataError { .. }
        | BollardError::JsonSerdeError { .. } => Err(SourceError::Unreadable {
            call: CALL,
            id: id.to_owned(),
            source: e.into(),
        }),
        e => Err(SourceError::Api {
            call: CALL,
            source: e.into(),
        }),
    }
}

/// The cgroup of a running container, read from its main process; `None` (and a warning: it
/// gets nothing by cgroup) when it cannot be verified.
fn verified_cgroup(info: &ContainerInfo) -> Option<String> {
    match super::cgroup::of_main_process(Path::new("/proc"), info.pid, &info.id) {
        Ok(cgroup) => Some(cgroup),
        Err(e) => {
            tracing::warn!(container = %info.name, id = crate::containers::short(&info.id), error = %e, "container cannot be identified by its cgroup: its callers get no credentials through the eBPF redirect");
            None
        }
    }
}

/// The index's view of a Docker event; `None` for events it does not act on.
fn event(message: &EventMessage) -> Option<Event> {
    let actor = message.actor.as_ref()?;
    let action = message.action.as_deref()?;
    match message.typ? {
        EventMessageTypeEnum::CONTAINER => {
            let id = actor.id.clone()?;
            match action {
                "start" => Some(Event::Start(id)),
                "die" => Some(Event::Die(id)),
                "destroy" => Some(Event::Destroy(id)),
                "rename" => Some(Event::Changed(id)),
                _ => None,
            }
        }
        EventMessageTypeEnum::NETWORK if matches!(action, "connect" | "disconnect") => {
            let id = actor.attributes.as_ref()?.get("container")?.clone();
            Some(Event::Changed(id))
        }
        _ => None,
    }
}

/// The index's view of `docker inspect`.
fn info(response: ContainerInspectResponse) -> ContainerInfo {
    let config = response.config.unwrap_or_default();
    let state = response.state.unwrap_or_default();
    let mut ips = Vec::new();
    let networks = response
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    for endpoint in networks.into_values() {
        for addr in [endpoint.ip_address, endpoint.global_ipv6_address]
            .into_iter()
            .flatten()
        {
            if let Ok(ip) = addr.parse::<IpAddr>() {
                ips.push(ip);
            }
        }
    }
    ContainerInfo {
        id: response.id.unwrap_or_default(),
        name: response
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        // Restarting counts as running for Docker, but there is no process until the next start.
        running: state.running.unwrap_or_default() && !state.restarting.unwrap_or_default(),
        hostname: config.hostname.unwrap_or_default(),
        domainname: config.domainname.unwrap_or_default(),
        image: config.image.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        ips,
        cgroup: None,
        pod_annotations: HashMap::new(),
        pod_labels: HashMap::new(),
        pid: state
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_maximum_version_from_docker_20_10() {
        let v =
            max_version("client version 1.53 is too new. Maximum supported API version is 1.41")
                .unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(max_version("something else").is_none());
    }

    #[test]
    fn events_are_filtered_and_mapped() {
        let parse = |json: &str| event(&serde_json::from_str(json).unwrap());
        assert_eq!(
            parse(r#"{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{}}}"#),
            Some(Event::Die("abc".into()))
        );
        assert_eq!(
            parse(
                r#"{"Type":"network","Action":"connect","Actor":{"ID":"net1","Attributes":{"container":"abc","name":"n"}}}"#
            ),
            Some(Event::Changed("abc".into()))
        );
        assert_eq!(
            parse(r#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"abc"}}"#),
            None
        );
        assert_eq!(
            parse(r#"{"Type":"image","Action":"pull","Actor":{"ID":"x"}}"#),
            None
        );
    }

    #[test]
    fn inspect_gathers_every_network_address() {
        let json = r#"{
            "Id": "abc", "Name": "/web", "State": {"Running": true, "Pid": 4242},
            "Config": {"Hostname": "web1", "Domainname": "", "Env": ["IAM_ROLE=r"], "Labels": {"a": "b"}},
            "NetworkSettings": {"IPAddress": "172.17.0.2", "Networks": {
                "bridge": {"IPAddress": "172.17.0.2", "GlobalIPv6Address": ""},
                "user": {"IPAddress": "172.20.0.3", "GlobalIPv6Address": "fd00::3"},
                "host": {"IPAddress": ""}
            }}
        }"#;
        let i = info(serde_json::from_str(json).unwrap());
        assert_eq!(i.name, "web");
        assert!(i.running);
        let mut ips: Vec<String> = i.ips.iter().map(ToString::to_string).collect();
        ips.sort();
        assert_eq!(ips, ["172.17.0.2", "172.20.0.3", "fd00::3"]);
        assert_eq!(i.env, ["IAM_ROLE=r"]);
        assert_eq!(i.pid, Some(4242));
    }

    #[test]
    fn an_inspection_error_about_one_container_leaves_the_connection_alone() {
        let id = "f".repeat(64);
        let server = |status_code| BollardError::DockerResponseServerError {
            status_code,
            message: "boom".into(),
        };
        assert!(matches!(inspect_failed(&id, server(404)), Ok(None)));
        for (e, why) in [
            (server(500), "an error answer about it"),
            (
                BollardError::JsonDataError {
                    message: "invalid type: string, expected u16".into(),
                    column: 7,
                },
                "a description that does not decode",
            ),
        ] {
            let err = inspect_failed(&id, e).unwrap_err();
            assert!(err.is_about_one_container(), "{why}: {err}");
            assert!(err.to_string().contains("ffffffffffff"), "{err}");
        }
        let err = inspect_failed(&id, BollardError::RequestTimeoutError).unwrap_err();
        assert!(
            !err.is_about_one_container(),
            "a timeout is the connection's: {err}"
        );
        let err = inspect_failed(
            &id,
            BollardError::IOError {
                err: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            },
        )
        .unwrap_err();
        assert!(!err.is_about_one_container(), "{err}");
    }

    #[test]
    fn a_container_waiting_to_restart_is_not_running() {
        let json = |restarting: bool| {
            format!(r#"{{"Id": "abc", "State": {{"Running": true, "Restarting": {restarting}}}}}"#)
        };
        assert!(info(serde_json::from_str(&json(false)).unwrap()).running);
        assert!(!info(serde_json::from_str(&json(true)).unwrap()).running);
    }
}
