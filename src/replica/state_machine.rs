//! The state machine openraft drives: the pure core plus the applied state
//! on disk.
//!
//! Applying an entry (see `codec.rs` for what it holds) ticks the core at
//! the entry's `now_ms`, then applies each step at that time, checking
//! first that a step naming a session acts for the session's owner. The
//! core's changes of every entry in one `apply` call, with the last applied
//! id, go to sled as one batch (see `applied.rs`). What applying gave (the
//! replies and the outcome) goes back to openraft as the entry's response,
//! which reaches the proposer on this node.
//!
//! Invariants:
//! - `applied` is the id of the last entry whose effects are in `state`,
//!   and in sled's batch written with it;
//! - `state` is only changed by entries, in log order, or replaced whole by
//!   an installed snapshot.

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::applied::{AppliedStore, Membership};
use super::codec;
use super::failpoint;
use super::snapshot;
use super::types::{Applied, AppliedEntry, NodeId, TypeConfig};
use super::ReplicaError;
use crate::core::{Change, Limits, Outcome, State};

/// What the state machine and the readers share.
pub struct Inner {
    pub state: State,
    pub store: AppliedStore,
    pub applied: Option<LogId<NodeId>>,
    pub membership: Membership,
    /// The snapshot last built or installed (kept in memory; after a
    /// restart there is none until the next is built).
    current: Option<snapshot::Stored>,
    /// Counts snapshots built by this process, for their ids.
    built: u64,
}

/// The shared half: the engine reads the applied state through it.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    pub fn new(
        state: State,
        store: AppliedStore,
        applied: Option<LogId<NodeId>>,
        membership: Membership,
    ) -> Shared {
        Shared(Arc::new(Mutex::new(Inner {
            state,
            store,
            applied,
            membership,
            current: None,
            built: 0,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while applying leaves a state that may be half-applied:
        // nobody may read or apply on it any more.
        self.0
            .lock()
            .expect("the state machine panicked while applying")
    }
}

/// openraft's handle on the state machine.
pub struct StateMachine {
    shared: Shared,
    limits: Limits,
}

impl StateMachine {
    pub fn new(shared: Shared, limits: Limits) -> StateMachine {
        StateMachine { shared, limits }
    }
}

/// Applies one decoded entry to the core, appending its record changes
/// (and the counters and clock, when anything changed) to `changes`.
pub fn apply_entry(
    state: &mut State,
    entry: codec::Entry,
    changes: &mut Vec<Change>,
) -> AppliedEntry {
    debug_assert!(
        entry.now_ms >= state.now_ms(),
        "an entry's time ran backwards"
    );
    let mut outcome = Outcome::default();
    state.tick(entry.now_ms, &mut outcome);
    let mut replies = Vec::with_capacity(entry.steps.len());
    for step in entry.steps {
        let result = match &step.identity {
            Some(identity) => state.check_session_owner(&step.command, identity),
            None => Ok(()),
        };
        replies.push(result.and_then(|()| state.apply(entry.now_ms, step.command, &mut outcome)));
    }
    let changed = !outcome.changes.is_empty() || !outcome.events.is_empty();
    let written = outcome.changes.len();
    changes.append(&mut outcome.changes);
    AppliedEntry {
        replies,
        outcome,
        changed,
        changes: written,
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let inner = self.shared.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let mut changes = Vec::new();
        let mut responses = Vec::new();
        let mut last = None;
        let mut membership_changed = false;
        let mut with_steps = false;
        for entry in entries {
            debug_assert!(Some(entry.log_id) > inner.applied, "an entry applied twice");
            last = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => AppliedEntry::default(),
                EntryPayload::Normal(payload) => {
                    failpoint::pass("apply");
                    with_steps = true;
                    let decoded = codec::decode(&payload).map_err(|e| {
                        let why = ReplicaError::Corrupt(format!("log entry {}: {e}", entry.log_id));
                        apply_error(entry.log_id, why)
                    })?;
                    apply_entry(&mut inner.state, decoded, &mut changes)
                }
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    membership_changed = true;
                    AppliedEntry::default()
                }
            };
            responses.push(Applied(Box::new(applied)));
        }
        let Some(last) = last else {
            return Ok(responses);
        };
        // The clock moves with every entry, also one that changed nothing:
        // a restart resumes time from what is stored.
        changes.push(inner.state.checkpoint());
        if with_steps {
            failpoint::pass("state-write");
        }
        let membership = membership_changed.then_some(&inner.membership);
        inner
            .store
            .write(&changes, &last, membership)
            .map_err(|e| apply_error(last, e))?;
        inner.applied = Some(last);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = data.into_inner();
        let records = snapshot::decode(&bytes).map_err(|e| snapshot_error(meta, e))?;
        let state = State::restore(self.limits.clone(), records.iter().cloned())
            .map_err(|e| snapshot_error(meta, ReplicaError::Corrupt(e.to_string())))?;
        let mut inner = self.shared.lock();
        inner
            .store
            .replace(&records, meta.last_log_id.as_ref(), &meta.last_membership)
            .map_err(|e| snapshot_error(meta, e))?;
        inner.state = state;
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.current = Some(snapshot::Stored {
            meta: meta.clone(),
            data: bytes,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.shared.lock();
        Ok(inner.current.as_ref().map(snapshot::Stored::to_snapshot))
    }
}

/// Builds a snapshot of the applied state: its records as of the last
/// applied entry, taken under the lock (applying waits meanwhile), then
/// made durable in sled before openraft may purge the log behind it.
pub struct SnapshotBuilder {
    shared: Shared,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = {
            let mut inner = self.shared.lock();
            inner.built += 1;
            // sled's records agree with `state` under the lock.
            let loaded = inner
                .store
                .load()
                .map_err(|e| StorageError::from(StorageIOError::read_state_machine(&e)))?;
            let data = snapshot::encode(&loaded.records);
            let id = match &inner.applied {
                Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, inner.built),
                None => format!("empty-{}", inner.built),
            };
            let meta = SnapshotMeta {
                last_log_id: inner.applied,
                last_membership: inner.membership.clone(),
                snapshot_id: id,
            };
            (meta, data)
        };
        // sled holds at least what the snapshot holds; once that is on
        // disk the log up to the snapshot may go.
        let store = self.shared.lock().store.clone();
        store.make_durable().map_err(|e| snapshot_error(&meta, e))?;
        let stored = snapshot::Stored { meta, data };
        let snapshot = stored.to_snapshot();
        self.shared.lock().current = Some(stored);
        Ok(snapshot)
    }
}

fn apply_error(log_id: LogId<NodeId>, error: ReplicaError) -> StorageError<NodeId> {
    StorageIOError::apply(log_id, &error).into()
}

fn snapshot_error(
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    error: ReplicaError,
) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(Some(meta.signature()), &error).into()
}
