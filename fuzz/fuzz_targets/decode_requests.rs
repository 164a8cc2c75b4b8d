//! Arbitrary bytes → every request message of `syncd.v1` (prost decode).
//! The first byte picks the message; the rest is its encoding. A message
//! that decodes is turned into its `Command` the way the server's services
//! do (same field mapping, same enum checks for the rw mode, call outcome
//! and list kind) and applied to a small live state: the core is where the
//! server validates names, sizes, TTLs, sessions and tokens. Decoding and
//! validation must never panic; the reply must be Ok or a Rejection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use syncd::core::breaker::{BreakerAction, BreakerSettings};
use syncd::core::token_bucket::{BucketAsk, BucketSettings};
use syncd::core::{Command, Kind, Limits, Outcome, RwMode, State, WaiterId};
use syncd::proto::v1 as pb;

/// A state with a session (id 1) holding lock "a" (token 1), a semaphore
/// "a", a read lock "a", a queued item on queue "a", a pool checkout and a
/// breaker permit, so that requests naming them reach past the lookups.
fn base() -> State {
    let mut state = State::new(Limits::default());
    let mut out = Outcome::default();
    let w = |n| WaiterId(n);
    let setup = [
        Command::CreateSession {
            ttl_ms: 10_000,
            client_name: "fuzz".into(),
            host: String::new(),
            owner: String::new(),
        },
        Command::LockAcquire {
            session_id: 1,
            name: "a".into(),
            waiter: w(1),
            timeout_ms: Some(0),
            acquire_id: 0,
        },
        Command::SemaphoreAcquire {
            session_id: 1,
            name: "a".into(),
            waiter: w(2),
            timeout_ms: Some(0),
            acquire_id: 0,
            capacity: 3,
            permits: 1,
        },
        Command::RwLockAcquire {
            session_id: 1,
            name: "a".into(),
            waiter: w(3),
            timeout_ms: Some(0),
            acquire_id: 0,
            mode: RwMode::Read,
        },
        Command::EventSet { name: "a".into() },
        Command::QueuePut {
            session_id: 1,
            name: "a".into(),
            waiter: w(4),
            timeout_ms: Some(0),
            value: b"x".to_vec(),
            priority: 0,
            capacity: None,
            max_deliveries: 0,
            put_id: 0,
        },
        Command::QueuePut {
            session_id: 1,
            name: "a".into(),
            waiter: w(5),
            timeout_ms: Some(0),
            value: b"y".to_vec(),
            priority: 1,
            capacity: None,
            max_deliveries: 0,
            put_id: 0,
        },
        Command::QueueGet {
            session_id: 1,
            name: "a".into(),
            waiter: w(6),
            timeout_ms: Some(0),
            visibility_timeout_ms: 0,
            no_ack: false,
        },
        Command::PoolCheckout {
            session_id: 1,
            name: "a".into(),
            waiter: w(7),
            timeout_ms: Some(0),
            acquire_id: 0,
            size: 2,
            max_age_ms: 0,
            max_idle_ms: 0,
        },
        Command::BucketTry {
            name: "a".into(),
            settings: BucketSettings {
                rate_per_s: 10,
                capacity: 10,
            },
            tokens: 1,
        },
        Command::BreakerAllow {
            session_id: 1,
            name: "a".into(),
            settings: None,
            acquire_id: 0,
        },
        Command::BarrierWait {
            session_id: 1,
            name: "a".into(),
            waiter: w(8),
            parties: 2,
            timeout_ms: None,
        },
    ];
    for command in setup {
        let _ = state.apply(1_000, command, &mut out);
    }
    state
}

fn breaker_settings(s: pb::BreakerSettings) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: s.failure_threshold,
        open_timeout_ms: s.open_timeout_ms,
        half_open_max_probes: s.half_open_max_probes,
        success_threshold: s.success_threshold,
        window_calls: s.window_calls,
        failure_rate_percent: s.failure_rate_percent,
        min_calls: s.min_calls,
    }
}

/// As the server's `rw_mode`: only READ and WRITE pass.
fn rw_mode(value: i32) -> Option<RwMode> {
    match pb::RwMode::try_from(value) {
        Ok(pb::RwMode::Read) => Some(RwMode::Read),
        Ok(pb::RwMode::Write) => Some(RwMode::Write),
        _ => None,
    }
}

/// As the server's `call_failed`.
fn call_failed(outcome: i32) -> Option<bool> {
    match pb::CallOutcome::try_from(outcome) {
        Ok(pb::CallOutcome::Success) => Some(false),
        Ok(pb::CallOutcome::Failure) => Some(true),
        _ => None,
    }
}

fn decode<M: Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    // A decoded message must encode and decode back to itself.
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-decode");
    assert!(again == message, "round trip changed the message");
    Some(message)
}

