//! Every limit of syncd, against the real binary started with small limits
//! as flags: past a limit the call is refused with a status whose message
//! names the limit and gives its value, and the server goes on serving
//! everybody else. Also: the HTTP/2 stream limit per connection, and 1,000
//! abandoned sessions that leave nothing behind (no holds, no waiters, no
//! memory growth beyond noise). Uses the raw generated stubs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::rpc::{end, next, open_channel, until};
use common::{Syncd, HANG_GUARD};
use syncd::proto::v1::{
    acquire_lock_response::Event, locks_client::LocksClient, put_response,
    queues_client::QueuesClient, sessions_client::SessionsClient, system_client::SystemClient,
    AcquireLockRequest, AcquireLockResponse, CloseSessionRequest, CreateSessionRequest,
    DescribeLockRequest, ListRequest, PingRequest, PutRequest, ReleaseLockRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn create_session(channel: &Channel, ttl_ms: u64) -> Result<u64, Status> {
    let reply = SessionsClient::new(channel.clone())
        .create(CreateSessionRequest {
            ttl_ms,
            client_name: "limits-test".into(),
        })
        .await?;
    Ok(reply.into_inner().session_id)
}

/// A session with a TTL of a minute (longer than any of these tests).
async fn session(channel: &Channel) -> u64 {
    create_session(channel, 60_000)
        .await
        .expect("create session")
}

fn acquire_request(session_id: u64, name: &str, timeout_ms: Option<u64>) -> AcquireLockRequest {
    AcquireLockRequest {
        session_id,
        name: name.into(),
        timeout_ms,
        acquire_id: 0,
    }
}

/// Takes a lock that is free; returns its fencing token.
async fn take(channel: &Channel, session_id: u64, name: &str) -> u64 {
    let mut stream = LocksClient::new(channel.clone())
        .acquire(acquire_request(session_id, name, Some(0)))
        .await
        .unwrap_or_else(|e| panic!("acquire {name:?} by session {session_id}: {e:?}"))
        .into_inner();
    match next(&mut stream).await.event {
        Some(Event::Granted(granted)) => granted.fencing_token,
        other => panic!("expected a grant of {name:?}, got {other:?}"),
    }
}

/// Starts waiting for a held lock; returns the stream after its `queued`.
async fn wait_for(
    channel: &Channel,
    session_id: u64,
    name: &str,
) -> Result<Streaming<AcquireLockResponse>, Status> {
    let mut stream = LocksClient::new(channel.clone())
        .acquire(acquire_request(session_id, name, None))
        .await?
        .into_inner();
    match next(&mut stream).await.event {
        Some(Event::Queued(_)) => Ok(stream),
        other => panic!("expected {name:?} to queue, got {other:?}"),
    }
}

async fn release(channel: &Channel, session_id: u64, name: &str, fencing_token: u64) {
    LocksClient::new(channel.clone())
        .release(ReleaseLockRequest {
            session_id,
            name: name.into(),
            fencing_token,
        })
        .await
        .unwrap_or_else(|e| panic!("release {name:?}: {e:?}"));
}

async fn waiters(channel: &Channel, name: &str) -> Vec<u64> {
    LocksClient::new(channel.clone())
        .describe(DescribeLockRequest { name: name.into() })
        .await
        .expect("describe lock")
        .into_inner()
        .waiters
        .iter()
        .map(|w| w.session_id)
        .collect()
}

async fn ping(channel: &Channel) {
    tokio::time::timeout(
        HANG_GUARD,
        SystemClient::new(channel.clone()).ping(PingRequest {}),
    )
    .await
    .expect("ping hung")
    .expect("ping");
}

/// Asserts a refusal: its code, a message that starts with the limit's
/// name, and the limit's value as a number somewhere in the message.
fn assert_limit(status: &Status, code: Code, limit_name: &str, value: u64) {
    let message = status.message();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        message.starts_with(limit_name),
        "the message should start with {limit_name:?}: {message:?}"
    );
    assert!(
        numbers(message).contains(&value),
        "the message should give the limit's value {value}: {message:?}"
    );
    println!("{limit_name} refused: {code:?}: {message}");
}

/// Every decimal number in a text.
fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn list_request(kind: &str, prefix: &str) -> ListRequest {
    ListRequest {
        kind: kind.into(),
        prefix: prefix.into(),
    }
}

