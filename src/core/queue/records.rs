//! The persisted form of queues: keys, records, and restore.
//!
//! - `queue/<name>` → `QueueRecord` (settings, dead-lettered count) while the
//!   queue is declared;
//! - `qitem/<name>` 0x00 `<id BE>` → `QueueItemRecord`, one per item, so a
//!   put or an ack writes one small record, never the whole queue;
//! - `putid/<session BE><put id BE>` → `PutIdRecord`;
//! - a waiting put, get or join is a `waiter/` record like every waiter
//!   (`records::waiters`): a put's record carries its value;
//! - an in-flight item's record has its visibility expiry, so its alarm
//!   comes back at the same time.

#[cfg(test)]
use std::collections::BTreeMap;

use prost::Message;

use super::super::records::waiters::Stub;
use super::super::records::{corrupt, decode, Change, RestoreError};
#[cfg(test)]
use super::super::FencingToken;
use super::super::{Alarm, Kind, Outcome, SessionId, State, WaiterId};
use super::{
    GetRequest, InFlight, Item, PutRequest, Queue, Wanted, ITEM_PREFIX, MAX_DELIVERIES_DEFAULT,
    PUT_ID_PREFIX, QUEUE_PREFIX,
};
use crate::proto::store as pb;
use pb::waiter_record::Request;

pub(super) fn named_key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

pub(super) fn item_key(name: &str, id: u64) -> Vec<u8> {
    [ITEM_PREFIX, name.as_bytes(), &[0], &id.to_be_bytes()].concat()
}

pub(super) fn put_id_key(session_id: SessionId, put_id: u64) -> Vec<u8> {
    [
        PUT_ID_PREFIX,
        &session_id.to_be_bytes(),
        &put_id.to_be_bytes(),
    ]
    .concat()
}

pub(super) fn queue_put_record(name: &str, queue: &Queue) -> Change {
    let record = pb::QueueRecord {
        capacity: queue.capacity,
        max_deliveries: queue.max_deliveries,
        dead_lettered: queue.dead_lettered,
    };
    Change::Put {
        key: named_key(QUEUE_PREFIX, name),
        value: record.encode_to_vec(),
    }
}

pub(super) fn item_put(name: &str, item: &Item, flight: Option<&InFlight>) -> Change {
    let record = pb::QueueItemRecord {
        id: item.id,
        priority: item.priority,
        value: item.value.clone(),
        deliveries: item.deliveries,
        session_id: flight.map_or(0, |f| f.session_id),
        fencing_token: flight.map_or(0, |f| f.fencing_token),
        visibility_timeout_ms: flight.map_or(0, |f| f.visibility_timeout_ms),
        visibility_expires_at_ms: flight.map_or(0, |f| f.expires_at_ms),
    };
    Change::Put {
        key: item_key(name, item.id),
        value: record.encode_to_vec(),
    }
}

pub(super) fn item_delete(name: &str, id: u64) -> Change {
    Change::Delete {
        key: item_key(name, id),
    }
}

/// Records read by `restore`, put together by `finish_queue_restore`.
#[derive(Debug, Default)]
pub(in crate::core) struct QueueRestore {
    queues: Vec<(String, pb::QueueRecord)>,
    items: Vec<(String, pb::QueueItemRecord)>,
    put_ids: Vec<(SessionId, u64, u64)>,
}

