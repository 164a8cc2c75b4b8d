//! Rate limits: shared token buckets, with fair waiting on the server.
//!
//! A bucket has a rate (tokens per second) and a burst (its capacity), fixed
//! by the request that creates it; a new bucket starts full, and tokens
//! refill from the server's clock. Every process that names the bucket
//! shares it, so together they never take more than the burst at once plus
//! the rate over time.
//!
//! What the calls do:
//! - [`RateLimit::acquire`] waits on the server, **first come, first
//!   served**: a request at the head of the line that does not fit yet
//!   blocks later, smaller ones, so a large request is not starved by a
//!   stream of small ones. Nobody polls: the server's timer grants the head
//!   of the line as its tokens refill. A wait belongs to the client's
//!   session; one that times out, or whose future is dropped, leaves nothing
//!   queued.
//! - [`RateLimit::try_acquire`] answers at once: taken, or not with the time
//!   until it would be (counting the requests already waiting, which come
//!   first). [`Client::try_acquire_many`] takes from several buckets at once,
//!   or from none.
//! - Tokens are not held: taken tokens are used up, there is nothing to give
//!   back, and a session that ends gives nothing back either.
//!
//! Retries: an acquire that breaks because the server cannot be reached is
//! retried until its deadline, and one whose session was lost goes on in the
//! new session, like any wait. A take has no retry identity, so a take that
//! the server granted but whose answer was lost is not returned again: its
//! tokens are simply gone, and the retry takes fresh ones. Retrying can
//! therefore only make the processes use **less** than the rate allows, never
//! more. The same holds for `try_acquire` and `try_acquire_many`, which are
//! retried like any unary call.

use std::time::Duration;

use tonic::Status;

use super::{
    wait::{read_to_end, Attempt, Step, Wait},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    rate_limits_client::RateLimitsClient, take_tokens_response::Event, DeleteRateLimitRequest,
    DescribeRateLimitRequest, DescribeRateLimitResponse, TakeTokensRequest, TryTakeManyRequest,
    TryTakeTokensRequest, TryTakeTokensResponse,
};

/// A named token bucket on the server, seen through one [`Client`]: `rate`
/// tokens per second, at most `burst` at once, shared by every process that
/// names it.
///
/// Waits are first come, first served on the server: a request at the head
/// of the line blocks later, smaller ones. Taken tokens are used up; nothing
/// is given back. A take retried after a lost answer takes fresh tokens
/// (the lost ones are gone), so retries can only under-use the rate, never
/// exceed it.
#[derive(Clone, Debug)]
pub struct RateLimit {
    client: Client,
    name: String,
    /// 0: the existing bucket's.
    rate_per_s: u32,
    /// 0: the existing bucket's.
    burst: u32,
}

/// The answer of a try-once take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The tokens were taken.
    pub taken: bool,
    /// When not taken: how long until they would be there (counting the
    /// requests that wait first). Zero when taken.
    pub retry_after: Duration,
    /// Whole tokens left in the bucket.
    pub remaining: u32,
}

impl From<TryTakeTokensResponse> for Taken {
    fn from(response: TryTakeTokensResponse) -> Taken {
        Taken {
            taken: response.taken,
            retry_after: Duration::from_millis(response.retry_after_ms),
            remaining: response.remaining,
        }
    }
}

/// The answer of [`Client::try_acquire_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManyTaken {
    /// Taken from every bucket (true), or from none (false).
    pub taken: bool,
    /// When not taken: the longest wait among the buckets that had too few.
    pub retry_after: Duration,
    /// One per bucket asked, in the order asked. Each `taken` says whether
    /// that bucket alone had enough; nothing was taken from any bucket
    /// unless the overall `taken` is true.
    pub buckets: Vec<Taken>,
}

