//! Queues: durable, bounded, ordered by priority, delivered at least once.
//!
//! A [`Queue`] handle puts items (bytes with a priority: lowest number
//! first, put order among equals) and gets them. What it guarantees:
//!
//! - **A put that returns an item id is stored, durably.** A put waits while
//!   the queue is full (backpressure). It is retried, with the same retry
//!   identity (`put_id`) and within its own deadline, when the server cannot
//!   be reached or restarts: the server stores a put once per session and
//!   answers a retry with the first attempt's item id, so a put whose answer
//!   was lost is not stored twice. The server remembers put ids per
//!   session: if the session is lost while a put is retried, the retry goes
//!   on in the new session, and an item stored by an unanswered attempt in
//!   the old one may be stored a second time. [`Error::Timeout`] means no
//!   room came in time and nothing was stored (in this session); an
//!   [`Error::Unavailable`] after a broken attempt, or a put future dropped
//!   while it waited, may or may not have stored the item.
//! - **Delivery is at least once.** A get hands out the first ready item
//!   *in flight* under the client's session for a visibility timeout (the
//!   server's 30 s unless [`Queue::with_visibility_timeout`] says). Until
//!   [`Queue::ack`], the item is not gone: [`Queue::nack`], the timeout, or
//!   the end of the session puts it back at its place, and counts the
//!   delivery; after `max_deliveries` deliveries it goes to the dead-letter
//!   queue `<name>.dlq` instead. A get is retried when the server cannot be
//!   reached; a get whose answer was lost on the way leaves its item in
//!   flight under the session, and the item comes back after its visibility
//!   timeout: it is delivered again, never lost. So is the item of a get
//!   future dropped just as the server handed it out.
//! - **An ack that returns `Ok` removed the item for good.** Ack and nack
//!   are retried while the server cannot be reached. A retry that finds the
//!   item no longer in flight, after an attempt that may have been applied
//!   without an answer, counts as done: the earlier attempt acked it, or (a
//!   race the client cannot tell apart) the item came back after its
//!   visibility timeout just then and will be delivered again. A retry that
//!   finds the item in flight for another session is an error: the ack did
//!   not happen.
//! - [`Queue::get_no_ack`] removes the item at delivery: at most once, and
//!   an answer lost on the way loses the item.
//! - [`Queue::join`] waits until every item put before it has been acked or
//!   dead-lettered (`task_done` + `join`). A join retried after the server
//!   restarted counts from the retry, so it may wait for later puts too; it
//!   never returns early.
//!
//! The capacity and `max_deliveries` are fixed by the put that creates the
//! queue; a put that names others fails at once with the server's message
//! saying what exists.

use std::time::Duration;

use tonic::{Code, Status};

use super::{
    retry,
    wait::{is_session_gone, read_to_end, Attempt, Step, Wait},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    get_response, join_response, put_response, queues_client::QueuesClient, AckRequest,
    DescribeQueueRequest, DescribeQueueResponse, GetRequest, Item, JoinRequest, NackRequest,
    PutRequest,
};

/// A named queue on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Queue {
    client: Client,
    name: String,
    /// `None`: the existing queue's, or unbounded for a new one.
    capacity: Option<u32>,
    /// 0: the existing queue's, or the server's default for a new one.
    max_deliveries: u32,
    /// 0: the server's default.
    visibility_timeout_ms: u64,
}

/// An item handed out by a get.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueItem {
    /// The item's id: unique on the server, increasing in put order. Pass it
    /// to [`Queue::ack`] or [`Queue::nack`].
    pub id: u64,
    pub value: Vec<u8>,
    pub priority: u32,
    /// How many times the item has been delivered, this time included: more
    /// than 1 when an earlier delivery was not acked.
    pub deliveries: u32,
    /// The fencing token of this delivery; 0 for [`Queue::get_no_ack`].
    /// Pass it on to whatever the item's work writes to; with
    /// [`super::Client::hold_lost`] it tells when the delivery is over (its
    /// visibility timeout passed: the item went back to the queue).
    pub fencing_token: u64,
}

impl From<Item> for QueueItem {
    fn from(item: Item) -> QueueItem {
        QueueItem {
            id: item.id,
            value: item.value,
            priority: item.priority,
            deliveries: item.deliveries,
            fencing_token: item.fencing_token,
        }
    }
}

