//! What the engine records for the metrics: grants, the wait until a grant
//! and the time a hold was held, all derived from what a turn produced (the
//! replies, the waiters' events, and the holds the core reports granted and
//! ended in its `Outcome`). Only built with `--metrics-listen`.
//!
//! Times are the engine clock's milliseconds at the turn that queued,
//! granted or ended something. Both maps are bounded by the state: an entry
//! per hold and per queued waiter, removed when the hold ends or the
//! waiter's final event (or its cancel) goes through.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Deliveries, Event};
use crate::core::{FencingToken, Kind, Outcome, Reply, WaiterId};
use crate::metrics::Metrics;

pub(super) struct Tracker {
    pub(super) metrics: Arc<Metrics>,
    /// Turns counted, to tell a grant of this turn from an earlier one.
    turn: u64,
    /// Holds granted since the start: kind, when, in which turn.
    held: HashMap<FencingToken, (Kind, u64, u64)>,
    /// Waiters that got `Queued`: since when.
    waiting: HashMap<WaiterId, u64>,
}

impl Tracker {
    pub(super) fn new(metrics: Arc<Metrics>) -> Tracker {
        Tracker {
            metrics,
            turn: 0,
            held: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// A turn applies `commands` commands (its queries counted with them).
    pub(super) fn start_turn(&mut self, commands: usize) {
        self.turn += 1;
        if commands > 0 {
            self.metrics.engine_batch_commands.observe(commands as f64);
        }
    }

    /// A waiter left without a final event (its stream was dropped).
    pub(super) fn cancelled(&mut self, waiter: WaiterId) {
        self.waiting.remove(&waiter);
    }

    /// Everything a turn did, once it applied its commands (before the
    /// events move into `deliveries`).
    pub(super) fn track(&mut self, now_ms: u64, outcome: &Outcome, deliveries: &Deliveries) {
        self.granted(now_ms, outcome);
        for (_, reply) in &deliveries.replies {
            self.answered(now_ms, None, reply);
        }
        for (waiter, _, event) in &deliveries.first_events {
            self.answered(now_ms, Some(*waiter), event);
        }
        for (waiter, event) in &outcome.events {
            self.event(now_ms, *waiter, event);
        }
        self.ended(now_ms, outcome);
    }

    /// Holds the core granted in this turn. Call before the replies.
    fn granted(&mut self, now_ms: u64, outcome: &Outcome) {
        for &(kind, token) in &outcome.holds_granted {
            self.metrics.granted(kind);
            self.held.insert(token, (kind, now_ms, self.turn));
        }
    }

    /// The reply to a call, or the first event of a wait.
    fn answered(&mut self, now_ms: u64, waiter: Option<WaiterId>, event: &Event) {
        match event {
            Ok(Reply::Queued { .. }) => {
                if let Some(waiter) = waiter {
                    self.waiting.insert(waiter, now_ms);
                }
            }
            Ok(reply) => self.observe_wait(reply, 0),
            Err(_) => {}
        }
    }

    /// A later event of a waiter.
    fn event(&mut self, now_ms: u64, waiter: WaiterId, event: &Event) {
        let is_final = event.as_ref().map_or(true, Reply::is_final);
        if !is_final {
            return;
        }
        let Some(since_ms) = self.waiting.remove(&waiter) else {
            return;
        };
        if let Ok(reply) = event {
            self.observe_wait(reply, now_ms.saturating_sub(since_ms));
        }
    }

    /// A grant of this turn waited `waited_ms`. A condition's lock taken
    /// again is not counted (its wait was for a notify), nor a retried
    /// acquire answered with an earlier grant.
    fn observe_wait(&self, reply: &Reply, waited_ms: u64) {
        if matches!(reply, Reply::Reacquired { .. }) {
            return;
        }
        let Some(token) = reply.granted_token() else {
            return;
        };
        if let Some(&(kind, _, turn)) = self.held.get(&token) {
            if turn == self.turn {
                self.metrics.waited(kind, waited_ms);
            }
        }
    }

    /// Holds that ended in this turn. Call after the replies and events.
    fn ended(&mut self, now_ms: u64, outcome: &Outcome) {
        for (_, token) in &outcome.holds_ended {
            // Holds restored from disk were not seen granted: not counted.
            if let Some((kind, since_ms, _)) = self.held.remove(token) {
                self.metrics.held(kind, now_ms.saturating_sub(since_ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::super::{start, EngineConfig, EngineHandle};
    use super::*;
    use crate::core::Command;
    use crate::metrics::StateSizes;
    use crate::store::MemoryStore;

    async fn session(engine: &EngineHandle) -> u64 {
        let create = Command::CreateSession {
            ttl_ms: 10_000,
            client_name: "test".into(),
            host: String::new(),
            owner: String::new(),
        };
        match engine.call(create).await {
            Ok(Reply::SessionCreated { session_id, .. }) => session_id,
            other => panic!("expected a session, got {other:?}"),
        }
    }

    fn acquire(session_id: u64, waiter: WaiterId) -> Command {
        Command::LockAcquire {
            session_id,
            name: "l".into(),
            waiter,
            timeout_ms: None,
            acquire_id: 0,
        }
    }

    fn sample(text: &str, series: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{series} ")));
        let value = line.and_then(|l| l.rsplit(' ').next()?.parse().ok());
        value.unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    }

    /// A grant at once, a grant after a wait, a cancelled wait, and holds
    /// that end by a release and by the end of a session: each counted
    /// once, and nothing left tracked.
    #[tokio::test]
    async fn grants_waits_and_holds_are_counted_once() {
        let metrics = Arc::new(Metrics::for_server());
        let config = EngineConfig {
            metrics: Some(Arc::clone(&metrics)),
            ..EngineConfig::default()
        };
        let (engine, _task) = start(MemoryStore::new(), config).unwrap();
        let (a, b, c) = (
            session(&engine).await,
            session(&engine).await,
            session(&engine).await,
        );
        let mut held = engine.wait(|w| acquire(a, w)).await;
        assert!(matches!(held.next().await, Some(Ok(Reply::Granted { .. }))));
        let mut waiting = engine.wait(|w| acquire(b, w)).await;
        assert!(matches!(
            waiting.next().await,
            Some(Ok(Reply::Queued { .. }))
        ));
        let mut cancelled = engine.wait(|w| acquire(c, w)).await;
        assert!(matches!(
            cancelled.next().await,
            Some(Ok(Reply::Queued { .. }))
        ));
        drop(cancelled);
        // a's session ends: its hold ends, b is granted.
        let close = Command::CloseSession {
            session_id: a,
            reason: String::new(),
        };
        assert!(engine.call(close).await.is_ok());
        let token = match waiting.next().await {
            Some(Ok(Reply::Granted { fencing_token })) => fencing_token,
            other => panic!("expected a grant, got {other:?}"),
        };
        let release = Command::Release {
            kind: Kind::Lock,
            session_id: b,
            name: "l".into(),
            fencing_token: token,
        };
        assert!(engine.call(release).await.is_ok());

        let sizes = engine.state_sizes().await.expect("the engine runs");
        assert_eq!(
            sizes,
            StateSizes {
                sessions: 2,
                ..StateSizes::default()
            }
        );
        let text = metrics.encode();
        assert_eq!(sample(&text, "syncd_grants_total{kind=\"lock\"}"), 2.0);
        let waits = "syncd_grant_wait_seconds_count{kind=\"lock\"}";
        assert_eq!(sample(&text, waits), 2.0);
        assert_eq!(
            sample(&text, "syncd_hold_seconds_count{kind=\"lock\"}"),
            2.0
        );
        assert!(sample(&text, "syncd_engine_batch_commands_count") >= 1.0);
        engine.shutdown().await;
    }

    #[test]
    fn a_cancelled_or_refused_waiter_leaves_nothing_tracked() {
        let mut tracker = Tracker::new(Arc::new(Metrics::for_server()));
        tracker.start_turn(1);
        tracker.answered(5, Some(WaiterId(1)), &Ok(Reply::Queued { position: 1 }));
        tracker.answered(5, Some(WaiterId(2)), &Ok(Reply::Queued { position: 2 }));
        tracker.start_turn(1);
        tracker.cancelled(WaiterId(1));
        let gone = crate::core::Rejection::new(crate::core::Code::NotFound, "gone");
        tracker.event(9, WaiterId(2), &Err(gone));
        assert!(tracker.waiting.is_empty());
        assert!(tracker.held.is_empty());
    }
}
