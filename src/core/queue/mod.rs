//! Queue: durable, bounded, ordered by priority, delivered at least once.
//!
//! Policy:
//! - Items are served lowest priority number first, in put order among
//!   equal priorities (item ids only increase, so `(priority, id)` is the
//!   order). A plain FIFO queue is one whose items share a priority.
//! - The capacity (0 = only `queue_items_max`) bounds the items ready or in
//!   flight. A put into a full queue waits, FIFO, until there is room
//!   (backpressure); gets wait, FIFO, while nothing is ready. A queue with
//!   capacity 0 that reaches `queue_items_max` refuses puts instead.
//! - A get hands the first ready item out in flight: a hold of the
//!   getter's session with its own fencing token and a visibility timeout.
//!   Ack removes it; nack, the timeout, the session's end, or a grant that
//!   could not be delivered put it back at its place in the order. Each
//!   delivery is counted; an item that comes back after `max_deliveries`
//!   deliveries goes to the dead-letter queue `<name>.dlq` instead.
//!   A no-ack get removes the item at delivery (at most once).
//! - A put with a nonzero `put_id` that the session made before answers
//!   with the first put's item id and stores nothing (the session remembers
//!   its last `put_ids_per_session_max` put ids, on disk).
//! - Join waits until every item with an id up to the last one handed out
//!   when it joined has been acked, removed or dead-lettered.
//! - A queue exists while it has items or waiters; its settings are fixed
//!   by the put that creates it.
//!
//! Invariants:
//! - every item is ready or in flight, never both, and its id is in
//!   `pending`; `ready.len() + in_flight.len()` ≤ the effective capacity,
//!   except for items put back or dead-lettered into a full queue;
//! - an in-flight item's token is a hold of its session (kind `Queue`) with
//!   a `HoldExpires` alarm at its visibility deadline;
//! - after `queue_wake`, no waiting put fits and no waiting get could be
//!   served, and no join is satisfied.

mod records;
mod settle;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub(super) use self::records::QueueRestore;
use self::records::{item_delete, item_put, queue_put_record};
use super::holds::WaiterInfo;
use super::waitq::WaitQueue;
use super::{
    Alarm, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, WaiterId,
};

/// Deliveries before an item is dead-lettered, for a new queue that does
/// not say.
pub const MAX_DELIVERIES_DEFAULT: u32 = 5;
/// How long a delivered item stays in flight when the get does not say.
pub const VISIBILITY_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Appended to a queue's name to name its dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

const QUEUE_PREFIX: &[u8] = b"queue/";
const ITEM_PREFIX: &[u8] = b"qitem/";
const PUT_ID_PREFIX: &[u8] = b"putid/";

/// A put: the item and the settings the queue must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub value: Vec<u8>,
    pub priority: u32,
    pub capacity: Option<u32>,
    pub max_deliveries: u32,
    pub put_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetRequest {
    /// 0 = the default.
    pub visibility_timeout_ms: u64,
    pub no_ack: bool,
}

/// An item handed out by a get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    pub value: Vec<u8>,
    pub priority: u32,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
    /// The in-flight hold; `None` for a no-ack get.
    pub fencing_token: Option<FencingToken>,
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub capacity: u32,
    pub max_deliveries: u32,
    pub ready: u64,
    pub in_flight: u64,
    pub dead_lettered: u64,
    pub waiting_puts: u32,
    pub waiting_gets: u32,
    pub waiters: Vec<WaiterInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    id: u64,
    priority: u32,
    value: Vec<u8>,
    deliveries: u32,
}

#[derive(Clone, Debug)]
struct InFlight {
    item: Item,
    session_id: SessionId,
    fencing_token: FencingToken,
    visibility_timeout_ms: u64,
    expires_at_ms: u64,
}

/// What a waiter of a queue waits for.
#[derive(Clone, Debug)]
enum Wanted {
    Put(PutRequest),
    Get(GetRequest),
    /// Every item with an id up to this one gone.
    Join(u64),
}

#[derive(Clone, Debug)]
pub struct Queue {
    /// False while only gets wait on a queue no put has made: its settings
    /// are the first put's.
    declared: bool,
    capacity: u32,
    max_deliveries: u32,
    dead_lettered: u64,
    ready: BTreeMap<(u32, u64), Item>,
    in_flight: BTreeMap<u64, InFlight>,
    /// Ids of every item ready or in flight.
    pending: BTreeSet<u64>,
    puts: WaitQueue<Wanted>,
    gets: WaitQueue<Wanted>,
    joins: WaitQueue<Wanted>,
}