impl Queue {
    pub(crate) fn new(client: Client, name: String) -> Queue {
        Queue {
            client,
            name,
            capacity: None,
            max_deliveries: 0,
            visibility_timeout_ms: 0,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This handle's puts declare `capacity`: at most that many items ready
    /// or in flight (0: only the server's limit). The put that creates the
    /// queue fixes it; a put into an existing queue with another capacity
    /// fails. Without it, a put takes the existing queue's, or makes an
    /// unbounded one.
    pub fn with_capacity(mut self, capacity: u32) -> Queue {
        self.capacity = Some(capacity);
        self
    }

    /// This handle's puts declare that an item is dead-lettered after `n`
    /// deliveries (0: the existing queue's, or the server's default of 5 for
    /// a new one). Fixed, like the capacity, by the put that creates the
    /// queue.
    pub fn with_max_deliveries(mut self, n: u32) -> Queue {
        self.max_deliveries = n;
        self
    }

    /// How long an item this handle gets stays in flight before it comes
    /// back unacked. Zero, or not set: the server's default (30 s).
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Queue {
        self.visibility_timeout_ms = match millis(timeout) {
            0 if !timeout.is_zero() => 1,
            ms => ms,
        };
        self
    }

    /// Puts `value` with `priority` (lower first), waiting as long as it
    /// takes while the queue is full. Returns the item's id once it is
    /// stored on disk.
    pub async fn put(&self, value: impl Into<Vec<u8>>, priority: u32) -> Result<u64, Error> {
        self.put_within(value.into(), priority, None).await
    }

    /// Like [`Queue::put`], waiting at most `timeout` for room;
    /// [`Error::Timeout`] when it passes (nothing stored). A zero timeout
    /// puts only if there is room now.
    pub async fn put_timeout(
        &self,
        value: impl Into<Vec<u8>>,
        priority: u32,
        timeout: Duration,
    ) -> Result<u64, Error> {
        self.put_within(value.into(), priority, Some(timeout)).await
    }

    /// Waits as long as it takes for an item, and holds it in flight until
    /// [`Queue::ack`] (or its visibility timeout).
    pub async fn get(&self) -> Result<QueueItem, Error> {
        self.get_within(None, false).await
    }

    /// Waits at most `timeout` for an item; [`Error::Timeout`] when it
    /// passes. A zero timeout takes an item only if one is ready now.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<QueueItem, Error> {
        self.get_within(Some(timeout), false).await
    }

    /// Waits as long as it takes for an item, which the server removes as it
    /// hands it out: no ack, delivered at most once (lost if the answer is).
    pub async fn get_no_ack(&self) -> Result<QueueItem, Error> {
        self.get_within(None, true).await
    }

    /// Removes item `item_id`, which this client's session has in flight,
    /// for good. Fails with `FAILED_PRECONDITION` when the item is still
    /// there but not in flight for this session (back in the queue after
    /// its visibility timeout, or delivered again: it will be processed
    /// again), `NOT_FOUND` when it is gone (acked already), and with
    /// [`Error::SessionLost`] when the session is gone (its items are back
    /// in the queue).
    pub async fn ack(&self, item_id: u64) -> Result<(), Error> {
        let session_id = self.client.session_id();
        let request = AckRequest {
            session_id,
            name: self.name.clone(),
            item_id,
        };
        let acked = self
            .settle(session_id, item_id, "ack", |channel| {
                let request = request.clone();
                async move { QueuesClient::new(channel).ack(with_timeout(request)).await }
            })
            .await?;
        if acked.is_none() {
            tracing::debug!(
                "item {item_id} of queue {:?} was acked by an earlier attempt",
                self.name
            );
        }
        Ok(())
    }

    /// Puts item `item_id`, which this client's session has in flight, back
    /// at its place (counting the delivery). Returns true when it went to
    /// the dead-letter queue `<name>.dlq` instead, having been delivered
    /// `max_deliveries` times. Errors as [`Queue::ack`]. When a retry finds
    /// that an earlier attempt whose answer was lost did it, whether that
    /// dead-lettered the item is not known: false.
    pub async fn nack(&self, item_id: u64) -> Result<bool, Error> {
        let session_id = self.client.session_id();
        let request = NackRequest {
            session_id,
            name: self.name.clone(),
            item_id,
        };
        let nacked = self
            .settle(session_id, item_id, "nack", |channel| {
                let request = request.clone();
                async move { QueuesClient::new(channel).nack(with_timeout(request)).await }
            })
            .await?;
        Ok(nacked.is_some_and(|response| response.dead_lettered))
    }

    /// Waits as long as it takes until every item put before the call has
    /// been acked (or removed, or dead-lettered).
    pub async fn join(&self) -> Result<(), Error> {
        self.join_within(None).await
    }

    /// Like [`Queue::join`], waiting at most `timeout`; [`Error::Timeout`]
    /// when it passes.
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.join_within(Some(timeout)).await
    }

