//! How items and waiters settle: acks and nacks, items coming back or
//! going to the dead-letter queue, waiting puts, gets and joins served, and
//! the put ids that make retried puts safe.

use super::super::records::Change;
use super::super::waitq::Waiter;
use super::super::{
    Alarm, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary,
    WaiterId,
};
use super::records::{item_delete, item_put, named_key, put_id_key, queue_put_record};
use super::{
    Item, Queue, QueueInfo, Wanted, DEAD_LETTER_SUFFIX, MAX_DELIVERIES_DEFAULT, QUEUE_PREFIX,
};
use crate::proto::store as pb;
use prost::Message;

impl State {
    pub(in crate::core) fn queue_ack(
        &mut self,
        session_id: SessionId,
        name: String,
        item_id: u64,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let token = self.in_flight_of(session_id, &name, item_id)?;
        self.unregister_hold(token, out);
        let queue = self.queues.get_mut(&name).expect("checked above");
        let flight = queue.in_flight.remove(&item_id).expect("checked above");
        queue.pending.remove(&item_id);
        self.clear_alarm(flight.expires_at_ms, Alarm::HoldExpires(token));
        out.changes.push(item_delete(&name, item_id));
        self.queue_wake(&name, out);
        Ok(Reply::Done)
    }

    pub(in crate::core) fn queue_nack(
        &mut self,
        session_id: SessionId,
        name: String,
        item_id: u64,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let token = self.in_flight_of(session_id, &name, item_id)?;
        let queue = self.queues.get(&name).expect("checked above");
        let flight = queue.in_flight.get(&item_id).expect("checked above");
        let dead_lettered = flight.item.deliveries >= queue.max_deliveries;
        self.release_hold(token, out);
        Ok(Reply::Nacked { dead_lettered })
    }

    /// The token under which `session_id` has item `item_id` in flight.
    fn in_flight_of(
        &self,
        session_id: SessionId,
        name: &str,
        item_id: u64,
    ) -> Result<FencingToken> {
        self.validate_queue_name(name)?;
        self.require_session(session_id)?;
        let queue = self.queues.get(name);
        let flight = queue.and_then(|q| q.in_flight.get(&item_id));
        // The codes matter to clients that retry an ack whose answer was
        // lost: NOT_FOUND (the item's life is over) means an earlier attempt
        // may have done it; FAILED_PRECONDITION (the item is still there)
        // means the ack did not happen and the item will be delivered again.
        match flight {
            Some(f) if f.session_id == session_id => Ok(f.fencing_token),
            Some(f) => Err(Rejection::new(
                Code::FailedPrecondition,
                format!(
                    "item {item_id} of queue {name:?} is in flight for session {}, not {session_id}",
                    f.session_id
                ),
            )),
            None if queue.is_some_and(|q| q.pending.contains(&item_id)) => Err(Rejection::new(
                Code::FailedPrecondition,
                format!(
                    "item {item_id} of queue {name:?} is not in flight: it is back in the queue \
                     (nacked, or its visibility timeout passed)"
                ),
            )),
            None => Err(Rejection::new(
                Code::NotFound,
                format!(
                    "item {item_id} of queue {name:?} is not in the queue (acked already, taken \
                     by a no-ack get, or dead-lettered)"
                ),
            )),
        }
    }

