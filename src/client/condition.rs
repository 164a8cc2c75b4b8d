//! Conditions: wait for a notification while giving up a lock.
//!
//! [`Condition::wait`] needs a [`LockGuard`]: in one step on the server it
//! releases that lock and joins the condition's queue, so no notification
//! can slip in between. [`Condition::notify`] moves waiters, first in line
//! first, to the back of the lock's queue; a wait returns once its lock is
//! held again, under a new fencing token that the guard then shows. A wait
//! whose timeout passes takes the lock again too before it returns (taking
//! it is not bounded by the timeout), and says that it timed out.
//!
//! A wait is never retried: once the request may have reached the server,
//! the lock may be released and a second request would be refused. If the
//! wait fails after the server let go of the lock (the connection broke, the
//! session ended, the server stopped), the lock is not held: the error is
//! returned and the guard is dead (see [`LockGuard`]). A wait refused before
//! the server let go of the lock leaves the guard as it was. A wait whose
//! future is dropped leaves the guard dead too; in case the request never
//! reached the server, the old hold is released in the background.

use std::time::Duration;

use tonic::{Code, Status};
use tracing::debug;

use super::{
    error::is_transient,
    hold::{release_hold, Held},
    lock::{LockGuard, LockKind},
    wait::{is_session_gone, read_to_end, single_attempt_error, Step},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    conditions_client::ConditionsClient, wait_condition_response::Event, DescribeConditionRequest,
    DescribeConditionResponse, NotifyConditionRequest, Reacquired, WaitConditionRequest,
};

/// A named condition on the server, seen through one [`Client`].
#[derive(Clone, Debug)]
pub struct Condition {
    client: Client,
    name: String,
}

impl Condition {
    pub(crate) fn new(client: Client, name: String) -> Condition {
        Condition { client, name }
    }

    /// The condition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives up the lock of `guard`, waits as long as it takes for a
    /// notification, and takes the lock again: on success the guard holds
    /// it under a new fencing token. On an error the guard may be dead; see
    /// the module documentation.
    pub async fn wait(&self, guard: &mut LockGuard) -> Result<(), Error> {
        self.wait_within(guard, None).await?;
        Ok(())
    }

    /// Like [`Condition::wait`], but waits at most `timeout` for the
    /// notification. Returns true when notified, false when the timeout
    /// passed; either way the guard holds the lock again, under a new
    /// fencing token.
    pub async fn wait_timeout(
        &self,
        guard: &mut LockGuard,
        timeout: Duration,
    ) -> Result<bool, Error> {
        let reacquired = self.wait_within(guard, Some(timeout)).await?;
        Ok(!reacquired.timed_out)
    }

    /// Wakes up to `n` waiters (0 counts as 1), first in line first; returns
    /// how many. Needs no lock. A woken waiter still has to take its lock
    /// again before its wait returns.
    pub async fn notify(&self, n: u32) -> Result<u32, Error> {
        self.notify_request(n, false).await
    }

    /// Wakes every waiter; returns how many.
    pub async fn notify_all(&self) -> Result<u32, Error> {
        self.notify_request(0, true).await
    }

