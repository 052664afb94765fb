//! Prometheus metrics: one process-wide registry, and the one-line calls the rest of the daemon
//! makes to record what happened (requests, cache, STS, identification).
//!
//! Gauges of things owned elsewhere (cache entries, containers, eBPF map entries) are set by the
//! admin listener just before each scrape, so nothing on the request path maintains them.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

mod sharded;

use sharded::{LatencyHistogram, ShardedCounter};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StsErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The route category of a request, the `route` label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `token`: the `IMDSv2` token route.
    Token,
    /// `iam_credentials`: a role's credentials.
    IamCredentials,
    /// `iam_info`.
    IamInfo,
    /// `iam_listing`: `iam/` and `iam/security-credentials/`.
    IamListing,
    /// `iam_refused`: other IAM paths, the host's identity credentials.
    IamRefused,
    /// `metadata`: everything mocked or proxied.
    Metadata,
    /// `bad_path`: refused before routing.
    BadPath,
}

impl Route {
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::IamCredentials => "iam_credentials",
            Self::IamInfo => "iam_info",
            Self::IamListing => "iam_listing",
            Self::IamRefused => "iam_refused",
            Self::Metadata => "metadata",
            Self::BadPath => "bad_path",
        }
    }
}

/// A label value of a small fixed set, and its place in that set: the request path keeps the
/// series of such a set in slots, by place, and so neither hashes labels nor takes locks.
pub trait Label: Copy {
    /// The label value.
    fn label(self) -> &'static str;
    /// Its place in its set: below [`SOURCES`] - 1 for identification sources.
    fn slot(self) -> usize;
}

/// Number of [`Route`]s.
const ROUTES: usize = 7;
const _: () = assert!(Route::BadPath as usize + 1 == ROUTES);
/// Number of identification outcomes: each source, and none.
pub const SOURCES: usize = 8;

/// A route's series for status 200, taken from the families on first use: the request path
/// then neither hashes labels nor takes the families' locks (the series are the same objects,
/// so the exposition does not change).
#[derive(Debug)]
struct RouteOk {
    requests: ShardedCounter,
    seconds: LatencyHistogram,
}

/// Request latencies: 100 µs to about 6.5 s (cached answers are well under a millisecond; an
/// STS call takes tens to hundreds of milliseconds; timeouts take seconds).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 4.0, 9))
}

