//! syncd as a replicated state machine, on openraft 0.9.
//!
//! ```text
//!   engine ──Entry (now_ms + steps)──▶ Replica::propose          (leader)
//!                                        │ openraft appends
//!                                        ▼
//!                 write-ahead log (raft-log, log/; fdatasync, group commit)
//!                                        │ committed
//!                                        ▼
//!                 StateMachine::apply: core.tick + core.apply per step
//!                 changes + last applied id ──▶ sled (one batch)
//!                                        │
//!   engine ◀──AppliedEntry (replies, outcome)── the entry's response
//! ```
//!
//! Everything that changes the state is an entry; reads look at the
//! applied state ([`Replica::read`]) and never change it. openraft's types
//! stay inside this module: the engine sees "propose this entry, get what
//! applying it gave" and "read the applied state".
//!
//! syncd runs as a cluster of one node for now: a fresh data directory
//! initializes itself as node 1, an existing one resumes (see `dir.rs` for
//! the layout and the checks made before anything is written).

pub mod codec;
pub mod log_store;

mod applied;
mod dir;
mod failpoint;
mod network;
mod snapshot;
mod state_machine;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::{BasicNode, Raft, SnapshotPolicy};

use self::applied::AppliedStore;
use self::network::NoPeers;
use self::state_machine::{Shared, StateMachine};
pub use self::types::AppliedEntry;
use self::types::{NodeId, TypeConfig};
use crate::core::{Limits, State};

/// This node's id while syncd runs alone.
const NODE_ID: NodeId = 1;

/// How long opening may wait for the node to lead and to have applied its
/// whole log (a replay of a long log takes part of it).
const READY_WAIT: Duration = Duration::from_secs(600);

/// Why the replica cannot go on.
#[derive(Debug, Clone)]
pub enum ReplicaError {
    /// Another process has the data directory.
    InUse(String),
    /// What is on disk is damaged or not what it should be: refuse to
    /// serve it (exit 3).
    Corrupt(String),
    /// Reading or writing the disk failed.
    Io(String),
    /// openraft stopped or refused.
    Raft(String),
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::InUse(m)
            | ReplicaError::Corrupt(m)
            | ReplicaError::Io(m)
            | ReplicaError::Raft(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReplicaError {}

/// How the replica keeps its log.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// `false`: an entry counts as written once the OS has it, before its
    /// fdatasync (`--durability none`).
    pub sync: bool,
    pub limits: Limits,
    /// A snapshot is built after this many entries, and the log behind it
    /// purged (keeping `log_entries_kept` for a slow follower).
    pub snapshot_every_entries: u64,
    pub log_entries_kept: u64,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            sync: true,
            limits: Limits::default(),
            snapshot_every_entries: 10_000,
            log_entries_kept: 1_000,
        }
    }
}

/// The replicated state machine of one node.
pub struct Replica {
    raft: Raft<TypeConfig>,
    shared: Shared,
    log_probe: log_store::LogProbe<TypeConfig>,
}

/// Measures what the replica takes on disk, without holding it open.
#[derive(Clone)]
pub struct DiskMeter {
    store: AppliedStore,
    log_probe: log_store::LogProbe<TypeConfig>,
}

impl DiskMeter {
    /// Bytes of the applied state and of the log together; `None` once the
    /// log is closed.
    pub async fn bytes(&self) -> Option<u64> {
        let log = self.log_probe.stats().await?.ok()?.disk_bytes;
        let store = self.store.clone();
        let state = tokio::task::spawn_blocking(move || store.size_on_disk_bytes())
            .await
            .ok()??;
        Some(state + log)
    }
}

impl Replica {
    /// Opens the data directory (creating it, or migrating one of the
    /// format before the log), restores the applied state, starts openraft
    /// and returns once this node leads and has applied its whole log.
    pub async fn open(data_dir: &Path, options: ReplicaOptions) -> Result<Replica, ReplicaError> {
        let layout = dir::prepare(data_dir)?;
        let store = AppliedStore::open(data_dir)?;
        layout.check_opened(&store)?;
        let loaded = store.load()?;
        let state = State::restore(options.limits.clone(), loaded.records)
            .map_err(|e| ReplicaError::Corrupt(format!("the applied state is invalid: {e}")))?;
        let log_options = log_store::LogStoreOptions {
            durability: if options.sync {
                log_store::Durability::Sync
            } else {
                log_store::Durability::None
            },
            ..log_store::LogStoreOptions::default()
        };
        let log_dir = layout.log_dir.clone();
        let mut log =
            tokio::task::spawn_blocking(move || log_store::LogStore::open(&log_dir, log_options))
                .await
                .map_err(|e| ReplicaError::Io(format!("opening the log failed: {e}")))?
                .map_err(|e| log_open_error(&layout.log_dir, e))?;
        dir::check_log_covers(&mut log, loaded.applied.as_ref()).await?;
        let log_probe = log.probe();
        let shared = Shared::new(state, store, loaded.applied, loaded.membership);
        let machine = StateMachine::new(shared.clone(), options.limits.clone());
        let raft = Raft::new(NODE_ID, raft_config(&options)?, NoPeers, log, machine)
            .await
            .map_err(raft_error)?;
        let replica = Replica {
            raft,
            shared,
            log_probe,
        };
        replica.lead().await?;
        layout.finish()?;
        Ok(replica)
    }