// ---------------------------------------------------------------------------
// One limit at a time
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sessions_past_max_sessions_are_refused_and_closing_one_makes_room() {
    let syncd = Syncd::start_with(&["--max-sessions", "2"]);
    let channel = open_channel(&syncd).await;
    let first = session(&channel).await;
    let second = session(&channel).await;

    let refused = create_session(&channel, 60_000).await.unwrap_err();
    assert_limit(&refused, Code::ResourceExhausted, "sessions_max", 2);

    // The open sessions are served as before.
    ping(&channel).await;
    take(&channel, first, "still-served").await;
    // Closing one makes room for exactly one.
    SessionsClient::new(channel.clone())
        .close(CloseSessionRequest {
            session_id: second,
            reason: String::new(),
        })
        .await
        .expect("close");
    session(&channel).await;
    let again = create_session(&channel, 60_000).await.unwrap_err();
    assert_limit(&again, Code::ResourceExhausted, "sessions_max", 2);
}

#[tokio::test]
async fn waiters_past_max_waiters_on_one_primitive_are_refused() {
    let syncd = Syncd::start_with(&["--max-waiters", "2"]);
    let channel = open_channel(&syncd).await;
    let holder = session(&channel).await;
    let (a, b, c) = (
        session(&channel).await,
        session(&channel).await,
        session(&channel).await,
    );
    take(&channel, holder, "busy").await;
    let first = wait_for(&channel, a, "busy").await.expect("first waiter");
    let _second = wait_for(&channel, b, "busy").await.expect("second waiter");

    let refused = wait_for(&channel, c, "busy").await.unwrap_err();
    assert_limit(
        &refused,
        Code::ResourceExhausted,
        "waiters_per_primitive_max",
        2,
    );
    assert_eq!(waiters(&channel, "busy").await, vec![a, b]);

    // The same session is served elsewhere, and so is everybody else.
    ping(&channel).await;
    take(&channel, c, "elsewhere").await;
    // A waiter that leaves makes room for one more.
    drop(first);
    until("the first waiter leaves", async || {
        waiters(&channel, "busy").await == vec![b]
    })
    .await;
    let _third = wait_for(&channel, c, "busy").await.expect("room again");
    assert_eq!(waiters(&channel, "busy").await, vec![b, c]);
}

#[tokio::test]
async fn holds_past_max_holds_per_session_are_refused() {
    let syncd = Syncd::start_with(&["--max-holds-per-session", "2"]);
    let channel = open_channel(&syncd).await;
    let greedy = session(&channel).await;
    let other = session(&channel).await;
    let token_a = take(&channel, greedy, "a").await;
    take(&channel, greedy, "b").await;

    let refused = LocksClient::new(channel.clone())
        .acquire(acquire_request(greedy, "c", Some(0)))
        .await
        .unwrap_err();
    assert_limit(
        &refused,
        Code::ResourceExhausted,
        "holds_per_session_max",
        2,
    );
    assert!(
        refused.message().contains(&format!("session {greedy}")),
        "names the session: {refused:?}"
    );

    // Another session takes the very lock that was refused.
    ping(&channel).await;
    take(&channel, other, "c").await;
    // Giving one back makes room again.
    release(&channel, greedy, "a", token_a).await;
    take(&channel, greedy, "d").await;
}

#[tokio::test]
async fn waits_past_max_waiters_per_session_are_refused() {
    let syncd = Syncd::start_with(&["--max-waiters-per-session", "2"]);
    let channel = open_channel(&syncd).await;
    let holder = session(&channel).await;
    let patient = session(&channel).await;
    let other = session(&channel).await;
    for name in ["x", "y", "z"] {
        take(&channel, holder, name).await;
    }
    let _x = wait_for(&channel, patient, "x").await.expect("wait on x");
    let y = wait_for(&channel, patient, "y").await.expect("wait on y");

    let refused = wait_for(&channel, patient, "z").await.unwrap_err();
    assert_limit(
        &refused,
        Code::ResourceExhausted,
        "waiters_per_session_max",
        2,
    );
    assert!(
        refused.message().contains(&format!("session {patient}")),
        "names the session: {refused:?}"
    );

    // Another session waits on z; the first may wait again once one of its
    // waits is gone.
    ping(&channel).await;
    let _other_z = wait_for(&channel, other, "z").await.expect("other waits");
    drop(y);
    until("the wait on y is cancelled", async || {
        waiters(&channel, "y").await.is_empty()
    })
    .await;
    let _z = wait_for(&channel, patient, "z").await.expect("room again");
    assert_eq!(waiters(&channel, "z").await, vec![other, patient]);
}

