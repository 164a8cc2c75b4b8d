//! Rate limits and circuit breakers as any gRPC client sees them, against a
//! real `syncd` process. Uses the raw generated stubs, not the client
//! library. Waits are observed through their streams (`queued` first), and
//! the breakers' 300 ms open timeout only ever by polling with a bound that
//! just stops a hung test.
//!
//! The buckets refill at 1 token per second, the slowest rate there is: the
//! few back-to-back unary calls a check needs take milliseconds, far less
//! than a refill that could hide what they did.

mod common;

use common::rpc::{end, ends_cleanly, kill9_and_restart, next, open_channel, session, until};
use common::Syncd;
use syncd::proto::v1::{
    allow_call_response, circuit_breakers_client::CircuitBreakersClient,
    rate_limits_client::RateLimitsClient, sessions_client::SessionsClient,
    system_client::SystemClient, take_tokens_response, AllowCallRequest, AllowCallResponse,
    BreakerSettings, BreakerState, CallOutcome, CallPermit, CloseSessionRequest,
    ControlBreakerRequest, DescribeBreakerRequest, DescribeBreakerResponse,
    DescribeRateLimitRequest, DescribeRateLimitResponse, ListRequest, RecordCallRequest,
    RecordCallResponse, TakeTokensRequest, TakeTokensResponse, TryTakeManyRequest,
    TryTakeManyResponse, TryTakeTokensRequest, TryTakeTokensResponse, WatchBreakerRequest,
    WatchBreakerResponse,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

// --- rate limits ------------------------------------------------------------

fn try_request(name: &str, rate_per_s: u32, capacity: u32, tokens: u32) -> TryTakeTokensRequest {
    TryTakeTokensRequest {
        name: name.into(),
        rate_per_s,
        capacity,
        tokens,
    }
}

fn take_request(session_id: u64, name: &str, capacity: u32, tokens: u32) -> TakeTokensRequest {
    TakeTokensRequest {
        session_id,
        name: name.into(),
        rate_per_s: 1,
        capacity,
        tokens,
        timeout_ms: None,
    }
}

async fn try_take(
    limits: &mut RateLimitsClient<Channel>,
    request: TryTakeTokensRequest,
) -> TryTakeTokensResponse {
    limits
        .try_take(request)
        .await
        .expect("try take")
        .into_inner()
}

async fn try_take_many(
    limits: &mut RateLimitsClient<Channel>,
    buckets: Vec<TryTakeTokensRequest>,
) -> Result<TryTakeManyResponse, Status> {
    let request = TryTakeManyRequest { buckets };
    limits.try_take_many(request).await.map(|r| r.into_inner())
}

async fn describe_bucket(
    limits: &mut RateLimitsClient<Channel>,
    name: &str,
) -> DescribeRateLimitResponse {
    limits
        .describe(DescribeRateLimitRequest { name: name.into() })
        .await
        .expect("describe")
        .into_inner()
}

async fn open_take(
    limits: &mut RateLimitsClient<Channel>,
    request: TakeTokensRequest,
) -> Streaming<TakeTokensResponse> {
    limits.take(request).await.expect("take").into_inner()
}

fn queued_at(message: TakeTokensResponse) -> u32 {
    match message.event {
        Some(take_tokens_response::Event::Queued(q)) => q.position,
        other => panic!("expected `queued`, got {other:?}"),
    }
}

fn taken(message: TakeTokensResponse) -> u32 {
    match message.event {
        Some(take_tokens_response::Event::Taken(t)) => t.remaining,
        other => panic!("expected `taken`, got {other:?}"),
    }
}

#[tokio::test]
async fn a_burst_of_capacity_passes_and_the_next_try_is_told_when_to_retry() {
    let syncd = Syncd::start();
    let mut limits = RateLimitsClient::new(open_channel(&syncd).await);

    // A new bucket starts full; `tokens: 0` asks for one.
    let mut left = Vec::new();
    for _ in 0..5 {
        let answer = try_take(&mut limits, try_request("api", 1, 5, 0)).await;
        assert!(answer.taken, "{answer:?}");
        assert_eq!(answer.retry_after_ms, 0);
        left.push(answer.remaining);
    }
    assert_eq!(left, [4, 3, 2, 1, 0]);

    // Later requests may leave the settings out (0 = the bucket's own).
    let refused = try_take(&mut limits, try_request("api", 0, 0, 1)).await;
    assert!(!refused.taken, "{refused:?}");
    assert_eq!(refused.remaining, 0);
    assert!(
        (1..=1_000).contains(&refused.retry_after_ms),
        "one token refills within a second at 1/s: {refused:?}"
    );

    let described = describe_bucket(&mut limits, "api").await;
    assert_eq!(described.name, "api");
    assert_eq!((described.rate_per_s, described.capacity), (1, 5));
    assert_eq!(described.tokens, 0);
    assert!(described.waiters.is_empty());
}

#[tokio::test]
async fn a_bucket_refuses_bad_requests_with_a_code_that_says_why() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut limits = RateLimitsClient::new(channel.clone());
    let me = session(&channel).await;
    let made = try_take(&mut limits, try_request("api", 1, 10, 1)).await;
    assert_eq!(made.remaining, 9);

    let too_many = (limits.try_take(try_request("api", 0, 0, 11)).await).unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    assert!(
        too_many.message().contains("capacity is 10"),
        "{too_many:?}"
    );
    let wait_for_too_many = (limits.take(take_request(me, "api", 10, 11)).await).unwrap_err();
    assert_eq!(wait_for_too_many.code(), Code::InvalidArgument);

    let other_settings = (limits.try_take(try_request("api", 2, 10, 5)).await).unwrap_err();
    assert_eq!(other_settings.code(), Code::FailedPrecondition);
    assert!(
        other_settings.message().contains("rate 1/s"),
        "{other_settings:?}"
    );
    let unknown = (limits.try_take(try_request("nothing", 0, 0, 1)).await).unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let bad_name = (limits.try_take(try_request("", 1, 5, 1)).await).unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument, "{bad_name:?}");

    // None of the refused requests took anything (the one with other
    // settings would have left at most 4 plus what refilled).
    let api = describe_bucket(&mut limits, "api").await;
    assert!(api.tokens >= 9, "{api:?}");
    let never_made = describe_bucket(&mut limits, "nothing").await;
    assert_eq!((never_made.rate_per_s, never_made.capacity), (0, 0));
}

