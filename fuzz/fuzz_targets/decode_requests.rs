//! Arbitrary bytes → every request message of `syncd.v1` (prost decode).
//! The first byte picks the message; the rest is its encoding. A message
//! that decodes is turned into its `Command` or `Query` by
//! `syncd::server::requests`, the mapping the server's services use (so
//! the same checks of rw mode, call outcome, list kind, close reason), and
//! applied to (or asked of) a small live state: the core is where the
//! server validates names, sizes, TTLs, sessions and tokens. Decoding,
//! mapping and validation must never panic; the reply must be Ok or a
//! Rejection, and a query must leave the state's clock where it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use syncd::core::breaker::BreakerAction;
use syncd::core::token_bucket::BucketSettings;
use syncd::core::{Command, Limits, Outcome, Query, RwMode, State, WaiterId};
use syncd::proto::v1 as pb;
use syncd::server::requests::{Context, ToCommand, ToQuery, ToWait};

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

/// What a decoded request asks for.
enum Asked {
    Command(Command),
    Query(Query),
}

fn decode<M: Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    // A decoded message must encode and decode back to itself.
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-decode");
    assert!(again == message, "round trip changed the message");
    Some(message)
}

const WAITER: WaiterId = WaiterId(100);

/// A request the server maps to a command; `None` when it does not decode
/// or the mapping refuses it (the server answers with that status).
fn command<M: Message + Default + PartialEq + ToCommand>(bytes: &[u8]) -> Option<Asked> {
    let command = decode::<M>(bytes)?.to_command(&Context::EMPTY).ok()?;
    Some(Asked::Command(command))
}

fn wait<M: Message + Default + PartialEq + ToWait>(bytes: &[u8]) -> Option<Asked> {
    let command = decode::<M>(bytes)?.to_wait(&Context::EMPTY, WAITER).ok()?;
    Some(Asked::Command(command))
}

fn query<M: Message + Default + PartialEq + ToQuery>(bytes: &[u8]) -> Option<Asked> {
    Some(Asked::Query(decode::<M>(bytes)?.to_query().ok()?))
}

/// The three operator RPCs of a breaker share one message.
fn control(action: BreakerAction, bytes: &[u8]) -> Option<Asked> {
    let request = decode::<pb::ControlBreakerRequest>(bytes)?;
    let command = (action, request).to_command(&Context::EMPTY).ok()?;
    Some(Asked::Command(command))
}

/// The selectors keep the order of the seeds in `corpus/decode_requests`.
fn asked(selector: u8, bytes: &[u8]) -> Option<Asked> {
    match selector % 47 {
        0 => {
            decode::<pb::PingRequest>(bytes)?;
            None
        }
        1 => query::<pb::ListRequest>(bytes),
        2 => command::<pb::CreateSessionRequest>(bytes),
        3 => command::<pb::KeepAliveRequest>(bytes),
        4 => command::<pb::CloseSessionRequest>(bytes),
        5 => wait::<pb::AcquireLockRequest>(bytes),
        6 => command::<pb::ReleaseLockRequest>(bytes),
        7 => query::<pb::DescribeLockRequest>(bytes),
        8 => wait::<pb::AcquireSemaphoreRequest>(bytes),
        9 => command::<pb::ReleaseSemaphoreRequest>(bytes),
        10 => query::<pb::DescribeSemaphoreRequest>(bytes),
        11 => wait::<pb::AcquireRwLockRequest>(bytes),
        12 => command::<pb::ReleaseRwLockRequest>(bytes),
        13 => query::<pb::DescribeRwLockRequest>(bytes),
        14 => command::<pb::SetEventRequest>(bytes),
        15 => command::<pb::ClearEventRequest>(bytes),
        16 => wait::<pb::WaitEventRequest>(bytes),
        17 => query::<pb::DescribeEventRequest>(bytes),
        18 => wait::<pb::WaitConditionRequest>(bytes),
        19 => command::<pb::NotifyConditionRequest>(bytes),
        20 => query::<pb::DescribeConditionRequest>(bytes),
        21 => wait::<pb::WaitBarrierRequest>(bytes),
        22 => command::<pb::ResetBarrierRequest>(bytes),
        23 => query::<pb::DescribeBarrierRequest>(bytes),
        24 => command::<pb::DeleteBarrierRequest>(bytes),
        25 => wait::<pb::PutRequest>(bytes),
        26 => wait::<pb::GetRequest>(bytes),
        27 => command::<pb::AckRequest>(bytes),
        28 => command::<pb::NackRequest>(bytes),
        29 => wait::<pb::JoinRequest>(bytes),
        30 => query::<pb::DescribeQueueRequest>(bytes),
        31 => wait::<pb::CheckoutRequest>(bytes),
        32 => command::<pb::CheckinRequest>(bytes),
        33 => query::<pb::DescribePoolRequest>(bytes),
        34 => wait::<pb::TakeTokensRequest>(bytes),
        35 => command::<pb::TryTakeTokensRequest>(bytes),
        36 => command::<pb::TryTakeManyRequest>(bytes),
        37 => query::<pb::DescribeRateLimitRequest>(bytes),
        38 => command::<pb::DeleteRateLimitRequest>(bytes),
        39 => command::<pb::AllowCallRequest>(bytes),
        40 => command::<pb::RecordCallRequest>(bytes),
        41 => wait::<pb::WatchBreakerRequest>(bytes),
        42 => query::<pb::DescribeBreakerRequest>(bytes),
        43 => control(BreakerAction::ForceOpen, bytes),
        44 => control(BreakerAction::ForceClose, bytes),
        45 => control(BreakerAction::Reset, bytes),
        _ => command::<pb::DeleteBreakerRequest>(bytes),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let Some(asked) = asked(selector, bytes) else {
        return;
    };
    let mut state = base();
    let mut out = Outcome::default();
    match asked {
        Asked::Command(command) => {
            let _ = state.apply(2_000, command, &mut out);
        }
        Asked::Query(query) => {
            let clock = state.now_ms();
            let _ = state.query(2_000, &query);
            assert_eq!(state.now_ms(), clock, "a query moved the clock");
        }
    }
    // Whatever it left behind must still tick and list.
    state.tick(20_000, &mut out);
    let list = Query::List {
        kind: None,
        prefix: String::new(),
    };
    let _ = state.query(20_000, &list);
});