const WAITER: WaiterId = WaiterId(100);

fn command(selector: u8, bytes: &[u8]) -> Option<Command> {
    Some(match selector % 47 {
        0 => {
            decode::<pb::PingRequest>(bytes)?;
            return None;
        }
        1 => {
            let r: pb::ListRequest = decode(bytes)?;
            let kind = match r.kind.as_str() {
                "" => None,
                text => Some(Kind::parse(text)?),
            };
            Command::List {
                kind,
                prefix: r.prefix,
            }
        }
        2 => {
            let r: pb::CreateSessionRequest = decode(bytes)?;
            Command::CreateSession {
                ttl_ms: r.ttl_ms,
                client_name: r.client_name,
                host: String::new(),
                owner: String::new(),
            }
        }
        3 => {
            let r: pb::KeepAliveRequest = decode(bytes)?;
            Command::KeepAlive {
                session_id: r.session_id,
                notices_seen_through: r.notices_seen_through,
            }
        }
        4 => {
            let request = decode::<pb::CloseSessionRequest>(bytes)?;
            Command::CloseSession {
                session_id: request.session_id,
                reason: request.reason,
            }
        }
        5 => {
            let r: pb::AcquireLockRequest = decode(bytes)?;
            Command::LockAcquire {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                acquire_id: r.acquire_id,
            }
        }
        6 => {
            let r: pb::ReleaseLockRequest = decode(bytes)?;
            Command::Release {
                kind: Kind::Lock,
                session_id: r.session_id,
                name: r.name,
                fencing_token: r.fencing_token,
            }
        }
        7 => Command::LockDescribe {
            name: decode::<pb::DescribeLockRequest>(bytes)?.name,
        },
        8 => {
            let r: pb::AcquireSemaphoreRequest = decode(bytes)?;
            Command::SemaphoreAcquire {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                acquire_id: r.acquire_id,
                capacity: r.capacity,
                permits: r.permits,
            }
        }
        9 => {
            let r: pb::ReleaseSemaphoreRequest = decode(bytes)?;
            Command::Release {
                kind: Kind::Semaphore,
                session_id: r.session_id,
                name: r.name,
                fencing_token: r.fencing_token,
            }
        }
        10 => Command::SemaphoreDescribe {
            name: decode::<pb::DescribeSemaphoreRequest>(bytes)?.name,
        },
        11 => {
            let r: pb::AcquireRwLockRequest = decode(bytes)?;
            let mode = rw_mode(r.mode)?;
            Command::RwLockAcquire {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                acquire_id: r.acquire_id,
                mode,
            }
        }
        12 => {
            let r: pb::ReleaseRwLockRequest = decode(bytes)?;
            Command::Release {
                kind: Kind::RwLock,
                session_id: r.session_id,
                name: r.name,
                fencing_token: r.fencing_token,
            }
        }
        13 => Command::RwLockDescribe {
            name: decode::<pb::DescribeRwLockRequest>(bytes)?.name,
        },
        14 => Command::EventSet {
            name: decode::<pb::SetEventRequest>(bytes)?.name,
        },
        15 => Command::EventClear {
            name: decode::<pb::ClearEventRequest>(bytes)?.name,
        },
        16 => {
            let r: pb::WaitEventRequest = decode(bytes)?;
            Command::EventWait {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
            }
        }
        17 => Command::EventDescribe {
            name: decode::<pb::DescribeEventRequest>(bytes)?.name,
        },
        18 => {
            let r: pb::WaitConditionRequest = decode(bytes)?;
            Command::ConditionWait {
                session_id: r.session_id,
                name: r.name,
                lock: r.lock,
                fencing_token: r.fencing_token,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
            }
        }
        19 => {
            let r: pb::NotifyConditionRequest = decode(bytes)?;
            Command::ConditionNotify {
                name: r.name,
                count: (!r.all).then_some(r.count),
            }
        }
        20 => Command::ConditionDescribe {
            name: decode::<pb::DescribeConditionRequest>(bytes)?.name,
        },
        21 => {
            let r: pb::WaitBarrierRequest = decode(bytes)?;
            Command::BarrierWait {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                parties: r.parties,
                timeout_ms: r.timeout_ms,
            }
        }
        22 => Command::BarrierReset {
            name: decode::<pb::ResetBarrierRequest>(bytes)?.name,
        },
        23 => Command::BarrierDescribe {
            name: decode::<pb::DescribeBarrierRequest>(bytes)?.name,
        },
        24 => Command::BarrierDelete {
            name: decode::<pb::DeleteBarrierRequest>(bytes)?.name,
        },
        25 => {
            let r: pb::PutRequest = decode(bytes)?;
            Command::QueuePut {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                value: r.value,
                priority: r.priority,
                capacity: r.capacity,
                max_deliveries: r.max_deliveries,
                put_id: r.put_id,
            }
        }
        26 => {
            let r: pb::GetRequest = decode(bytes)?;
            Command::QueueGet {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                visibility_timeout_ms: r.visibility_timeout_ms,
                no_ack: r.no_ack,
            }
        }
        27 => {
            let r: pb::AckRequest = decode(bytes)?;
            Command::QueueAck {
                session_id: r.session_id,
                name: r.name,
                item_id: r.item_id,
            }
        }
        28 => {
            let r: pb::NackRequest = decode(bytes)?;
            Command::QueueNack {
                session_id: r.session_id,
                name: r.name,
                item_id: r.item_id,
            }
        }
        29 => {
            let r: pb::JoinRequest = decode(bytes)?;
            Command::QueueJoin {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
            }
        }
        30 => Command::QueueDescribe {
            name: decode::<pb::DescribeQueueRequest>(bytes)?.name,
        },
        31 => {
            let r: pb::CheckoutRequest = decode(bytes)?;
            Command::PoolCheckout {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                acquire_id: r.acquire_id,
                size: r.size,
                max_age_ms: r.max_age_ms,
                max_idle_ms: r.max_idle_ms,
            }
        }
        32 => {
            let r: pb::CheckinRequest = decode(bytes)?;
            Command::PoolCheckin {
                session_id: r.session_id,
                name: r.name,
                fencing_token: r.fencing_token,
                healthy: r.healthy,
                metadata: r.metadata,
            }
        }
        33 => Command::PoolDescribe {
            name: decode::<pb::DescribePoolRequest>(bytes)?.name,
        },
        34 => {
            let r: pb::TakeTokensRequest = decode(bytes)?;
            Command::BucketTake {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
                timeout_ms: r.timeout_ms,
                settings: BucketSettings {
                    rate_per_s: r.rate_per_s,
                    capacity: r.capacity,
                },
                tokens: r.tokens,
            }
        }
        35 => {
            let r: pb::TryTakeTokensRequest = decode(bytes)?;
            Command::BucketTry {
                name: r.name,
                settings: BucketSettings {
                    rate_per_s: r.rate_per_s,
                    capacity: r.capacity,
                },
                tokens: r.tokens,
            }
        }
        36 => {
            let r: pb::TryTakeManyRequest = decode(bytes)?;
            let asks = r
                .buckets
                .into_iter()
                .map(|b| BucketAsk {
                    name: b.name,
                    settings: BucketSettings {
                        rate_per_s: b.rate_per_s,
                        capacity: b.capacity,
                    },
                    tokens: b.tokens,
                })
                .collect();
            Command::BucketTryMany { asks }
        }
        37 => Command::BucketDescribe {
            name: decode::<pb::DescribeRateLimitRequest>(bytes)?.name,
        },
        38 => Command::BucketDelete {
            name: decode::<pb::DeleteRateLimitRequest>(bytes)?.name,
        },
        39 => {
            let r: pb::AllowCallRequest = decode(bytes)?;
            Command::BreakerAllow {
                session_id: r.session_id,
                name: r.name,
                settings: r.settings.map(breaker_settings),
                acquire_id: r.acquire_id,
            }
        }
        40 => {
            let r: pb::RecordCallRequest = decode(bytes)?;
            let failed = call_failed(r.outcome)?;
            Command::BreakerRecord {
                session_id: r.session_id,
                name: r.name,
                fencing_token: r.fencing_token,
                failed,
            }
        }
        41 => {
            let r: pb::WatchBreakerRequest = decode(bytes)?;
            Command::BreakerWatch {
                session_id: r.session_id,
                name: r.name,
                waiter: WAITER,
            }
        }
        42 => Command::BreakerDescribe {
            name: decode::<pb::DescribeBreakerRequest>(bytes)?.name,
        },
        43..=45 => {
            let r: pb::ControlBreakerRequest = decode(bytes)?;
            let action = match selector % 47 {
                43 => BreakerAction::ForceOpen,
                44 => BreakerAction::ForceClose,
                _ => BreakerAction::Reset,
            };
            Command::BreakerControl {
                name: r.name,
                action,
            }
        }
        _ => Command::BreakerDelete {
            name: decode::<pb::DeleteBreakerRequest>(bytes)?.name,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let Some(command) = command(selector, bytes) else {
        return;
    };
    let mut state = base();
    let mut out = Outcome::default();
    let _ = state.apply(2_000, command, &mut out);
    // Whatever it left behind must still tick and list.
    state.tick(20_000, &mut out);
    let list = Command::List {
        kind: None,
        prefix: String::new(),
    };
    let _ = state.apply(20_000, list, &mut out);
});