#[tokio::test]
async fn a_take_waits_in_line_and_is_granted_as_the_tokens_refill() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut limits = RateLimitsClient::new(channel.clone());
    let (first, second) = (session(&channel).await, session(&channel).await);

    // Enough at once: `taken` straight away, and the stream ends.
    let mut at_once = open_take(&mut limits, take_request(first, "slow", 2, 2)).await;
    assert_eq!(taken(next(&mut at_once).await), 0);
    ends_cleanly(&mut at_once).await;

    // Empty: a take that may not wait says so; one that may, queues.
    let status = limits
        .take(TakeTokensRequest {
            timeout_ms: Some(0),
            ..take_request(first, "slow", 2, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let mut head = open_take(&mut limits, take_request(first, "slow", 2, 2)).await;
    assert_eq!(queued_at(next(&mut head).await), 1);
    let mut behind = open_take(&mut limits, take_request(second, "slow", 0, 0)).await;
    assert_eq!(queued_at(next(&mut behind).await), 2);

    // A try does not jump the line.
    let jumped = try_take(&mut limits, try_request("slow", 0, 0, 1)).await;
    assert!(!jumped.taken, "{jumped:?}");
    let waiting: Vec<(u64, u32)> = (describe_bucket(&mut limits, "slow").await.waiters)
        .iter()
        .map(|w| (w.session_id, w.permits))
        .collect();
    assert_eq!(waiting, [(first, 2), (second, 1)]);

    // The server's timer grants them in order as the tokens refill.
    assert_eq!(taken(next(&mut head).await), 0);
    ends_cleanly(&mut head).await;
    assert_eq!(taken(next(&mut behind).await), 0);
    ends_cleanly(&mut behind).await;
    assert!(describe_bucket(&mut limits, "slow")
        .await
        .waiters
        .is_empty());
}

#[tokio::test]
async fn try_take_many_takes_from_every_bucket_or_from_none() {
    let syncd = Syncd::start();
    let mut limits = RateLimitsClient::new(open_channel(&syncd).await);
    let global = |tokens| try_request("global", 1, 100, tokens);
    let user = |tokens| try_request("user/7", 1, 2, tokens);

    let both = try_take_many(&mut limits, vec![global(1), user(2)]).await;
    let both = both.expect("try take many");
    assert!(both.taken, "{both:?}");
    assert_eq!(both.retry_after_ms, 0);
    let remaining: Vec<(bool, u32)> = both
        .buckets
        .iter()
        .map(|b| (b.taken, b.remaining))
        .collect();
    assert_eq!(remaining, [(true, 99), (true, 0)]);

    // The user's bucket is empty: the global one must not pay for the
    // refused requests.
    for _ in 0..5 {
        let refused = try_take_many(&mut limits, vec![global(10), user(2)]).await;
        let refused = refused.expect("try take many");
        assert!(!refused.taken, "{refused:?}");
        let (g, u) = (&refused.buckets[0], &refused.buckets[1]);
        assert!(
            g.taken && g.retry_after_ms == 0,
            "global alone had enough: {g:?}"
        );
        assert!(!u.taken && u.retry_after_ms > 0, "{u:?}");
        assert_eq!(refused.retry_after_ms, u.retry_after_ms);
    }
    let global_now = describe_bucket(&mut limits, "global").await.tokens;
    assert!(
        global_now >= 99,
        "50 tokens would be gone if taken: {global_now}"
    );
    assert_eq!(describe_bucket(&mut limits, "user/7").await.tokens, 0);

    // The top-level wait is the longest among the buckets that lacked
    // tokens.
    try_take(&mut limits, try_request("route", 1, 4, 4)).await;
    let two_short = try_take_many(&mut limits, vec![user(1), try_request("route", 0, 0, 4)]).await;
    let two_short = two_short.expect("try take many");
    let longest = two_short.buckets.iter().map(|b| b.retry_after_ms).max();
    assert_eq!(Some(two_short.retry_after_ms), longest);
    assert!(two_short.buckets[1].retry_after_ms > two_short.buckets[0].retry_after_ms);

    // One bad bucket refuses the whole request, before anything changes.
    let bad = try_take_many(&mut limits, vec![global(1), try_request("user/8", 1, 2, 3)]).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let twice = try_take_many(&mut limits, vec![global(1), global(1)]).await;
    assert_eq!(twice.unwrap_err().code(), Code::InvalidArgument);
    let none = try_take_many(&mut limits, vec![]).await;
    assert_eq!(none.unwrap_err().code(), Code::InvalidArgument);
    assert!(describe_bucket(&mut limits, "global").await.tokens >= 99);
    let never_made = describe_bucket(&mut limits, "user/8").await;
    assert_eq!(never_made.capacity, 0, "a refused request creates nothing");
}

// --- circuit breakers ---------------------------------------------------------

/// Opens after 3 failures in a row, half-opens after 300 ms, one probe at a
/// time, one successful probe closes it.
fn quick_settings() -> BreakerSettings {
    BreakerSettings {
        failure_threshold: 3,
        open_timeout_ms: 300,
        half_open_max_probes: 1,
        success_threshold: 1,
        ..BreakerSettings::default()
    }
}

fn allow_request(session_id: u64, name: &str, settings: BreakerSettings) -> AllowCallRequest {
    AllowCallRequest {
        session_id,
        name: name.into(),
        settings: Some(settings),
        acquire_id: 0,
    }
}

async fn allow(
    breakers: &mut CircuitBreakersClient<Channel>,
    request: AllowCallRequest,
) -> AllowCallResponse {
    breakers.allow(request).await.expect("allow").into_inner()
}

fn permit(answer: &AllowCallResponse) -> CallPermit {
    match answer.verdict {
        Some(allow_call_response::Verdict::Permit(p)) => p,
        ref other => panic!("expected a permit, got {other:?}"),
    }
}

/// The rejection's retry_after_ms.
fn rejected(answer: &AllowCallResponse) -> u64 {
    match answer.verdict {
        Some(allow_call_response::Verdict::Rejected(r)) => r.retry_after_ms,
        ref other => panic!("expected a rejection, got {other:?}"),
    }
}

fn record_request(
    session_id: u64,
    name: &str,
    token: u64,
    outcome: CallOutcome,
) -> RecordCallRequest {
    RecordCallRequest {
        session_id,
        name: name.into(),
        fencing_token: token,
        outcome: outcome.into(),
    }
}

async fn record(
    breakers: &mut CircuitBreakersClient<Channel>,
    request: RecordCallRequest,
) -> RecordCallResponse {
    breakers.record(request).await.expect("record").into_inner()
}

/// Allow, then record a failure: returns the state after it.
async fn failed_call(
    breakers: &mut CircuitBreakersClient<Channel>,
    session_id: u64,
    name: &str,
    settings: BreakerSettings,
) -> BreakerState {
    let answer = allow(breakers, allow_request(session_id, name, settings)).await;
    let token = permit(&answer).fencing_token;
    let request = record_request(session_id, name, token, CallOutcome::Failure);
    record(breakers, request).await.state()
}

async fn describe_breaker(
    breakers: &mut CircuitBreakersClient<Channel>,
    name: &str,
) -> DescribeBreakerResponse {
    breakers
        .describe(DescribeBreakerRequest { name: name.into() })
        .await
        .expect("describe")
        .into_inner()
}

async fn control(
    breakers: &mut CircuitBreakersClient<Channel>,
    name: &str,
    action: &str,
) -> Result<BreakerState, Status> {
    let request = ControlBreakerRequest { name: name.into() };
    let reply = match action {
        "force_open" => breakers.force_open(request).await,
        "force_close" => breakers.force_close(request).await,
        "reset" => breakers.reset(request).await,
        other => panic!("no action {other}"),
    };
    reply.map(|r| r.into_inner().state())
}

async fn open_watch(
    breakers: &mut CircuitBreakersClient<Channel>,
    session_id: u64,
    name: &str,
) -> Streaming<WatchBreakerResponse> {
    let request = WatchBreakerRequest {
        session_id,
        name: name.into(),
    };
    breakers.watch(request).await.expect("watch").into_inner()
}

/// Allows (with `quick_settings`) until the open timeout has passed and a
/// probe gets through. Until then every call is refused as open, with the
/// time left.
async fn probe_when_due(
    breakers: &mut CircuitBreakersClient<Channel>,
    session_id: u64,
    name: &str,
) -> CallPermit {
    let mut got = None;
    until("the breaker lets a probe through", async || {
        let answer = allow(breakers, allow_request(session_id, name, quick_settings())).await;
        match answer.verdict {
            Some(allow_call_response::Verdict::Permit(p)) => {
                assert_eq!(answer.state(), BreakerState::HalfOpen);
                assert!(p.probe, "{answer:?}");
                got = Some(p);
            }
            _ => {
                assert_eq!(answer.state(), BreakerState::Open);
                assert!((1..=300).contains(&rejected(&answer)), "{answer:?}");
            }
        }
        got.is_some()
    })
    .await;
    got.expect("a probe")
}

#[tokio::test]
async fn failures_open_the_breaker_and_a_successful_probe_closes_it_as_watchers_see() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let (me, watcher) = (session(&channel).await, session(&channel).await);

    // Allow with settings creates it, closed.
    let first = allow(&mut breakers, allow_request(me, "db", quick_settings())).await;
    assert_eq!(first.state(), BreakerState::Closed);
    let first = permit(&first);
    assert!(!first.probe);
    let mut watch = open_watch(&mut breakers, watcher, "db").await;
    let now = next(&mut watch).await;
    assert_eq!(now.state(), BreakerState::Closed);
    assert_eq!(describe_breaker(&mut breakers, "db").await.watchers, 1);

    let ok = record_request(me, "db", first.fencing_token, CallOutcome::Success);
    let ok = record(&mut breakers, ok).await;
    assert_eq!((ok.state(), ok.counted), (BreakerState::Closed, true));
    assert_eq!(
        failed_call(&mut breakers, me, "db", quick_settings()).await,
        BreakerState::Closed
    );
    assert_eq!(
        failed_call(&mut breakers, me, "db", quick_settings()).await,
        BreakerState::Closed
    );
    assert_eq!(
        describe_breaker(&mut breakers, "db")
            .await
            .consecutive_failures,
        2
    );
    assert_eq!(
        failed_call(&mut breakers, me, "db", quick_settings()).await,
        BreakerState::Open
    );
    let opened = next(&mut watch).await;
    assert_eq!(opened.state(), BreakerState::Open);
    assert_eq!(opened.reason, "3 consecutive failures");
    assert!((1..=300).contains(&opened.retry_after_ms), "{opened:?}");

    // Refused while open; after the open timeout, one probe at a time.
    let probe = probe_when_due(&mut breakers, me, "db").await;
    let half_open = next(&mut watch).await;
    assert_eq!(half_open.state(), BreakerState::HalfOpen);
    let second = allow(&mut breakers, allow_request(me, "db", quick_settings())).await;
    assert_eq!(second.state(), BreakerState::HalfOpen);
    assert_eq!(
        rejected(&second),
        0,
        "no time is known while the probe runs"
    );
    let described = describe_breaker(&mut breakers, "db").await;
    assert_eq!(described.probes_in_flight, 1);
    let permits: Vec<(u64, u64)> = (described.permits.iter())
        .map(|p| (p.session_id, p.fencing_token))
        .collect();
    assert_eq!(permits, [(me, probe.fencing_token)]);

    let success = record_request(me, "db", probe.fencing_token, CallOutcome::Success);
    let closed = record(&mut breakers, success).await;
    assert_eq!(
        (closed.state(), closed.counted),
        (BreakerState::Closed, true)
    );
    let watched = next(&mut watch).await;
    assert_eq!(watched.state(), BreakerState::Closed);
    assert_eq!(watched.reason, "1 successful probe call");
    let after = allow(&mut breakers, allow_request(me, "db", quick_settings())).await;
    assert!(!permit(&after).probe);

    // The watcher leaves: the server forgets it.
    drop(watch);
    until("the watch is gone", async || {
        describe_breaker(&mut breakers, "db").await.watchers == 0
    })
    .await;
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let me = session(&channel).await;
    failed_call(&mut breakers, me, "api", quick_settings()).await;
    let mut watch = open_watch(&mut breakers, me, "api").await;
    assert_eq!(next(&mut watch).await.state(), BreakerState::Closed);
    for _ in 0..2 {
        failed_call(&mut breakers, me, "api", quick_settings()).await;
    }
    let probe = probe_when_due(&mut breakers, me, "api").await;
    let failure = record_request(me, "api", probe.fencing_token, CallOutcome::Failure);
    let reopened = record(&mut breakers, failure).await;
    assert_eq!(
        (reopened.state(), reopened.counted),
        (BreakerState::Open, true)
    );

    let mut seen = Vec::new();
    for _ in 0..3 {
        let change = next(&mut watch).await;
        seen.push((change.state(), change.reason));
    }
    let expected = [
        (BreakerState::Open, "3 consecutive failures"),
        (BreakerState::HalfOpen, "the open timeout passed"),
        (BreakerState::Open, "a probe call failed"),
    ]
    .map(|(state, reason)| (state, reason.to_owned()));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_probe_whose_session_ends_frees_its_slot() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let (dying, other) = (session(&channel).await, session(&channel).await);
    for _ in 0..3 {
        failed_call(&mut breakers, other, "api", quick_settings()).await;
    }
    probe_when_due(&mut breakers, dying, "api").await;
    let busy = allow(&mut breakers, allow_request(other, "api", quick_settings())).await;
    assert_eq!((busy.state(), rejected(&busy)), (BreakerState::HalfOpen, 0));

    SessionsClient::new(channel.clone())
        .close(CloseSessionRequest {
            session_id: dying,
            reason: String::new(),
        })
        .await
        .expect("close");
    let described = describe_breaker(&mut breakers, "api").await;
    assert_eq!(
        (described.probes_in_flight, described.permits.len()),
        (0, 0)
    );
    let next_probe = allow(&mut breakers, allow_request(other, "api", quick_settings())).await;
    assert_eq!(next_probe.state(), BreakerState::HalfOpen);
    assert!(permit(&next_probe).probe);
}

#[tokio::test]
async fn an_open_breaker_refuses_calls_with_the_time_until_a_probe() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let me = session(&channel).await;
    let minute = BreakerSettings {
        open_timeout_ms: 60_000,
        ..quick_settings()
    };
    let slow_call = permit(&allow(&mut breakers, allow_request(me, "slow", minute)).await);
    for _ in 0..3 {
        failed_call(&mut breakers, me, "slow", minute).await;
    }
    let refused = allow(&mut breakers, allow_request(me, "slow", minute)).await;
    assert_eq!(refused.state(), BreakerState::Open);
    assert!((1..=60_000).contains(&rejected(&refused)), "{refused:?}");

    // A call allowed before the breaker opened cannot close it.
    let late = record_request(me, "slow", slow_call.fencing_token, CallOutcome::Success);
    let late = record(&mut breakers, late).await;
    assert_eq!((late.state(), late.counted), (BreakerState::Open, false));

    let described = describe_breaker(&mut breakers, "slow").await;
    assert!(described.exists);
    assert_eq!(described.state(), BreakerState::Open);
    assert_eq!(described.reason, "3 consecutive failures");
    assert!(
        (1..=60_000).contains(&described.retry_after_ms),
        "{described:?}"
    );
    assert_eq!(described.settings, Some(minute));
    assert!(described.permits.is_empty());

    // Zero fields are shown with their defaults filled in.
    allow(
        &mut breakers,
        allow_request(
            me,
            "defaults",
            BreakerSettings {
                failure_threshold: 1,
                ..BreakerSettings::default()
            },
        ),
    )
    .await;
    let defaults = describe_breaker(&mut breakers, "defaults").await.settings;
    let defaults = defaults.expect("settings");
    assert_eq!(defaults.open_timeout_ms, 30_000);
    assert_eq!(
        (defaults.half_open_max_probes, defaults.success_threshold),
        (1, 1)
    );
}

