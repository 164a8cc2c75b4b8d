//! Arbitrary entries: every logged command, with the edge values of every
//! field (empty and 256-byte names, 0 and `u64::MAX`, `None` and `Some(0)`,
//! empty and 64 KiB values).

use std::sync::Arc;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::core::breaker::{BreakerAction, BreakerSettings};
use crate::core::token_bucket::{BucketAsk, BucketSettings};
use crate::core::{Command, Kind, RwMode, WaiterId};
use crate::replica::codec::{Entry, Step};

pub fn entry() -> impl Strategy<Value = Entry> {
    (u64s(), vec(step(), 0..8)).prop_map(|(now_ms, steps)| Entry { now_ms, steps })
}

fn step() -> impl Strategy<Value = Step> {
    (option::of(identity()), command()).prop_map(|(identity, command)| Step { identity, command })
}

/// Token names are never empty.
fn identity() -> impl Strategy<Value = Arc<str>> {
    prop_oneof!["[a-z]{1,8}", "[a-z]{256}", "\\PC{1,16}"].prop_map(|s: String| Arc::from(s))
}

fn names() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}",
        "[a-z]{256}",
        any::<String>(),
    ]
    .boxed()
}

fn u64s() -> BoxedStrategy<u64> {
    prop_oneof![Just(0), Just(1), Just(u64::MAX), any::<u64>()].boxed()
}

fn u32s() -> BoxedStrategy<u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()].boxed()
}

fn waiters() -> BoxedStrategy<WaiterId> {
    u64s().prop_map(WaiterId).boxed()
}

/// `None` waits forever and `Some(0)` tries once: both must survive.
fn timeouts() -> BoxedStrategy<Option<u64>> {
    option::of(u64s()).boxed()
}

fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        vec(any::<u8>(), 1..300),
        Just(vec![0xa5; 64 * 1024]),
    ]
    .boxed()
}

fn bucket_settings() -> BoxedStrategy<BucketSettings> {
    (u32s(), u32s())
        .prop_map(|(rate_per_s, capacity)| BucketSettings {
            rate_per_s,
            capacity,
        })
        .boxed()
}

fn breaker_settings() -> BoxedStrategy<BreakerSettings> {
    (u32s(), u64s(), u32s(), u32s(), u32s(), u32s(), u32s())
        .prop_map(|(a, b, c, d, e, f, g)| BreakerSettings {
            failure_threshold: a,
            open_timeout_ms: b,
            half_open_max_probes: c,
            success_threshold: d,
            window_calls: e,
            failure_rate_percent: f,
            min_calls: g,
        })
        .boxed()
}

pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        sessions(),
        holds(),
        signals(),
        queues_and_pools(),
        buckets_and_breakers(),
    ]
}

fn sessions() -> BoxedStrategy<Command> {
    prop_oneof![
        (u64s(), names(), names(), names()).prop_map(|(ttl_ms, client_name, host, owner)| {
            Command::CreateSession {
                ttl_ms,
                client_name,
                host,
                owner,
            }
        }),
        (u64s(), u64s()).prop_map(|(session_id, notices_seen_through)| Command::KeepAlive {
            session_id,
            notices_seen_through
        }),
        (u64s(), names()).prop_map(|(fencing_token, detail)| Command::Revoke {
            fencing_token,
            detail
        }),
        (u64s(), names())
            .prop_map(|(session_id, reason)| Command::CloseSession { session_id, reason }),
        waiters().prop_map(|waiter| Command::Cancel { waiter }),
        u64s().prop_map(|fencing_token| Command::ReleaseUndelivered { fencing_token }),
        Just(Command::Resume),
    ]
    .boxed()
}

fn holds() -> BoxedStrategy<Command> {
    let kinds = select(Kind::ALL.to_vec());
    let modes = select(vec![RwMode::Read, RwMode::Write]);
    prop_oneof![
        (u64s(), names(), waiters(), timeouts(), u64s()).prop_map(
            |(session_id, name, waiter, timeout_ms, acquire_id)| Command::LockAcquire {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
            }
        ),
        (kinds, u64s(), names(), u64s()).prop_map(|(kind, session_id, name, fencing_token)| {
            Command::Release {
                kind,
                session_id,
                name,
                fencing_token,
            }
        }),
        (
            (u64s(), names(), waiters(), timeouts()),
            (u64s(), u32s(), u32s())
        )
            .prop_map(
                |((session_id, name, waiter, timeout_ms), (acquire_id, capacity, permits))| {
                    Command::SemaphoreAcquire {
                        session_id,
                        name,
                        waiter,
                        timeout_ms,
                        acquire_id,
                        capacity,
                        permits,
                    }
                }
            ),
        (u64s(), names(), waiters(), timeouts(), u64s(), modes).prop_map(
            |(session_id, name, waiter, timeout_ms, acquire_id, mode)| Command::RwLockAcquire {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
                mode,
            }
        ),
    ]
    .boxed()
}