/// Every metric of the daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, ShardedCounter>,
    request_seconds: Family<RouteLabels, LatencyHistogram>,
    cache_hits: ShardedCounter,
    cache_misses: Counter,
    cache_refreshes: Counter,
    cache_entries: Gauge,
    sts_calls: Family<OperationLabels, Counter>,
    sts_errors: Family<StsErrorLabels, Counter>,
    sts_seconds: HistogramFamily<OperationLabels>,
    sts_throttled: Counter,
    sts_queued: Gauge,
    sts_delayed: Family<PriorityLabels, Counter>,
    identifications: Family<SourceLabels, ShardedCounter>,
    containers: Gauge,
    containers_unreadable: Gauge,
    docker_synchronised: Gauge,
    ebpf_entries: Family<MapLabels, Gauge>,
    ebpf_capacity: Gauge,
    log_dropped: Family<StreamLabels, Counter>,
    log_suppressed: Counter,
    ebpf_drops: Family<FamilyLabels, Counter>,
    ebpf_refused: Family<FamilyLabels, Counter>,
    policy_refusals: Family<ReasonLabels, Counter>,
    route_ok: [OnceLock<RouteOk>; ROUTES],
    identified_by: [OnceLock<ShardedCounter>; SOURCES],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero (tests make their own; the daemon uses [`global`]).
    #[expect(clippy::too_many_lines, reason = "one registration per metric")]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("metadataproxy");
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        registry.register(
            "requests",
            "IMDS requests answered, by route category and HTTP status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, LatencyHistogram>::default();
        registry.register_with_unit(
            "request_duration",
            "Time to answer an IMDS request, by route category",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let cache_hits = ShardedCounter::default();
        registry.register(
            "credential_cache_hits",
            "Credential requests answered from the cache without waiting for STS",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "credential_cache_misses",
            "Credential requests that waited for an sts:AssumeRole call (or its failure)",
            cache_misses.clone(),
        );
        let cache_refreshes = Counter::default();
        registry.register(
            "credential_cache_refreshes",
            "Background refreshes of credentials nearing ROLE_EXPIRATION_THRESHOLD",
            cache_refreshes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "credential_cache_entries",
            "Credential sets in the cache",
            cache_entries.clone(),
        );
        let sts_calls = Family::<OperationLabels, Counter>::default();
        registry.register(
            "sts_calls",
            "Calls to AWS (sts:AssumeRole, iam:GetRole, sts:GetCallerIdentity), by operation",
            sts_calls.clone(),
        );
        let sts_errors = Family::<StsErrorLabels, Counter>::default();
        registry.register(
            "sts_errors",
            "Failed calls to AWS, by operation and kind (denied, throttled, unavailable, no_credentials)",
            sts_errors.clone(),
        );
        let sts_seconds: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "sts_call_duration",
            "Duration of calls to AWS, by operation",
            Unit::Seconds,
            sts_seconds.clone(),
        );
        let sts_throttled = Counter::default();
        registry.register(
            "sts_throttled",
            "Calls to AWS answered with a throttling error (Throttling, ThrottlingException, RequestLimitExceeded)",
            sts_throttled.clone(),
        );
        let sts_queued = Gauge::default();
        registry.register(
            "sts_calls_queued",
            "sts:AssumeRole calls waiting for their turn (STS_MAX_CALLS_PER_SECOND, or the bound on background calls at once)",
            sts_queued.clone(),
        );
        let sts_delayed = Family::<PriorityLabels, Counter>::default();
        registry.register(
            "sts_calls_delayed",
            "sts:AssumeRole calls that waited for STS_MAX_CALLS_PER_SECOND, by priority (`caller`: a request waited for it; `background`: prefetch or refresh)",
            sts_delayed.clone(),
        );
        for priority in ["caller", "background"] {
            let _ = sts_delayed.get_or_create(&PriorityLabels { priority });
        }
        let identifications = Family::<SourceLabels, ShardedCounter>::default();
        registry.register(
            "identifications",
            "Callers of the IAM routes identified, by source (`none`: no role)",
            identifications.clone(),
        );
        let containers = Gauge::default();
        registry.register(
            "docker_containers",
            "Running Docker containers in the container index",
            containers.clone(),
        );
        let containers_unreadable = Gauge::default();
        registry.register(
            "docker_containers_unreadable",
            "Running Docker containers that Docker could not describe (an error answer, or a description that does not decode): left out of the index, so their callers get no credentials; asked about again, at least every DOCKER_PING_INTERVAL",
            containers_unreadable.clone(),
        );
        let docker_synchronised = Gauge::default();
        registry.register(
            "docker_synchronised",
            "1 while the container index follows Docker's events, else 0",
            docker_synchronised.clone(),
        );
        let ebpf_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "ebpf_connection_entries",
            "Entries in the eBPF connection maps (records of redirected connections not yet accepted)",
            ebpf_entries.clone(),
        );
        let ebpf_capacity = Gauge::default();
        registry.register(
            "ebpf_connection_capacity",
            "Entries each eBPF connection map holds at most (EBPF_MAP_SIZE)",
            ebpf_capacity.clone(),
        );
        let log_dropped = Family::<StreamLabels, Counter>::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log sink was too slow and their queue was full, by stream (audit, other)",
            log_dropped.clone(),
        );
        for stream in ["audit", "other"] {
            // Both series exist from the start, at 0, so an alert on them needs no special case.
            let _ = log_dropped.get_or_create(&StreamLabels { stream });
        }
        let log_suppressed = Counter::default();
        registry.register(
            "log_lines_suppressed",
            "Refusal lines not logged because their caller, or all callers together, exceeded the rate limit",
            log_suppressed.clone(),
        );
        let ebpf_drops = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "ebpf_egress_drops",
            "Packets to the metadata service's addresses dropped by the eBPF egress guard (they went around the redirect: ping, UDP, raw sockets), by address family",
            ebpf_drops.clone(),
        );
        let ebpf_refused = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "ebpf_refused_connects",
            "connect() calls to the metadata service's addresses the eBPF programs refused (not TCP port 80, another spelling of the address, or EBPF_TARGET6=off), by socket family",
            ebpf_refused.clone(),
        );
        let policy_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "role_policy_refusals",
            "Roles refused by ROLE_POLICY_FILE (requests answered 403, prefetches skipped), by reason: `denied` (a rule denies the role), `not_allowed` (no rule allows it)",
            policy_refusals.clone(),
        );
        for reason in ["denied", "not_allowed"] {
            let _ = policy_refusals.get_or_create(&ReasonLabels { reason });
        }
        Self {
            registry,
            requests,
            request_seconds,
            cache_hits,
            cache_misses,
            cache_refreshes,
            cache_entries,
            sts_calls,
            sts_errors,
            sts_seconds,
            sts_throttled,
            sts_queued,
            sts_delayed,
            identifications,
            containers,
            containers_unreadable,
            docker_synchronised,
            ebpf_entries,
            ebpf_capacity,
            log_dropped,
            log_suppressed,
            ebpf_drops,
            ebpf_refused,
            policy_refusals,
            route_ok: Default::default(),
            identified_by: Default::default(),
        }
    }

    /// The `OpenMetrics` text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// One IMDS request answered.
    pub fn request(&self, route: Route, status: u16, took: Duration) {
        let label = route.label();
        if status == 200 {
            let ok = self.route_ok[route as usize].get_or_init(|| RouteOk {
                requests: self
                    .requests
                    .get_or_create(&RequestLabels {
                        route: label,
                        status,
                    })
                    .clone(),
                seconds: self
                    .request_seconds
                    .get_or_create(&RouteLabels { route: label })
                    .clone(),
            });
            ok.requests.inc();
            ok.seconds.observe(took);
            return;
        }
        self.requests
            .get_or_create(&RequestLabels {
                route: label,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route: label })
            .observe(took);
    }

    /// One caller of the IAM routes identified, by `source` (`None`: no role).
    pub fn identified(&self, source: Option<impl Label>) {
        let label = source.map_or("none", Label::label);
        let series = || {
            self.identifications
                .get_or_create(&SourceLabels { source: label })
                .clone()
        };
        match self.identified_by.get(source.map_or(0, |s| s.slot() + 1)) {
            Some(slot) => slot.get_or_init(series).inc(),
            // A source added without growing `SOURCES`: counted all the same, a little slower.
            None => series().inc(),
        }
    }

    /// One call to AWS finished.
    /// `error`: the kind of failure, as its label (`None`: the call succeeded).
    pub fn sts_call(&self, operation: &'static str, error: Option<&'static str>, took: Duration) {
        let labels = OperationLabels { operation };
        self.sts_calls.get_or_create(&labels).inc();
        self.sts_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            if kind == "throttled" {
                self.sts_throttled.inc();
            }
            self.sts_errors
                .get_or_create(&StsErrorLabels { operation, kind })
                .inc();
        }
    }

    /// New counts of the eBPF guard for address `family` (`ipv4`, `ipv6`): packets to a
    /// metadata address `dropped`, connects to one `refused`.
    pub fn ebpf_guard(&self, family: &'static str, dropped: u64, refused: u64) {
        let labels = FamilyLabels { family };
        // Created at zero on the first call, so the series exist before the first drop.
        self.ebpf_drops.get_or_create(&labels).inc_by(dropped);
        self.ebpf_refused.get_or_create(&labels).inc_by(refused);
    }

    /// The state of things owned elsewhere, set just before a scrape.
    pub fn set_state(&self, state: &State) {
        self.cache_entries.set(gauge(state.cache_entries));
        if let Some(docker) = &state.docker {
            self.containers.set(gauge(docker.containers));
            self.docker_synchronised.set(i64::from(docker.synchronised));
            self.containers_unreadable.set(gauge(docker.unreadable));
        }
        if let Some(ebpf) = &state.ebpf {
            self.ebpf_capacity.set(gauge(ebpf.capacity));
            self.ebpf_entries
                .get_or_create(&MapLabels { map: "conn4" })
                .set(gauge(ebpf.v4));
            self.ebpf_entries
                .get_or_create(&MapLabels { map: "conn6" })
                .set(gauge(ebpf.v6));
        }
    }
}