    /// Initializes a fresh node as a cluster of one, or has a restarted one
    /// elect itself at once (it is the only voter), then waits until it
    /// leads and has applied every entry of its log.
    async fn lead(&self) -> Result<(), ReplicaError> {
        if self.raft.is_initialized().await.map_err(raft_error)? {
            self.raft.trigger().elect().await.map_err(raft_error)?;
        } else {
            let members = BTreeMap::from([(NODE_ID, BasicNode::default())]);
            self.raft.initialize(members).await.map_err(raft_error)?;
        }
        // A node that stopped (a storage error while replaying) will never
        // be ready: stop waiting at once and say why.
        let ready_or_stopped = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            m.running_state.is_err()
                || (m.current_leader == Some(NODE_ID)
                    && m.last_applied.map(|id| id.index) == m.last_log_index)
        };
        let metrics = self
            .raft
            .wait(Some(READY_WAIT))
            .metrics(ready_or_stopped, "lead and apply the whole log")
            .await
            .map_err(|e| ReplicaError::Raft(format!("the node did not become ready: {e}")))?;
        match metrics.running_state {
            Ok(()) => Ok(()),
            Err(fatal) => Err(ReplicaError::Corrupt(format!(
                "replaying the write-ahead log onto the applied state failed: {fatal}"
            ))),
        }
    }

    /// Proposes one entry (its bytes from `codec::encode`). Returns once
    /// openraft took it; the returned [`Proposal`] resolves when the entry
    /// is committed and applied. Entries are applied in the order they
    /// were proposed.
    pub async fn propose(&self, entry: Vec<u8>) -> Result<Proposal, ReplicaError> {
        let receiver = self.raft.client_write_ff(entry).await.map_err(raft_error)?;
        Ok(Proposal { receiver })
    }

    /// Looks at the applied state. Keep `read` short: applying waits.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.shared.lock().state)
    }

    /// A meter of the bytes on disk, for the metrics.
    pub fn disk_meter(&self) -> DiskMeter {
        DiskMeter {
            store: self.shared.lock().store.clone(),
            log_probe: self.log_probe.clone(),
        }
    }

    /// Stops openraft, then makes the applied state durable, so that the
    /// next start has little to replay.
    pub async fn shutdown(self) -> Result<(), ReplicaError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| ReplicaError::Raft(format!("openraft did not stop cleanly: {e}")))?;
        let store = self.shared.lock().store.clone();
        store.make_durable()
    }
}

/// An entry on its way through the log.
pub struct Proposal {
    receiver: tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>,
}

impl Future for Proposal {
    type Output = Result<AppliedEntry, ReplicaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match Pin::new(&mut self.receiver).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        Poll::Ready(match result {
            Ok(Ok(response)) => Ok(*response.data.0),
            Ok(Err(ClientWriteError::ForwardToLeader(to))) => Err(ReplicaError::Raft(format!(
                "this node is not the leader (the leader is {:?})",
                to.leader_id
            ))),
            Ok(Err(other)) => Err(ReplicaError::Raft(other.to_string())),
            Err(_) => Err(ReplicaError::Raft("openraft stopped".into())),
        })
    }
}

fn raft_config(options: &ReplicaOptions) -> Result<Arc<openraft::Config>, ReplicaError> {
    // On 2 busy cores the defaults (50 ms heartbeat, 150-300 ms election)
    // flap; these hold up (see shared/notes/replication-research.md).
    let config = openraft::Config {
        cluster_name: "syncd".into(),
        heartbeat_interval: 100,
        election_timeout_min: 800,
        election_timeout_max: 1600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every_entries),
        max_in_snapshot_log_to_keep: options.log_entries_kept,
        ..openraft::Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| ReplicaError::Raft(format!("bad openraft settings: {e}")))
}

fn log_open_error(dir: &Path, error: std::io::Error) -> ReplicaError {
    let shown = dir.display();
    match error.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            ReplicaError::Corrupt(format!(
                "the write-ahead log in {shown} is damaged: {error}"
            ))
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::AlreadyExists => {
            ReplicaError::InUse(format!("the write-ahead log in {shown} is in use: {error}"))
        }
        _ => ReplicaError::Io(format!(
            "cannot open the write-ahead log in {shown}: {error}"
        )),
    }
}

fn raft_error<E: fmt::Display>(error: E) -> ReplicaError {
    ReplicaError::Raft(error.to_string())
}

/// How many entries the log in `data_dir` holds (for tests; the log must
/// not be open).
#[cfg(test)]
pub(crate) async fn log_entries_on_disk(data_dir: &Path) -> u64 {
    use openraft::storage::RaftLogStorage;
    let dir = data_dir.join("log");
    let options = log_store::LogStoreOptions::default();
    let mut log =
        tokio::task::spawn_blocking(move || log_store::LogStore::<TypeConfig>::open(&dir, options))
            .await
            .unwrap()
            .expect("the log opens");
    let state = log.get_log_state().await.expect("log state");
    let last = state.last_log_id.map_or(0, |id| id.index + 1);
    let purged = state.last_purged_log_id.map_or(0, |id| id.index + 1);
    last - purged
}