#[tokio::test]
async fn primitives_past_max_primitives_are_refused_and_existing_ones_still_work() {
    let syncd = Syncd::start_with(&["--max-primitives", "2"]);
    let channel = open_channel(&syncd).await;
    let owner = session(&channel).await;
    let other = session(&channel).await;
    take(&channel, owner, "a").await;
    let token_b = take(&channel, owner, "b").await;

    let refused = LocksClient::new(channel.clone())
        .acquire(acquire_request(other, "c", Some(0)))
        .await
        .unwrap_err();
    assert_limit(&refused, Code::ResourceExhausted, "primitives_max", 2);
    // Every kind counts against the same limit: an event set would create
    // a third primitive too.
    let event = syncd::proto::v1::events_client::EventsClient::new(channel.clone())
        .set(syncd::proto::v1::SetEventRequest { name: "e".into() })
        .await
        .unwrap_err();
    assert_limit(&event, Code::ResourceExhausted, "primitives_max", 2);

    // Primitives that exist are still served: another session queues on a.
    ping(&channel).await;
    let _waiting = wait_for(&channel, other, "a").await.expect("queue on a");
    // A lock that is released stops existing, which makes room.
    release(&channel, owner, "b", token_b).await;
    take(&channel, other, "c").await;
    let names: Vec<String> = SystemClient::new(channel.clone())
        .list(list_request("", ""))
        .await
        .expect("list")
        .into_inner()
        .primitives
        .into_iter()
        .map(|p| format!("{} {}", p.kind, p.name))
        .collect();
    assert_eq!(names, vec!["lock a", "lock c"]);
}