fn signals() -> BoxedStrategy<Command> {
    prop_oneof![
        names().prop_map(|name| Command::EventSet { name }),
        names().prop_map(|name| Command::EventClear { name }),
        (u64s(), names(), waiters(), timeouts()).prop_map(
            |(session_id, name, waiter, timeout_ms)| Command::EventWait {
                session_id,
                name,
                waiter,
                timeout_ms,
            }
        ),
        (u64s(), names(), names(), u64s(), waiters(), timeouts()).prop_map(
            |(session_id, name, lock, fencing_token, waiter, timeout_ms)| {
                Command::ConditionWait {
                    session_id,
                    name,
                    lock,
                    fencing_token,
                    waiter,
                    timeout_ms,
                }
            }
        ),
        (names(), option::of(u32s()))
            .prop_map(|(name, count)| Command::ConditionNotify { name, count }),
        (u64s(), names(), waiters(), u32s(), timeouts()).prop_map(
            |(session_id, name, waiter, parties, timeout_ms)| Command::BarrierWait {
                session_id,
                name,
                waiter,
                parties,
                timeout_ms,
            }
        ),
        names().prop_map(|name| Command::BarrierReset { name }),
        names().prop_map(|name| Command::BarrierDelete { name }),
    ]
    .boxed()
}

fn queues_and_pools() -> BoxedStrategy<Command> {
    prop_oneof![
        (
            (u64s(), names(), waiters(), timeouts(), bytes()),
            (u32s(), option::of(u32s()), u32s(), u64s())
        )
            .prop_map(
                |(
                    (session_id, name, waiter, timeout_ms, value),
                    (priority, capacity, max_deliveries, put_id),
                )| Command::QueuePut {
                    session_id,
                    name,
                    waiter,
                    timeout_ms,
                    value,
                    priority,
                    capacity,
                    max_deliveries,
                    put_id,
                }
            ),
        (
            u64s(),
            names(),
            waiters(),
            timeouts(),
            u64s(),
            any::<bool>()
        )
            .prop_map(
                |(session_id, name, waiter, timeout_ms, visibility_timeout_ms, no_ack)| {
                    Command::QueueGet {
                        session_id,
                        name,
                        waiter,
                        timeout_ms,
                        visibility_timeout_ms,
                        no_ack,
                    }
                }
            ),
        (u64s(), names(), u64s()).prop_map(|(session_id, name, item_id)| Command::QueueAck {
            session_id,
            name,
            item_id
        }),
        (u64s(), names(), u64s()).prop_map(|(session_id, name, item_id)| Command::QueueNack {
            session_id,
            name,
            item_id
        }),
        (u64s(), names(), waiters(), timeouts()).prop_map(
            |(session_id, name, waiter, timeout_ms)| Command::QueueJoin {
                session_id,
                name,
                waiter,
                timeout_ms,
            }
        ),
        (
            (u64s(), names(), waiters(), timeouts()),
            (u64s(), u32s(), u64s(), u64s())
        )
            .prop_map(
                |(
                    (session_id, name, waiter, timeout_ms),
                    (acquire_id, size, max_age_ms, max_idle_ms),
                )| Command::PoolCheckout {
                    session_id,
                    name,
                    waiter,
                    timeout_ms,
                    acquire_id,
                    size,
                    max_age_ms,
                    max_idle_ms,
                }
            ),
        (u64s(), names(), u64s(), any::<bool>(), option::of(bytes())).prop_map(
            |(session_id, name, fencing_token, healthy, metadata)| Command::PoolCheckin {
                session_id,
                name,
                fencing_token,
                healthy,
                metadata,
            }
        ),
    ]
    .boxed()
}

fn buckets_and_breakers() -> BoxedStrategy<Command> {
    let ask = (names(), bucket_settings(), u32s()).prop_map(|(name, settings, tokens)| BucketAsk {
        name,
        settings,
        tokens,
    });
    let actions = select(vec![
        BreakerAction::ForceOpen,
        BreakerAction::ForceClose,
        BreakerAction::Reset,
    ]);
    prop_oneof![
        (
            u64s(),
            names(),
            waiters(),
            timeouts(),
            bucket_settings(),
            u32s()
        )
            .prop_map(|(session_id, name, waiter, timeout_ms, settings, tokens)| {
                Command::BucketTake {
                    session_id,
                    name,
                    waiter,
                    timeout_ms,
                    settings,
                    tokens,
                }
            }),
        (names(), bucket_settings(), u32s()).prop_map(|(name, settings, tokens)| {
            Command::BucketTry {
                name,
                settings,
                tokens,
            }
        }),
        vec(ask, 0..6).prop_map(|asks| Command::BucketTryMany { asks }),
        names().prop_map(|name| Command::BucketDelete { name }),
        (u64s(), names(), option::of(breaker_settings()), u64s()).prop_map(
            |(session_id, name, settings, acquire_id)| Command::BreakerAllow {
                session_id,
                name,
                settings,
                acquire_id,
            }
        ),
        (u64s(), names(), u64s(), any::<bool>()).prop_map(
            |(session_id, name, fencing_token, failed)| Command::BreakerRecord {
                session_id,
                name,
                fencing_token,
                failed,
            }
        ),
        (u64s(), names(), waiters()).prop_map(|(session_id, name, waiter)| {
            Command::BreakerWatch {
                session_id,
                name,
                waiter,
            }
        }),
        (names(), actions).prop_map(|(name, action)| Command::BreakerControl { name, action }),
        names().prop_map(|name| Command::BreakerDelete { name }),
    ]
    .boxed()
}
