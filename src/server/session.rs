//! `syncd.v1.Sessions`: create, keep alive (one stream per client), close.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Auth, Caller, Role, Standing};
use super::requests::{Context, ToCommand};
use super::status::unexpected;
use super::{call, convert, query};
use crate::core::{Query, Reply};
use crate::engine::{EngineHandle, NoticeSubscription};
use crate::proto::v1::{self as pb, sessions_server::Sessions};

pub struct SessionService {
    pub engine: EngineHandle,
    /// Turns true when the server shuts down: open keep-alive streams end.
    pub stopping: watch::Receiver<bool>,
    /// The tokens, when the server checks them: a keep-alive stream ends
    /// once its token is withdrawn.
    pub auth: Option<Arc<Auth>>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Sessions for SessionService {
    async fn create(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        // A session grants nothing by itself: every token may open one.
        let engine = Caller::of(&request)?.engine(&self.engine);
        let context = Context {
            host: (request.remote_addr())
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
            identity: (engine.identity())
                .map(|id| id.to_string())
                .unwrap_or_default(),
            ..Context::EMPTY
        };
        let command = request.into_inner().to_command(&context)?;
        match engine.call(command).await? {
            Reply::SessionCreated { session_id, ttl_ms } => {
                tracing::debug!(session_id, ttl_ms, "session created");
                Ok(Response::new(pb::CreateSessionResponse {
                    session_id,
                    ttl_ms,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        // Every token may renew its own sessions; the engine refuses to
        // renew another's.
        let caller = Caller::of(&request)?.clone();
        let renewer = Renewer {
            engine: caller.engine(&self.engine),
            standing: Standing::new(self.auth.clone(), caller),
        };
        let inbound = request.into_inner();
        let (replies, stream) = mpsc::channel(4);
        tokio::spawn(renewer.run(self.stopping.clone(), inbound, replies));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn close(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let peer = peer_of(&request);
        let caller = Caller::of(&request)?.clone();
        // Anyone may close its own session (the engine checks that it is
        // its own); another's takes an admin of every name.
        let engine = match caller.may_everything(Role::Admin) {
            Ok(()) => self.engine.clone(),
            Err(_) => caller.engine(&self.engine),
        };
        let by = caller.name();
        let request = request.into_inner();
        let (session_id, reason) = (request.session_id, request.reason.clone());
        match call(&engine, request).await? {
            Reply::SessionClosed { released } if reason.is_empty() => {
                tracing::debug!(session_id, released, "session closed");
                Ok(Response::new(pb::CloseSessionResponse { released }))
            }
            Reply::SessionClosed { released } => {
                // An operator ended someone's session: worth the log.
                tracing::info!(%peer, %by, session_id, released, reason = %reason, "session closed");
                Ok(Response::new(pb::CloseSessionResponse { released }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        // Sessions hold names of every prefix.
        Caller::of(&request)?.may_everything(Role::Read)?;
        match query(&self.engine, request.into_inner()).await? {
            Reply::SessionList(infos) => Ok(Response::new(pb::ListSessionsResponse {
                sessions: infos.into_iter().map(convert::session_info).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let peer = peer_of(&request);
        let caller = Caller::of(&request)?.clone();
        // A fencing token may name a hold of any name.
        caller.may_everything(Role::Admin)?;
        let by = caller.name();
        let request = request.into_inner();
        let (fencing_token, reason) = (request.fencing_token, request.reason.clone());
        match call(&self.engine, request).await? {
            Reply::Revoked {
                session_id,
                kind,
                name,
            } => {
                // Operators want this in the log: who took what from whom.
                tracing::info!(
                    %peer,
                    %by,
                    fencing_token,
                    session_id,
                    kind = kind.as_str(),
                    name = %name,
                    reason = %reason,
                    "hold revoked"
                );
                Ok(Response::new(pb::RevokeResponse {
                    session_id,
                    kind: kind.as_str().to_owned(),
                    name,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// Completes when a notice was posted for the subscribed session; never
/// without a subscription.
async fn posted(notices: &Option<NoticeSubscription>) {
    match notices {
        Some(subscription) => subscription.notified().await,
        None => std::future::pending().await,
    }
}

/// The caller's address, for the log.
fn peer_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown peer".to_owned(), |addr| addr.to_string())
}

/// Answers each keep-alive request of one stream until the client stops,
/// the session is gone, or the server shuts down.
struct Renewer {
    /// Acts for the caller: renews only the caller's own sessions.
    engine: EngineHandle,
    /// Checked before each renewal: a withdrawn token renews no more.
    standing: Standing,
}

impl Renewer {
    async fn run(
        self,
        mut stopping: watch::Receiver<bool>,
        mut inbound: Streaming<pb::KeepAliveRequest>,
        replies: mpsc::Sender<Result<pb::KeepAliveResponse, Status>>,
    ) {
        // Set once the session is renewed: new notices are pushed at once.
        let mut notices: Option<NoticeSubscription> = None;
        loop {
            if *stopping.borrow() {
                let _ = replies
                    .send(Err(Status::unavailable("the server is shutting down")))
                    .await;
                return;
            }
            let request = tokio::select! {
                _ = stopping.changed() => continue,
                _ = posted(&notices) => {
                    let session_id = notices.as_ref().map_or(0, NoticeSubscription::session_id);
                    if !self.push_notices(session_id, &replies).await {
                        return;
                    }
                    continue;
                }
                message = inbound.message() => match message {
                    Ok(Some(request)) => request,
                    // The client ended the stream or went away.
                    Ok(None) | Err(_) => return,
                },
            };
            if let Err(withdrawn) = self.standing.check() {
                let _ = replies.send(Err(withdrawn)).await;
                return;
            }
            let session_id = request.session_id;
            let reply = self.renew(request).await;
            let failed = reply.is_err();
            if replies.send(reply).await.is_err() || failed {
                return;
            }
            if notices.as_ref().map(NoticeSubscription::session_id) != Some(session_id) {
                notices = Some(self.engine.notices_of(session_id));
            }
        }
    }

    async fn renew(&self, request: pb::KeepAliveRequest) -> Result<pb::KeepAliveResponse, Status> {
        let session_id = request.session_id;
        match call(&self.engine, request).await? {
            Reply::SessionRenewed { ttl_ms, lost } => Ok(pb::KeepAliveResponse {
                session_id,
                ttl_ms,
                lost_holds: lost.into_iter().map(convert::lost_hold).collect(),
                pushed: false,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends the session's unconfirmed notices as a push (answers no
    /// request, renews nothing). False when the client is gone.
    async fn push_notices(
        &self,
        session_id: u64,
        replies: &mpsc::Sender<Result<pb::KeepAliveResponse, Status>>,
    ) -> bool {
        let pending = Query::PendingNotices { session_id };
        // A session that is gone is reported by the next keep-alive.
        let Ok(Reply::Notices(lost)) = self.engine.query(pending).await else {
            return true;
        };
        if lost.is_empty() {
            return true;
        }
        let push = pb::KeepAliveResponse {
            session_id,
            ttl_ms: 0,
            lost_holds: lost.into_iter().map(convert::lost_hold).collect(),
            pushed: true,
        };
        replies.send(Ok(push)).await.is_ok()
    }
}