/// What the scrape-time gauges show.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Credential sets cached.
    pub cache_entries: usize,
    /// Docker's container index; `None` without Docker.
    pub docker: Option<IndexState>,
    /// eBPF connection map occupancy; `None` in IP-only mode.
    pub ebpf: Option<MapOccupancy>,
}

/// What a container index holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexState {
    /// Containers indexed.
    pub containers: usize,
    /// Whether the index follows the runtime's events.
    pub synchronised: bool,
    /// Running containers the runtime could not describe, left out of the index.
    pub unreadable: usize,
}

/// Entries of the eBPF connection maps.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOccupancy {
    /// `MP_CONN4` entries.
    pub v4: usize,
    /// `MP_CONN6` entries.
    pub v6: usize,
    /// Most entries of each map.
    pub capacity: usize,
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Records one IMDS request.
pub fn request(route: Route, status: http::StatusCode, took: Duration) {
    global().request(route, status.as_u16(), took);
}

/// A credential request was answered from the cache (`hit`) or had to wait for STS.
pub fn cache_lookup(hit: bool) {
    let m = global();
    if hit {
        m.cache_hits.inc();
    } else {
        m.cache_misses.inc();
    }
}

/// `n` background refreshes were started.
pub fn cache_refreshes(n: usize) {
    global()
        .cache_refreshes
        .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
}

/// `n` sts:AssumeRole calls wait for their turn.
pub fn sts_queued(n: usize) {
    global().sts_queued.set(gauge(n));
}

/// An sts:AssumeRole call waited for the cap; `urgent`: a caller waited for it.
pub fn sts_delayed(urgent: bool) {
    let priority = if urgent { "caller" } else { "background" };
    global()
        .sts_delayed
        .get_or_create(&PriorityLabels { priority })
        .inc();
}

/// A log line of `stream` (`audit`, `other`) was dropped: its queue was full.
pub fn log_line_dropped(stream: &'static str) {
    global()
        .log_dropped
        .get_or_create(&StreamLabels { stream })
        .inc();
}

/// A refusal line was suppressed by the rate limit.
pub fn log_line_suppressed() {
    global().log_suppressed.inc();
}

/// The role policy refused a role (`reason`: `denied` or `not_allowed`).
pub fn policy_refused(reason: &'static str) {
    global()
        .policy_refusals
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// A caller of an IAM route was identified by `source` (`None`: no role for it).
pub fn identified(source: Option<impl Label>) {
    global().identified(source);
}

#[cfg(test)]
mod tests;