#[tokio::test]
async fn operators_force_the_breaker_open_or_closed_and_reset_it() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let me = session(&channel).await;
    let missing = control(&mut breakers, "ops", "force_open")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    allow(&mut breakers, allow_request(me, "ops", quick_settings())).await;

    assert_eq!(
        control(&mut breakers, "ops", "force_open").await.unwrap(),
        BreakerState::ForcedOpen
    );
    let refused = allow(&mut breakers, allow_request(me, "ops", quick_settings())).await;
    assert_eq!(refused.state(), BreakerState::ForcedOpen);
    assert_eq!(rejected(&refused), 0, "no time is known while forced open");

    assert_eq!(
        control(&mut breakers, "ops", "force_close").await.unwrap(),
        BreakerState::ForcedClosed
    );
    for _ in 0..5 {
        let answer = allow(&mut breakers, allow_request(me, "ops", quick_settings())).await;
        assert_eq!(answer.state(), BreakerState::ForcedClosed);
        let token = permit(&answer).fencing_token;
        let failure = record_request(me, "ops", token, CallOutcome::Failure);
        let recorded = record(&mut breakers, failure).await;
        assert_eq!(
            (recorded.state(), recorded.counted),
            (BreakerState::ForcedClosed, false),
            "outcomes change nothing while forced closed"
        );
    }

    assert_eq!(
        control(&mut breakers, "ops", "reset").await.unwrap(),
        BreakerState::Closed
    );
    for _ in 0..2 {
        failed_call(&mut breakers, me, "ops", quick_settings()).await;
    }
    assert_eq!(
        describe_breaker(&mut breakers, "ops")
            .await
            .consecutive_failures,
        2
    );
    assert_eq!(
        control(&mut breakers, "ops", "reset").await.unwrap(),
        BreakerState::Closed
    );
    let described = describe_breaker(&mut breakers, "ops").await;
    assert_eq!(described.state(), BreakerState::Closed);
    assert_eq!(described.reason, "reset by an operator");
    assert_eq!(described.consecutive_failures, 0);
}

