//! Delivering what a step of the state machine produced: replies to
//! callers, first events to new waiters, later events to the waiters that
//! are still listening.
//!
//! A waiter that went away is noticed here: an event that cannot be sent
//! gives back what it granted and cancels the wait, through commands the
//! engine applies in its next turn, or proposes in its next entry (the
//! loopback). Both engines deliver through it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::notices::NoticeBoard;
use super::{shutting_down, Deliveries, Event};
use crate::core::{Code, Command, Rejection, Reply, WaiterId};

pub(super) struct Router {
    /// Senders of waiters that got `Queued` and wait for their final event.
    waiting: HashMap<WaiterId, mpsc::Sender<Event>>,
    /// Commands the engine gives itself for its next entry.
    loopback: mpsc::UnboundedSender<Command>,
    /// Bumped when a step that changed the state is delivered.
    changes: Arc<watch::Sender<u64>>,
    notices: Arc<NoticeBoard>,
}

impl Router {
    pub(super) fn new(
        loopback: mpsc::UnboundedSender<Command>,
        changes: Arc<watch::Sender<u64>>,
        notices: Arc<NoticeBoard>,
    ) -> Router {
        Router {
            waiting: HashMap::new(),
            loopback,
            changes,
            notices,
        }
    }

    pub(super) fn deliver(&mut self, deliveries: Deliveries) {
        if deliveries.changed {
            self.changes.send_modify(|count| *count += 1);
        }
        for session_id in deliveries.noticed {
            self.notices.post(session_id);
        }
        for (reply, result) in deliveries.replies {
            let _ = reply.send(result);
        }
        // First events before the step's other events: a waiter queued in
        // this step may already have been granted or timed out in it.
        for (waiter, sender, event) in deliveries.first_events {
            let is_final = event.as_ref().map_or(true, Reply::is_final);
            if self.send(waiter, &sender, event) && !is_final {
                self.waiting.insert(waiter, sender);
            }
        }
        for (waiter, event) in deliveries.events {
            let Some(sender) = self.waiting.remove(&waiter) else {
                continue;
            };
            let is_final = event.as_ref().map_or(true, Reply::is_final);
            if self.send(waiter, &sender, event) && !is_final {
                self.waiting.insert(waiter, sender);
            }
        }
    }

    /// Sends an event; if the waiter is gone, undoes what the event gave it
    /// (next entry). Returns whether the waiter is still there.
    fn send(&self, waiter: WaiterId, sender: &mpsc::Sender<Event>, mut event: Event) -> bool {
        let granted = event.as_ref().ok().and_then(Reply::granted_token);
        let queued = matches!(event, Ok(Reply::Queued { .. }));
        let goes_on = event.as_ref().is_ok_and(|reply| !reply.is_final());
        // The last free slot is kept for a final event: a watcher that has
        // not read its backlog hears why it is cut off.
        if goes_on && sender.capacity() <= 1 && sender.max_capacity() > 1 {
            let message = format!(
                "the watch fell {} events behind; watch again",
                sender.max_capacity() - 1
            );
            event = Err(Rejection::new(Code::ResourceExhausted, message));
            let _ = self.loopback.send(Command::Cancel { waiter });
        }
        let ended = event.is_err();
        if sender.try_send(event).is_ok() {
            return !ended;
        }
        // The receiver was dropped (a full channel cannot happen: it has
        // room for every event a waiter gets).
        if let Some(fencing_token) = granted {
            let _ = self
                .loopback
                .send(Command::ReleaseUndelivered { fencing_token });
        }
        if queued {
            let _ = self.loopback.send(Command::Cancel { waiter });
        }
        false
    }

    /// Ends every remaining wait with UNAVAILABLE (the engine stops).
    pub(super) fn end_all(&mut self) {
        for (_, sender) in self.waiting.drain() {
            let _ = sender.try_send(Err(shutting_down()));
        }
    }
}
