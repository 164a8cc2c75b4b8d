//! Prometheus metrics: what `syncd serve --metrics-listen ADDR` serves at
//! `/metrics` (Prometheus text format 0.0.4), built on `prometheus-client`.
//!
//! Who records what (the core stays pure: it only reports holds granted and
//! ended as plain data in its `Outcome`):
//! - the server's RPC layer (`server::metrics`): `syncd_rpcs_total` and
//!   `syncd_rpc_duration_seconds`, when a call ends (a streaming call when
//!   its stream ends, with the status it ended with; a stream the client
//!   dropped counts as CANCELLED);
//! - the engine: grants, wait until grant, hold time, commands per turn;
//! - the writer thread: flush latency, changes per flush, size on disk;
//! - a scrape: sessions, waiters, holds, primitives, ready queue items,
//!   asked of the engine at that moment;
//! - the accept loop (`server::incoming`): connections open, refused and
//!   closed for not finishing their handshake.
//!
//! Every label set is bounded: methods are the ones the server serves (any
//! other path is `method="unknown"`), codes are gRPC's seventeen, kinds are
//! the primitives that can be held. Hot paths touch pre-created metrics (an
//! atomic add, or a short mutex for a histogram), never a label map.

use std::collections::HashMap;
use std::sync::OnceLock;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use prost::Message;

use crate::core::Kind;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Label `method` of a path the server does not serve.
const UNKNOWN_METHOD: &str = "unknown";

/// gRPC status code names, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC's CANCELLED: a call whose stream the client dropped.
pub const CODE_CANCELLED: usize = 1;
/// gRPC's UNKNOWN: a status that is not a number of gRPC's.
pub const CODE_UNKNOWN: usize = 2;

/// The kinds whose grants are holds (a fencing token, a session's hold).
const HOLD_KINDS: [Kind; 6] = [
    Kind::Lock,
    Kind::Semaphore,
    Kind::RwLock,
    Kind::Queue,
    Kind::Pool,
    Kind::Breaker,
];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one server, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    rpc: RpcMetrics,
    holds: [HoldMetrics; HOLD_KINDS.len()],
    /// Commands applied in one engine turn.
    pub engine_batch_commands: Histogram,
    /// Seconds to write and flush one group commit.
    pub store_flush_seconds: Histogram,
    /// Changes written by one group commit.
    pub store_batch_changes: Histogram,
    pub store_size_bytes: Gauge,
    pub sessions: Gauge,
    pub waiters: Gauge,
    pub holds_gauge: Gauge,
    pub primitives: Gauge,
    pub queue_items_ready: Gauge,
    /// Client connections open on the gRPC port.
    pub connections_open: Gauge,
    /// Connections closed for not finishing their HTTP/2 handshake in time.
    pub connections_handshake_timeouts: Counter,
    /// Connections closed at once, by [`Refusal`].
    connections_refused: [Counter; Refusal::ALL.len()],
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` were open already.
    MaxConnections,
    /// The process was out of file descriptors: the connection was shed
    /// with the spare one.
    OutOfFds,
}

impl Refusal {
    const ALL: [Refusal; 2] = [Refusal::MaxConnections, Refusal::OutOfFds];

    /// The value of the `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::OutOfFds => "out_of_fds",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::MaxConnections => 0,
            Refusal::OutOfFds => 1,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The metrics of one kind of hold.
struct HoldMetrics {
    grants: Counter,
    wait_seconds: Histogram,
    hold_seconds: Histogram,
}

/// Counters and latency of one RPC method, created on its first call (so
/// that methods nobody calls add no series).
struct MethodMetrics {
    name: &'static str,
    duration: OnceLock<Histogram>,
    codes: [OnceLock<Counter>; CODE_NAMES.len()],
}

struct RpcMetrics {
    /// `/package.Service/Method` → index in `methods`.
    index: HashMap<String, usize>,
    /// The served methods, then `unknown` last.
    methods: Vec<MethodMetrics>,
    calls: Family<Labels2, Counter>,
    duration: HistogramFamily<Labels1>,
}

