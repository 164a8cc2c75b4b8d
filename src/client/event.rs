//! Events: a flag on the server that is set or clear, and waiters for it.
//!
//! [`Event::set`] wakes every waiter at once; a wait on an event that is
//! set returns at once; [`Event::clear`] makes later waits block again. The
//! flag survives server restarts. Setting and clearing need no session;
//! a wait belongs to the client's session.
//!
//! Waiting holds nothing, so a wait is safe to repeat: one that breaks
//! because the server cannot be reached is retried until its deadline, and
//! one whose session was lost goes on in the new session. A wait that times
//! out, or whose future is dropped, leaves nothing queued.

use std::time::Duration;

use tonic::Status;

use super::{
    wait::{read_to_end, Attempt, Step, Wait},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    events_client::EventsClient, wait_event_response::Event as WaitEvent, ClearEventRequest,
    DescribeEventRequest, DescribeEventResponse, SetEventRequest, WaitEventRequest,
};

/// A named event on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Event {
    client: Client,
    name: String,
}

impl Event {
    pub(crate) fn new(client: Client, name: String) -> Event {
        Event { client, name }
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the event, which wakes every waiter; returns how many it woke.
    pub async fn set(&self) -> Result<u32, Error> {
        let request = SetEventRequest {
            name: self.name.clone(),
        };
        let response = self
            .client
            .unary(|channel| {
                let request = request.clone();
                async move { EventsClient::new(channel).set(with_timeout(request)).await }
            })
            .await?;
        Ok(response.woken)
    }

    /// Clears the event: waits block again until it is set.
    pub async fn clear(&self) -> Result<(), Error> {
        let request = ClearEventRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    EventsClient::new(channel)
                        .clear(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// Whether the event is set now.
    pub async fn is_set(&self) -> Result<bool, Error> {
        Ok(self.describe().await?.is_set)
    }

    /// Waits as long as it takes for the event to be set.
    pub async fn wait(&self) -> Result<(), Error> {
        self.wait_within(None).await
    }

    /// Waits at most `timeout` for the event to be set; [`Error::Timeout`]
    /// when it passes. A zero timeout checks once.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_within(Some(timeout)).await
    }

    /// Whether it is set, since when, and who waits, as the server sees it.
    pub async fn describe(&self) -> Result<DescribeEventResponse, Error> {
        let request = DescribeEventRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    EventsClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    async fn wait_within(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let what = format!("event {:?}", self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        wait.with_retries(|attempt| self.attempt(attempt, &what))
            .await
            .map(|_| ())
            .map_err(|failed| failed.error)
    }

    /// One `Wait` stream, until the event is set.
    async fn attempt(&self, attempt: Attempt, what: &str) -> Result<(), Status> {
        let request = attempt.request(WaitEventRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            timeout_ms: attempt.timeout_ms(),
        });
        let stream = EventsClient::new(self.client.transport())
            .wait(request)
            .await?
            .into_inner();
        read_to_end(stream, what, |message| match message.event {
            Some(WaitEvent::Set(_)) => Step::Done(()),
            Some(WaitEvent::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        })
        .await
    }
}