#[tokio::test]
async fn a_breaker_refuses_bad_requests_with_a_code_that_says_why() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let (me, other) = (session(&channel).await, session(&channel).await);

    let described = describe_breaker(&mut breakers, "db").await;
    assert!(!described.exists);
    assert_eq!(described.settings, None);
    assert_eq!(described.state(), BreakerState::Unspecified);
    let unknown = (breakers.allow(AllowCallRequest {
        settings: None,
        ..allow_request(me, "db", quick_settings())
    }))
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let watch_unknown = breakers
        .watch(WatchBreakerRequest {
            session_id: me,
            name: "db".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(watch_unknown.code(), Code::NotFound, "{watch_unknown:?}");
    let no_rule = BreakerSettings {
        failure_threshold: 0,
        ..quick_settings()
    };
    let bad = breakers.allow(allow_request(me, "db", no_rule)).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    let answer = allow(&mut breakers, allow_request(me, "db", quick_settings())).await;
    let token = permit(&answer).fencing_token;
    let other_settings = BreakerSettings {
        failure_threshold: 5,
        ..quick_settings()
    };
    let mismatch = breakers
        .allow(allow_request(me, "db", other_settings))
        .await;
    assert_eq!(mismatch.unwrap_err().code(), Code::FailedPrecondition);

    // The same acquire_id is the same permit (a retried Allow).
    let with_id = |acquire_id| AllowCallRequest {
        settings: None,
        acquire_id,
        ..allow_request(me, "db", quick_settings())
    };
    let once = permit(&allow(&mut breakers, with_id(77)).await);
    let again = permit(&allow(&mut breakers, with_id(77)).await);
    assert_eq!(once, again);

    let unspecified = record_request(me, "db", token, CallOutcome::Unspecified);
    let unspecified = breakers.record(unspecified).await.unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    assert!(
        unspecified.message().contains("CALL_OUTCOME_UNSPECIFIED"),
        "{unspecified:?}"
    );
    let mut unknown_outcome = record_request(me, "db", token, CallOutcome::Success);
    unknown_outcome.outcome = 9;
    let unknown_outcome = breakers.record(unknown_outcome).await.unwrap_err();
    assert_eq!(unknown_outcome.code(), Code::InvalidArgument);
    let not_yours = record_request(other, "db", token, CallOutcome::Success);
    let not_yours = breakers.record(not_yours).await.unwrap_err();
    assert_eq!(not_yours.code(), Code::FailedPrecondition, "{not_yours:?}");
    let unknown_token = record_request(me, "db", 123_456, CallOutcome::Success);
    let unknown_token = breakers.record(unknown_token).await.unwrap_err();
    assert_eq!(unknown_token.code(), Code::NotFound, "{unknown_token:?}");

    // The refusals above left the permit in flight; it is recorded once.
    record(
        &mut breakers,
        record_request(me, "db", token, CallOutcome::Success),
    )
    .await;
    let twice = record_request(me, "db", token, CallOutcome::Success);
    let twice = breakers.record(twice).await.unwrap_err();
    assert_eq!(twice.code(), Code::NotFound, "{twice:?}");
}

#[tokio::test]
async fn a_watch_ends_with_its_session() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let (me, watcher) = (session(&channel).await, session(&channel).await);
    allow(&mut breakers, allow_request(me, "db", quick_settings())).await;
    let mut watch = open_watch(&mut breakers, watcher, "db").await;
    assert_eq!(next(&mut watch).await.state(), BreakerState::Closed);

    SessionsClient::new(channel.clone())
        .close(CloseSessionRequest {
            session_id: watcher,
            reason: String::new(),
        })
        .await
        .expect("close");
    let status = end(&mut watch).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let gone = status.metadata().get(syncd::proto::SESSION_GONE_KEY);
    assert_eq!(gone.expect("marked"), watcher.to_string().as_str());
    assert_eq!(describe_breaker(&mut breakers, "db").await.watchers, 0);
}

