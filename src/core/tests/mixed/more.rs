//! The steps of `Mixed` on queue joins, leases, the timer, pools, buckets,
//! breakers, and restarts.

use proptest::prelude::*;

use super::{Checked, Mixed, Op};
use crate::core::breaker::{BreakerAction, BreakerSettings};
use crate::core::token_bucket::BucketSettings;
use crate::core::{Command, Kind, WaiterId};

const BUCKET: BucketSettings = BucketSettings {
    rate_per_s: 5,
    capacity: 3,
};

fn breaker_settings() -> BreakerSettings {
    BreakerSettings {
        failure_threshold: 2,
        open_timeout_ms: 400,
        half_open_max_probes: 1,
        success_threshold: 1,
        ..BreakerSettings::default()
    }
}

impl Mixed {
    /// Runs one of the steps listed in the module doc (any other is a bug).
    pub(super) fn more_step(&mut self, op: &Op, waiter: WaiterId) -> Checked {
        let session = |slot: usize| self.slots[slot];
        let command = match op.clone() {
            Op::QueueJoin { slot, timeout_ms } => Command::QueueJoin {
                session_id: session(slot),
                name: "queue".into(),
                waiter,
                timeout_ms,
            },
            Op::KeepAlive { slot, confirm } => Command::KeepAlive {
                session_id: session(slot),
                notices_seen_through: if confirm { u64::MAX } else { 0 },
            },
            Op::TickNext => {
                let now_ms = self.sim.now_ms;
                let at_ms = self.sim.state.next_deadline_ms().unwrap_or(now_ms);
                let events = self.sim.tick_at(at_ms.max(now_ms));
                self.observe_events(&events)?;
                return self.check();
            }
            Op::PoolCheckout { slot, timeout_ms } => Command::PoolCheckout {
                session_id: session(slot),
                name: "pool".into(),
                waiter,
                timeout_ms,
                acquire_id: 0,
                size: 1,
                max_age_ms: 1_500,
                max_idle_ms: 700,
            },
            Op::PoolCheckin { pick, healthy } => {
                let Some((token, _, name, owner)) = self.token_pick(pick, &[Kind::Pool]) else {
                    return self.check();
                };
                Command::PoolCheckin {
                    session_id: owner,
                    name,
                    fencing_token: token,
                    healthy,
                    metadata: healthy.then(|| vec![7]),
                }
            }
            Op::BucketTake {
                slot,
                tokens,
                timeout_ms,
            } => Command::BucketTake {
                session_id: session(slot),
                name: "bucket".into(),
                waiter,
                timeout_ms,
                settings: BUCKET,
                tokens,
            },
            Op::BucketTry { tokens } => Command::BucketTry {
                name: "bucket".into(),
                settings: BUCKET,
                tokens,
            },
            Op::BreakerAllow { slot } => Command::BreakerAllow {
                session_id: session(slot),
                name: "breaker".into(),
                settings: Some(breaker_settings()),
                acquire_id: 0,
            },
            Op::BreakerRecord { pick, failed } => {
                let Some((token, _, name, owner)) = self.token_pick(pick, &[Kind::Breaker]) else {
                    return self.check();
                };
                Command::BreakerRecord {
                    session_id: owner,
                    name,
                    fencing_token: token,
                    failed,
                }
            }
            Op::BreakerWatch { slot } => Command::BreakerWatch {
                session_id: session(slot),
                name: "breaker".into(),
                waiter,
            },
            Op::BreakerControl { action } => Command::BreakerControl {
                name: "breaker".into(),
                action: match action {
                    0 => BreakerAction::ForceOpen,
                    1 => BreakerAction::ForceClose,
                    _ => BreakerAction::Reset,
                },
            },
            Op::BucketDelete => Command::BucketDelete {
                name: "bucket".into(),
            },
            Op::BreakerDelete => Command::BreakerDelete {
                name: "breaker".into(),
            },
            Op::Restart => {
                self.sim.restart_twin();
                return self.check();
            }
            other => {
                return Err(TestCaseError::fail(format!(
                    "{other:?} is not a step of `more_step`"
                )))
            }
        };
        let _ = self.run(command, waiter)?;
        self.check()
    }
}
