//! Bad input at volume: more than 10,000 malformed or hostile requests,
//! generated from a fixed seed, against one real syncd, across every
//! service. Each request has the gRPC code it must get (from the proto
//! comments and the core's rules); every answer is checked and counted per
//! code. Between batches the server must still answer Ping and serve a
//! well-formed lock acquire and release; its resident memory after the
//! first 2,000 requests and at the end must not differ by more than noise.
//!
//! The requests carry one fault each (a bad name, an unknown session, a
//! wrong token, an out-of-range size or setting, an unknown enum value, an
//! oversized message...), so that the expected code is never a matter of
//! which check the server happens to run first.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::rpc::{next, open_channel};
use common::{Syncd, HANG_GUARD};
use syncd::proto::v1 as pb;
use syncd::proto::v1::{
    barriers_client::BarriersClient, circuit_breakers_client::CircuitBreakersClient,
    conditions_client::ConditionsClient, events_client::EventsClient, locks_client::LocksClient,
    pools_client::PoolsClient, queues_client::QueuesClient, rate_limits_client::RateLimitsClient,
    rw_locks_client::RwLocksClient, semaphores_client::SemaphoresClient,
    sessions_client::SessionsClient, system_client::SystemClient,
};
use tonic::transport::Channel;
use tonic::{Code, Response, Status, Streaming};

/// The generator's seed: the same requests on every run.
const SEED: u64 = 0x5eed_bad1_0bad_f00d;
/// Requests sent in all.
const REQUESTS: usize = 10_240;
/// Requests per batch; the server's health is checked between batches.
const BATCH: usize = 1_024;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;
/// Connections the requests are spread over.
const CHANNELS: usize = 4;
/// `--max-message-bytes` of the server under test.
const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// `--max-item-bytes` of the server under test.
const ITEM_BYTES_MAX: usize = 4 * 1024;
/// The server's default `name_bytes_max`.
const NAME_BYTES_MAX: usize = 256;
/// Memory growth between the two measurements that counts as noise.
const RSS_NOISE_BYTES: u64 = 16 * 1024 * 1024;

/// Cases whose answer is known to be wrong: printed, not failed on. Each
/// entry is a category of [`Case`]; keep it empty unless the report lists
/// the entry.
const KNOWN_WRONG: &[&str] = &[];

// ---------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------

/// xorshift64*: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Heads or tails.
    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next() as usize % items.len()]
    }

    /// A session id that no session has: 0, the largest, or a random huge
    /// one (real ids count up from 1).
    fn unknown_session(&mut self) -> u64 {
        match self.next() % 4 {
            0 => 0,
            1 => u64::MAX,
            _ => self.range(1 << 40, u64::MAX - 1),
        }
    }

    /// A fencing token that no hold has (real tokens count up from 1).
    fn unknown_token(&mut self) -> u64 {
        match self.next() % 3 {
            0 => 0,
            1 => u64::MAX,
            _ => self.range(1 << 40, u64::MAX - 1),
        }
    }

    /// A timeout from the hostile set: absent, 0, the largest, or huge.
    fn any_timeout(&mut self) -> Option<u64> {
        match self.next() % 4 {
            0 => None,
            1 => Some(0),
            2 => Some(u64::MAX),
            _ => Some(self.range(1 << 50, u64::MAX)),
        }
    }

    /// A name that breaks the rules (1 to `max` bytes of UTF-8 without
    /// control characters): empty, too long (also in multi-byte
    /// characters), or with a control character somewhere.
    fn bad_name(&mut self, max: usize) -> String {
        match self.next() % 4 {
            0 => String::new(),
            1 => "n".repeat(self.range(max as u64 + 1, 2_000) as usize),
            // 2-byte characters: few characters, too many bytes.
            2 => "é".repeat(max / 2 + 1 + self.range(0, 64) as usize),
            _ => {
                let control = self.pick(&[
                    '\0', '\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{1f}', '\u{7f}', '\u{85}',
                    '\u{9f}',
                ]);
                let mut name = format!("bad-{}", self.range(0, 999));
                let at = self.range(0, name.len() as u64) as usize;
                name.insert(at, control);
                name
            }
        }
    }

    /// A queue name of 253 to 256 bytes: fine elsewhere, but too long for
    /// a queue (".dlq" must fit).
    fn queue_name_too_long(&mut self) -> String {
        "q".repeat(self.range(253, 256) as usize)
    }

    /// More bytes than `--max-message-bytes` lets into a request.
    fn oversized(&mut self) -> usize {
        MESSAGE_BYTES_MAX + self.range(1_024, 32 * 1024) as usize
    }
}

// ---------------------------------------------------------------------------
// What the server holds before the storm
// ---------------------------------------------------------------------------

/// Primitives and holds made before the bad requests, so that the requests
/// can name things that exist and holds of other sessions.
#[derive(Clone, Debug)]
struct Fixtures {
    /// The owner of every hold below.
    a: u64,
    /// Another live session, which holds nothing.
    b: u64,
    lock_token: u64,
    sem_token: u64,
    rw_token: u64,
    pool_token: u64,
    breaker_token: u64,
    item_id: u64,
}

const LOCK: &str = "fx-lock";
const SEM: &str = "fx-sem";
const SEM_CAPACITY: u32 = 3;
const RW: &str = "fx-rw";
const EVENT: &str = "fx-event";
const BARRIER: &str = "fx-barrier";
const BUCKET: &str = "fx-bucket";
const BUCKET_RATE: u32 = 10;
const BUCKET_CAPACITY: u32 = 5;
const BREAKER: &str = "fx-breaker";
const QUEUE: &str = "fx-queue";
const QUEUE_CAPACITY: u32 = 10;
const POOL: &str = "fx-pool";
const POOL_SIZE: u32 = 2;
/// A name of each kind that is never created.
const ABSENT: &str = "absent";

async fn create_session(channel: &Channel) -> u64 {
    SessionsClient::new(channel.clone())
        .create(pb::CreateSessionRequest {
            ttl_ms: 3_600_000,
            client_name: "bad-input".into(),
        })
        .await
        .expect("create session")
        .into_inner()
        .session_id
}

/// The stream's last message after any `queued`.
async fn last<T: Debug>(response: Result<Response<Streaming<T>>, Status>, what: &str) -> T {
    let mut stream = response
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .into_inner();
    next(&mut stream).await
}

