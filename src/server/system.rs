//! `syncd.v1.System`: Ping, List, and Watch.
//!
//! A watch lists what it matches, then waits for the engine to say that its
//! state changed (a turn that changed something), lists again and sends
//! the lines that differ. Listing is one engine call, so a watcher costs
//! the engine one read per change it sees; a busy server's changes are
//! coalesced over [`WATCH_COALESCE`] so that cost stays bounded.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{Auth, Caller, Role, Standing};
use super::requests::{list_kind, ToQuery};
use super::status::unexpected;
use crate::core::{Kind, Query, Reply, Summary};
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, system_server::System};

/// Watches open at once, server-wide.
pub const WATCHES_MAX: usize = 1_000;
/// Primitives one watch may match.
pub const WATCH_MATCHES_MAX: usize = 10_000;
/// The least time between two listings of one watch.
const WATCH_COALESCE: Duration = Duration::from_millis(20);

pub struct SystemService {
    pub engine: EngineHandle,
    /// The tokens, when the server checks them: a watch ends once its
    /// token is withdrawn.
    auth: Option<Arc<Auth>>,
    /// One permit per open watch.
    watches: Arc<Semaphore>,
}

impl SystemService {
    pub fn new(engine: EngineHandle, auth: Option<Arc<Auth>>) -> SystemService {
        SystemService {
            engine,
            auth,
            watches: Arc::new(Semaphore::new(WATCHES_MAX)),
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl System for SystemService {
    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        // Being authenticated is enough: every role includes read.
        Caller::of(&request)?;
        // Deliberately does not go through the engine: it is the floor that
        // benchmarks compare every other call with.
        Ok(Response::new(pb::PingResponse {
            server_time_ms: self.engine.now_ms(),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        Caller::of(&request)?.may_all_under(Role::Read, &request.get_ref().prefix)?;
        let summaries = list(&self.engine, request.into_inner().to_query()?).await?;
        Ok(Response::new(pb::ListResponse {
            primitives: summaries.into_iter().map(summary).collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let asked = request.get_ref();
        if asked.prefix {
            caller.may_all_under(Role::Read, &asked.name)?;
        } else {
            caller.may(Role::Read, &asked.name)?;
        }
        let request = request.into_inner();
        let filter = Filter {
            kind: list_kind(&request.kind)?,
            name: request.name,
            prefix: request.prefix,
        };
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "watches_max: {WATCHES_MAX} watches are open already"
            ))
        })?;
        // The engine's change counter is read before the first listing, so
        // that no change between the two is missed.
        let changes = self.engine.changes();
        let first = filter.matching(&self.engine).await?;
        let (sender, receiver) = mpsc::channel(64);
        let watcher = Watcher {
            engine: self.engine.clone(),
            standing: Standing::new(self.auth.clone(), caller),
            filter,
            sender,
            seen: BTreeMap::new(),
            _permit: permit,
        };
        tokio::spawn(watcher.run(first, changes));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// The lines of a `Query::List`.
async fn list(engine: &EngineHandle, list: Query) -> Result<Vec<Summary>, Status> {
    match engine.query(list).await? {
        Reply::Listing(summaries) => Ok(summaries),
        other => Err(unexpected(&other)),
    }
}

fn summary(s: Summary) -> pb::PrimitiveSummary {
    pb::PrimitiveSummary {
        kind: s.kind.as_str().to_owned(),
        name: s.name,
        state: s.state,
    }
}

/// What one watch matches.
struct Filter {
    kind: Option<Kind>,
    name: String,
    prefix: bool,
}

impl Filter {
    /// The matching primitives now, at most [`WATCH_MATCHES_MAX`].
    async fn matching(&self, engine: &EngineHandle) -> Result<Vec<Summary>, Status> {
        let listing = Query::List {
            kind: self.kind,
            prefix: self.name.clone(),
        };
        let mut found = list(engine, listing).await?;
        if !self.prefix {
            found.retain(|s| s.name == self.name);
        }
        if found.len() > WATCH_MATCHES_MAX {
            return Err(Status::resource_exhausted(format!(
                "watch_matches_max: the watch matches {} primitives, more than \
                 {WATCH_MATCHES_MAX}; narrow its kind or prefix",
                found.len()
            )));
        }
        Ok(found)
    }
}

/// One open watch: what it has sent, and where to.
struct Watcher {
    engine: EngineHandle,
    /// Checked at each change: a withdrawn token watches no more.
    standing: Standing,
    filter: Filter,
    sender: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// The last state sent of each primitive that exists.
    seen: BTreeMap<(Kind, String), String>,
    _permit: OwnedSemaphorePermit,
}

impl Watcher {
    async fn run(mut self, first: Vec<Summary>, mut changes: tokio::sync::watch::Receiver<u64>) {
        if !self.filter.prefix && first.is_empty() {
            let kind = self.filter.kind.unwrap_or(Kind::Lock);
            let absent = Summary {
                kind,
                name: self.filter.name.clone(),
                state: "does not exist".to_owned(),
            };
            if !self.send(absent, true).await {
                return;
            }
        }
        if !self.update(first).await || !self.synced().await {
            return;
        }
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    let _ = self.sender.send(Err(Status::unavailable("the server is shutting down"))).await;
                    return;
                },
                () = self.sender.closed() => return,
            }
            tokio::time::sleep(WATCH_COALESCE).await;
            changes.borrow_and_update();
            if let Err(withdrawn) = self.standing.check() {
                let _ = self.sender.send(Err(withdrawn)).await;
                return;
            }
            let now = match self.filter.matching(&self.engine).await {
                Ok(now) => now,
                Err(status) => {
                    let _ = self.sender.send(Err(status)).await;
                    return;
                }
            };
            if !self.update(now).await {
                return;
            }
        }
    }

    /// Sends what changed since the last listing; false once the client is
    /// gone.
    async fn update(&mut self, now: Vec<Summary>) -> bool {
        let mut gone = std::mem::take(&mut self.seen);
        for s in now {
            let key = (s.kind, s.name.clone());
            let before = gone.remove(&key);
            let changed = before.as_deref() != Some(s.state.as_str());
            self.seen.insert(key, s.state.clone());
            if changed && !self.send(s, false).await {
                return false;
            }
        }
        for ((kind, name), state) in gone {
            if !self.send(Summary { kind, name, state }, true).await {
                return false;
            }
        }
        true
    }

    async fn send(&self, s: Summary, gone: bool) -> bool {
        let response = pb::WatchResponse {
            primitive: Some(summary(s)),
            gone,
            server_time_ms: self.engine.now_ms(),
            synced: false,
        };
        self.sender.send(Ok(response)).await.is_ok()
    }

    /// Marks the end of the first listing.
    async fn synced(&self) -> bool {
        let response = pb::WatchResponse {
            primitive: None,
            gone: false,
            server_time_ms: self.engine.now_ms(),
            synced: true,
        };
        self.sender.send(Ok(response)).await.is_ok()
    }
}
