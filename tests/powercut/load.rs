//! The load a power cut interrupts, and the check after it.
//!
//! Policy: several tasks, each on its own connection and session, call
//! syncd over raw gRPC (no client-library retries, so an answer received is
//! exactly one acknowledgement): queue puts (each item's id and value
//! recorded once `stored` came), lock acquires (each granted fencing token
//! recorded, then released), session creations (each id recorded). A task
//! stops at its first error (the server was killed) or when told to; every
//! loop is bounded.
//!
//! After the restart, the check asks for everything acknowledged: every
//! item put is still in the queue with its value (taken out without ack),
//! every session created still lives (sessions get a fresh TTL at a
//! restart), and nothing acknowledged is handed out again: a new fencing
//! token, item id and session id are each above every one acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncd::proto::v1::{
    acquire_lock_response, get_response, locks_client::LocksClient, put_response,
    queues_client::QueuesClient, sessions_client::SessionsClient, AcquireLockRequest,
    CreateSessionRequest, GetRequest, ListSessionsRequest, PutRequest, ReleaseLockRequest,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const QUEUE: &str = "power-cut";
const PUTTERS: u64 = 3;
const LOCKERS: u64 = 2;
const SESSION_MAKERS: u64 = 1;
/// The most calls one task makes in a round; only there to bound a loop.
const CALLS_PER_TASK_MAX: u64 = 20_000;
/// Tasks taking the queue out after the restart (a get is a durable
/// change too: concurrent ones share a flush).
const GETTERS: usize = 4;
const TTL_MS: u64 = 60_000;

/// What syncd acknowledged before the kill.
#[derive(Default, Debug)]
pub struct Acked {
    /// Item id to value.
    pub puts: BTreeMap<u64, Vec<u8>>,
    pub tokens: BTreeSet<u64>,
    pub sessions: BTreeSet<u64>,
}

/// The running load: its tasks, what they were acknowledged, and the flag
/// that stops them.
pub struct Load {
    pub acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

async fn connect(addr: &str) -> Result<Channel, Status> {
    let endpoint = Channel::from_shared(addr.to_string()).expect("valid address");
    let endpoint = endpoint.connect_timeout(Duration::from_secs(10));
    (endpoint.connect().await).map_err(|e| Status::unavailable(e.to_string()))
}

async fn create_session(channel: &Channel) -> Result<u64, Status> {
    let request = CreateSessionRequest {
        ttl_ms: TTL_MS,
        client_name: "power-cut".into(),
    };
    let reply = SessionsClient::new(channel.clone()).create(request).await?;
    Ok(reply.into_inner().session_id)
}

/// A put, answered once the item is stored.
async fn put(
    queues: &mut QueuesClient<Channel>,
    session: u64,
    value: &[u8],
) -> Result<u64, Status> {
    let request = PutRequest {
        session_id: session,
        name: QUEUE.into(),
        value: value.to_vec(),
        ..PutRequest::default()
    };
    let mut stream = queues.put(request).await?.into_inner();
    while let Some(reply) = stream.message().await? {
        match reply.event {
            Some(put_response::Event::Stored(stored)) => return Ok(stored.item_id),
            Some(put_response::Event::Queued(_)) | None => {}
        }
    }
    Err(Status::internal("put stream ended without `stored`"))
}

/// An acquire, answered with the granted fencing token.
async fn acquire(
    locks: &mut LocksClient<Channel>,
    session: u64,
    name: &str,
) -> Result<u64, Status> {
    let request = AcquireLockRequest {
        session_id: session,
        name: name.into(),
        ..AcquireLockRequest::default()
    };
    let mut stream = locks.acquire(request).await?.into_inner();
    while let Some(reply) = stream.message().await? {
        match reply.event {
            Some(acquire_lock_response::Event::Granted(granted)) => {
                return Ok(granted.fencing_token)
            }
            Some(acquire_lock_response::Event::Queued(_)) | None => {}
        }
    }
    Err(Status::internal("acquire stream ended without `granted`"))
}

impl Load {
    /// Starts the tasks against `addr`; values carry `seed` so that a
    /// round's items cannot be mistaken for another's.
    pub fn start(addr: &str, seed: u64) -> Load {
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for task in 0..PUTTERS + LOCKERS + SESSION_MAKERS {
            let (addr, acked, stop) = (addr.to_string(), acked.clone(), stop.clone());
            tasks.spawn(async move {
                // The first error ends the task: the server is gone.
                let _ = run_task(task, &addr, seed, &acked, &stop).await;
            });
        }
        Load { acked, stop, tasks }
    }

    pub fn puts_acked(&self) -> usize {
        self.acked.lock().expect("acked").puts.len()
    }