async fn make_fixtures(channel: &Channel) -> Fixtures {
    let a = create_session(channel).await;
    let b = create_session(channel).await;
    let c = channel.clone();

    let lock_token = match last(
        LocksClient::new(c.clone())
            .acquire(pb::AcquireLockRequest {
                session_id: a,
                name: LOCK.into(),
                timeout_ms: Some(0),
                acquire_id: 0,
            })
            .await,
        "lock",
    )
    .await
    .event
    {
        Some(pb::acquire_lock_response::Event::Granted(g)) => g.fencing_token,
        other => panic!("lock fixture: {other:?}"),
    };
    let sem_token = match last(
        SemaphoresClient::new(c.clone())
            .acquire(pb::AcquireSemaphoreRequest {
                session_id: a,
                name: SEM.into(),
                capacity: SEM_CAPACITY,
                permits: 1,
                timeout_ms: Some(0),
                acquire_id: 0,
            })
            .await,
        "semaphore",
    )
    .await
    .event
    {
        Some(pb::acquire_semaphore_response::Event::Granted(g)) => g.fencing_token,
        other => panic!("semaphore fixture: {other:?}"),
    };
    let rw_token = match last(
        RwLocksClient::new(c.clone())
            .acquire(pb::AcquireRwLockRequest {
                session_id: a,
                name: RW.into(),
                mode: pb::RwMode::Write.into(),
                timeout_ms: Some(0),
                acquire_id: 0,
            })
            .await,
        "rwlock",
    )
    .await
    .event
    {
        Some(pb::acquire_rw_lock_response::Event::Granted(g)) => g.fencing_token,
        other => panic!("rwlock fixture: {other:?}"),
    };
    EventsClient::new(c.clone())
        .set(pb::SetEventRequest { name: EVENT.into() })
        .await
        .expect("event fixture");
    match last(
        BarriersClient::new(c.clone())
            .wait(pb::WaitBarrierRequest {
                session_id: a,
                name: BARRIER.into(),
                parties: 1,
                timeout_ms: Some(0),
            })
            .await,
        "barrier",
    )
    .await
    .event
    {
        Some(pb::wait_barrier_response::Event::Passed(_)) => {}
        other => panic!("barrier fixture: {other:?}"),
    }
    let bucket = RateLimitsClient::new(c.clone())
        .try_take(pb::TryTakeTokensRequest {
            name: BUCKET.into(),
            rate_per_s: BUCKET_RATE,
            capacity: BUCKET_CAPACITY,
            tokens: 1,
        })
        .await
        .expect("bucket fixture")
        .into_inner();
    assert!(bucket.taken, "bucket fixture: {bucket:?}");
    let allowed = CircuitBreakersClient::new(c.clone())
        .allow(pb::AllowCallRequest {
            session_id: a,
            name: BREAKER.into(),
            settings: Some(breaker_settings()),
            acquire_id: 0,
        })
        .await
        .expect("breaker fixture")
        .into_inner();
    let breaker_token = match allowed.verdict {
        Some(pb::allow_call_response::Verdict::Permit(p)) => p.fencing_token,
        other => panic!("breaker fixture: {other:?}"),
    };
    match last(
        QueuesClient::new(c.clone())
            .put(put(a, QUEUE, b"fixture".to_vec(), Some(QUEUE_CAPACITY)))
            .await,
        "put",
    )
    .await
    .event
    {
        Some(pb::put_response::Event::Stored(_)) => {}
        other => panic!("queue fixture: {other:?}"),
    }
    let item_id = match last(
        QueuesClient::new(c.clone())
            .get(pb::GetRequest {
                session_id: a,
                name: QUEUE.into(),
                timeout_ms: Some(0),
                visibility_timeout_ms: 3_600_000,
                no_ack: false,
            })
            .await,
        "get",
    )
    .await
    .event
    {
        Some(pb::get_response::Event::Item(item)) => item.id,
        other => panic!("queue fixture: {other:?}"),
    };
    let pool_token = match last(
        PoolsClient::new(c.clone())
            .checkout(checkout(a, POOL, POOL_SIZE, Some(0)))
            .await,
        "checkout",
    )
    .await
    .event
    {
        Some(pb::checkout_response::Event::Resource(r)) => r.fencing_token,
        other => panic!("pool fixture: {other:?}"),
    };
    Fixtures {
        a,
        b,
        lock_token,
        sem_token,
        rw_token,
        pool_token,
        breaker_token,
        item_id,
    }
}

fn breaker_settings() -> pb::BreakerSettings {
    pb::BreakerSettings {
        failure_threshold: 3,
        open_timeout_ms: 60_000,
        half_open_max_probes: 1,
        success_threshold: 1,
        window_calls: 0,
        failure_rate_percent: 0,
        min_calls: 0,
    }
}

fn put(session_id: u64, name: &str, value: Vec<u8>, capacity: Option<u32>) -> pb::PutRequest {
    pb::PutRequest {
        session_id,
        name: name.into(),
        value,
        priority: 0,
        capacity,
        max_deliveries: 0,
        timeout_ms: Some(0),
        put_id: 0,
    }
}