impl RateLimit {
    /// `rate_per_s` and `burst` 0 mean "whatever the existing bucket has"
    /// (an acquire fails with `NOT_FOUND` if none exists).
    pub(crate) fn new(client: Client, name: String, rate_per_s: u32, burst: u32) -> RateLimit {
        RateLimit {
            client,
            name,
            rate_per_s,
            burst,
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits on the server, first come first served, as long as it takes for
    /// `tokens` tokens (0 counts as 1), takes them and returns the whole
    /// tokens left. More than the burst is an `INVALID_ARGUMENT` error at
    /// once.
    pub async fn acquire(&self, tokens: u32) -> Result<u32, Error> {
        self.acquire_within(tokens, None).await
    }

    /// Like [`RateLimit::acquire`], waiting at most `timeout`;
    /// [`Error::Timeout`] when it passes (nothing taken, nothing left
    /// queued). A zero timeout tries once.
    pub async fn acquire_timeout(&self, tokens: u32, timeout: Duration) -> Result<u32, Error> {
        self.acquire_within(tokens, Some(timeout)).await
    }

    /// Takes `tokens` tokens (0 counts as 1) if they are there now and
    /// nobody waits first; otherwise says how long until they would be.
    /// Needs no session.
    pub async fn try_acquire(&self, tokens: u32) -> Result<Taken, Error> {
        let request = self.try_request(tokens);
        let response = self
            .client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    RateLimitsClient::new(channel)
                        .try_take(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.into())
    }

    /// The settings, the tokens there now and the waiters, as the server
    /// sees them (rate and capacity 0 when the bucket does not exist).
    pub async fn describe(&self) -> Result<DescribeRateLimitResponse, Error> {
        let request = DescribeRateLimitRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    RateLimitsClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    /// Forgets the bucket (to make it again with other settings, or to
    /// clean up); requests waiting on it fail with NOT_FOUND. Returns how
    /// many there were. Retried only when the attempt surely did not reach
    /// the server.
    pub async fn delete(&self) -> Result<u32, Error> {
        let request = DeleteRateLimitRequest {
            name: self.name.clone(),
        };
        let response = self
            .client
            .unary_at_most_once(|channel| {
                let request = request.clone();
                async move {
                    RateLimitsClient::new(channel)
                        .delete(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.waiters_ended)
    }

    /// The request of a try-once take of `tokens` from this bucket.
    pub(crate) fn try_request(&self, tokens: u32) -> TryTakeTokensRequest {
        TryTakeTokensRequest {
            name: self.name.clone(),
            rate_per_s: self.rate_per_s,
            capacity: self.burst,
            tokens: tokens.max(1),
        }
    }

    async fn acquire_within(&self, tokens: u32, timeout: Option<Duration>) -> Result<u32, Error> {
        let tokens = tokens.max(1);
        let what = match tokens {
            1 => format!("a token of rate limit {:?}", self.name),
            n => format!("{n} tokens of rate limit {:?}", self.name),
        };
        let wait = Wait::new(&self.client, &what, timeout);
        wait.with_retries(|attempt| self.take_attempt(attempt, tokens, &what))
            .await
            .map(|(_, remaining)| remaining)
            .map_err(|failed| failed.error)
    }

    /// One `Take` stream: the tokens left after the take, or why not.
    async fn take_attempt(&self, attempt: Attempt, tokens: u32, what: &str) -> Result<u32, Status> {
        let request = attempt.request(TakeTokensRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            rate_per_s: self.rate_per_s,
            capacity: self.burst,
            tokens,
            timeout_ms: attempt.timeout_ms(),
        });
        let stream = RateLimitsClient::new(self.client.transport())
            .take(request)
            .await?
            .into_inner();
        read_to_end(stream, what, |message| match message.event {
            Some(Event::Taken(taken)) => Step::Done(taken.remaining),
            Some(Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        })
        .await
    }
}

/// [`Client::try_acquire_many`]: one `TryTakeMany` call.
pub(crate) async fn try_acquire_many(
    client: &Client,
    asks: &[(&RateLimit, u32)],
) -> Result<ManyTaken, Error> {
    let request = TryTakeManyRequest {
        buckets: asks
            .iter()
            .map(|(bucket, tokens)| bucket.try_request(*tokens))
            .collect(),
    };
    let response = client
        .unary(|channel| {
            let request = request.clone();
            async move {
                RateLimitsClient::new(channel)
                    .try_take_many(with_timeout(request))
                    .await
            }
        })
        .await?;
    Ok(ManyTaken {
        taken: response.taken,
        retry_after: Duration::from_millis(response.retry_after_ms),
        buckets: response.buckets.into_iter().map(Taken::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_durations() {
        let refused = TryTakeTokensResponse {
            taken: false,
            retry_after_ms: 1500,
            remaining: 2,
        };
        assert_eq!(
            Taken::from(refused),
            Taken {
                taken: false,
                retry_after: Duration::from_millis(1500),
                remaining: 2,
            }
        );
    }
}