#[tokio::test]
async fn an_item_past_max_item_bytes_is_invalid_and_one_at_the_limit_is_stored() {
    let syncd = Syncd::start_with(&["--max-item-bytes", "16"]);
    let channel = open_channel(&syncd).await;
    let owner = session(&channel).await;
    let mut queues = QueuesClient::new(channel.clone());
    let put = |value: Vec<u8>| PutRequest {
        session_id: owner,
        name: "jobs".into(),
        value,
        priority: 0,
        capacity: None,
        max_deliveries: 0,
        timeout_ms: None,
        put_id: 0,
    };

    // The server treats an oversized item as bad input, not as exhaustion:
    // INVALID_ARGUMENT, as the flag's help says. The message gives the
    // limit's name at its end: "item is 17 bytes, the limit is 16
    // (item_bytes_max)".
    let refused = queues.put(put(vec![b'x'; 17])).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("item_bytes_max"),
        "names the limit: {refused:?}"
    );
    assert!(numbers(refused.message()).contains(&16), "{refused:?}");
    println!("item_bytes_max refused: {refused:?}");

    ping(&channel).await;
    let mut stored = queues
        .put(put(vec![b'x'; 16]))
        .await
        .expect("an item of exactly the limit")
        .into_inner();
    match next(&mut stored).await.event {
        Some(put_response::Event::Stored(_)) => {}
        other => panic!("expected the item stored, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_past_max_message_bytes_is_refused_and_the_connection_stays_usable() {
    let syncd = Syncd::start_with(&["--max-message-bytes", "4096"]);
    let channel = open_channel(&syncd).await;
    let owner = session(&channel).await;

    // A lock name of 8 KiB makes a request of a bit more than 8 KiB.
    let huge = "n".repeat(8 * 1024);
    let refused = LocksClient::new(channel.clone())
        .acquire(acquire_request(owner, &huge, Some(0)))
        .await
        .unwrap_err();
    // tonic's own decoder refuses it (OUT_OF_RANGE, which syncd's layer
    // turns into RESOURCE_EXHAUSTED); like every other limit, the message
    // must name the limit (`message_bytes_max`, the flag
    // `--max-message-bytes`) and give its value.
    assert_limit(&refused, Code::ResourceExhausted, "message_bytes_max", 4096);

    // The same connection goes on serving.
    ping(&channel).await;
    take(&channel, owner, "small").await;
}

// ---------------------------------------------------------------------------
// HTTP/2 streams per connection
// ---------------------------------------------------------------------------

/// What happens with `--max-streams-per-connection 4`: the server announces
/// SETTINGS_MAX_CONCURRENT_STREAMS = 4 on every connection. The client side
/// (h2 under tonic's Channel) honours that setting: a fifth call on the same
/// connection is not refused, it is held back by the client until one of
/// the open streams ends, then sent. So the server never serves more than 4
/// calls of one connection at once, nothing fails, and the held-back calls
/// go through later, in order. (A client that ignored the setting would get
/// RST_STREAM(REFUSED_STREAM) from the server's h2; tonic never does.)
/// Other connections are not affected.
#[tokio::test]
async fn streams_past_max_streams_per_connection_wait_for_a_free_stream() {
    const LIMIT: usize = 4;
    const EXTRA: usize = 2;
    let syncd = Syncd::start_with(&["--max-streams-per-connection", "4"]);
    let observer = open_channel(&syncd).await;
    let crowded = open_channel(&syncd).await;
    let holder = session(&observer).await;
    let mut sessions = Vec::new();
    for _ in 0..LIMIT + EXTRA {
        sessions.push(session(&observer).await);
    }
    let token = take(&observer, holder, "gate").await;

    // LIMIT waits fill the crowded connection's streams ...
    let mut open = Vec::new();
    for &s in &sessions[..LIMIT] {
        open.push(wait_for(&crowded, s, "gate").await.expect("queue"));
    }
    assert_eq!(waiters(&observer, "gate").await, sessions[..LIMIT].to_vec());
    // ... so the extra waits and a ping on that connection are held back.
    let mut held_back = Vec::new();
    for &s in &sessions[LIMIT..] {
        let crowded = crowded.clone();
        held_back.push(tokio::spawn(async move {
            wait_for(&crowded, s, "gate").await.expect("queue later")
        }));
    }
    let crowded_ping = {
        let crowded = crowded.clone();
        tokio::spawn(async move { ping(&crowded).await })
    };
    // Give the held-back calls every chance to reach the server; if the
    // limit did not hold they would show up as waiters. (Only a settling
    // pause: it cannot make a correct server fail.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        waiters(&observer, "gate").await,
        sessions[..LIMIT].to_vec(),
        "only {LIMIT} calls of the crowded connection are served at once"
    );
    assert!(!crowded_ping.is_finished(), "the ping waits for a stream");
    assert!(held_back.iter().all(|t| !t.is_finished()));
    // Other connections are served as usual meanwhile.
    ping(&observer).await;

    // The gate opens: the first waiter's stream ends with its grant, which
    // frees one stream of the crowded connection, and the held-back calls
    // get through one after another as streams free up.
    release(&observer, holder, "gate", token).await;
    let mut first = open.remove(0);
    let token = match next(&mut first).await.event {
        Some(Event::Granted(g)) => g.fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    };
    drop(first);
    // Dropping two more waits frees two more streams: the ping and the
    // held-back waits all get through.
    open.drain(..2).for_each(drop);
    let mut later = Vec::new();
    for task in held_back {
        later.push(common::rpc::answer(task).await);
    }
    common::rpc::answer(crowded_ping).await;
    // The held-back calls were spawned together; their order among
    // themselves is not the point.
    let mut expected = sessions[LIMIT - 1..].to_vec();
    expected.sort_unstable();
    until("the held-back waits are queued on the server", async || {
        let mut now = waiters(&observer, "gate").await;
        now.sort_unstable();
        now == expected
    })
    .await;
    release(&observer, sessions[0], "gate", token).await;
    drop(later);
    drop(open);
    ping(&crowded).await;
}

// ---------------------------------------------------------------------------
// Abandoned sessions
// ---------------------------------------------------------------------------

const ABANDONED: usize = 1_000;
/// Calls in flight at once while setting up the abandoned sessions.
const CONCURRENCY: usize = 32;
/// Channels the abandoned clients are spread over (each stays well below
/// the default of 1024 streams per connection).
const CHANNELS: usize = 8;
const RSS_NOISE_BYTES: u64 = 16 * 1024 * 1024;

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

/// One abandoned client: a session of TTL 1 s that is never kept alive,
/// holding `abandoned-{i}` and queued on `shared`. Returns the queued
/// stream (kept open by the test, so that only expiry can end it) and how
/// many times its session expired during the setup (then it starts over
/// with a new session: 1 s is short on a busy machine).
async fn abandon(channel: Channel, i: usize) -> (Streaming<AcquireLockResponse>, u32) {
    let mut expired_during_setup = 0;
    loop {
        let id = create_session(&channel, 1_000)
            .await
            .unwrap_or_else(|e| panic!("create abandoned session {i}: {e:?}"));
        let own = format!("abandoned-{i}");
        let granted = LocksClient::new(channel.clone())
            .acquire(acquire_request(id, &own, Some(0)))
            .await
            .map(tonic::Response::into_inner);
        let queued = match granted {
            Ok(mut stream) => match stream.message().await {
                Ok(Some(AcquireLockResponse {
                    event: Some(Event::Granted(_)),
                })) => wait_for(&channel, id, "shared").await,
                Ok(other) => panic!("{own}: expected a grant, got {other:?}"),
                Err(status) => Err(status),
            },
            Err(status) => Err(status),
        };
        match queued {
            Ok(stream) => return (stream, expired_during_setup),
            // The session expired before its calls were made.
            Err(status)
                if matches!(status.code(), Code::NotFound | Code::FailedPrecondition)
                    && expired_during_setup < 10 =>
            {
                expired_during_setup += 1;
            }
            Err(status) => panic!("abandoned client {i}: {status:?}"),
        }
    }
}