fn checkout(
    session_id: u64,
    name: &str,
    size: u32,
    timeout_ms: Option<u64>,
) -> pb::CheckoutRequest {
    pb::CheckoutRequest {
        session_id,
        name: name.into(),
        size,
        max_age_ms: 0,
        max_idle_ms: 0,
        timeout_ms,
        acquire_id: 0,
    }
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// What a request got: its code (OK for a reply or a stream's final
/// message) and the status message. A stream that answers `queued` (the
/// request waits, which none of these should) gets `Code::Unknown` and
/// says so in the message.
type Got = (Code, String);
type Call = Pin<Box<dyn Future<Output = Got> + Send>>;

struct Case {
    /// What the request tests, e.g. "lock.acquire bad name".
    category: &'static str,
    expected: Code,
    send: Box<dyn FnOnce(Channel) -> Call + Send>,
}

fn case<F, Fut>(category: &'static str, expected: Code, send: F) -> Case
where
    F: FnOnce(Channel) -> Fut + Send + 'static,
    Fut: Future<Output = Got> + Send + 'static,
{
    Case {
        category,
        expected,
        send: Box::new(move |channel| Box::pin(send(channel))),
    }
}

/// The answer of a unary call.
fn unary<T>(result: Result<Response<T>, Status>) -> Got {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// The answer of a server-streaming call: the status it ends with, or OK
/// when its first message is a final one.
async fn streamed<T: Debug>(result: Result<Response<Streaming<T>>, Status>) -> Got {
    let mut stream = match result {
        Ok(response) => response.into_inner(),
        Err(status) => return (status.code(), status.message().to_owned()),
    };
    match tokio::time::timeout(HANG_GUARD, stream.message()).await {
        Ok(Err(status)) => (status.code(), status.message().to_owned()),
        Ok(Ok(Some(message))) => {
            let text = format!("{message:?}");
            if text.contains("Queued") {
                (Code::Unknown, format!("queued (the request waits): {text}"))
            } else {
                (Code::Ok, text)
            }
        }
        Ok(Ok(None)) => (Code::Unknown, "the stream ended without a message".into()),
        Err(_) => (Code::Unknown, format!("no answer within {HANG_GUARD:?}")),
    }
}

const IA: Code = Code::InvalidArgument;
const NF: Code = Code::NotFound;
const FP: Code = Code::FailedPrecondition;
const RE: Code = Code::ResourceExhausted;
const DE: Code = Code::DeadlineExceeded;
const OK: Code = Code::Ok;

/// Case templates; the generator picks one per request and fills it in.
const TEMPLATES: usize = 83;

/// The `i`-th request: a template picked by the generator and filled in.
fn generate(rng: &mut Rng, fx: &Fixtures) -> Case {
    let (a, b) = (fx.a, fx.b);
    let template = rng.next() as usize % TEMPLATES;
    match template {
        // --- sessions ---------------------------------------------------
        0 => {
            let huge = rng.range(1 << 32, u64::MAX);
            let ttl_ms = rng.pick(&[0, 1, 999, 3_600_001, u64::MAX, huge]);
            case("session.create ttl out of range", IA, move |c| async move {
                let request = pb::CreateSessionRequest {
                    ttl_ms,
                    client_name: "x".into(),
                };
                unary(SessionsClient::new(c).create(request).await)
            })
        }
        1 => {
            let client_name = "c".repeat(rng.range(NAME_BYTES_MAX as u64 + 1, 4_000) as usize);
            case(
                "session.create client_name too long",
                IA,
                move |c| async move {
                    let request = pb::CreateSessionRequest {
                        ttl_ms: 60_000,
                        client_name,
                    };
                    unary(SessionsClient::new(c).create(request).await)
                },
            )
        }
        2 => {
            let session_id = rng.unknown_session();
            case("session.close unknown session", NF, move |c| async move {
                let request = pb::CloseSessionRequest {
                    session_id,
                    reason: String::new(),
                };
                unary(SessionsClient::new(c).close(request).await)
            })
        }
        3 => {
            let session_id = rng.unknown_session();
            case(
                "session.keep_alive unknown session",
                NF,
                move |c| async move {
                    let requests = tokio_stream::iter(vec![pb::KeepAliveRequest {
                        session_id,
                        notices_seen_through: 0,
                    }]);
                    streamed(SessionsClient::new(c).keep_alive(requests).await).await
                },
            )
        }
        // --- locks ------------------------------------------------------
        4 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let timeout_ms = rng.any_timeout();
            case("lock.acquire bad name", IA, move |c| async move {
                let request = pb::AcquireLockRequest {
                    session_id: a,
                    name,
                    timeout_ms,
                    acquire_id: 0,
                };
                streamed(LocksClient::new(c).acquire(request).await).await
            })
        }
        5 => {
            let session_id = rng.unknown_session();
            let timeout_ms = rng.any_timeout();
            case("lock.acquire unknown session", NF, move |c| async move {
                let request = pb::AcquireLockRequest {
                    session_id,
                    name: LOCK.into(),
                    timeout_ms,
                    acquire_id: 0,
                };
                streamed(LocksClient::new(c).acquire(request).await).await
            })
        }
        6 => case(
            "lock.acquire held by another, timeout 0",
            DE,
            move |c| async move {
                let request = pb::AcquireLockRequest {
                    session_id: b,
                    name: LOCK.into(),
                    timeout_ms: Some(0),
                    acquire_id: 0,
                };
                streamed(LocksClient::new(c).acquire(request).await).await
            },
        ),
        7 => {
            let fencing_token = rng.unknown_token();
            case("lock.release wrong token", FP, move |c| async move {
                let request = pb::ReleaseLockRequest {
                    session_id: a,
                    name: LOCK.into(),
                    fencing_token,
                };
                unary(LocksClient::new(c).release(request).await)
            })
        }
        8 => {
            let fencing_token = fx.lock_token;
            case(
                "lock.release of another session's hold",
                FP,
                move |c| async move {
                    let request = pb::ReleaseLockRequest {
                        session_id: b,
                        name: LOCK.into(),
                        fencing_token,
                    };
                    unary(LocksClient::new(c).release(request).await)
                },
            )
        }
        9 => {
            let session_id = rng.unknown_session();
            let fencing_token = fx.lock_token;
            case("lock.release unknown session", NF, move |c| async move {
                let request = pb::ReleaseLockRequest {
                    session_id,
                    name: LOCK.into(),
                    fencing_token,
                };
                unary(LocksClient::new(c).release(request).await)
            })
        }
        10 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            case("lock.release bad name", IA, move |c| async move {
                let request = pb::ReleaseLockRequest {
                    session_id: a,
                    name,
                    fencing_token: 1,
                };
                unary(LocksClient::new(c).release(request).await)
            })
        }
        11 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            case("lock.describe bad name", IA, move |c| async move {
                let request = pb::DescribeLockRequest { name };
                unary(LocksClient::new(c).describe(request).await)
            })
        }
        // --- semaphores -------------------------------------------------
        12 => case(
            "semaphore.acquire capacity 0, absent",
            NF,
            move |c| async move {
                let request = sem_request(a, ABSENT, 0, 1);
                streamed(SemaphoresClient::new(c).acquire(request).await).await
            },
        ),
        13 => {
            let capacity = rng.range(1_000_001, u32::MAX as u64) as u32;
            case(
                "semaphore.acquire capacity above 1,000,000",
                IA,
                move |c| async move {
                    let request = sem_request(a, ABSENT, capacity, 1);
                    streamed(SemaphoresClient::new(c).acquire(request).await).await
                },
            )
        }
        14 => {
            let capacity = rng.range(1, 1_000) as u32;
            let permits = rng.range(capacity as u64 + 1, u32::MAX as u64) as u32;
            case(
                "semaphore.acquire permits above capacity, new",
                IA,
                move |c| async move {
                    let request = sem_request(a, ABSENT, capacity, permits);
                    streamed(SemaphoresClient::new(c).acquire(request).await).await
                },
            )
        }
        15 => {
            let permits = rng.range(SEM_CAPACITY as u64 + 1, u32::MAX as u64) as u32;
            case(
                "semaphore.acquire permits above capacity, existing",
                IA,
                move |c| async move {
                    let request = sem_request(a, SEM, 0, permits);
                    streamed(SemaphoresClient::new(c).acquire(request).await).await
                },
            )
        }
        16 => {
            let mut capacity = rng.range(1, 1_000_000) as u32;
            if capacity == SEM_CAPACITY {
                capacity += 1;
            }
            case(
                "semaphore.acquire capacity disagrees",
                FP,
                move |c| async move {
                    let request = sem_request(a, SEM, capacity, 1);
                    streamed(SemaphoresClient::new(c).acquire(request).await).await
                },
            )
        }
        17 => {
            let session_id = rng.unknown_session();
            case(
                "semaphore.acquire unknown session",
                NF,
                move |c| async move {
                    let request = sem_request(session_id, SEM, SEM_CAPACITY, 1);
                    streamed(SemaphoresClient::new(c).acquire(request).await).await
                },
            )
        }
        18 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            case("semaphore.acquire bad name", IA, move |c| async move {
                let request = sem_request(a, &name, 2, 1);
                streamed(SemaphoresClient::new(c).acquire(request).await).await
            })
        }
        19 => {
            let (session_id, fencing_token, category) = if rng.coin() {
                (
                    b,
                    fx.sem_token,
                    "semaphore.release of another session's hold",
                )
            } else {
                (a, rng.unknown_token(), "semaphore.release wrong token")
            };
            case(category, FP, move |c| async move {
                let request = pb::ReleaseSemaphoreRequest {
                    session_id,
                    name: SEM.into(),
                    fencing_token,
                };
                unary(SemaphoresClient::new(c).release(request).await)
            })
        }
        20 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            case("semaphore.describe bad name", IA, move |c| async move {
                let request = pb::DescribeSemaphoreRequest { name };
                unary(SemaphoresClient::new(c).describe(request).await)
            })
        }
        // --- read-write locks -------------------------------------------
        21 => {
            let mode = rng.pick(&[0, 3, 99, -1, i32::MAX, i32::MIN]);
            case("rwlock.acquire unknown mode", IA, move |c| async move {
                let request = rw_request(a, "rw-other", mode);
                streamed(RwLocksClient::new(c).acquire(request).await).await
            })
        }
        22 => {
            let session_id = rng.unknown_session();
            case("rwlock.acquire unknown session", NF, move |c| async move {
                let request = rw_request(session_id, RW, pb::RwMode::Read.into());
                streamed(RwLocksClient::new(c).acquire(request).await).await
            })
        }
        23 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            case("rwlock.acquire bad name", IA, move |c| async move {
                let request = rw_request(a, &name, pb::RwMode::Read.into());
                streamed(RwLocksClient::new(c).acquire(request).await).await
            })
        }
        24 => case(
            "rwlock.acquire read beside a writer, timeout 0",
            DE,
            move |c| async move {
                let request = rw_request(b, RW, pb::RwMode::Read.into());
                streamed(RwLocksClient::new(c).acquire(request).await).await
            },
        ),
        25 => {
            let (session_id, fencing_token, category) = if rng.coin() {
                (b, fx.rw_token, "rwlock.release of another session's hold")
            } else {
                (a, rng.unknown_token(), "rwlock.release wrong token")
            };
            case(category, FP, move |c| async move {
                let request = pb::ReleaseRwLockRequest {
                    session_id,
                    name: RW.into(),
                    fencing_token,
                };
                unary(RwLocksClient::new(c).release(request).await)
            })
        }
        // --- events -----------------------------------------------------
        26 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let set = rng.coin();
            let category = if set {
                "event.set bad name"
            } else {
                "event.clear bad name"
            };
            case(category, IA, move |c| async move {
                let mut events = EventsClient::new(c);
                if set {
                    unary(events.set(pb::SetEventRequest { name }).await)
                } else {
                    unary(events.clear(pb::ClearEventRequest { name }).await)
                }
            })
        }
        27 => {
            let session_id = rng.unknown_session();
            let timeout_ms = rng.any_timeout();
            case("event.wait unknown session", NF, move |c| async move {
                let request = pb::WaitEventRequest {
                    session_id,
                    name: EVENT.into(),
                    timeout_ms,
                };
                streamed(EventsClient::new(c).wait(request).await).await
            })
        }
        28 => {
            let timeout_ms = rng.any_timeout();
            case(
                "event.wait on a set event, absurd timeout",
                OK,
                move |c| async move {
                    let request = pb::WaitEventRequest {
                        session_id: b,
                        name: EVENT.into(),
                        timeout_ms,
                    };
                    streamed(EventsClient::new(c).wait(request).await).await
                },
            )
        }
        29 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let describe = rng.coin();
            let category = if describe {
                "event.describe bad name"
            } else {
                "event.wait bad name"
            };
            case(category, IA, move |c| async move {
                let mut events = EventsClient::new(c);
                if describe {
                    unary(events.describe(pb::DescribeEventRequest { name }).await)
                } else {
                    let request = pb::WaitEventRequest {
                        session_id: b,
                        name,
                        timeout_ms: Some(0),
                    };
                    streamed(events.wait(request).await).await
                }
            })
        }
        // --- conditions -------------------------------------------------
        30 => case("condition.wait lock not held", FP, move |c| async move {
            let request = condition_request(a, "cond", "free-lock", 1);
            streamed(ConditionsClient::new(c).wait(request).await).await
        }),
        31 => {
            let token = rng.unknown_token();
            case("condition.wait wrong token", FP, move |c| async move {
                let request = condition_request(a, "cond", LOCK, token);
                streamed(ConditionsClient::new(c).wait(request).await).await
            })
        }
        32 => {
            let token = fx.lock_token;
            case(
                "condition.wait with another session's hold",
                FP,
                move |c| async move {
                    let request = condition_request(b, "cond", LOCK, token);
                    streamed(ConditionsClient::new(c).wait(request).await).await
                },
            )
        }
        33 => {
            let session_id = rng.unknown_session();
            let token = fx.lock_token;
            case("condition.wait unknown session", NF, move |c| async move {
                let request = condition_request(session_id, "cond", LOCK, token);
                streamed(ConditionsClient::new(c).wait(request).await).await
            })
        }
        34 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let token = fx.lock_token;
            case("condition.wait bad name", IA, move |c| async move {
                let request = condition_request(a, &name, LOCK, token);
                streamed(ConditionsClient::new(c).wait(request).await).await
            })
        }
        35 => {
            let lock = rng.bad_name(NAME_BYTES_MAX);
            case("condition.wait bad lock name", IA, move |c| async move {
                let request = condition_request(a, "cond", &lock, 1);
                streamed(ConditionsClient::new(c).wait(request).await).await
            })
        }
        36 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let notify = rng.coin();
            let category = if notify {
                "condition.notify bad name"
            } else {
                "condition.describe bad name"
            };
            case(category, IA, move |c| async move {
                let mut conditions = ConditionsClient::new(c);
                if notify {
                    let request = pb::NotifyConditionRequest {
                        name,
                        count: u32::MAX,
                        all: true,
                    };
                    unary(conditions.notify(request).await)
                } else {
                    unary(
                        conditions
                            .describe(pb::DescribeConditionRequest { name })
                            .await,
                    )
                }
            })
        }
        // --- barriers ---------------------------------------------------
        37 => case("barrier.wait parties 0, absent", NF, move |c| async move {
            let request = barrier_request(a, ABSENT, 0, Some(0));
            streamed(BarriersClient::new(c).wait(request).await).await
        }),
        38 => {
            let parties = rng.range(10_001, u32::MAX as u64) as u32;
            case(
                "barrier.wait parties above the limit",
                IA,
                move |c| async move {
                    let request = barrier_request(a, ABSENT, parties, Some(0));
                    streamed(BarriersClient::new(c).wait(request).await).await
                },
            )
        }
        39 => {
            let parties = rng.range(2, u32::MAX as u64) as u32;
            case("barrier.wait parties disagree", FP, move |c| async move {
                let request = barrier_request(a, BARRIER, parties, Some(0));
                streamed(BarriersClient::new(c).wait(request).await).await
            })
        }
        40 => {
            let timeout_ms = rng.any_timeout();
            let parties = rng.pick(&[0, 1]);
            case(
                "barrier.wait of one party, absurd timeout",
                OK,
                move |c| async move {
                    let request = barrier_request(b, BARRIER, parties, timeout_ms);
                    streamed(BarriersClient::new(c).wait(request).await).await
                },
            )
        }
        41 => {
            let session_id = rng.unknown_session();
            case("barrier.wait unknown session", NF, move |c| async move {
                let request = barrier_request(session_id, BARRIER, 1, None);
                streamed(BarriersClient::new(c).wait(request).await).await
            })
        }
        42 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let which = rng.next() % 4;
            let category = [
                "barrier.wait bad name",
                "barrier.reset bad name",
                "barrier.describe bad name",
                "barrier.delete bad name",
            ][which as usize];
            case(category, IA, move |c| async move {
                let mut barriers = BarriersClient::new(c);
                match which {
                    0 => {
                        let request = barrier_request(a, &name, 1, Some(0));
                        streamed(barriers.wait(request).await).await
                    }
                    1 => unary(barriers.reset(pb::ResetBarrierRequest { name }).await),
                    2 => unary(barriers.describe(pb::DescribeBarrierRequest { name }).await),
                    _ => unary(barriers.delete(pb::DeleteBarrierRequest { name }).await),
                }
            })
        }
        43 => {
            let reset = rng.coin();
            let category = if reset {
                "barrier.reset absent"
            } else {
                "barrier.delete absent"
            };
            case(category, NF, move |c| async move {
                let mut barriers = BarriersClient::new(c);
                let name = ABSENT.to_owned();
                if reset {
                    unary(barriers.reset(pb::ResetBarrierRequest { name }).await)
                } else {
                    unary(barriers.delete(pb::DeleteBarrierRequest { name }).await)
                }
            })
        }
        // --- rate limits ------------------------------------------------
        44 => {
            let tokens = rng.range(BUCKET_CAPACITY as u64 + 1, u32::MAX as u64) as u32;
            let timeout_ms = rng.any_timeout();
            case(
                "ratelimit.take tokens above capacity",
                IA,
                move |c| async move {
                    let request = pb::TakeTokensRequest {
                        session_id: a,
                        name: BUCKET.into(),
                        rate_per_s: 0,
                        capacity: 0,
                        tokens,
                        timeout_ms,
                    };
                    streamed(RateLimitsClient::new(c).take(request).await).await
                },
            )
        }
        45 => {
            let session_id = rng.unknown_session();
            case("ratelimit.take unknown session", NF, move |c| async move {
                let request = pb::TakeTokensRequest {
                    session_id,
                    name: BUCKET.into(),
                    rate_per_s: 0,
                    capacity: 0,
                    tokens: 1,
                    timeout_ms: Some(0),
                };
                streamed(RateLimitsClient::new(c).take(request).await).await
            })
        }
        46 => case(
            "ratelimit.try_take absent, no settings",
            NF,
            move |c| async move {
                let request = try_take(ABSENT, 0, 0, 1);
                unary(RateLimitsClient::new(c).try_take(request).await)
            },
        ),
        47 => {
            let (rate, capacity) = if rng.coin() {
                (BUCKET_RATE + rng.range(1, 1_000) as u32, BUCKET_CAPACITY)
            } else {
                (BUCKET_RATE, BUCKET_CAPACITY + rng.range(1, 1_000) as u32)
            };
            case(
                "ratelimit.try_take settings disagree",
                FP,
                move |c| async move {
                    let request = try_take(BUCKET, rate, capacity, 1);
                    unary(RateLimitsClient::new(c).try_take(request).await)
                },
            )
        }
        48 => {
            let tokens = rng.range(BUCKET_CAPACITY as u64 + 1, u32::MAX as u64) as u32;
            case(
                "ratelimit.try_take tokens above capacity",
                IA,
                move |c| async move {
                    let request = try_take(BUCKET, 0, 0, tokens);
                    unary(RateLimitsClient::new(c).try_take(request).await)
                },
            )
        }
        49 => case(
            "ratelimit.try_take tokens 0 (means 1)",
            OK,
            move |c| async move {
                let request = try_take(BUCKET, 0, 0, 0);
                unary(RateLimitsClient::new(c).try_take(request).await)
            },
        ),
        50 => {
            let which = rng.next() % 3;
            let count = rng.range(101, 300) as usize;
            let category = [
                "ratelimit.try_take_many no buckets",
                "ratelimit.try_take_many more than 100 buckets",
                "ratelimit.try_take_many a bucket named twice",
            ][which as usize];
            case(category, IA, move |c| async move {
                let buckets = match which {
                    0 => Vec::new(),
                    1 => (0..count)
                        .map(|i| try_take(&format!("many-{i}"), 1, 1, 1))
                        .collect(),
                    _ => vec![try_take(BUCKET, 0, 0, 1), try_take(BUCKET, 0, 0, 1)],
                };
                let request = pb::TryTakeManyRequest { buckets };
                unary(RateLimitsClient::new(c).try_take_many(request).await)
            })
        }
        51 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let which = rng.next() % 4;
            let category = [
                "ratelimit.take bad name",
                "ratelimit.try_take bad name",
                "ratelimit.describe bad name",
                "ratelimit.delete bad name",
            ][which as usize];
            case(category, IA, move |c| async move {
                let mut limits = RateLimitsClient::new(c);
                match which {
                    0 => {
                        let request = pb::TakeTokensRequest {
                            session_id: a,
                            name,
                            rate_per_s: 1,
                            capacity: 1,
                            tokens: 1,
                            timeout_ms: Some(0),
                        };
                        streamed(limits.take(request).await).await
                    }
                    1 => unary(limits.try_take(try_take(&name, 1, 1, 1)).await),
                    2 => {
                        let request = pb::DescribeRateLimitRequest { name };
                        unary(limits.describe(request).await)
                    }
                    _ => unary(limits.delete(pb::DeleteRateLimitRequest { name }).await),
                }
            })
        }
        52 => case("ratelimit.delete absent", NF, move |c| async move {
            let request = pb::DeleteRateLimitRequest {
                name: ABSENT.into(),
            };
            unary(RateLimitsClient::new(c).delete(request).await)
        }),
        53 => {
            let (rate, capacity) = if rng.coin() {
                (0, rng.range(1, 1_000) as u32)
            } else {
                (rng.range(1, 1_000) as u32, 0)
            };
            case(
                "ratelimit.try_take absent, rate or capacity 0 (no settings)",
                NF,
                move |c| async move {
                    let request = try_take(ABSENT, rate, capacity, 1);
                    unary(RateLimitsClient::new(c).try_take(request).await)
                },
            )
        }
        // --- circuit breakers -------------------------------------------
        54 => {
            let settings = bad_breaker_settings(rng);
            case(
                "breaker.allow settings out of range",
                IA,
                move |c| async move {
                    let request = pb::AllowCallRequest {
                        session_id: a,
                        name: ABSENT.into(),
                        settings: Some(settings),
                        acquire_id: 0,
                    };
                    unary(CircuitBreakersClient::new(c).allow(request).await)
                },
            )
        }
        55 => case(
            "breaker.allow absent, no settings",
            NF,
            move |c| async move {
                let request = pb::AllowCallRequest {
                    session_id: a,
                    name: ABSENT.into(),
                    settings: None,
                    acquire_id: 0,
                };
                unary(CircuitBreakersClient::new(c).allow(request).await)
            },
        ),
        56 => {
            let session_id = rng.unknown_session();
            case("breaker.allow unknown session", NF, move |c| async move {
                let request = pb::AllowCallRequest {
                    session_id,
                    name: BREAKER.into(),
                    settings: None,
                    acquire_id: 0,
                };
                unary(CircuitBreakersClient::new(c).allow(request).await)
            })
        }
        57 => {
            let fencing_token = rng.unknown_token();
            case("breaker.record unknown permit", NF, move |c| async move {
                let request = record(a, BREAKER, fencing_token, 2);
                unary(CircuitBreakersClient::new(c).record(request).await)
            })
        }
        58 => {
            let token = fx.breaker_token;
            case(
                "breaker.record another session's permit",
                FP,
                move |c| async move {
                    let request = record(b, BREAKER, token, 2);
                    unary(CircuitBreakersClient::new(c).record(request).await)
                },
            )
        }
        59 => {
            let outcome = rng.pick(&[0, 3, 99, -1, i32::MAX, i32::MIN]);
            let token = fx.breaker_token;
            case("breaker.record unknown outcome", IA, move |c| async move {
                let request = record(a, BREAKER, token, outcome);
                unary(CircuitBreakersClient::new(c).record(request).await)
            })
        }
        60 => {
            let which = rng.next() % 4;
            let category = [
                "breaker.force_open absent",
                "breaker.force_close absent",
                "breaker.reset absent",
                "breaker.delete absent",
            ][which as usize];
            case(category, NF, move |c| async move {
                let mut breakers = CircuitBreakersClient::new(c);
                let request = pb::ControlBreakerRequest {
                    name: ABSENT.into(),
                };
                match which {
                    0 => unary(breakers.force_open(request).await),
                    1 => unary(breakers.force_close(request).await),
                    2 => unary(breakers.reset(request).await),
                    _ => {
                        let request = pb::DeleteBreakerRequest {
                            name: ABSENT.into(),
                        };
                        unary(breakers.delete(request).await)
                    }
                }
            })
        }
        61 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let which = rng.next() % 4;
            let category = [
                "breaker.allow bad name",
                "breaker.record bad name",
                "breaker.describe bad name",
                "breaker.force_open bad name",
            ][which as usize];
            case(category, IA, move |c| async move {
                let mut breakers = CircuitBreakersClient::new(c);
                match which {
                    0 => {
                        let request = pb::AllowCallRequest {
                            session_id: a,
                            name,
                            settings: Some(breaker_settings()),
                            acquire_id: 0,
                        };
                        unary(breakers.allow(request).await)
                    }
                    1 => unary(breakers.record(record(a, &name, 1, 1)).await),
                    2 => {
                        let request = pb::DescribeBreakerRequest { name };
                        unary(breakers.describe(request).await)
                    }
                    _ => {
                        let request = pb::ControlBreakerRequest { name };
                        unary(breakers.force_open(request).await)
                    }
                }
            })
        }
        62 => {
            let session_id = rng.unknown_session();
            case("breaker.watch unknown session", NF, move |c| async move {
                let request = pb::WatchBreakerRequest {
                    session_id,
                    name: BREAKER.into(),
                };
                streamed(CircuitBreakersClient::new(c).watch(request).await).await
            })
        }
        // --- queues -----------------------------------------------------
        63 => {
            let size = rng.range(ITEM_BYTES_MAX as u64 + 1, MESSAGE_BYTES_MAX as u64 - 1_024);
            case(
                "queue.put item above max-item-bytes",
                IA,
                move |c| async move {
                    let request = put(a, "q-big", vec![0xa5; size as usize], None);
                    streamed(QueuesClient::new(c).put(request).await).await
                },
            )
        }
        64 => {
            let name = if rng.coin() {
                rng.queue_name_too_long()
            } else {
                rng.bad_name(252)
            };
            case("queue.put bad name", IA, move |c| async move {
                let request = put(a, &name, b"x".to_vec(), None);
                streamed(QueuesClient::new(c).put(request).await).await
            })
        }
        65 => {
            let capacity = rng.pick(&[1, 2, 11, 1_000, u32::MAX]);
            case("queue.put capacity disagrees", FP, move |c| async move {
                let request = put(a, QUEUE, b"x".to_vec(), Some(capacity));
                streamed(QueuesClient::new(c).put(request).await).await
            })
        }
        66 => {
            let session_id = rng.unknown_session();
            let which = rng.next() % 3;
            let category = [
                "queue.put unknown session",
                "queue.get unknown session",
                "queue.join unknown session",
            ][which as usize];
            case(category, NF, move |c| async move {
                let mut queues = QueuesClient::new(c);
                match which {
                    0 => {
                        let request = put(session_id, QUEUE, b"x".to_vec(), None);
                        streamed(queues.put(request).await).await
                    }
                    1 => {
                        let request = pb::GetRequest {
                            session_id,
                            name: QUEUE.into(),
                            timeout_ms: Some(0),
                            visibility_timeout_ms: 0,
                            no_ack: false,
                        };
                        streamed(queues.get(request).await).await
                    }
                    _ => {
                        let request = pb::JoinRequest {
                            session_id,
                            name: QUEUE.into(),
                            timeout_ms: Some(0),
                        };
                        streamed(queues.join(request).await).await
                    }
                }
            })
        }
        67 => {
            let item_id = rng.unknown_token();
            let ack = rng.coin();
            let category = if ack {
                "queue.ack unknown item"
            } else {
                "queue.nack unknown item"
            };
            case(category, NF, move |c| async move {
                let mut queues = QueuesClient::new(c);
                if ack {
                    let request = pb::AckRequest {
                        session_id: a,
                        name: QUEUE.into(),
                        item_id,
                    };
                    unary(queues.ack(request).await)
                } else {
                    let request = pb::NackRequest {
                        session_id: a,
                        name: QUEUE.into(),
                        item_id,
                    };
                    unary(queues.nack(request).await)
                }
            })
        }
        68 => {
            let item_id = fx.item_id;
            let ack = rng.coin();
            let category = if ack {
                "queue.ack of another session's item"
            } else {
                "queue.nack of another session's item"
            };
            case(category, FP, move |c| async move {
                let mut queues = QueuesClient::new(c);
                if ack {
                    let request = pb::AckRequest {
                        session_id: b,
                        name: QUEUE.into(),
                        item_id,
                    };
                    unary(queues.ack(request).await)
                } else {
                    let request = pb::NackRequest {
                        session_id: b,
                        name: QUEUE.into(),
                        item_id,
                    };
                    unary(queues.nack(request).await)
                }
            })
        }
        69 => {
            let name = rng.bad_name(252);
            let which = rng.next() % 3;
            let category = [
                "queue.get bad name",
                "queue.ack bad name",
                "queue.describe bad name",
            ][which as usize];
            case(category, IA, move |c| async move {
                let mut queues = QueuesClient::new(c);
                match which {
                    0 => {
                        let request = pb::GetRequest {
                            session_id: a,
                            name,
                            timeout_ms: Some(0),
                            visibility_timeout_ms: 0,
                            no_ack: false,
                        };
                        streamed(queues.get(request).await).await
                    }
                    1 => {
                        let request = pb::AckRequest {
                            session_id: a,
                            name,
                            item_id: 1,
                        };
                        unary(queues.ack(request).await)
                    }
                    _ => unary(queues.describe(pb::DescribeQueueRequest { name }).await),
                }
            })
        }
        // --- pools ------------------------------------------------------
        70 => case("pool.checkout size 0, absent", NF, move |c| async move {
            let request = checkout(a, ABSENT, 0, Some(0));
            streamed(PoolsClient::new(c).checkout(request).await).await
        }),
        71 => {
            let size = rng.range(10_001, u32::MAX as u64) as u32;
            case(
                "pool.checkout size above the limit",
                IA,
                move |c| async move {
                    let request = checkout(a, ABSENT, size, Some(0));
                    streamed(PoolsClient::new(c).checkout(request).await).await
                },
            )
        }
        72 => {
            let size = rng.range(POOL_SIZE as u64 + 1, 10_000) as u32;
            case("pool.checkout settings disagree", FP, move |c| async move {
                let request = checkout(a, POOL, size, Some(0));
                streamed(PoolsClient::new(c).checkout(request).await).await
            })
        }
        73 => {
            let session_id = rng.unknown_session();
            case("pool.checkout unknown session", NF, move |c| async move {
                let request = checkout(session_id, POOL, POOL_SIZE, Some(0));
                streamed(PoolsClient::new(c).checkout(request).await).await
            })
        }
        74 => {
            let (session_id, fencing_token, category) = if rng.coin() {
                (
                    b,
                    fx.pool_token,
                    "pool.checkin of another session's checkout",
                )
            } else {
                (a, rng.unknown_token(), "pool.checkin wrong token")
            };
            case(category, FP, move |c| async move {
                let request = checkin(session_id, POOL, fencing_token, None);
                unary(PoolsClient::new(c).checkin(request).await)
            })
        }
        75 => {
            let size = rng.range(ITEM_BYTES_MAX as u64 + 1, MESSAGE_BYTES_MAX as u64 - 1_024);
            let token = fx.pool_token;
            case(
                "pool.checkin metadata above max-item-bytes",
                IA,
                move |c| async move {
                    let request = checkin(a, POOL, token, Some(vec![7; size as usize]));
                    unary(PoolsClient::new(c).checkin(request).await)
                },
            )
        }
        76 => {
            let name = rng.bad_name(NAME_BYTES_MAX);
            let which = rng.next() % 3;
            let category = [
                "pool.checkout bad name",
                "pool.checkin bad name",
                "pool.describe bad name",
            ][which as usize];
            case(category, IA, move |c| async move {
                let mut pools = PoolsClient::new(c);
                match which {
                    0 => streamed(pools.checkout(checkout(a, &name, 1, Some(0))).await).await,
                    1 => unary(pools.checkin(checkin(a, &name, 1, None)).await),
                    _ => unary(pools.describe(pb::DescribePoolRequest { name }).await),
                }
            })
        }
        // --- oversized messages (past --max-message-bytes) --------------
        77 | 78 => {
            let size = rng.oversized();
            let which = rng.next() % 6;
            let category = [
                "oversized lock.acquire name",
                "oversized queue.put item",
                "oversized event.set name",
                "oversized pool.checkin metadata",
                "oversized session.create client_name",
                "oversized breaker.describe name",
            ][which as usize];
            let token = fx.pool_token;
            case(category, RE, move |c| async move {
                let text = "o".repeat(size);
                match which {
                    0 => {
                        let request = pb::AcquireLockRequest {
                            session_id: a,
                            name: text,
                            timeout_ms: Some(0),
                            acquire_id: 0,
                        };
                        streamed(LocksClient::new(c).acquire(request).await).await
                    }
                    1 => {
                        let request = put(a, QUEUE, text.into_bytes(), None);
                        streamed(QueuesClient::new(c).put(request).await).await
                    }
                    2 => {
                        let request = pb::SetEventRequest { name: text };
                        unary(EventsClient::new(c).set(request).await)
                    }
                    3 => {
                        let request = checkin(a, POOL, token, Some(text.into_bytes()));
                        unary(PoolsClient::new(c).checkin(request).await)
                    }
                    4 => {
                        let request = pb::CreateSessionRequest {
                            ttl_ms: 60_000,
                            client_name: text,
                        };
                        unary(SessionsClient::new(c).create(request).await)
                    }
                    _ => {
                        let request = pb::DescribeBreakerRequest { name: text };
                        unary(CircuitBreakersClient::new(c).describe(request).await)
                    }
                }
            })
        }
        79 => {
            let huge = rng.range(1 << 40, u64::MAX);
            let visibility_timeout_ms = rng.pick(&[u64::MAX, huge]);
            case(
                "queue.get nothing ready, absurd visibility timeout",
                DE,
                move |c| async move {
                    let request = pb::GetRequest {
                        session_id: b,
                        name: QUEUE.into(),
                        timeout_ms: Some(0),
                        visibility_timeout_ms,
                        no_ack: false,
                    };
                    streamed(QueuesClient::new(c).get(request).await).await
                },
            )
        }
        // --- revoke -----------------------------------------------------
        81 => {
            let fencing_token = rng.unknown_token();
            case("session.revoke unknown token", NF, move |c| async move {
                let request = pb::RevokeRequest {
                    fencing_token,
                    reason: "bad input".into(),
                };
                unary(SessionsClient::new(c).revoke(request).await)
            })
        }
        82 => {
            // A real hold, so only the reason's length can refuse it.
            let fencing_token = rng.pick(&[fx.lock_token, fx.sem_token, fx.rw_token]);
            let reason = "r".repeat(rng.range(257, 4_000) as usize);
            case("session.revoke reason too long", IA, move |c| async move {
                let request = pb::RevokeRequest {
                    fencing_token,
                    reason,
                };
                unary(SessionsClient::new(c).revoke(request).await)
            })
        }
        // --- system -----------------------------------------------------
        _ => {
            let prefix = rng.bad_name(NAME_BYTES_MAX);
            case("system.list odd prefix", OK, move |c| async move {
                let request = pb::ListRequest {
                    kind: String::new(),
                    prefix,
                };
                unary(SystemClient::new(c).list(request).await)
            })
        }
    }
}

