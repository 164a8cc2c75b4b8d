//! # syncd: named, durable synchronization primitives over gRPC
//!
//! Processes on many machines share locks, semaphores, read-write locks,
//! events, conditions, barriers, durable queues and resource pools (and, as
//! the project grows, rate limiters and circuit breakers) through one
//! server. Every hold belongs to a session with a lease, every grant carries
//! a fencing token, and every change is on disk before anyone hears of it.
//!
//! ```text
//!   syncctl (CLI) ─┐        client library ──┐        any gRPC client
//!                  ▼                         ▼              ▼
//!         ┌─────────────── server : tonic services, thin ───────────────┐
//!         │  RPC → Command or Query; a wait streams until its end       │
//!         └──────────────────────────────┬──────────────────────────────┘
//!                                        ▼  (mpsc)
//!         ┌──────────── engine: ONE task owns all state ────────────────┐
//!         │  apply(Command, now) → reply + Outcome { events, changes }  │
//!         │  query(&Query, now) → reply (reads change nothing)          │
//!         │  timer: sleeps until core's next deadline, then ticks       │
//!         └──────────────┬───────────────────────────────┬──────────────┘
//!                        ▼                               ▼
//!         core : pure state machine            store : sled; the changes of a
//!         (no tokio, no I/O, no clock:          batch written together, one
//!          `now` is an argument)                flush, then replies go out
//! ```
//!
//! Module map:
//! - [`core`]: the rules of every primitive; pure and deterministic.
//! - [`engine`]: the single task that owns [`core::State`], batches commands,
//!   persists their changes (group commit) and only then replies.
//! - [`store`]: the [`store::Store`] trait, sled and in-memory backends.
//! - [`replica`]: the replicated log under the core (its entry format).
//! - [`server`]: tonic services translating protobuf ⇄ commands and
//!   queries (one mapping of requests: [`server::requests`]).
//! - [`metrics`]: Prometheus metrics (`--metrics-listen`), fed by the
//!   server, the engine and the writer; the core only reports plain data.
//! - [`client`]: the Rust client library (sessions, keep-alive, guards).
//! - [`duration`]: parsing of durations such as `500ms`, `30s`, `2m`.

pub mod client;
pub mod config;
pub mod core;
pub mod duration;
pub mod engine;
pub mod metrics;
pub mod replica;
pub mod server;
pub mod store;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// The public API, package `syncd.v1`.
    pub mod v1 {
        tonic::include_proto!("syncd.v1");
    }

    /// Records in the data directory, package `syncd.store.v1`. (Their
    /// comments name keys like `lock/<name>`, which are not HTML.)
    #[allow(rustdoc::invalid_html_tags)]
    pub mod store {
        tonic::include_proto!("syncd.store.v1");
    }

    /// Entries of the replicated log, package `syncd.log.v1` (see
    /// [`crate::replica::codec`], the only code that should read them).
    pub mod log {
        tonic::include_proto!("syncd.log.v1");
    }

    /// Status metadata that marks a refusal as "this session is gone"
    /// (unknown, or ended while the call waited); its value is the session
    /// id. Clients renew their session on it, and only on it: the same
    /// status codes also mean other things.
    pub const SESSION_GONE_KEY: &str = "syncd-session-gone";

    /// Binary status metadata set with [`SESSION_GONE_KEY`] when the session
    /// was closed on the server (by an operator), not expired: the reason
    /// given, UTF-8, maybe empty. Remembered for the latest 10,000 ended
    /// sessions, and not across a restart.
    pub const SESSION_CLOSED_KEY: &str = "syncd-session-closed-bin";

    /// The encoded descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/syncd_descriptor.bin"));
}
