//! Writes the seed corpora of `restore_records` and `decode_requests`
//! (run from fuzz/: `cargo run --release --bin gen_corpus`). `core_apply`
//! needs no seeds: its input is an `arbitrary` byte stream.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use prost::Message;
use syncd::core::breaker::BreakerSettings;
use syncd::core::token_bucket::BucketSettings;
use syncd::core::{Change, Command, Kind, Limits, Outcome, Reply, RwMode, State, WaiterId};
use syncd::proto::v1 as pb;
use syncd_fuzz::encode_records;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    // --- restore_records: the store after each step of a small workload.
    let mut state = State::new(Limits::default());
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut now = 1_000;
    let mut tokens = Vec::new();
    let w = WaiterId;
    let s = |name: &str| name.to_owned();
    let steps: Vec<Command> = vec![
        Command::CreateSession {
            ttl_ms: 10_000,
            client_name: s("one"),
            host: String::new(),
            owner: String::new(),
        },
        Command::CreateSession {
            ttl_ms: 20_000,
            client_name: s("two"),
            host: String::new(),
            owner: String::new(),
        },
        Command::LockAcquire {
            session_id: 1,
            name: s("lock"),
            waiter: w(1),
            timeout_ms: Some(0),
            acquire_id: 7,
        },
        Command::SemaphoreAcquire {
            session_id: 1,
            name: s("sem"),
            waiter: w(2),
            timeout_ms: Some(0),
            acquire_id: 0,
            capacity: 3,
            permits: 2,
        },
        Command::SemaphoreAcquire {
            session_id: 2,
            name: s("sem"),
            waiter: w(3),
            timeout_ms: Some(0),
            acquire_id: 0,
            capacity: 0,
            permits: 1,
        },
        Command::RwLockAcquire {
            session_id: 1,
            name: s("rw"),
            waiter: w(4),
            timeout_ms: Some(0),
            acquire_id: 0,
            mode: RwMode::Read,
        },
        Command::RwLockAcquire {
            session_id: 2,
            name: s("rw"),
            waiter: w(5),
            timeout_ms: Some(0),
            acquire_id: 0,
            mode: RwMode::Read,
        },
        Command::RwLockAcquire {
            session_id: 2,
            name: s("rww"),
            waiter: w(6),
            timeout_ms: Some(0),
            acquire_id: 0,
            mode: RwMode::Write,
        },
        Command::EventSet { name: s("ev") },
        Command::BarrierWait {
            session_id: 1,
            name: s("bar"),
            waiter: w(7),
            parties: 2,
            timeout_ms: None,
        },
        Command::BarrierWait {
            session_id: 1,
            name: s("bar2"),
            waiter: w(8),
            parties: 1,
            timeout_ms: None,
        },
        Command::QueuePut {
            session_id: 1,
            name: s("q"),
            waiter: w(9),
            timeout_ms: Some(0),
            value: b"hello".to_vec(),
            priority: 1,
            capacity: Some(4),
            max_deliveries: 2,
            put_id: 11,
        },
        Command::QueuePut {
            session_id: 2,
            name: s("q"),
            waiter: w(10),
            timeout_ms: Some(0),
            value: b"world".to_vec(),
            priority: 0,
            capacity: None,
            max_deliveries: 0,
            put_id: 0,
        },
        Command::QueueGet {
            session_id: 2,
            name: s("q"),
            waiter: w(11),
            timeout_ms: Some(0),
            visibility_timeout_ms: 5_000,
            no_ack: false,
        },
        Command::PoolCheckout {
            session_id: 1,
            name: s("pool"),
            waiter: w(12),
            timeout_ms: Some(0),
            acquire_id: 3,
            size: 2,
            max_age_ms: 60_000,
            max_idle_ms: 10_000,
        },
        Command::PoolCheckout {
            session_id: 2,
            name: s("pool"),
            waiter: w(13),
            timeout_ms: Some(0),
            acquire_id: 0,
            size: 0,
            max_age_ms: 0,
            max_idle_ms: 0,
        },
        Command::BucketTry {
            name: s("bucket"),
            settings: BucketSettings {
                rate_per_s: 5,
                capacity: 10,
            },
            tokens: 3,
        },
        Command::BucketTake {
            session_id: 1,
            name: s("bucket2"),
            waiter: w(14),
            timeout_ms: Some(0),
            settings: BucketSettings {
                rate_per_s: 1,
                capacity: 2,
            },
            tokens: 1,
        },
        Command::BreakerAllow {
            session_id: 1,
            name: s("brk"),
            settings: Some(BreakerSettings {
                failure_threshold: 2,
                open_timeout_ms: 1_000,
                half_open_max_probes: 1,
                success_threshold: 1,
                window_calls: 0,
                failure_rate_percent: 0,
                min_calls: 0,
            }),
            acquire_id: 5,
        },
        Command::BreakerAllow {
            session_id: 2,
            name: s("brk"),
            settings: None,
            acquire_id: 0,
        },
    ];
    let dir = root.join("restore_records");
    for (i, command) in steps.into_iter().enumerate() {
        now += 10;
        let mut out = Outcome::default();
        let reply = state.apply(now, command.clone(), &mut out);
        match &reply {
            Ok(Reply::Granted { fencing_token }) => tokens.push((command.clone(), *fencing_token)),
            Ok(Reply::BreakerVerdict(v)) => {
                if let Some((t, _)) = v.permit {
                    tokens.push((command.clone(), t));
                }
            }
            Ok(_) => {}
            Err(e) => panic!("seed step {i} refused: {e}"),
        }
        out.changes.push(state.checkpoint());
        for change in out.changes {
            match change {
                Change::Put { key, value } => {
                    store.insert(key, value);
                }
                Change::Delete { key } => {
                    store.remove(&key);
                }
            }
        }
        if i % 3 == 2 || i >= 15 {
            let records: Vec<_> = store.clone().into_iter().collect();
            write(&dir, &format!("seed-{i:02}"), &encode_records(&records));
        }
    }
    // Everything, in reverse key order too (restore must not depend on it).
    let records: Vec<_> = store.clone().into_iter().rev().collect();
    write(&dir, "seed-reversed", &encode_records(&records));
    // Each key with its record alone, plus the counters.
    let counters = state.checkpoint();
    let Change::Put { key: ck, value: cv } = counters else {
        unreachable!()
    };
    for (i, (key, value)) in store.iter().enumerate() {
        let mut records = vec![(ck.clone(), cv.clone())];
        records.push((key.clone(), value.clone()));
        if key.starts_with(b"hold/") || key.starts_with(b"lock/") {
            // With the sessions it needs.
            for (k, v) in store.iter().filter(|(k, _)| k.starts_with(b"session/")) {
                records.push((k.clone(), v.clone()));
            }
        }
        write(&dir, &format!("single-{i:02}"), &encode_records(&records));
    }
    // Restore must accept the full store: the seeds are realistic.
    State::restore(Limits::default(), store.clone()).expect("seed store restores");

    // --- decode_requests: one valid request of each message.
    let dir = root.join("decode_requests");
    let name = || s("a");
    let mut requests: Vec<(u8, Vec<u8>)> = vec![
        (0, pb::PingRequest {}.encode_to_vec()),
        (
            1,
            pb::ListRequest {
                kind: Kind::Lock.as_str().into(),
                prefix: name(),
            }
            .encode_to_vec(),
        ),
        (
            2,
            pb::CreateSessionRequest {
                ttl_ms: 5_000,
                client_name: s("c"),
            }
            .encode_to_vec(),
        ),
        (
            3,
            pb::KeepAliveRequest {
                session_id: 1,
                notices_seen_through: 0,
            }
            .encode_to_vec(),
        ),
        (4, pb::CloseSessionRequest { session_id: 1, reason: String::new() }.encode_to_vec()),
        (
            5,
            pb::AcquireLockRequest {
                session_id: 1,
                name: s("b"),
                timeout_ms: Some(0),
                acquire_id: 9,
            }
            .encode_to_vec(),
        ),
        (
            6,
            pb::ReleaseLockRequest {
                session_id: 1,
                name: name(),
                fencing_token: 1,
            }
            .encode_to_vec(),
        ),
        (
            8,
            pb::AcquireSemaphoreRequest {
                session_id: 1,
                name: name(),
                capacity: 3,
                permits: 2,
                timeout_ms: Some(10),
                acquire_id: 0,
            }
            .encode_to_vec(),
        ),
        (
            9,
            pb::ReleaseSemaphoreRequest {
                session_id: 1,
                name: name(),
                fencing_token: 2,
            }
            .encode_to_vec(),
        ),
        (
            11,
            pb::AcquireRwLockRequest {
                session_id: 1,
                name: name(),
                mode: pb::RwMode::Write.into(),
                timeout_ms: None,
                acquire_id: 0,
            }
            .encode_to_vec(),
        ),
        (
            12,
            pb::ReleaseRwLockRequest {
                session_id: 1,
                name: name(),
                fencing_token: 3,
            }
            .encode_to_vec(),
        ),
        (
            16,
            pb::WaitEventRequest {
                session_id: 1,
                name: s("e"),
                timeout_ms: Some(100),
            }
            .encode_to_vec(),
        ),
        (
            18,
            pb::WaitConditionRequest {
                session_id: 1,
                name: s("c"),
                lock: name(),
                fencing_token: 1,
                timeout_ms: Some(50),
            }
            .encode_to_vec(),
        ),
        (
            19,
            pb::NotifyConditionRequest {
                name: s("c"),
                count: 2,
                all: false,
            }
            .encode_to_vec(),
        ),
        (
            21,
            pb::WaitBarrierRequest {
                session_id: 1,
                name: name(),
                parties: 2,
                timeout_ms: None,
            }
            .encode_to_vec(),
        ),
        (
            25,
            pb::PutRequest {
                session_id: 1,
                name: name(),
                value: b"v".to_vec(),
                priority: 2,
                capacity: Some(3),
                max_deliveries: 2,
                timeout_ms: Some(0),
                put_id: 4,
            }
            .encode_to_vec(),
        ),
        (
            26,
            pb::GetRequest {
                session_id: 1,
                name: name(),
                timeout_ms: Some(0),
                visibility_timeout_ms: 100,
                no_ack: true,
            }
            .encode_to_vec(),
        ),
        (
            27,
            pb::AckRequest {
                session_id: 1,
                name: name(),
                item_id: 1,
            }
            .encode_to_vec(),
        ),
        (
            28,
            pb::NackRequest {
                session_id: 1,
                name: name(),
                item_id: 1,
            }
            .encode_to_vec(),
        ),
        (
            29,
            pb::JoinRequest {
                session_id: 1,
                name: name(),
                timeout_ms: Some(0),
            }
            .encode_to_vec(),
        ),
        (
            31,
            pb::CheckoutRequest {
                session_id: 1,
                name: name(),
                size: 0,
                max_age_ms: 5,
                max_idle_ms: 5,
                timeout_ms: Some(0),
                acquire_id: 1,
            }
            .encode_to_vec(),
        ),
        (
            32,
            pb::CheckinRequest {
                session_id: 1,
                name: name(),
                fencing_token: 5,
                healthy: false,
                metadata: Some(b"m".to_vec()),
            }
            .encode_to_vec(),
        ),
        (
            34,
            pb::TakeTokensRequest {
                session_id: 1,
                name: name(),
                rate_per_s: 10,
                capacity: 10,
                tokens: 20,
                timeout_ms: Some(10),
            }
            .encode_to_vec(),
        ),
        (
            35,
            pb::TryTakeTokensRequest {
                name: name(),
                rate_per_s: 0,
                capacity: 0,
                tokens: 1,
            }
            .encode_to_vec(),
        ),
        (
            36,
            pb::TryTakeManyRequest {
                buckets: vec![
                    pb::TryTakeTokensRequest {
                        name: name(),
                        rate_per_s: 0,
                        capacity: 0,
                        tokens: 1,
                    },
                    pb::TryTakeTokensRequest {
                        name: s("b"),
                        rate_per_s: 3,
                        capacity: 4,
                        tokens: 2,
                    },
                ],
            }
            .encode_to_vec(),
        ),
        (
            38,
            pb::DeleteRateLimitRequest { name: name() }.encode_to_vec(),
        ),
        (
            39,
            pb::AllowCallRequest {
                session_id: 1,
                name: name(),
                settings: Some(pb::BreakerSettings {
                    failure_threshold: 1,
                    open_timeout_ms: 10,
                    half_open_max_probes: 1,
                    success_threshold: 1,
                    window_calls: 4,
                    failure_rate_percent: 50,
                    min_calls: 2,
                }),
                acquire_id: 0,
            }
            .encode_to_vec(),
        ),
        (
            40,
            pb::RecordCallRequest {
                session_id: 1,
                name: name(),
                fencing_token: 6,
                outcome: pb::CallOutcome::Failure.into(),
            }
            .encode_to_vec(),
        ),
        (
            41,
            pb::WatchBreakerRequest {
                session_id: 1,
                name: name(),
            }
            .encode_to_vec(),
        ),
        (
            43,
            pb::ControlBreakerRequest { name: name() }.encode_to_vec(),
        ),
        (
            46,
            pb::DeleteBreakerRequest { name: name() }.encode_to_vec(),
        ),
    ];
    for selector in [7u8, 10, 13, 14, 15, 17, 20, 22, 23, 24, 30, 33, 37, 42] {
        requests.push((
            selector,
            pb::DescribeLockRequest { name: name() }.encode_to_vec(),
        ));
    }
    for (selector, bytes) in requests {
        let mut input = vec![selector];
        input.extend_from_slice(&bytes);
        write(&dir, &format!("req-{selector:02}"), &input);
    }
    let _ = tokens;
    println!("wrote seeds under {}", root.display());
}