impl Queue {
    fn new(capacity: u32, max_deliveries: u32) -> Queue {
        Queue {
            declared: true,
            capacity,
            max_deliveries,
            dead_lettered: 0,
            ready: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            pending: BTreeSet::new(),
            puts: WaitQueue::default(),
            gets: WaitQueue::default(),
            joins: WaitQueue::default(),
        }
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    /// Items ready for a get (not in flight).
    pub(in crate::core) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    fn has_room(&self, items_max: usize) -> bool {
        let limit = match self.capacity {
            0 => items_max,
            capacity => (capacity as usize).min(items_max),
        };
        self.len() < limit
    }

    fn is_unused(&self) -> bool {
        self.pending.is_empty()
            && self.puts.is_empty()
            && self.gets.is_empty()
            && self.joins.is_empty()
    }

    fn add_ready(&mut self, item: Item) {
        self.pending.insert(item.id);
        self.ready.insert((item.priority, item.id), item);
    }

    fn waiter_queues(&self) -> [&WaitQueue<Wanted>; 3] {
        [&self.puts, &self.gets, &self.joins]
    }

    /// Every item id, ready or in flight (for tests).
    #[cfg(test)]
    pub(super) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.iter().copied()
    }

    /// The item a get would receive now (for tests).
    #[cfg(test)]
    pub(super) fn first_ready(&self) -> Option<u64> {
        self.ready.keys().next().map(|(_, id)| *id)
    }

    /// In-flight items with their sessions (for tests).
    #[cfg(test)]
    pub(super) fn in_flight_items(&self) -> impl Iterator<Item = (u64, SessionId)> + '_ {
        self.in_flight.values().map(|f| (f.item.id, f.session_id))
    }

    #[cfg(test)]
    pub(super) fn holder_of(&self, id: u64) -> Option<SessionId> {
        self.in_flight.get(&id).map(|f| f.session_id)
    }

    /// The in-flight item held under `token`.
    fn in_flight_by_token(&self, token: FencingToken) -> Option<u64> {
        (self.in_flight.values())
            .find(|f| f.fencing_token == token)
            .map(|f| f.item.id)
    }
}

/// Put ids a session made, oldest first, with the items they stored.
pub(super) type PutIds = VecDeque<(u64, u64)>;

