//! Resume: the grace a restart gives, as a command.
//!
//! `State::restore` gives back the state exactly as it was written, which a
//! replica replaying a log needs. A restarted server also owes its clients
//! what they saw from syncd before restores were exact, and the engine
//! applies `Command::Resume` right after restoring, before any other
//! command, and persists its changes before it serves.
//!
//! Policy:
//! - Every live session's lease restarts at `now_ms` with its full TTL: the
//!   time the server was down never costs a holder its lease.
//! - Every queue item in flight gets its full visibility timeout again from
//!   `now_ms`, for the same reason.
//! - Every waiter of every kind ends with UNAVAILABLE: the stream it
//!   belonged to went with the old process, and the client waits again (as
//!   it does whenever syncd restarts). All waiters leave first, and only
//!   then are their primitives refreshed, so no waiter is granted on the
//!   way out; a primitive nobody uses any more is forgotten. A barrier is
//!   not broken: its parties will arrive again.
//!
//! Invariants (after `Resume`):
//! - no waiter is left, and no lease ends before `now_ms + ttl_ms`;
//! - every change is in the outcome (leases, items, waiter deletes).

use std::collections::BTreeSet;

use super::{records, Code, Kind, Outcome, Rejection, Reply, SessionId, State, WaiterId};

impl State {
    pub(super) fn resume(&mut self, out: &mut Outcome) -> Reply {
        let now_ms = self.now_ms;
        let live: Vec<SessionId> = self.sessions.iter().map(|s| s.id).collect();
        for id in live {
            self.sessions.renew(id, now_ms);
            let session = self.sessions.get(id).expect("renewed above");
            out.changes.push(records::lease_put(session));
        }
        self.queue_resume(out);
        let waiting: Vec<WaiterId> = self.waiters.keys().copied().collect();
        let mut left = BTreeSet::new();
        for waiter in waiting {
            let Some(place) = self.remove_waiter(waiter) else {
                continue;
            };
            let message = format!(
                "syncd restarted while this request waited on {} {:?}; wait again",
                place.kind.as_str(),
                place.name
            );
            let ended = Rejection::new(Code::Unavailable, message);
            out.events.push((waiter, Err(ended)));
            left.insert((place.kind, place.name));
        }
        for (kind, name) in left {
            if kind != Kind::Barrier {
                self.refresh(kind, &name, out);
            }
        }
        debug_assert!(self.waiters.is_empty(), "a waiter survived Resume");
        Reply::Done
    }
}
