//! The steps of the mixed property tests (`mixed`, `exact`) and their
//! random choice.

use proptest::prelude::*;

use super::{NAMES, SLOTS};

/// One step of a random sequence. A `slot` names the session last created
/// in it; a `pick` chooses among what exists (holds, open waiters).
#[derive(Clone, Debug)]
pub(in crate::core::tests) enum Op {
    Create {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Advance {
        ms: u64,
    },
    Lock {
        slot: usize,
        name: usize,
        timeout_ms: Option<u64>,
    },
    Semaphore {
        slot: usize,
        name: usize,
        permits: u32,
        timeout_ms: Option<u64>,
    },
    RwLock {
        slot: usize,
        name: usize,
        write: bool,
        timeout_ms: Option<u64>,
    },
    Release {
        pick: usize,
        by_owner: bool,
    },
    /// An operator takes a hold (any kind with holds) away.
    Revoke {
        pick: usize,
    },
    Undelivered {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    EventSet {
        name: usize,
    },
    EventClear {
        name: usize,
    },
    EventWait {
        slot: usize,
        name: usize,
        timeout_ms: Option<u64>,
    },
    ConditionWait {
        pick: usize,
        timeout_ms: Option<u64>,
    },
    Notify {
        count: Option<u32>,
    },
    BarrierWait {
        slot: usize,
        parties: u32,
        timeout_ms: Option<u64>,
    },
    BarrierReset,
    BarrierDelete,
    QueuePut {
        slot: usize,
        priority: u32,
        timeout_ms: Option<u64>,
        /// 0: none; else a retry identity, maybe one used before.
        put_id: u64,
    },
    QueueGet {
        slot: usize,
        no_ack: bool,
        timeout_ms: Option<u64>,
    },
    QueueAck {
        pick: usize,
        nack: bool,
    },
    QueueJoin {
        slot: usize,
        timeout_ms: Option<u64>,
    },
    /// Renews a session's lease; `confirm` also confirms its notices.
    KeepAlive {
        slot: usize,
        confirm: bool,
    },
    /// What the engine's timer does: tick at the next deadline.
    TickNext,
    PoolCheckout {
        slot: usize,
        timeout_ms: Option<u64>,
    },
    PoolCheckin {
        pick: usize,
        healthy: bool,
    },
    BucketTake {
        slot: usize,
        tokens: u32,
        timeout_ms: Option<u64>,
    },
    BucketTry {
        tokens: u32,
    },
    BreakerAllow {
        slot: usize,
    },
    BreakerRecord {
        pick: usize,
        failed: bool,
    },
    BreakerWatch {
        slot: usize,
    },
    /// 0 force open, 1 force closed, 2 reset.
    BreakerControl {
        action: u8,
    },
    BucketDelete,
    BreakerDelete,
    /// A restart: a second state is restored from the store, and from now
    /// on must behave exactly like the first (see `exact`).
    Restart,
}

pub(in crate::core::tests) fn arb_timeout() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![Just(None), Just(Some(0)), (1..400u64).prop_map(Some)]
}

/// Any step but `Restart`, each about as likely as the others.
pub(in crate::core::tests) fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![2 => base_ops(), 1 => more_ops()]
}

/// The steps on locks, semaphores, rwlocks, events, conditions, barriers
/// and queues.
fn base_ops() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let name = 0..NAMES.len();
    prop_oneof![
        slot.clone().prop_map(|slot| Op::Create { slot }),
        slot.clone().prop_map(|slot| Op::Close { slot }),
        (1..700u64).prop_map(|ms| Op::Advance { ms }),
        (slot.clone(), name.clone(), arb_timeout()).prop_map(|(slot, name, timeout_ms)| Op::Lock {
            slot,
            name,
            timeout_ms
        }),
        (slot.clone(), name.clone(), 1..=3u32, arb_timeout()).prop_map(
            |(slot, name, permits, timeout_ms)| Op::Semaphore {
                slot,
                name,
                permits,
                timeout_ms
            }
        ),
        (slot.clone(), name.clone(), any::<bool>(), arb_timeout()).prop_map(
            |(slot, name, write, timeout_ms)| Op::RwLock {
                slot,
                name,
                write,
                timeout_ms
            }
        ),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, by_owner)| Op::Release { pick, by_owner }),
        any::<usize>().prop_map(|pick| Op::Undelivered { pick }),
        any::<usize>().prop_map(|pick| Op::Revoke { pick }),
        any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        name.clone().prop_map(|name| Op::EventSet { name }),
        name.clone().prop_map(|name| Op::EventClear { name }),
        (slot.clone(), name, arb_timeout()).prop_map(|(slot, name, timeout_ms)| Op::EventWait {
            slot,
            name,
            timeout_ms
        }),
        (any::<usize>(), arb_timeout())
            .prop_map(|(pick, timeout_ms)| Op::ConditionWait { pick, timeout_ms }),
        prop_oneof![Just(None), (0..3u32).prop_map(Some)].prop_map(|count| Op::Notify { count }),
        (slot, 1..=3u32, arb_timeout()).prop_map(|(slot, parties, timeout_ms)| Op::BarrierWait {
            slot,
            parties,
            timeout_ms
        }),
        Just(Op::BarrierReset),
        Just(Op::BarrierDelete),
        (0..SLOTS, 0..3u32, arb_timeout(), 0..4u64).prop_map(
            |(slot, priority, timeout_ms, put_id)| Op::QueuePut {
                slot,
                priority,
                timeout_ms,
                put_id,
            }
        ),
        (0..SLOTS, any::<bool>(), arb_timeout()).prop_map(|(slot, no_ack, timeout_ms)| {
            Op::QueueGet {
                slot,
                no_ack,
                timeout_ms,
            }
        }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, nack)| Op::QueueAck { pick, nack }),
    ]
}

/// The steps on queue joins, leases, pools, buckets and breakers.
fn more_ops() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        (slot.clone(), arb_timeout())
            .prop_map(|(slot, timeout_ms)| Op::QueueJoin { slot, timeout_ms }),
        (slot.clone(), any::<bool>()).prop_map(|(slot, confirm)| Op::KeepAlive { slot, confirm }),
        Just(Op::TickNext),
        (slot.clone(), arb_timeout())
            .prop_map(|(slot, timeout_ms)| Op::PoolCheckout { slot, timeout_ms }),
        (any::<usize>(), any::<bool>())
            .prop_map(|(pick, healthy)| Op::PoolCheckin { pick, healthy }),
        (slot.clone(), 1..=3u32, arb_timeout()).prop_map(|(slot, tokens, timeout_ms)| {
            Op::BucketTake {
                slot,
                tokens,
                timeout_ms,
            }
        }),
        (1..=3u32).prop_map(|tokens| Op::BucketTry { tokens }),
        slot.clone().prop_map(|slot| Op::BreakerAllow { slot }),
        (any::<usize>(), any::<bool>())
            .prop_map(|(pick, failed)| Op::BreakerRecord { pick, failed }),
        slot.prop_map(|slot| Op::BreakerWatch { slot }),
        (0..3u8).prop_map(|action| Op::BreakerControl { action }),
        Just(Op::BucketDelete),
        Just(Op::BreakerDelete),
    ]
}
