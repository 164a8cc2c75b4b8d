//! Barriers: a fixed number of parties meet, then all go on.
//!
//! Once `parties` waits have arrived, all of them return, each with its
//! arrival index, and the next generation begins. A party that leaves while
//! waiting (its timeout passes, its future is dropped, its connection
//! breaks, its session ends) breaks the barrier: every other waiting party
//! gets [`Error::Broken`], and so does every later wait, until
//! [`Barrier::reset`]. The party whose timeout passed gets [`Error::Timeout`].
//!
//! So a wait is never retried: the first attempt that may have reached the
//! server either counts as an arrival or has broken the barrier, and a
//! second one would be a different party. Its error is returned as it is.
//!
//! The number of parties is fixed by whoever creates the barrier (the first
//! wait); a wait that names another number fails at once with the server's
//! message saying what exists. A barrier is stored until [`Barrier::delete`].

use std::time::Duration;

use tonic::Status;

use super::{
    wait::{read_to_end, single_attempt_error, Attempt, Step, Wait},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    barriers_client::BarriersClient, wait_barrier_response::Event, DeleteBarrierRequest,
    DescribeBarrierRequest, DescribeBarrierResponse, ResetBarrierRequest, WaitBarrierRequest,
};

/// A named barrier on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Barrier {
    client: Client,
    name: String,
    parties: u32,
}

/// A wait that passed the barrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierPassed {
    /// Arrival order within the generation: 0 for the first party,
    /// `parties - 1` for the last, whose arrival let everyone go.
    pub arrival_index: u32,
    /// The generation that passed: 0 for the first, counting every release
    /// and every break.
    pub generation: u64,
}

impl Barrier {
    /// `parties` 0 means "whatever the stored barrier has" (a wait fails
    /// with `NOT_FOUND` if there is none).
    pub(crate) fn new(client: Client, name: String, parties: u32) -> Barrier {
        Barrier {
            client,
            name,
            parties,
        }
    }

    /// The barrier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of parties this handle asks for (0: whatever exists).
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// Arrives and waits as long as it takes for the other parties.
    pub async fn wait(&self) -> Result<BarrierPassed, Error> {
        self.wait_within(None).await
    }

    /// Arrives and waits at most `timeout` for the other parties;
    /// [`Error::Timeout`] when it passes, which breaks the barrier for the
    /// others.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<BarrierPassed, Error> {
        self.wait_within(Some(timeout)).await
    }

    /// Mends a broken barrier, for the next generation; parties waiting now
    /// get [`Error::Broken`]. Returns how many.
    pub async fn reset(&self) -> Result<u32, Error> {
        let request = ResetBarrierRequest {
            name: self.name.clone(),
        };
        let response = self
            .client
            .unary_at_most_once(|channel| {
                let request = request.clone();
                async move {
                    BarriersClient::new(channel)
                        .reset(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.aborted)
    }

    /// Forgets the barrier, so that it can be made again with another
    /// number of parties; parties waiting now get [`Error::Broken`]. Returns
    /// how many.
    pub async fn delete(&self) -> Result<u32, Error> {
        let request = DeleteBarrierRequest {
            name: self.name.clone(),
        };
        let response = self
            .client
            .unary_at_most_once(|channel| {
                let request = request.clone();
                async move {
                    BarriersClient::new(channel)
                        .delete(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.aborted)
    }

    /// Parties, generation, whether it is broken, and who waits, as the
    /// server sees it now.
    pub async fn describe(&self) -> Result<DescribeBarrierResponse, Error> {
        let request = DescribeBarrierRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    BarriersClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    /// One attempt, never retried (see the module documentation).
    async fn wait_within(&self, timeout: Option<Duration>) -> Result<BarrierPassed, Error> {
        let what = format!("barrier {:?}", self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        let session_id = wait.usable_session().await;
        let attempt = wait.attempt(session_id);
        attempt
            .bounded(self.attempt(attempt, &what))
            .await
            .map_err(|status| single_attempt_error(&self.client, status, session_id))
    }

    async fn attempt(&self, attempt: Attempt, what: &str) -> Result<BarrierPassed, Status> {
        let request = attempt.request(WaitBarrierRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            parties: self.parties,
            timeout_ms: attempt.timeout_ms(),
        });
        let stream = BarriersClient::new(self.client.transport())
            .wait(request)
            .await?
            .into_inner();
        read_to_end(stream, what, |message| match message.event {
            Some(Event::Passed(passed)) => Step::Done(BarrierPassed {
                arrival_index: passed.arrival_index,
                generation: passed.generation,
            }),
            Some(Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        })
        .await
    }
}
