//! The one waiter queue every primitive uses.
//!
//! Policy: strict FIFO. A waiter keeps its place until it is granted or it
//! leaves (cancel, timeout, session end); nobody overtakes it.
//!
//! Invariants:
//! - a waiter id appears at most once;
//! - the queue never holds more than its bound (`push` refuses beyond it);
//! - `arrival` rises strictly from front to back: `push` gives each waiter
//!   one more than the waiter before it (0 in an empty queue). That number is
//!   persisted with the waiter, and a restore rebuilds the queue in its
//!   order, so the order survives without trusting `WaiterId`s (the engine
//!   allocates those concurrently: they need not rise in arrival order).

use std::collections::VecDeque;

use super::{SessionId, WaiterId};

/// One waiting request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter<R> {
    pub id: WaiterId,
    pub session_id: SessionId,
    pub enqueued_at_ms: u64,
    /// Its place in the queue's order (see the module doc); set by `push`.
    pub arrival: u64,
    /// What the waiter asks for (kind-specific).
    pub request: R,
}

/// A bounded FIFO of waiters.
#[derive(Clone, Debug)]
pub struct WaitQueue<R> {
    waiters: VecDeque<Waiter<R>>,
}

impl<R> Default for WaitQueue<R> {
    fn default() -> Self {
        WaitQueue {
            waiters: VecDeque::new(),
        }
    }
}

/// The queue is at its bound.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull {
    pub limit: usize,
}

impl<R> WaitQueue<R> {
    /// Appends a waiter; returns its 1-based position.
    pub fn push(&mut self, mut waiter: Waiter<R>, limit: usize) -> Result<usize, QueueFull> {
        if self.waiters.len() >= limit {
            return Err(QueueFull { limit });
        }
        debug_assert!(self.position(waiter.id).is_none(), "waiter id reused");
        waiter.arrival = self.back().map_or(0, |w| w.arrival.saturating_add(1));
        self.waiters.push_back(waiter);
        Ok(self.waiters.len())
    }

    /// Appends a restored waiter with its stored `arrival`, which must be
    /// above the last one's (restore pushes in arrival order); gives the
    /// waiter back if it is not. No bound: what was stored is kept.
    pub fn push_restored(&mut self, waiter: Waiter<R>) -> Result<(), Waiter<R>> {
        let in_order = self.back().is_none_or(|w| w.arrival < waiter.arrival);
        if !in_order || self.position(waiter.id).is_some() {
            return Err(waiter);
        }
        self.waiters.push_back(waiter);
        Ok(())
    }

    fn back(&self) -> Option<&Waiter<R>> {
        self.waiters.back()
    }

    /// Removes a waiter wherever it stands.
    pub fn remove(&mut self, id: WaiterId) -> Option<Waiter<R>> {
        let index = self.waiters.iter().position(|w| w.id == id)?;
        self.waiters.remove(index)
    }

    /// The 1-based position of a waiter.
    pub fn position(&self, id: WaiterId) -> Option<usize> {
        self.waiters.iter().position(|w| w.id == id).map(|i| i + 1)
    }

    /// The first in line.
    pub fn front(&self) -> Option<&Waiter<R>> {
        self.waiters.front()
    }

    pub fn pop_front(&mut self) -> Option<Waiter<R>> {
        self.waiters.pop_front()
    }

    /// Empties the queue, first in line first.
    pub fn take_all(&mut self) -> Vec<Waiter<R>> {
        self.waiters.drain(..).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Waiter<R>> {
        self.waiters.iter()
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: u64) -> Waiter<()> {
        Waiter {
            id: WaiterId(id),
            session_id: 1,
            enqueued_at_ms: 0,
            arrival: 0,
            request: (),
        }
    }

    #[test]
    fn fifo_order_and_positions() {
        let mut q = WaitQueue::default();
        assert_eq!(q.push(waiter(1), 10), Ok(1));
        assert_eq!(q.push(waiter(2), 10), Ok(2));
        assert_eq!(q.push(waiter(3), 10), Ok(3));
        assert_eq!(q.remove(WaiterId(2)).map(|w| w.id), Some(WaiterId(2)));
        assert_eq!(q.position(WaiterId(3)), Some(2));
        assert_eq!(q.pop_front().map(|w| w.id), Some(WaiterId(1)));
        assert_eq!(q.pop_front().map(|w| w.id), Some(WaiterId(3)));
        assert!(q.is_empty());
    }

    #[test]
    fn arrivals_rise_from_front_to_back_and_restore_in_order() {
        let mut q = WaitQueue::default();
        for id in [7, 3, 5] {
            q.push(waiter(id), 10).unwrap();
        }
        let arrivals = |q: &WaitQueue<()>| -> Vec<(u64, u64)> {
            q.iter().map(|w| (w.id.0, w.arrival)).collect()
        };
        assert_eq!(arrivals(&q), vec![(7, 0), (3, 1), (5, 2)]);
        q.remove(WaiterId(5));
        q.push(waiter(1), 10).unwrap();
        assert_eq!(arrivals(&q), vec![(7, 0), (3, 1), (1, 2)]);
        let mut back = WaitQueue::default();
        for w in q.iter() {
            back.push_restored(w.clone()).unwrap();
        }
        assert_eq!(arrivals(&back), arrivals(&q));
        let late = Waiter {
            arrival: 1,
            ..waiter(9)
        };
        assert!(back.push_restored(late).is_err(), "out of order");
    }

    #[test]
    fn bound_is_enforced() {
        let mut q = WaitQueue::default();
        q.push(waiter(1), 1).unwrap();
        assert_eq!(q.push(waiter(2), 1), Err(QueueFull { limit: 1 }));
        assert_eq!(q.len(), 1);
    }
}