impl State {
    /// Takes a stored record if it belongs to queues.
    pub(in crate::core) fn restore_queue_record(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<bool, RestoreError> {
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(key, e));
        if let Some(name) = key.strip_prefix(QUEUE_PREFIX) {
            let record = decode(key, value)?;
            self.queue_restore.queues.push((text(name)?, record));
        } else if let Some(rest) = key.strip_prefix(ITEM_PREFIX) {
            let record: pb::QueueItemRecord = decode(key, value)?;
            let split = rest.len().checked_sub(9).filter(|&at| rest[at] == 0);
            let Some(at) = split else {
                return Err(corrupt(key, "not <name> 0x00 <id>"));
            };
            if rest[at + 1..] != record.id.to_be_bytes() {
                return Err(corrupt(key, "item id does not match its key"));
            }
            self.queue_restore.items.push((text(&rest[..at])?, record));
        } else if let Some(rest) = key.strip_prefix(PUT_ID_PREFIX) {
            let (Ok(session), Ok(put_id)) = (
                <[u8; 8]>::try_from(rest.get(..8).unwrap_or_default()),
                <[u8; 8]>::try_from(rest.get(8..).unwrap_or_default()),
            ) else {
                return Err(corrupt(key, "not <session> <put id>"));
            };
            let record: pb::PutIdRecord = decode(key, value)?;
            let (session, put_id) = (u64::from_be_bytes(session), u64::from_be_bytes(put_id));
            self.queue_restore
                .put_ids
                .push((session, put_id, record.item_id));
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Builds the queues from the records `restore_queue_record` took.
    pub(in crate::core) fn finish_queue_restore(
        &mut self,
    ) -> std::result::Result<(), RestoreError> {
        let stash = std::mem::take(&mut self.queue_restore);
        for (name, r) in stash.queues {
            let mut queue = Queue::new(r.capacity, r.max_deliveries.max(1));
            queue.dead_lettered = r.dead_lettered;
            self.queues.insert(name, queue);
        }
        for (name, r) in stash.items {
            self.restore_item(name, r)?;
        }
        // A session's put ids are kept oldest first, and each stored a new
        // item: item ids rise in the order the puts were made.
        let mut put_ids = stash.put_ids;
        put_ids.sort_by_key(|&(session_id, _, item_id)| (session_id, item_id));
        for (session_id, put_id, item_id) in put_ids {
            if self.sessions.get(session_id).is_none() {
                return Err(RestoreError(format!(
                    "put id {put_id} belongs to session {session_id}, which is not stored"
                )));
            }
            self.put_ids
                .entry(session_id)
                .or_default()
                .push_back((put_id, item_id));
        }
        Ok(())
    }

    fn restore_item(
        &mut self,
        name: String,
        r: pb::QueueItemRecord,
    ) -> std::result::Result<(), RestoreError> {
        if r.id == 0 || r.id > self.counters.last_object_id {
            return Err(RestoreError(format!(
                "queue {name:?} has item {}, beyond the id counter",
                r.id
            )));
        }
        if !self.queues.contains_key(&name) {
            return Err(RestoreError(format!(
                "item {} belongs to queue {name:?}, which is not stored",
                r.id
            )));
        }
        let item = Item {
            id: r.id,
            priority: r.priority,
            value: r.value,
            deliveries: r.deliveries,
        };
        if r.fencing_token == 0 {
            self.queues.get_mut(&name).expect("checked").add_ready(item);
            return Ok(());
        }
        let token = r.fencing_token;
        self.restore_hold_ref(Kind::Queue, &name, r.session_id, token, 0)?;
        let visibility_timeout_ms = r.visibility_timeout_ms.max(1);
        // Records of an older syncd have no expiry: it restarts then, as
        // that syncd did at every restore.
        let expires_at_ms = match r.visibility_expires_at_ms {
            0 => self.now_ms.saturating_add(visibility_timeout_ms),
            at => at,
        };
        let flight = InFlight {
            item,
            session_id: r.session_id,
            fencing_token: token,
            visibility_timeout_ms,
            expires_at_ms,
        };
        self.set_alarm(flight.expires_at_ms, Alarm::HoldExpires(token));
        let queue = self.queues.get_mut(&name).expect("checked");
        queue.pending.insert(flight.item.id);
        queue.in_flight.insert(flight.item.id, flight);
        Ok(())
    }

    /// The stub and request of a waiter of queue `name`, for its record.
    pub(in crate::core) fn queue_waiter_record(
        &self,
        name: &str,
        id: WaiterId,
    ) -> Option<(Stub, Request)> {
        let queue = self.queues.get(name)?;
        let waiter = (queue.waiter_queues().into_iter())
            .find_map(|line| line.iter().find(|w| w.id == id))?;
        let request = match &waiter.request {
            Wanted::Put(put) => Request::QueuePut(pb::QueuePutWaiter {
                value: put.value.clone(),
                priority: put.priority,
                capacity: put.capacity,
                max_deliveries: put.max_deliveries,
                put_id: put.put_id,
            }),
            Wanted::Get(get) => Request::QueueGet(pb::QueueGetWaiter {
                visibility_timeout_ms: get.visibility_timeout_ms,
                no_ack: get.no_ack,
            }),
            Wanted::Join(upto) => Request::QueueJoin(pb::QueueJoinWaiter { upto: *upto }),
        };
        Some((Stub::of(waiter), request))
    }

    /// Adds a restored waiter to its line of queue `name` (after
    /// `finish_queue_restore`). Only gets wait on a queue that no put has
    /// made (it has no record); it comes back with the defaults, as it was.
    pub(in crate::core) fn restore_queue_waiter(
        &mut self,
        name: &str,
        stub: Stub,
        request: Request,
    ) -> std::result::Result<(), &'static str> {
        let queue = match request {
            Request::QueueGet(_) => self.queues.entry(name.to_owned()).or_insert_with(|| Queue {
                declared: false,
                ..Queue::new(0, MAX_DELIVERIES_DEFAULT)
            }),
            _ => self.queues.get_mut(name).ok_or("its queue is not stored")?,
        };
        let (line, wanted) = match request {
            Request::QueuePut(r) => {
                let put = PutRequest {
                    value: r.value,
                    priority: r.priority,
                    capacity: r.capacity,
                    max_deliveries: r.max_deliveries,
                    put_id: r.put_id,
                };
                (&mut queue.puts, Wanted::Put(put))
            }
            Request::QueueGet(r) => {
                let get = GetRequest {
                    visibility_timeout_ms: r.visibility_timeout_ms,
                    no_ack: r.no_ack,
                };
                (&mut queue.gets, Wanted::Get(get))
            }
            Request::QueueJoin(r) => (&mut queue.joins, Wanted::Join(r.upto)),
            _ => return Err("it is not a queue waiter"),
        };
        line.push_restored(stub.with(wanted))
            .map_err(|_| "it is out of order in its queue")
    }

    /// After a restart: every visibility timeout starts again at `now`, as
    /// leases do (`Command::Resume`).
    pub(in crate::core) fn queue_resume(&mut self, out: &mut Outcome) {
        let now_ms = self.now_ms;
        let mut moved = Vec::new();
        for (name, queue) in &mut self.queues {
            for flight in queue.in_flight.values_mut() {
                let at_ms = now_ms.saturating_add(flight.visibility_timeout_ms);
                let was_ms = std::mem::replace(&mut flight.expires_at_ms, at_ms);
                moved.push((was_ms, at_ms, flight.fencing_token));
                out.changes.push(item_put(name, &flight.item, Some(flight)));
            }
        }
        for (was_ms, at_ms, token) in moved {
            self.clear_alarm(was_ms, Alarm::HoldExpires(token));
            self.set_alarm(at_ms, Alarm::HoldExpires(token));
        }
    }

    /// The queue, session and item of an in-flight token (for tests).
    #[cfg(test)]
    pub(in crate::core) fn queue_item_of(&self, token: FencingToken) -> (String, SessionId, u64) {
        for (name, queue) in &self.queues {
            if let Some(id) = queue.in_flight_by_token(token) {
                return (name.clone(), queue.in_flight[&id].session_id, id);
            }
        }
        panic!("token {token} is not a queue item in flight")
    }

    /// For the index cross-check in tests.
    #[cfg(test)]
    pub(in crate::core) fn collect_queues(
        &self,
        holds: &mut BTreeMap<FencingToken, super::super::holds::Place>,
        waiters: &mut BTreeMap<WaiterId, super::super::holds::Place>,
    ) {
        for (name, queue) in &self.queues {
            for flight in queue.in_flight.values() {
                let place = (Kind::Queue, name.clone(), flight.session_id);
                holds.insert(flight.fencing_token, place);
            }
            for line in queue.waiter_queues() {
                for w in line.iter() {
                    waiters.insert(w.id, (Kind::Queue, name.clone(), w.session_id));
                }
            }
        }
    }
}