impl State {
    /// Queue names leave room for the dead-letter suffix.
    fn validate_queue_name(&self, name: &str) -> Result<()> {
        self.validate_name(Kind::Queue, name)?;
        let limit = self.limits.name_bytes_max - DEAD_LETTER_SUFFIX.len();
        if name.len() > limit && !name.ends_with(DEAD_LETTER_SUFFIX) {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "queue name is {} bytes, the limit is {limit} (room for {DEAD_LETTER_SUFFIX:?})",
                    name.len()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn queue_put(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        put: PutRequest,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_queue_name(&name)?;
        self.require_session(session_id)?;
        if put.value.len() > self.limits.item_bytes_max {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "item is {} bytes, the limit is {} (item_bytes_max)",
                    put.value.len(),
                    self.limits.item_bytes_max
                ),
            ));
        }
        if let Some(item_id) = self.retried_put(session_id, put.put_id) {
            return Ok(Reply::Stored { item_id });
        }
        self.queue_for_put(&name, &put, out)?;
        let items_max = self.limits.queue_items_max;
        let queue = self.queues.get(&name).expect("made above");
        if queue.puts.is_empty() && queue.has_room(items_max) {
            let item_id = self.store_item(&name, session_id, put, out);
            self.queue_wake(&name, out);
            return Ok(Reply::Stored { item_id });
        }
        if queue.capacity == 0 {
            let len = queue.len();
            self.queue_forget_if_unused(&name, out);
            return Err(Rejection::new(
                Code::ResourceExhausted,
                format!("queue_items_max: queue {name:?} already holds {len} items"),
            ));
        }
        if timeout_ms == Some(0) {
            let capacity = queue.capacity;
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!("queue {name:?} is full ({capacity} items)"),
            ));
        }
        let entry = self.waiter_entry(waiter, session_id, Wanted::Put(put));
        let limit = self.limits.waiters_per_primitive_max;
        let queue = self.queues.get_mut(&name).expect("exists");
        let pushed = queue.puts.push(entry, limit);
        self.admit_waiter(pushed, Kind::Queue, &name, waiter, session_id, timeout_ms)
    }

    /// The queue a put goes to: checks its settings, or creates it.
    fn queue_for_put(&mut self, name: &str, put: &PutRequest, out: &mut Outcome) -> Result<()> {
        match self.queues.get(name) {
            Some(queue) if queue.declared => {
                let capacity_differs = put.capacity.is_some_and(|c| c != queue.capacity);
                let deliveries_differ =
                    put.max_deliveries != 0 && put.max_deliveries != queue.max_deliveries;
                if capacity_differs || deliveries_differ {
                    return Err(Rejection::new(
                        Code::FailedPrecondition,
                        format!(
                            "queue {name:?} exists with capacity {} and max_deliveries {}",
                            queue.capacity, queue.max_deliveries
                        ),
                    ));
                }
                Ok(())
            }
            _ => {
                let max_deliveries = match put.max_deliveries {
                    0 => MAX_DELIVERIES_DEFAULT,
                    n => n,
                };
                self.create_queue(name, put.capacity.unwrap_or(0), max_deliveries, out);
                Ok(())
            }
        }
    }

    /// Declares a queue with its settings, keeping the gets that already
    /// wait on it.
    fn create_queue(&mut self, name: &str, capacity: u32, max_deliveries: u32, out: &mut Outcome) {
        let fresh = Queue::new(capacity, max_deliveries);
        let queue = self.queues.entry(name.to_owned()).or_insert(fresh);
        queue.declared = true;
        queue.capacity = capacity;
        queue.max_deliveries = max_deliveries;
        out.changes.push(queue_put_record(name, queue));
    }

    /// Stores a new item (there is room); returns its id.
    fn store_item(
        &mut self,
        name: &str,
        session_id: SessionId,
        put: PutRequest,
        out: &mut Outcome,
    ) -> u64 {
        let id = self.next_object_id(out);
        let item = Item {
            id,
            priority: put.priority,
            value: put.value,
            deliveries: 0,
        };
        out.changes.push(item_put(name, &item, None));
        self.queues.get_mut(name).expect("exists").add_ready(item);
        if put.put_id != 0 {
            self.remember_put(session_id, put.put_id, id, out);
        }
        id
    }

    pub(super) fn queue_get(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        get: GetRequest,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_queue_name(&name)?;
        self.require_session(session_id)?;
        let ready_now = self
            .queues
            .get(&name)
            .is_some_and(|q| q.gets.is_empty() && !q.ready.is_empty());
        if ready_now {
            let delivery = self.deliver(&name, session_id, get, out);
            self.queue_wake(&name, out);
            return Ok(Reply::Delivered(delivery));
        }
        if timeout_ms == Some(0) {
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!("queue {name:?} has no item ready"),
            ));
        }
        let entry = self.waiter_entry(waiter, session_id, Wanted::Get(get));
        let limit = self.limits.waiters_per_primitive_max;
        // A get may wait for a queue no put has made yet: it lives in
        // memory only, with the defaults, until a put stores it.
        let queue = (self.queues.entry(name.clone())).or_insert_with(|| Queue {
            declared: false,
            ..Queue::new(0, MAX_DELIVERIES_DEFAULT)
        });
        let pushed = queue.gets.push(entry, limit);
        let admitted =
            self.admit_waiter(pushed, Kind::Queue, &name, waiter, session_id, timeout_ms);
        if admitted.is_err() {
            self.queue_forget_if_unused(&name, out);
        }
        admitted
    }

    /// Hands the first ready item to `session_id`.
    fn deliver(
        &mut self,
        name: &str,
        session_id: SessionId,
        get: GetRequest,
        out: &mut Outcome,
    ) -> Delivery {
        let queue = self.queues.get_mut(name).expect("delivering from a queue");
        let (_, mut item) = queue.ready.pop_first().expect("an item is ready");
        item.deliveries += 1;
        if get.no_ack {
            queue.pending.remove(&item.id);
            out.changes.push(item_delete(name, item.id));
            return Delivery {
                id: item.id,
                value: item.value,
                priority: item.priority,
                deliveries: item.deliveries,
                fencing_token: None,
            };
        }
        let hold = self.new_hold(session_id, Kind::Queue, name, 0, out);
        let visibility_timeout_ms = match get.visibility_timeout_ms {
            0 => VISIBILITY_TIMEOUT_MS_DEFAULT,
            ms => ms,
        };
        let flight = InFlight {
            item,
            session_id,
            fencing_token: hold.fencing_token,
            visibility_timeout_ms,
            expires_at_ms: self.now_ms.saturating_add(visibility_timeout_ms),
        };
        self.set_alarm(flight.expires_at_ms, Alarm::HoldExpires(hold.fencing_token));
        out.changes
            .push(item_put(name, &flight.item, Some(&flight)));
        let delivery = Delivery {
            id: flight.item.id,
            value: flight.item.value.clone(),
            priority: flight.item.priority,
            deliveries: flight.item.deliveries,
            fencing_token: Some(hold.fencing_token),
        };
        let queue = self.queues.get_mut(name).expect("still there");
        queue.in_flight.insert(flight.item.id, flight);
        delivery
    }
}
