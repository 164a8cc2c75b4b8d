//! Watching the state of any primitive (`System.Watch`): the one-line state
//! that `List` shows, first as it is, then at each change.
//!
//! A [`StateWatch`] survives server restarts: when its stream breaks it
//! watches again after a backoff, and skips the lines of the new stream's
//! first listing that repeat what it reported last, so a caller sees each
//! state once; what it reported that is missing from that listing is
//! reported gone. Changes while it was cut off are not replayed, only
//! their result.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use tonic::{Code, Status, Streaming};
use tracing::{info, warn};

use super::{retry::Backoff, Client, Error};
use crate::proto::v1::{system_client::SystemClient, WatchRequest, WatchResponse};

/// One change of a watched primitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// Its kind: "lock", "semaphore", ...
    pub kind: String,
    pub name: String,
    /// Its one-line state now, as `List` shows it; its last state when
    /// `gone`.
    pub state: String,
    /// It no longer exists (or does not exist yet).
    pub gone: bool,
    /// The server's clock when the change was seen (milliseconds).
    pub server_time_ms: u64,
}

/// Reads like `lock "db": held by session 4 (token 9), 0 waiting` or
/// `lock "db": gone`.
impl fmt::Display for StateChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = (&self.kind, &self.name);
        if self.gone {
            write!(f, "{kind} {name:?}: gone")
        } else {
            write!(f, "{kind} {name:?}: {}", self.state)
        }
    }
}

impl From<WatchResponse> for StateChange {
    fn from(response: WatchResponse) -> StateChange {
        let primitive = response.primitive.unwrap_or_default();
        StateChange {
            kind: primitive.kind,
            name: primitive.name,
            state: primitive.state,
            gone: response.gone,
            server_time_ms: response.server_time_ms,
        }
    }
}

/// A watch of one primitive or of every name with a prefix; see the module
/// documentation.
pub struct StateWatch {
    client: Client,
    request: WatchRequest,
    stream: Option<Streaming<WatchResponse>>,
    /// What was reported last of each primitive: its state, and whether
    /// it was gone. Bounded by what one watch may match on the server: a
    /// prefix watch forgets what is gone.
    reported: BTreeMap<(String, String), (String, bool)>,
    /// While a stream's first listing comes in: the primitives in it.
    listing: Option<BTreeSet<(String, String)>>,
    /// Changes found, not reported yet.
    pending: VecDeque<StateChange>,
    backoff: Backoff,
}

impl fmt::Debug for StateWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateWatch")
            .field("request", &self.request)
            .finish()
    }
}

impl StateWatch {
    /// Opens the watch: a refusal (unknown kind, too many watches or
    /// matches) is an error here.
    pub(crate) async fn open(client: Client, request: WatchRequest) -> Result<StateWatch, Error> {
        let mut watch = StateWatch {
            client,
            request,
            stream: None,
            reported: BTreeMap::new(),
            listing: Some(BTreeSet::new()),
            pending: VecDeque::new(),
            backoff: Backoff::default(),
        };
        watch.stream = Some(watch.connect().await?);
        Ok(watch)
    }

    async fn connect(&self) -> Result<Streaming<WatchResponse>, Error> {
        let mut system = SystemClient::new(self.client.transport());
        // No gRPC deadline: it would end the stream, which lives as long as
        // the watch.
        match system.watch(self.request.clone()).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(Error::from_status(status, self.client.addr())),
        }
    }

    /// The next change: the current states first, then each change. Waits
    /// as long as it takes; while the server cannot be reached it keeps
    /// trying to watch again. Fails when the server refuses the watch.
    pub async fn next(&mut self) -> Result<StateChange, Error> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.rewatch().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(response)) if response.synced => {
                    self.backoff.reset();
                    self.listed(response.server_time_ms);
                }
                Ok(Some(response)) => {
                    self.backoff.reset();
                    let change = StateChange::from(response);
                    let key = (change.kind.clone(), change.name.clone());
                    if let Some(listing) = &mut self.listing {
                        listing.insert(key.clone());
                    }
                    let now = (change.state.clone(), change.gone);
                    if self.reported.get(&key) == Some(&now) {
                        continue;
                    }
                    if change.gone && self.request.prefix {
                        self.reported.remove(&key);
                    } else {
                        self.reported.insert(key, now);
                    }
                    return Ok(change);
                }
                Ok(None) => self.broke(&Status::unavailable("the watch stream ended")),
                Err(status) if retriable(&status) => self.broke(&status),
                Err(status) => return Err(Error::from_status(status, self.client.addr())),
            }
        }
    }

    /// A stream's first listing is complete: what was reported as there
    /// and is not in it went while the watch was cut off.
    fn listed(&mut self, server_time_ms: u64) {
        let Some(listing) = self.listing.take() else {
            return;
        };
        let went: Vec<(String, String)> = self
            .reported
            .iter()
            .filter(|(key, (_, gone))| !gone && !listing.contains(*key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in went {
            let (state, _) = self.reported.remove(&key).expect("listed above");
            let change = StateChange {
                kind: key.0.clone(),
                name: key.1.clone(),
                state: state.clone(),
                gone: true,
                server_time_ms,
            };
            if !self.request.prefix {
                self.reported.insert(key, (state, true));
            }
            self.pending.push_back(change);
        }
    }

    fn broke(&mut self, status: &Status) {
        info!(
            "watch of {:?} broke ({}); watching again",
            self.request.name,
            status.message()
        );
        self.stream = None;
    }

    /// Watches again after a pause; a refusal that will not pass is an
    /// error.
    async fn rewatch(&mut self) -> Result<(), Error> {
        tokio::time::sleep(self.backoff.next_pause()).await;
        match self.connect().await {
            Ok(stream) => {
                self.stream = Some(stream);
                self.listing = Some(BTreeSet::new());
                Ok(())
            }
            Err(Error::Unavailable(reason)) => {
                warn!("cannot watch {:?} yet: {reason}", self.request.name);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Errors after which watching again may work.
fn retriable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::ResourceExhausted
    )
}

impl Client {
    /// Watches the state of primitive `name` of `kind` (`""`: a name of any
    /// kind); see [`StateWatch`].
    pub async fn watch_state(&self, kind: &str, name: &str) -> Result<StateWatch, Error> {
        let request = WatchRequest {
            kind: kind.to_owned(),
            name: name.to_owned(),
            prefix: false,
        };
        StateWatch::open(self.clone(), request).await
    }

    /// Watches the state of every primitive of `kind` (`""`: every kind)
    /// whose name starts with `prefix`, as they come and go.
    pub async fn watch_prefix(&self, kind: &str, prefix: &str) -> Result<StateWatch, Error> {
        let request = WatchRequest {
            kind: kind.to_owned(),
            name: prefix.to_owned(),
            prefix: true,
        };
        StateWatch::open(self.clone(), request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::PrimitiveSummary;

    #[test]
    fn a_change_reads_as_one_line() {
        let response = WatchResponse {
            primitive: Some(PrimitiveSummary {
                kind: "lock".into(),
                name: "db".into(),
                state: "free".into(),
            }),
            gone: false,
            server_time_ms: 5,
            synced: false,
        };
        let change = StateChange::from(response.clone());
        assert_eq!(change.to_string(), "lock \"db\": free");
        let gone = StateChange::from(WatchResponse {
            gone: true,
            ..response
        });
        assert_eq!(gone.to_string(), "lock \"db\": gone");
    }
}