/// Identifies an RPC method for [`Metrics::rpc_done`]; from
/// [`Metrics::method`].
#[derive(Clone, Copy, Debug)]
pub struct MethodId(usize);

/// Seconds: 100 µs to a minute (a waiting or streaming call lasts longer).
fn rpc_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ])
}

/// Seconds: 1 ms to an hour (waits and holds; 0 is an immediate grant).
fn long_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ])
}

impl Metrics {
    /// Creates and registers every metric. `descriptor_sets` are encoded
    /// `FileDescriptorSet`s whose services' methods are the ones served;
    /// `extra_methods` are more `package.Service/Method` names.
    pub fn new(descriptor_sets: &[&[u8]], extra_methods: &[&str]) -> Metrics {
        let mut registry = Registry::with_prefix("syncd");
        let rpc = RpcMetrics::new(descriptor_sets, extra_methods);
        registry.register(
            "rpcs",
            "RPCs that ended, by method and gRPC status code (a streaming RPC counts when its stream ends)",
            rpc.calls.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "Time from request to the end of the response, by method (for a streaming RPC, until its stream ends)",
            Unit::Seconds,
            rpc.duration.clone(),
        );

        let grants = Family::<Labels1, Counter>::default();
        let wait = HistogramFamily::<Labels1>::new_with_constructor(long_buckets);
        let hold = HistogramFamily::<Labels1>::new_with_constructor(long_buckets);
        let holds = HOLD_KINDS.map(|kind| {
            let labels = [("kind", kind.as_str())];
            HoldMetrics {
                grants: grants.get_or_create_owned(&labels),
                wait_seconds: wait.get_or_create_owned(&labels),
                hold_seconds: hold.get_or_create_owned(&labels),
            }
        });
        registry.register(
            "grants",
            "Holds granted (each with a new fencing token), by kind",
            grants,
        );
        registry.register_with_unit(
            "grant_wait",
            "Time a request waited until its hold was granted, by kind (0 when granted at once)",
            Unit::Seconds,
            wait,
        );
        registry.register_with_unit(
            "hold",
            "How long a hold was held when it ended (released, acked, checked in, expired, revoked), by kind; holds granted before a restart are not counted",
            Unit::Seconds,
            hold,
        );

        let engine_batch_commands = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "engine_batch_commands",
            "Commands applied together in one engine turn",
            engine_batch_commands.clone(),
        );
        let store_flush_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ]);
        registry.register_with_unit(
            "store_flush_duration",
            "Time to write and flush one group commit to the store",
            Unit::Seconds,
            store_flush_seconds.clone(),
        );
        let store_batch_changes = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "store_batch_changes",
            "Changes (records written or deleted) per group commit",
            store_batch_changes.clone(),
        );
        let store_size_bytes = Gauge::default();
        registry.register_with_unit(
            "store_size",
            "Size of the store on disk (sled's size_on_disk, updated at most once a second while writing)",
            Unit::Bytes,
            store_size_bytes.clone(),
        );

        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let sessions = gauge("sessions", "Sessions open");
        let waiters = gauge(
            "waiters",
            "Requests waiting (acquires, gets, puts, waits, watches)",
        );
        let holds_gauge = gauge(
            "holds",
            "Holds held (locks, permits, read/write holds, in-flight queue items, pool resources, breaker probes)",
        );
        let primitives = gauge("primitives", "Primitives of all kinds");
        let queue_items_ready = gauge(
            "queue_items_ready",
            "Queue items ready for a get (not in flight), over all queues",
        );
        let connections_open = gauge(
            "connections",
            "Client connections open on the gRPC port (at most --max-connections)",
        );
        let (connections_handshake_timeouts, connections_refused) =
            connection_counters(&mut registry);
        Metrics {
            registry,
            rpc,
            holds,
            engine_batch_commands,
            store_flush_seconds,
            store_batch_changes,
            store_size_bytes,
            sessions,
            waiters,
            holds_gauge,
            primitives,
            queue_items_ready,
            connections_open,
            connections_handshake_timeouts,
            connections_refused,
        }
    }

    /// A connection was closed at once, for `reason`.
    pub fn refused(&self, reason: Refusal) {
        self.connections_refused[reason.index()].inc();
    }

    /// The metrics of syncd's own services, health and reflection.
    pub fn for_server() -> Metrics {
        Metrics::new(
            &[
                crate::proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
            &[
                "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ],
        )
    }

    /// The method of a request path (`/package.Service/Method`); any path
    /// the server does not serve is `unknown`.
    pub fn method(&self, path: &str) -> MethodId {
        let unknown = self.rpc.methods.len() - 1;
        MethodId(self.rpc.index.get(path).copied().unwrap_or(unknown))
    }

    /// Records an RPC that ended with gRPC status `code` after `seconds`.
    pub fn rpc_done(&self, method: MethodId, code: usize, seconds: f64) {
        let rpc = &self.rpc;
        let metrics = &rpc.methods[method.0];
        let code = if code < CODE_NAMES.len() {
            code
        } else {
            CODE_UNKNOWN
        };
        let counter = metrics.codes[code].get_or_init(|| {
            rpc.calls
                .get_or_create_owned(&[("method", metrics.name), ("code", CODE_NAMES[code])])
        });
        counter.inc();
        let duration = metrics.duration.get_or_init(|| {
            rpc.duration
                .get_or_create_owned(&[("method", metrics.name)])
        });
        duration.observe(seconds);
    }

    fn hold_metrics(&self, kind: Kind) -> Option<&HoldMetrics> {
        let at = HOLD_KINDS.iter().position(|k| *k == kind)?;
        Some(&self.holds[at])
    }

    /// A hold of `kind` was granted.
    pub fn granted(&self, kind: Kind) {
        if let Some(metrics) = self.hold_metrics(kind) {
            metrics.grants.inc();
        }
    }

    /// A request for a hold of `kind` waited `ms` until its grant.
    pub fn waited(&self, kind: Kind, ms: u64) {
        if let Some(metrics) = self.hold_metrics(kind) {
            metrics.wait_seconds.observe(ms as f64 / 1000.0);
        }
    }

    /// A hold of `kind` ended after `ms`.
    pub fn held(&self, kind: Kind, ms: u64) {
        if let Some(metrics) = self.hold_metrics(kind) {
            metrics.hold_seconds.observe(ms as f64 / 1000.0);
        }
    }

    /// The state's sizes, as of a scrape.
    pub fn set_state(&self, sizes: &StateSizes) {
        let set = |gauge: &Gauge, n: usize| {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set(&self.sessions, sizes.sessions);
        set(&self.waiters, sizes.waiters);
        set(&self.holds_gauge, sizes.holds);
        set(&self.primitives, sizes.primitives);
        set(&self.queue_items_ready, sizes.queue_items_ready);
    }

    /// Every metric in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Registers the accept loop's counters: handshake timeouts, and refusals
/// by reason (every reason, so that a dashboard sees a 0 before the first).
fn connection_counters(registry: &mut Registry) -> (Counter, [Counter; Refusal::ALL.len()]) {
    let timeouts = Counter::default();
    registry.register(
        "connection_handshake_timeouts",
        "Connections closed because they had not sent their HTTP/2 preface and first SETTINGS frame within --handshake-timeout",
        timeouts.clone(),
    );
    let refused = Family::<Labels1, Counter>::default();
    let counters =
        Refusal::ALL.map(|reason| refused.get_or_create_owned(&[("reason", reason.as_str())]));
    registry.register(
        "connections_refused",
        "Connections closed as soon as they were accepted, by reason: max_connections (that many were open) or out_of_fds (the process had no file descriptor left)",
        refused,
    );
    (timeouts, counters)
}

/// How big the state is: the gauges a scrape asks the engine for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSizes {
    pub sessions: usize,
    pub waiters: usize,
    pub holds: usize,
    pub primitives: usize,
    pub queue_items_ready: usize,
}

impl RpcMetrics {
    fn new(descriptor_sets: &[&[u8]], extra_methods: &[&str]) -> RpcMetrics {
        let mut names: Vec<String> = extra_methods.iter().map(|m| (*m).to_owned()).collect();
        for encoded in descriptor_sets {
            // The sets are compiled in; one that does not decode adds nothing
            // (its calls count as `unknown`).
            let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        let service_name = service.name();
                        names.push(if package.is_empty() {
                            format!("{service_name}/{}", method.name())
                        } else {
                            format!("{package}.{service_name}/{}", method.name())
                        });
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        let mut index = HashMap::with_capacity(names.len());
        let mut methods = Vec::with_capacity(names.len() + 1);
        for name in names {
            index.insert(format!("/{name}"), methods.len());
            methods.push(MethodMetrics::new(leak(name)));
        }
        methods.push(MethodMetrics::new(UNKNOWN_METHOD));
        RpcMetrics {
            index,
            methods,
            calls: Family::default(),
            duration: HistogramFamily::new_with_constructor(rpc_buckets),
        }
    }
}

/// Label values must live as long as the registry; the method names are a
/// small fixed set, made once per server.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

impl MethodMetrics {
    fn new(name: &'static str) -> MethodMetrics {
        MethodMetrics {
            name,
            duration: OnceLock::new(),
            codes: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::for_server();
        let ping = metrics.method("/syncd.v1.System/Ping");
        metrics.rpc_done(ping, 0, 0.001);
        metrics.rpc_done(metrics.method("/no.Such/Thing"), 12, 0.001);
        metrics.granted(Kind::Lock);
        metrics.waited(Kind::Lock, 0);
        metrics.held(Kind::Lock, 1500);
        metrics.granted(Kind::Event); // not a hold: ignored
        metrics.refused(Refusal::MaxConnections);
        metrics.set_state(&StateSizes {
            sessions: 2,
            ..StateSizes::default()
        });
        let text = metrics.encode();
        for line in [
            "syncd_rpcs_total{method=\"syncd.v1.System/Ping\",code=\"OK\"} 1",
            "syncd_rpcs_total{method=\"unknown\",code=\"UNIMPLEMENTED\"} 1",
            "syncd_rpc_duration_seconds_count{method=\"syncd.v1.System/Ping\"} 1",
            "syncd_grants_total{kind=\"lock\"} 1",
            "syncd_grants_total{kind=\"semaphore\"} 0",
            "syncd_grant_wait_seconds_bucket{kind=\"lock\",le=\"0.001\"} 1",
            "syncd_hold_seconds_sum{kind=\"lock\"} 1.5",
            "syncd_sessions 2",
            "syncd_store_size_bytes 0",
            "syncd_connections 0",
            "syncd_connections_refused_total{reason=\"max_connections\"} 1",
            "syncd_connections_refused_total{reason=\"out_of_fds\"} 0",
            "syncd_connection_handshake_timeouts_total 0",
            "# TYPE syncd_store_flush_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("kind=\"event\""), "{text}");
    }

    #[test]
    fn every_served_method_is_known() {
        let metrics = Metrics::for_server();
        let known = |path: &str| metrics.method(path).0 != metrics.rpc.methods.len() - 1;
        assert!(known("/syncd.v1.Locks/Acquire"));
        assert!(known("/syncd.v1.Sessions/KeepAlive"));
        assert!(known("/grpc.health.v1.Health/Check"));
        assert!(known(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!known("/syncd.v1.Locks/Nope"));
        assert!(!known("syncd.v1.Locks/Acquire"));
    }
}