fn sem_request(
    session_id: u64,
    name: &str,
    capacity: u32,
    permits: u32,
) -> pb::AcquireSemaphoreRequest {
    pb::AcquireSemaphoreRequest {
        session_id,
        name: name.into(),
        capacity,
        permits,
        timeout_ms: Some(0),
        acquire_id: 0,
    }
}

fn rw_request(session_id: u64, name: &str, mode: i32) -> pb::AcquireRwLockRequest {
    pb::AcquireRwLockRequest {
        session_id,
        name: name.into(),
        mode,
        timeout_ms: Some(0),
        acquire_id: 0,
    }
}

fn condition_request(
    session_id: u64,
    name: &str,
    lock: &str,
    fencing_token: u64,
) -> pb::WaitConditionRequest {
    pb::WaitConditionRequest {
        session_id,
        name: name.into(),
        lock: lock.into(),
        fencing_token,
        timeout_ms: Some(0),
    }
}

fn barrier_request(
    session_id: u64,
    name: &str,
    parties: u32,
    timeout_ms: Option<u64>,
) -> pb::WaitBarrierRequest {
    pb::WaitBarrierRequest {
        session_id,
        name: name.into(),
        parties,
        timeout_ms,
    }
}

fn try_take(name: &str, rate_per_s: u32, capacity: u32, tokens: u32) -> pb::TryTakeTokensRequest {
    pb::TryTakeTokensRequest {
        name: name.into(),
        rate_per_s,
        capacity,
        tokens,
    }
}