// --- both ---------------------------------------------------------------------

#[tokio::test]
async fn buckets_and_breakers_survive_kill_9() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut limits = RateLimitsClient::new(channel.clone());
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let me = session(&channel).await;

    // A drained bucket: 1000 tokens would take 1000 s to refill.
    let drained = try_take(&mut limits, try_request("big", 1, 1_000, 1_000)).await;
    assert!(drained.taken && drained.remaining == 0, "{drained:?}");
    // An open breaker that stays open for a minute, one that half-opens
    // soon, and a permit in flight on a closed one.
    let long = BreakerSettings {
        open_timeout_ms: 60_000,
        ..quick_settings()
    };
    for _ in 0..3 {
        let answer = allow(&mut breakers, allow_request(me, "long", long)).await;
        let failure = record_request(
            me,
            "long",
            permit(&answer).fencing_token,
            CallOutcome::Failure,
        );
        record(&mut breakers, failure).await;
    }
    for _ in 0..3 {
        failed_call(&mut breakers, me, "short", quick_settings()).await;
    }
    let in_flight =
        permit(&allow(&mut breakers, allow_request(me, "calm", quick_settings())).await);

    let syncd = kill9_and_restart(syncd).await;
    let channel = open_channel(&syncd).await;
    let mut limits = RateLimitsClient::new(channel.clone());
    let mut breakers = CircuitBreakersClient::new(channel.clone());

    let big = describe_bucket(&mut limits, "big").await;
    assert_eq!((big.rate_per_s, big.capacity), (1, 1_000));
    assert!(
        big.tokens < 1_000,
        "a restart gives no fresh burst: {big:?}"
    );

    let long_now = describe_breaker(&mut breakers, "long").await;
    assert_eq!(long_now.state(), BreakerState::Open);
    assert_eq!(long_now.settings, Some(long));
    let refused = allow(&mut breakers, allow_request(me, "long", long)).await;
    assert!(rejected(&refused) > 0, "{refused:?}");

    // The open timeout still runs after the restart.
    let probe = probe_when_due(&mut breakers, me, "short").await;
    assert!(probe.probe);
    assert!(
        probe.fencing_token > in_flight.fencing_token,
        "tokens only grow"
    );

    // The permit given before the crash is still in flight and counts.
    let calm = describe_breaker(&mut breakers, "calm").await;
    let permits: Vec<u64> = calm.permits.iter().map(|p| p.fencing_token).collect();
    assert_eq!(permits, [in_flight.fencing_token]);
    let success = record_request(me, "calm", in_flight.fencing_token, CallOutcome::Success);
    let recorded = record(&mut breakers, success).await;
    assert_eq!(
        (recorded.state(), recorded.counted),
        (BreakerState::Closed, true)
    );
}