    /// Stops the tasks (bounded) and returns what was acknowledged.
    pub async fn finish(mut self) -> Acked {
        self.stop.store(true, Ordering::SeqCst);
        let all_ended = async { while self.tasks.join_next().await.is_some() {} };
        tokio::time::timeout(crate::common::HANG_GUARD, all_ended)
            .await
            .expect("load tasks did not end");
        std::mem::take(&mut *self.acked.lock().expect("acked"))
    }
}

async fn run_task(
    task: u64,
    addr: &str,
    seed: u64,
    acked: &Mutex<Acked>,
    stop: &AtomicBool,
) -> Result<(), Status> {
    let channel = connect(addr).await?;
    let session = create_session(&channel).await?;
    acked.lock().expect("acked").sessions.insert(session);
    let mut queues = QueuesClient::new(channel.clone());
    let mut locks = LocksClient::new(channel.clone());
    let lock = format!("power-cut-{task}");
    for call in 0..CALLS_PER_TASK_MAX {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if task < PUTTERS {
            let value = format!("{seed:016x}-{task}-{call}").into_bytes();
            let id = put(&mut queues, session, &value).await?;
            acked.lock().expect("acked").puts.insert(id, value);
        } else if task < PUTTERS + LOCKERS {
            let token = acquire(&mut locks, session, &lock).await?;
            acked.lock().expect("acked").tokens.insert(token);
            let release = ReleaseLockRequest {
                session_id: session,
                name: lock.clone(),
                fencing_token: token,
            };
            locks.release(release).await?;
        } else {
            let id = create_session(&channel).await?;
            acked.lock().expect("acked").sessions.insert(id);
        }
    }
    Ok(())
}

/// Every way the restarted syncd disagrees with what was acknowledged
/// (empty: nothing lost).
pub async fn check(addr: &str, acked: &Acked) -> Vec<String> {
    let mut lost = Vec::new();
    let channel = connect(addr).await.expect("connect to the restarted syncd");
    let session = create_session(&channel).await.expect("create a session");
    check_items(&channel, session, acked, &mut lost).await;
    check_sessions(&channel, session, acked, &mut lost).await;
    let mut locks = LocksClient::new(channel.clone());
    let token = (acquire(&mut locks, session, "power-cut-after").await).expect("acquire");
    if let Some(&max) = acked.tokens.last() {
        if token <= max {
            lost.push(format!(
                "fencing token {token} handed out after the restart, but {max} was granted before it"
            ));
        }
    }
    lost
}

async fn check_items(channel: &Channel, session: u64, acked: &Acked, lost: &mut Vec<String>) {
    let got = take_all(channel, session).await;
    let missing: Vec<u64> = (acked.puts.keys())
        .filter(|id| !got.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        lost.push(format!(
            "{} of {} acknowledged puts are gone from the queue (item ids {}..={})",
            missing.len(),
            acked.puts.len(),
            missing[0],
            missing[missing.len() - 1]
        ));
    }
    for (id, value) in &acked.puts {
        if got.get(id).is_some_and(|v| v != value) {
            lost.push(format!("item {id} came back with another value"));
        }
    }
    let mut queues = QueuesClient::new(channel.clone());
    let id = (put(&mut queues, session, b"after").await).expect("put after the restart");
    if let Some(&max) = acked.puts.keys().last() {
        if id <= max {
            lost.push(format!(
                "item id {id} handed out after the restart, but {max} was acknowledged before it"
            ));
        }
    }
}

/// Takes every item out of the queue (no ack), by id.
async fn take_all(channel: &Channel, session: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut getters = JoinSet::new();
    for _ in 0..GETTERS {
        let mut queues = QueuesClient::new(channel.clone());
        getters.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..CALLS_PER_TASK_MAX * PUTTERS {
                let request = GetRequest {
                    session_id: session,
                    name: QUEUE.into(),
                    timeout_ms: Some(0),
                    no_ack: true,
                    ..GetRequest::default()
                };
                match get_one(&mut queues, request).await {
                    Ok(item) => got.push(item),
                    Err(status) if status.code() == Code::DeadlineExceeded => break,
                    Err(status) => panic!("get after the restart: {status}"),
                }
            }
            got
        });
    }
    let mut got = BTreeMap::new();
    while let Some(items) = getters.join_next().await {
        got.extend(items.expect("getter"));
    }
    got
}

async fn get_one(
    queues: &mut QueuesClient<Channel>,
    request: GetRequest,
) -> Result<(u64, Vec<u8>), Status> {
    let mut stream = queues.get(request).await?.into_inner();
    while let Some(reply) = stream.message().await? {
        match reply.event {
            Some(get_response::Event::Item(item)) => return Ok((item.id, item.value)),
            Some(get_response::Event::Queued(_)) | None => {}
        }
    }
    Err(Status::internal("get stream ended without an item"))
}

async fn check_sessions(channel: &Channel, session: u64, acked: &Acked, lost: &mut Vec<String>) {
    let mut sessions = SessionsClient::new(channel.clone());
    let mut live = BTreeSet::new();
    let mut after = 0;
    loop {
        let request = ListSessionsRequest {
            after_session_id: after,
            limit: 1_000,
        };
        let page = (sessions.list(request).await).expect("list sessions");
        let page = page.into_inner().sessions;
        let Some(last) = page.last() else { break };
        after = last.session_id;
        live.extend(page.iter().map(|s| s.session_id));
    }
    let gone = acked.sessions.difference(&live).count();
    if gone > 0 {
        lost.push(format!(
            "{gone} of {} acknowledged sessions are gone",
            acked.sessions.len()
        ));
    }
    if let Some(&max) = acked.sessions.last() {
        if session <= max {
            lost.push(format!(
                "session id {session} handed out after the restart, but {max} was created before it"
            ));
        }
    }
}