    /// The lock it is bound to and the waiters, as the server sees them now.
    pub async fn describe(&self) -> Result<DescribeConditionResponse, Error> {
        let request = DescribeConditionRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    ConditionsClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    async fn notify_request(&self, count: u32, all: bool) -> Result<u32, Error> {
        let request = NotifyConditionRequest {
            name: self.name.clone(),
            count,
            all,
        };
        let response = self
            .client
            .unary_at_most_once(|channel| {
                let request = request.clone();
                async move {
                    ConditionsClient::new(channel)
                        .notify(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.woken)
    }

    /// One wait, in the session and over the client of `guard`.
    async fn wait_within(
        &self,
        guard: &mut LockGuard,
        timeout: Option<Duration>,
    ) -> Result<Reacquired, Error> {
        if let Some(why) = guard.given_up() {
            return Err(Error::Status(Status::failed_precondition(format!(
                "lock {:?} (token {}) is not held: {why}",
                guard.name(),
                guard.fencing_token()
            ))));
        }
        let client = guard.client().clone();
        let held = Held {
            session_id: guard.session_id(),
            name: guard.name().to_string(),
            fencing_token: guard.fencing_token(),
        };
        if let Some(loss) = client.session().loss_of(held.session_id) {
            guard.give_up(format!("it was lost: {loss}"));
            return Err(Error::SessionLost(format!(
                "lock {:?} (token {}) was lost: {loss}",
                held.name, held.fencing_token
            )));
        }
        let request = WaitConditionRequest {
            session_id: held.session_id,
            name: self.name.clone(),
            lock: held.name.clone(),
            fencing_token: held.fencing_token,
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        // From here on the server may let go of the lock at any moment: the
        // guard is dead unless the answer says otherwise.
        guard.give_up(format!(
            "a wait on condition {:?} gave it up and did not take it back",
            self.name
        ));
        let mut in_doubt = HoldInDoubt {
            client: client.clone(),
            held: Some(held.clone()),
        };
        let mut queued = false;
        let answer = self.call(&client, request, &mut queued).await;
        match answer {
            Ok(reacquired) => {
                in_doubt.settle();
                guard.set_fencing_token(reacquired.fencing_token);
                Ok(reacquired)
            }
            Err(status) if refused_before_release(&status, queued, held.session_id) => {
                in_doubt.settle();
                guard.set_fencing_token(held.fencing_token);
                Err(client.error(status))
            }
            Err(status) => {
                // Once queued, the server has let go of the lock, and it
                // releases a lock taken again that it could not deliver.
                if queued || is_session_gone(&status, held.session_id) {
                    in_doubt.settle();
                }
                let error = single_attempt_error(&client, status, held.session_id);
                guard.give_up(format!(
                    "the wait on condition {:?} failed after giving it up: {error}",
                    self.name
                ));
                Err(error)
            }
        }
    }

    /// The `Wait` stream until the lock is held again. Sets `queued` when
    /// the server says it let go of the lock. Without a deadline: taking
    /// the lock again is not bounded by the wait's timeout.
    async fn call(
        &self,
        client: &Client,
        request: WaitConditionRequest,
        queued: &mut bool,
    ) -> Result<Reacquired, Status> {
        let what = format!("condition {:?}", self.name);
        let stream = ConditionsClient::new(client.transport())
            .wait(request)
            .await?
            .into_inner();
        read_to_end(stream, &what, |message| match message.event {
            Some(Event::Reacquired(reacquired)) => Step::Done(reacquired),
            Some(Event::Queued(position)) => {
                *queued = true;
                Step::Queued(position.position)
            }
            None => Step::Nothing,
        })
        .await
    }
}

/// True when the server refused the wait before it let go of the lock: an
/// answer of its own (not a broken connection) that came before `queued`,
/// and not one saying the session, and so the lock, is gone.
fn refused_before_release(status: &Status, queued: bool, session_id: u64) -> bool {
    !queued && !is_transient(status) && !is_session_gone(status, session_id)
}

/// The hold a condition wait started from, while nobody knows whether the
/// server let go of it: if the wait ends without finding out (its future was
/// dropped, or the connection broke before `queued`), the hold is released
/// in the background. When the server did let go already, that release is
/// refused, which is fine.
struct HoldInDoubt {
    client: Client,
    /// `None` once the outcome is known.
    held: Option<Held>,
}

impl HoldInDoubt {
    fn settle(&mut self) {
        self.held = None;
    }
}

impl Drop for HoldInDoubt {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        runtime.spawn(async move {
            match release_hold(&client, &LockKind, &held).await {
                Ok(()) => debug!(
                    "lock {:?} (token {}): released after an interrupted condition wait",
                    held.name, held.fencing_token
                ),
                Err(Error::Status(status)) if status.code() == Code::FailedPrecondition => {
                    debug!("the interrupted condition wait had released it: {status}")
                }
                Err(error) => debug!(
                    "releasing lock {:?} after an interrupted condition wait: {error}",
                    held.name
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_before_queued_leaves_the_lock_held() {
        let refused = Status::failed_precondition(
            "waiting on condition \"c\" needs lock \"l\" held by session 4 under token 9",
        );
        assert!(refused_before_release(&refused, false, 4));
        assert!(!refused_before_release(&refused, true, 4));
        let ended = Status::from(crate::core::Rejection::session_gone(
            crate::core::Code::FailedPrecondition,
            4,
            "session 4 expired while waiting",
        ));
        assert!(!refused_before_release(&ended, false, 4));
        let broken = Status::unavailable("shutting down");
        assert!(!refused_before_release(&broken, false, 4));
    }
}