    /// Settings, items ready and in flight, dead-lettered and waiting calls,
    /// as the server sees them now (all zero when the queue does not exist).
    pub async fn describe(&self) -> Result<DescribeQueueResponse, Error> {
        let request = DescribeQueueRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    QueuesClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    async fn put_within(
        &self,
        value: Vec<u8>,
        priority: u32,
        timeout: Option<Duration>,
    ) -> Result<u64, Error> {
        let put_id = retry::acquire_id();
        let what = format!("a put into queue {:?}", self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        let stored = wait
            .with_retries(|attempt| self.put_attempt(attempt, &value, priority, put_id, &what))
            .await;
        stored
            .map(|(_, item_id)| item_id)
            .map_err(|failed| failed.error)
    }

    /// One `Put` stream: the stored item's id, or why not.
    async fn put_attempt(
        &self,
        attempt: Attempt,
        value: &[u8],
        priority: u32,
        put_id: u64,
        what: &str,
    ) -> Result<u64, Status> {
        let request = attempt.request(PutRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            value: value.to_vec(),
            priority,
            capacity: self.capacity,
            max_deliveries: self.max_deliveries,
            timeout_ms: attempt.timeout_ms(),
            put_id,
        });
        let stream = QueuesClient::new(self.client.transport())
            .put(request)
            .await?
            .into_inner();
        read_to_end(stream, what, |message| match message.event {
            Some(put_response::Event::Stored(stored)) => Step::Done(stored.item_id),
            Some(put_response::Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        })
        .await
    }

    async fn get_within(
        &self,
        timeout: Option<Duration>,
        no_ack: bool,
    ) -> Result<QueueItem, Error> {
        let what = format!("an item of queue {:?}", self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        let got = wait
            .with_retries(|attempt| self.get_attempt(attempt, no_ack, &what))
            .await;
        got.map(|(_, item)| item).map_err(|failed| failed.error)
    }

    /// One `Get` stream: the item handed out, or why not.
    async fn get_attempt(
        &self,
        attempt: Attempt,
        no_ack: bool,
        what: &str,
    ) -> Result<QueueItem, Status> {
        let request = attempt.request(GetRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            timeout_ms: attempt.timeout_ms(),
            visibility_timeout_ms: self.visibility_timeout_ms,
            no_ack,
        });
        let stream = QueuesClient::new(self.client.transport())
            .get(request)
            .await?
            .into_inner();
        read_to_end(stream, what, |message| match message.event {
            Some(get_response::Event::Item(item)) => Step::Done(item.into()),
            Some(get_response::Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        })
        .await
    }

    async fn join_within(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let what = format!("a join of queue {:?}", self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        let joined = wait
            .with_retries(|attempt| self.join_attempt(attempt, &what))
            .await;
        joined.map(|_| ()).map_err(|failed| failed.error)
    }

    /// One `Join` stream, until every earlier item is gone.
    async fn join_attempt(&self, attempt: Attempt, what: &str) -> Result<(), Status> {
        let request = attempt.request(JoinRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            timeout_ms: attempt.timeout_ms(),
        });
        let stream = QueuesClient::new(self.client.transport())
            .join(request)
            .await?
            .into_inner();
        read_to_end(stream, what, |message| match message.event {
            Some(join_response::Event::Joined(_)) => Step::Done(()),
            Some(join_response::Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        })
        .await
    }

    /// An ack or a nack of `item_id` in `session_id`, with retries (see
    /// [`Client::unary_settling`]): `None` when an earlier attempt whose
    /// answer was lost did it.
    async fn settle<T, F, Fut>(
        &self,
        session_id: u64,
        item_id: u64,
        verb: &str,
        call: F,
    ) -> Result<Option<T>, Error>
    where
        F: FnMut(super::Transport) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let lost = |why: &dyn std::fmt::Display| {
            Error::SessionLost(format!(
                "cannot {verb} item {item_id} of queue {:?}: {why}; the session's items \
                 are back in the queue",
                self.name
            ))
        };
        if let Some(loss) = self.client.session().loss_of(session_id) {
            return Err(lost(&loss));
        }
        let settled = self
            .client
            .unary_settling(call, |status| {
                !is_session_gone(status, session_id) && done_already(verb, status)
            })
            .await;
        match settled {
            Err(Error::Status(status)) if is_session_gone(&status, session_id) => {
                Err(lost(&status.message()))
            }
            other => other,
        }
    }
}

/// Whether a refusal of a retried ack or nack means that an earlier attempt
/// whose answer was lost did it. The server answers NOT_FOUND when the
/// item's life is over (acked, dead-lettered): an ack may have done that.
/// FAILED_PRECONDITION means the item is still there but not in flight for
/// this session (back in the queue, or delivered again): an ack did not
/// happen, while a nack did what it was for.
fn done_already(verb: &str, status: &Status) -> bool {
    match status.code() {
        Code::NotFound => true,
        Code::FailedPrecondition => verb == "nack",
        _ => false,
    }
}

/// Whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_every_field() {
        let item = Item {
            id: 7,
            value: b"job".to_vec(),
            priority: 2,
            deliveries: 3,
            fencing_token: 9,
        };
        assert_eq!(
            QueueItem::from(item),
            QueueItem {
                id: 7,
                value: b"job".to_vec(),
                priority: 2,
                deliveries: 3,
                fencing_token: 9,
            }
        );
    }

    #[test]
    fn only_a_finished_item_proves_an_earlier_ack() {
        let back = Status::failed_precondition("item 4 of queue \"q\" is back in the queue");
        let gone = Status::not_found("item 4 of queue \"q\" is not in the queue");
        assert!(done_already("ack", &gone));
        assert!(!done_already("ack", &back), "the ack did not happen");
        assert!(
            done_already("nack", &back),
            "the item is back, as a nack wants"
        );
        assert!(done_already("nack", &gone));
        assert!(!done_already("ack", &Status::internal("boom")));
    }

    #[test]
    fn visibility_timeouts_are_whole_milliseconds() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(999)), 0);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