    pub(in crate::core) fn queue_join(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
    ) -> Result<Reply> {
        self.validate_queue_name(&name)?;
        self.require_session(session_id)?;
        let upto = self.counters.last_object_id;
        let done = self
            .queues
            .get(&name)
            .is_none_or(|q| q.pending.first().is_none_or(|&id| id > upto));
        if done {
            return Ok(Reply::Joined);
        }
        if timeout_ms == Some(0) {
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!("queue {name:?} has items not yet acked"),
            ));
        }
        let entry = self.waiter_entry(waiter, session_id, Wanted::Join(upto));
        let limit = self.limits.waiters_per_primitive_max;
        let queue = self.queues.get_mut(&name).expect("has pending items");
        let pushed = queue.joins.push(entry, limit);
        self.admit_waiter(pushed, Kind::Queue, &name, waiter, session_id, timeout_ms)
    }

    /// An in-flight hold ended without an ack (nack, visibility timeout,
    /// session end, undelivered): the item goes back to its place, or to the
    /// dead-letter queue.
    pub(in crate::core) fn queue_drop_hold(
        &mut self,
        name: &str,
        token: FencingToken,
        out: &mut Outcome,
    ) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let Some(item_id) = queue.in_flight_by_token(token) else {
            return;
        };
        let flight = queue.in_flight.remove(&item_id).expect("found above");
        self.clear_alarm(flight.expires_at_ms, Alarm::HoldExpires(token));
        let queue = self.queues.get_mut(name).expect("still there");
        // Keep in step with `queue_nack`, which predicts this.
        if flight.item.deliveries < queue.max_deliveries {
            out.changes.push(item_put(name, &flight.item, None));
            queue.pending.remove(&item_id);
            queue.add_ready(flight.item);
            return;
        }
        queue.pending.remove(&item_id);
        queue.dead_lettered += 1;
        out.changes.push(queue_put_record(name, queue));
        out.changes.push(item_delete(name, item_id));
        self.dead_letter(name, flight.item, out);
    }

    /// Moves an item into `<name>.dlq`, with its deliveries reset.
    fn dead_letter(&mut self, name: &str, mut item: Item, out: &mut Outcome) {
        let dead = format!("{name}{DEAD_LETTER_SUFFIX}");
        if !self.queues.contains_key(&dead) {
            self.create_queue(&dead, 0, MAX_DELIVERIES_DEFAULT, out);
        }
        item.deliveries = 0;
        out.changes.push(item_put(&dead, &item, None));
        self.queues
            .get_mut(&dead)
            .expect("made above")
            .add_ready(item);
        self.queue_wake(&dead, out);
    }

    /// Serves waiting puts, gets and joins while they can be served; forgets
    /// the queue when nobody uses it.
    pub(in crate::core) fn queue_wake(&mut self, name: &str, out: &mut Outcome) {
        loop {
            let Some(queue) = self.queues.get_mut(name) else {
                return;
            };
            let items_max = self.limits.queue_items_max;
            if queue.has_room(items_max) {
                if let Some(waiter) = queue.puts.pop_front() {
                    self.finish_put(name, waiter, out);
                    continue;
                }
            }
            if !queue.ready.is_empty() {
                if let Some(waiter) = queue.gets.pop_front() {
                    let Wanted::Get(get) = waiter.request else {
                        unreachable!("only gets wait in `gets`")
                    };
                    self.unregister_waiter(waiter.id);
                    let delivery = self.deliver(name, waiter.session_id, get, out);
                    out.events.push((waiter.id, Ok(Reply::Delivered(delivery))));
                    continue;
                }
            }
            break;
        }
        self.wake_joins(name, out);
        self.queue_forget_if_unused(name, out);
    }

    fn finish_put(&mut self, name: &str, waiter: Waiter<Wanted>, out: &mut Outcome) {
        let Wanted::Put(put) = waiter.request else {
            unreachable!("only puts wait in `puts`")
        };
        self.unregister_waiter(waiter.id);
        let item_id = self.store_item(name, waiter.session_id, put, out);
        out.events.push((waiter.id, Ok(Reply::Stored { item_id })));
    }

    /// Answers every join whose items are all gone.
    fn wake_joins(&mut self, name: &str, out: &mut Outcome) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let oldest = queue.pending.first().copied();
        let satisfied: Vec<WaiterId> = (queue.joins.iter())
            .filter(
                |w| matches!(w.request, Wanted::Join(upto) if oldest.is_none_or(|id| id > upto)),
            )
            .map(|w| w.id)
            .collect();
        for &id in &satisfied {
            queue.joins.remove(id);
        }
        for id in satisfied {
            self.unregister_waiter(id);
            out.events.push((id, Ok(Reply::Joined)));
        }
    }

    pub(super) fn queue_forget_if_unused(&mut self, name: &str, out: &mut Outcome) {
        if self.queues.get(name).is_some_and(Queue::is_unused) {
            let queue = self.queues.remove(name).expect("checked");
            if queue.declared {
                out.changes.push(Change::Delete {
                    key: named_key(QUEUE_PREFIX, name),
                });
            }
        }
    }

    /// Removes a waiter from whichever of the queue's lines it is in.
    pub(in crate::core) fn queue_remove_waiter(&mut self, name: &str, waiter: WaiterId) {
        if let Some(queue) = self.queues.get_mut(name) {
            for line in [&mut queue.puts, &mut queue.gets, &mut queue.joins] {
                if line.remove(waiter).is_some() {
                    return;
                }
            }
        }
    }

    pub(in crate::core) fn queue_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_queue_name(name)?;
        let queue = self.queues.get(name);
        let waiters = queue.map_or_else(Vec::new, |q| {
            (q.waiter_queues().into_iter())
                .flat_map(|line| line.iter())
                .map(|w| self.waiter_info(now_ms, w))
                .collect()
        });
        Ok(Reply::QueueDescription(QueueInfo {
            name: name.to_owned(),
            capacity: queue.map_or(0, |q| q.capacity),
            max_deliveries: queue.map_or(0, |q| q.max_deliveries),
            ready: queue.map_or(0, |q| q.ready.len() as u64),
            in_flight: queue.map_or(0, |q| q.in_flight.len() as u64),
            dead_lettered: queue.map_or(0, |q| q.dead_lettered),
            waiting_puts: queue.map_or(0, |q| q.puts.len() as u32),
            waiting_gets: queue.map_or(0, |q| q.gets.len() as u32),
            waiters,
        }))
    }

    pub(in crate::core) fn queue_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::super::named(&self.queues, prefix)
            .map(|(name, q)| Summary {
                kind: Kind::Queue,
                name: name.clone(),
                state: format!(
                    "{} ready, {} in flight, {} dead-lettered, {} puts and {} gets waiting",
                    q.ready.len(),
                    q.in_flight.len(),
                    q.dead_lettered,
                    q.puts.len(),
                    q.gets.len()
                ),
            })
            .collect()
    }

    // --- put ids ---------------------------------------------------------

    pub(super) fn retried_put(&self, session_id: SessionId, put_id: u64) -> Option<u64> {
        if put_id == 0 {
            return None;
        }
        let ids = self.put_ids.get(&session_id)?;
        ids.iter()
            .find(|(p, _)| *p == put_id)
            .map(|(_, item)| *item)
    }

    pub(super) fn remember_put(
        &mut self,
        session_id: SessionId,
        put_id: u64,
        item_id: u64,
        out: &mut Outcome,
    ) {
        let limit = self.limits.put_ids_per_session_max;
        let ids = self.put_ids.entry(session_id).or_default();
        ids.push_back((put_id, item_id));
        out.changes.push(Change::Put {
            key: put_id_key(session_id, put_id),
            value: pb::PutIdRecord { item_id }.encode_to_vec(),
        });
        while ids.len() > limit {
            let (old, _) = ids.pop_front().expect("over the limit");
            out.changes.push(Change::Delete {
                key: put_id_key(session_id, old),
            });
        }
    }

    /// Forgets the put ids of a session that ended.
    pub(in crate::core) fn forget_put_ids(&mut self, session_id: SessionId, out: &mut Outcome) {
        for (put_id, _) in self.put_ids.remove(&session_id).unwrap_or_default() {
            out.changes.push(Change::Delete {
                key: put_id_key(session_id, put_id),
            });
        }
    }
}