fn record(session_id: u64, name: &str, fencing_token: u64, outcome: i32) -> pb::RecordCallRequest {
    pb::RecordCallRequest {
        session_id,
        name: name.into(),
        fencing_token,
        outcome,
    }
}

fn checkin(
    session_id: u64,
    name: &str,
    fencing_token: u64,
    metadata: Option<Vec<u8>>,
) -> pb::CheckinRequest {
    pb::CheckinRequest {
        session_id,
        name: name.into(),
        fencing_token,
        healthy: true,
        metadata,
    }
}

/// Breaker settings with one field out of its documented range.
fn bad_breaker_settings(rng: &mut Rng) -> pb::BreakerSettings {
    let mut s = breaker_settings();
    match rng.next() % 7 {
        0 => s.open_timeout_ms = rng.range(86_400_001, u64::MAX),
        1 => s.half_open_max_probes = rng.range(1_001, u32::MAX as u64) as u32,
        2 => s.success_threshold = rng.range(1_001, u32::MAX as u64) as u32,
        3 => {
            s.window_calls = rng.range(1_001, u32::MAX as u64) as u32;
            s.failure_rate_percent = 50;
        }
        4 => {
            s.window_calls = 10;
            s.failure_rate_percent = rng.range(101, u32::MAX as u64) as u32;
        }
        5 => {
            // The rate rule on, with no rate.
            s.window_calls = 10;
            s.failure_rate_percent = 0;
        }
        _ => {
            // No rule at all.
            s.failure_threshold = 0;
            s.window_calls = 0;
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Health and memory
// ---------------------------------------------------------------------------

/// The server answers Ping, and a well-formed lock acquire and release
/// work.
async fn assert_healthy(channel: &Channel, session_id: u64, after: usize) {
    tokio::time::timeout(
        HANG_GUARD,
        SystemClient::new(channel.clone()).ping(pb::PingRequest {}),
    )
    .await
    .expect("ping hung")
    .unwrap_or_else(|e| panic!("ping after {after} requests: {e:?}"));
    let mut locks = LocksClient::new(channel.clone());
    let granted = last(
        locks
            .acquire(pb::AcquireLockRequest {
                session_id,
                name: "health".into(),
                timeout_ms: Some(0),
                acquire_id: 0,
            })
            .await,
        "health lock",
    )
    .await;
    let token = match granted.event {
        Some(pb::acquire_lock_response::Event::Granted(g)) => g.fencing_token,
        other => panic!("health lock after {after} requests: {other:?}"),
    };
    locks
        .release(pb::ReleaseLockRequest {
            session_id,
            name: "health".into(),
            fencing_token: token,
        })
        .await
        .unwrap_or_else(|e| panic!("health release after {after} requests: {e:?}"));
}

/// Nothing the storm did changed state: the fixtures are as they were
/// made, and no other primitive exists. Returns a one-line summary.
async fn assert_fixtures_intact(channel: &Channel, fx: &Fixtures) -> String {
    let c = channel.clone();
    let lock = LocksClient::new(c.clone())
        .describe(pb::DescribeLockRequest { name: LOCK.into() })
        .await
        .expect("describe lock")
        .into_inner();
    let holder = lock.holder.expect("the lock is still held");
    assert_eq!(
        (holder.session_id, holder.fencing_token),
        (fx.a, fx.lock_token),
        "lock holder"
    );
    assert!(lock.waiters.is_empty(), "lock waiters: {:?}", lock.waiters);

    let sem = SemaphoresClient::new(c.clone())
        .describe(pb::DescribeSemaphoreRequest { name: SEM.into() })
        .await
        .expect("describe semaphore")
        .into_inner();
    assert_eq!(
        (sem.capacity, sem.permits_held),
        (SEM_CAPACITY, 1),
        "{sem:?}"
    );
    assert_eq!(sem.holders.len(), 1, "{sem:?}");
    assert_eq!(sem.holders[0].fencing_token, fx.sem_token, "{sem:?}");
    assert!(sem.waiters.is_empty(), "{sem:?}");

    let rw = RwLocksClient::new(c.clone())
        .describe(pb::DescribeRwLockRequest { name: RW.into() })
        .await
        .expect("describe rwlock")
        .into_inner();
    assert_eq!(rw.holders.len(), 1, "{rw:?}");
    assert_eq!(rw.holders[0].fencing_token, fx.rw_token, "{rw:?}");
    assert!(rw.waiters.is_empty(), "{rw:?}");

    let event = EventsClient::new(c.clone())
        .describe(pb::DescribeEventRequest { name: EVENT.into() })
        .await
        .expect("describe event")
        .into_inner();
    assert!(event.is_set && event.waiters.is_empty(), "{event:?}");

    let barrier = BarriersClient::new(c.clone())
        .describe(pb::DescribeBarrierRequest {
            name: BARRIER.into(),
        })
        .await
        .expect("describe barrier")
        .into_inner();
    assert_eq!(barrier.parties, 1, "{barrier:?}");
    assert!(!barrier.broken && barrier.waiters.is_empty(), "{barrier:?}");

    let bucket = RateLimitsClient::new(c.clone())
        .describe(pb::DescribeRateLimitRequest {
            name: BUCKET.into(),
        })
        .await
        .expect("describe bucket")
        .into_inner();
    assert_eq!(
        (bucket.rate_per_s, bucket.capacity),
        (BUCKET_RATE, BUCKET_CAPACITY),
        "{bucket:?}"
    );
    assert!(bucket.waiters.is_empty(), "{bucket:?}");

    let breaker = CircuitBreakersClient::new(c.clone())
        .describe(pb::DescribeBreakerRequest {
            name: BREAKER.into(),
        })
        .await
        .expect("describe breaker")
        .into_inner();
    assert_eq!(
        breaker.state,
        i32::from(pb::BreakerState::Closed),
        "{breaker:?}"
    );
    let permits: Vec<u64> = breaker.permits.iter().map(|p| p.fencing_token).collect();
    assert_eq!(permits, [fx.breaker_token], "{breaker:?}");
    assert_eq!(breaker.watchers, 0, "{breaker:?}");

    let queue = QueuesClient::new(c.clone())
        .describe(pb::DescribeQueueRequest { name: QUEUE.into() })
        .await
        .expect("describe queue")
        .into_inner();
    assert_eq!(queue.capacity, QUEUE_CAPACITY, "{queue:?}");
    assert_eq!((queue.ready, queue.in_flight), (0, 1), "{queue:?}");
    assert!(queue.waiters.is_empty(), "{queue:?}");

    let pool = PoolsClient::new(c.clone())
        .describe(pb::DescribePoolRequest { name: POOL.into() })
        .await
        .expect("describe pool")
        .into_inner();
    assert_eq!(pool.size, POOL_SIZE, "{pool:?}");
    let out: Vec<(u64, u64)> = pool
        .resources
        .iter()
        .filter(|r| r.session_id != 0)
        .map(|r| (r.session_id, r.fencing_token))
        .collect();
    assert_eq!(out, [(fx.a, fx.pool_token)], "{pool:?}");
    assert!(pool.waiters.is_empty(), "{pool:?}");

    let listed = SystemClient::new(c)
        .list(pb::ListRequest {
            kind: String::new(),
            prefix: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .primitives;
    let mut names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut fixtures = vec![LOCK, SEM, RW, EVENT, BARRIER, BUCKET, BREAKER, QUEUE, POOL];
    fixtures.sort_unstable();
    assert_eq!(names, fixtures, "only the fixtures exist: {listed:?}");
    format!(
        "{} primitives, all fixtures, holds and settings unchanged",
        listed.len()
    )
}

/// The resident set size of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

struct Answer {
    index: usize,
    category: &'static str,
    expected: Code,
    got: Code,
    message: String,
}

async fn run_batch(channels: &[Channel], cases: Vec<(usize, Case)>) -> Vec<Answer> {
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, case) in cases {
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let channel = channels[index % channels.len()].clone();
        tasks.spawn(async move {
            let (got, message) = (case.send)(channel).await;
            drop(permit);
            Answer {
                index,
                category: case.category,
                expected: case.expected,
                got,
                message,
            }
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("a request task panicked"));
    }
    answers.sort_by_key(|a| a.index);
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_bad_requests_get_the_right_codes_and_leave_nothing_behind() {
    let max_message = MESSAGE_BYTES_MAX.to_string();
    let max_item = ITEM_BYTES_MAX.to_string();
    let syncd = Syncd::start_with(&[
        "--max-message-bytes",
        &max_message,
        "--max-item-bytes",
        &max_item,
    ]);
    let pid = syncd.pid();
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(open_channel(&syncd).await);
    }
    let fx = make_fixtures(&channels[0]).await;
    let health_session = create_session(&channels[0]).await;
    assert_healthy(&channels[0], health_session, 0).await;

    let mut rng = Rng(SEED);
    let mut per_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_category: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut known_wrong = Vec::new();
    let mut rss_after_warmup = None;
    let mut sent = 0;
    while sent < REQUESTS {
        let count = BATCH.min(REQUESTS - sent);
        let cases: Vec<(usize, Case)> = (sent..sent + count)
            .map(|i| (i, generate(&mut rng, &fx)))
            .collect();
        for answer in run_batch(&channels, cases).await {
            *per_category.entry(answer.category).or_default() += 1;
            if answer.got == answer.expected {
                *per_code.entry(format!("{:?}", answer.got)).or_default() += 1;
            } else if KNOWN_WRONG.contains(&answer.category) {
                known_wrong.push(answer);
            } else {
                wrong.push(answer);
            }
        }
        sent += count;
        assert_healthy(&channels[sent / BATCH % CHANNELS], health_session, sent).await;
        if rss_after_warmup.is_none() && sent >= 2_000 {
            rss_after_warmup = Some((sent, rss_bytes(pid)));
        }
    }
    let rss_end = rss_bytes(pid);
    let state = assert_fixtures_intact(&channels[0], &fx).await;

    let (warmup, rss_warm) = rss_after_warmup.expect("measured after the warm-up");

    println!(
        "requests sent: {sent} (seed {SEED:#x}), {IN_FLIGHT} in flight over {CHANNELS} connections"
    );
    println!("{:<58} {:>6}", "category", "count");
    for (category, count) in &per_category {
        println!("{category:<58} {count:>6}");
    }
    println!("{:<24} {:>6}", "code (as expected)", "count");
    for (code, count) in &per_code {
        println!("{code:<24} {count:>6}");
    }
    println!(
        "syncd RSS: {:.1} MiB after {warmup} requests, {:.1} MiB after {sent} ({:+.1} MiB)",
        mib(rss_warm),
        mib(rss_end),
        mib(rss_end) - mib(rss_warm)
    );
    println!("state afterwards: {state}");
    for answer in &known_wrong {
        println!(
            "KNOWN WRONG #{} {}: expected {:?}, got {:?}: {}",
            answer.index, answer.category, answer.expected, answer.got, answer.message
        );
    }

    // Summarise the wrong answers by category, with one example each.
    let mut summary: BTreeMap<(&'static str, String, String), (usize, usize, String)> =
        BTreeMap::new();
    for answer in &wrong {
        let key = (
            answer.category,
            format!("{:?}", answer.expected),
            format!("{:?}", answer.got),
        );
        let entry = summary
            .entry(key)
            .or_insert((0, answer.index, answer.message.clone()));
        entry.0 += 1;
    }
    for ((category, expected, got), (count, index, message)) in &summary {
        println!("WRONG {category}: expected {expected}, got {got} ({count}x; e.g. #{index}: {message:.200})");
    }
    assert!(
        wrong.is_empty(),
        "{} answers had the wrong code (listed above)",
        wrong.len()
    );
    assert!(
        rss_end <= rss_warm + RSS_NOISE_BYTES,
        "syncd grew from {rss_warm} to {rss_end} bytes"
    );
}