#[tokio::test]
async fn health_and_list_know_rate_limits_and_breakers() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let services = ["syncd.v1.RateLimits", "syncd.v1.CircuitBreakers"];
    common::rpc::assert_serving(&channel, &services).await;

    let me = session(&channel).await;
    let mut limits = RateLimitsClient::new(channel.clone());
    try_take(&mut limits, try_request("api", 1, 5, 1)).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    allow(&mut breakers, allow_request(me, "db", quick_settings())).await;

    let all = SystemClient::new(channel)
        .list(ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<(&str, &str)> = (all.primitives.iter())
        .map(|p| (p.kind.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(listed, [("ratelimit", "api"), ("breaker", "db")]);
}

#[tokio::test]
async fn a_shutdown_ends_watches_and_waiting_takes_with_unavailable() {
    let mut syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut breakers = CircuitBreakersClient::new(channel.clone());
    let mut limits = RateLimitsClient::new(channel.clone());
    let me = session(&channel).await;
    allow(&mut breakers, allow_request(me, "db", quick_settings())).await;
    let mut watch = open_watch(&mut breakers, me, "db").await;
    assert_eq!(next(&mut watch).await.state(), BreakerState::Closed);
    try_take(&mut limits, try_request("big", 1, 1_000, 1_000)).await;
    let mut take = open_take(&mut limits, take_request(me, "big", 0, 1_000)).await;
    assert_eq!(queued_at(next(&mut take).await), 1);

    let exit = tokio::task::spawn_blocking(move || syncd.terminate());
    assert_eq!(end(&mut watch).await.code(), Code::Unavailable);
    assert_eq!(end(&mut take).await.code(), Code::Unavailable);
    let exit = common::rpc::answer(exit).await;
    assert!(exit.success(), "{exit:?}");
}