/// Sets up ABANDONED abandoned clients, waits (bounded) until the server
/// has cleaned all of them up, and checks what each waiting stream saw.
async fn abandon_round(channels: &[Channel], round: usize) {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..ABANDONED {
        let channel = channels[i % channels.len()].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            abandon(channel, i).await
        }));
    }
    let mut streams = Vec::new();
    let mut restarts = 0;
    for task in tasks {
        let (stream, expired) = common::rpc::answer(task).await;
        streams.push(stream);
        restarts += expired;
    }
    println!(
        "round {round}: {ABANDONED} abandoned sessions set up \
         ({restarts} expired during setup and were replaced)"
    );

    let observer = &channels[0];
    until("every abandoned session is cleaned up", async || {
        let left = SystemClient::new(observer.clone())
            .list(list_request("lock", "abandoned-"))
            .await
            .expect("list")
            .into_inner()
            .primitives
            .len();
        left == 0 && waiters(observer, "shared").await.is_empty()
    })
    .await;

    // Every queued wait ended because its session ended; none was granted.
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    for mut stream in streams {
        let status = end(&mut stream).await;
        *endings.entry(format!("{:?}", status.code())).or_default() += 1;
    }
    println!("round {round}: the waits on `shared` ended with {endings:?}");
    assert_eq!(
        endings.values().sum::<usize>(),
        ABANDONED,
        "every wait ended with an error"
    );

    // Nothing else is left: only the keeper's lock exists.
    let left: Vec<String> = SystemClient::new(observer.clone())
        .list(list_request("", ""))
        .await
        .expect("list")
        .into_inner()
        .primitives
        .into_iter()
        .map(|p| format!("{} {} ({})", p.kind, p.name, p.state))
        .collect();
    assert_eq!(left.len(), 1, "left behind: {left:?}");
    assert!(left[0].starts_with("lock shared"), "{left:?}");
}

/// 1,000 sessions that are never kept alive, each holding a lock of its own
/// and queued on a shared lock, expire and leave nothing behind; a second
/// round of 1,000 does not grow syncd's memory beyond noise.
///
/// `--max-sessions` is 1,001: the 1,000 abandoned sessions plus the keeper
/// that holds `shared`. Since all 1,000 slots are used up by each round, the
/// second round (and the 1,000 sessions opened at the end) can only be
/// created if the previous sessions are really gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_abandoned_sessions_leave_nothing_behind() {
    let syncd = Syncd::start_with(&["--session-ttl-min", "1s", "--max-sessions", "1001"]);
    let pid = syncd.pid();
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(open_channel(&syncd).await);
    }
    let keeper = create_session(&channels[0], 600_000)
        .await
        .expect("keeper session");
    take(&channels[0], keeper, "shared").await;
    let rss_start = rss_bytes(pid);

    abandon_round(&channels, 1).await;
    let rss_first = rss_bytes(pid);
    abandon_round(&channels, 2).await;
    let rss_second = rss_bytes(pid);
    println!(
        "syncd RSS: {:.1} MiB at the start, {:.1} MiB after round 1, {:.1} MiB after round 2 \
         (growth {:+.1} MiB; allowed {:.0} MiB)",
        mib(rss_start),
        mib(rss_first),
        mib(rss_second),
        mib(rss_second) - mib(rss_first),
        mib(RSS_NOISE_BYTES)
    );
    assert!(
        rss_second <= rss_first + RSS_NOISE_BYTES,
        "syncd grew from {rss_first} to {rss_second} bytes over a second round"
    );

    // All 1,000 slots are free again: exactly 1,000 new sessions fit.
    for _ in 0..ABANDONED {
        create_session(&channels[1], 60_000)
            .await
            .expect("a free session slot");
    }
    let full = create_session(&channels[1], 60_000).await.unwrap_err();
    assert_limit(&full, Code::ResourceExhausted, "sessions_max", 1001);
    ping(&channels[0]).await;
}
