//! Token bucket: a shared rate limit, with fair waiting on the server.
//!
//! Policy:
//! - A bucket has a rate (tokens per second) and a capacity (the burst),
//!   fixed by the request that creates it; later requests must name the same
//!   or 0. A new bucket starts full.
//! - Tokens refill continuously from the engine's clock (kept in thousandths
//!   of a token, so rates below one token per millisecond lose nothing). The
//!   clock resumes from its persisted value after a restart, so a restart
//!   neither hands out a fresh burst nor loses the time that had passed.
//! - `take(n)` takes n tokens at once if nobody waits and they are there;
//!   otherwise it waits in FIFO order (a request for more than the capacity
//!   could never pass: INVALID_ARGUMENT). The engine's timer grants the head
//!   when its tokens have refilled: nothing sleeps, nobody polls.
//! - `try_take(n)` answers at once: taken, or not, with how long until it
//!   would be (counting the requests already waiting). A many-bucket try
//!   takes from every bucket it names or from none.
//!
//! Invariants:
//! - `0 ≤ milli_tokens ≤ capacity × 1000` as of `updated_at_ms`;
//! - a bucket with waiters has exactly one alarm, at the time its head's
//!   tokens are there; after `bucket_wake` the head does not fit yet;
//! - a bucket without waiters has no alarm.

use std::collections::BTreeSet;

use super::holds::{Queueing, Table, WaiterInfo};
use super::records::Change;
use super::waitq::WaitQueue;
use super::{
    Alarm, Code, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary, WaiterId,
};
use crate::proto::store as pb;
use prost::Message;

const BUCKET_PREFIX: &[u8] = b"bucket/";

/// The settings a request names (0 = the existing bucket's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSettings {
    pub rate_per_s: u32,
    pub capacity: u32,
}

/// One bucket of a many-bucket try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketAsk {
    pub name: String,
    pub settings: BucketSettings,
    pub tokens: u32,
}

/// One bucket's part of a many-bucket answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketVerdict {
    /// This bucket alone had the tokens.
    pub enough: bool,
    /// How long until it would (0 when it had).
    pub retry_after_ms: u64,
    /// Whole tokens left after the request.
    pub remaining: u32,
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    /// 0 when the bucket does not exist.
    pub rate_per_s: u32,
    pub capacity: u32,
    /// Whole tokens there now.
    pub tokens: u32,
    pub waiters: Vec<(WaiterInfo, u32)>,
}

#[derive(Clone, Debug, Default)]
pub struct Bucket {
    rate_per_s: u32,
    capacity: u32,
    milli_tokens: u64,
    updated_at_ms: u64,
    waiters: WaitQueue<u32>,
    /// When the head's tokens are there (the armed alarm).
    alarm_at_ms: Option<u64>,
}

impl Queueing for Bucket {
    type Request = u32;
    fn queue(&mut self) -> &mut WaitQueue<u32> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<u32> {
        &self.waiters
    }
}

impl Bucket {
    fn new(settings: BucketSettings, now_ms: u64) -> Bucket {
        Bucket {
            rate_per_s: settings.rate_per_s,
            capacity: settings.capacity,
            milli_tokens: u64::from(settings.capacity) * 1000,
            updated_at_ms: now_ms,
            waiters: WaitQueue::default(),
            alarm_at_ms: None,
        }
    }

    /// Adds what refilled since the last update. A rate of r tokens per
    /// second is r thousandths of a token per millisecond.
    fn refill(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.updated_at_ms);
        let gained = elapsed_ms.saturating_mul(u64::from(self.rate_per_s));
        let full = u64::from(self.capacity) * 1000;
        self.milli_tokens = self.milli_tokens.saturating_add(gained).min(full);
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
    }

    /// Milliseconds until `tokens` more than are there now (after `ahead`
    /// thousandths are taken by earlier requests) have refilled.
    fn wait_ms(&self, ahead_milli: u64, tokens: u32) -> u64 {
        let need = ahead_milli + u64::from(tokens) * 1000;
        let missing = need.saturating_sub(self.milli_tokens);
        missing.div_ceil(u64::from(self.rate_per_s))
    }

    fn take(&mut self, tokens: u32) -> bool {
        let want = u64::from(tokens) * 1000;
        let enough = self.milli_tokens >= want;
        if enough {
            self.milli_tokens -= want;
        }
        enough
    }

    fn whole_tokens(&self) -> u32 {
        (self.milli_tokens / 1000) as u32
    }
}

impl State {
    /// Takes `tokens`, or queues for them (`timeout_ms` 0: refuse instead,
    /// saying how long until they would be there).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bucket_take(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        settings: BucketSettings,
        tokens: u32,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::TokenBucket, &name)?;
        self.require_session(session_id)?;
        match self.bucket_try(&name, settings, tokens, out)? {
            Reply::TryTaken {
                taken: false,
                retry_after_ms,
                ..
            } if timeout_ms == Some(0) => Err(Rejection::new(
                Code::DeadlineExceeded,
                format!("bucket {name:?} has too few tokens; {retry_after_ms} ms until enough"),
            )),
            Reply::TryTaken { taken: false, .. } => {
                let table: Table<Bucket> = |state| &mut state.buckets;
                let kind = Kind::TokenBucket;
                let queued =
                    self.enqueue(table, kind, &name, waiter, session_id, timeout_ms, tokens);
                self.bucket_rearm(&name);
                queued
            }
            taken => Ok(taken),
        }
    }

    /// Answers at once: takes `tokens` if nobody waits and they are there.
    pub(super) fn bucket_try(
        &mut self,
        name: &str,
        settings: BucketSettings,
        tokens: u32,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.bucket_check(name, settings, tokens)?;
        let verdict = self.bucket_assess(name, settings, tokens);
        let bucket = self.buckets.get_mut(name).expect("assessed");
        let taken = verdict.enough && bucket.take(tokens);
        let remaining = bucket.whole_tokens();
        out.changes.push(bucket_put(name, bucket));
        Ok(Reply::TryTaken {
            taken,
            retry_after_ms: verdict.retry_after_ms,
            remaining,
        })
    }

    /// Answers at once for several buckets: takes from all of them, or from
    /// none when any one has too few (a request that passes one limit but
    /// not the next must not use up the first).
    pub(super) fn bucket_try_many(
        &mut self,
        asks: Vec<BucketAsk>,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let max = self.limits.buckets_per_request_max;
        if asks.is_empty() || asks.len() > max {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "buckets_per_request_max: a request names 1 to {max} buckets, not {}",
                    asks.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for ask in &asks {
            if !seen.insert(ask.name.as_str()) {
                return Err(Rejection::new(
                    Code::InvalidArgument,
                    format!("bucket {:?} is named twice in one request", ask.name),
                ));
            }
            self.bucket_check(&ask.name, ask.settings, ask.tokens)?;
        }
        let mut verdicts: Vec<BucketVerdict> = (asks.iter())
            .map(|ask| self.bucket_assess(&ask.name, ask.settings, ask.tokens))
            .collect();
        let taken = verdicts.iter().all(|v| v.enough);
        for (ask, verdict) in asks.iter().zip(&mut verdicts) {
            let bucket = self.buckets.get_mut(&ask.name).expect("assessed");
            if taken {
                bucket.take(ask.tokens);
            }
            verdict.remaining = bucket.whole_tokens();
            out.changes.push(bucket_put(&ask.name, bucket));
        }
        Ok(Reply::TriedMany { taken, verdicts })
    }

    /// Refuses a request that names a bucket wrongly, before anything
    /// changes: a wrong name, other settings than the bucket's, no
    /// settings for a new bucket, or more tokens than the capacity.
    fn bucket_check(&self, name: &str, asked: BucketSettings, tokens: u32) -> Result<()> {
        self.validate_name(Kind::TokenBucket, name)?;
        let capacity = match self.buckets.get(name) {
            Some(existing) => {
                let rate_differs = asked.rate_per_s != 0 && asked.rate_per_s != existing.rate_per_s;
                let capacity_differs = asked.capacity != 0 && asked.capacity != existing.capacity;
                if rate_differs || capacity_differs {
                    return Err(Rejection::new(
                        Code::FailedPrecondition,
                        format!(
                            "bucket {name:?} exists with rate {}/s and capacity {}, not {}/s and {}",
                            existing.rate_per_s,
                            existing.capacity,
                            asked.rate_per_s,
                            asked.capacity
                        ),
                    ));
                }
                existing.capacity
            }
            None if asked.rate_per_s == 0 || asked.capacity == 0 => {
                return Err(Rejection::new(
                    Code::NotFound,
                    format!(
                        "bucket {name:?} does not exist; give its rate and capacity to create it"
                    ),
                ));
            }
            None => asked.capacity,
        };
        if tokens == 0 || tokens > capacity {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "{tokens} tokens asked of bucket {name:?}, whose capacity is {capacity}: \
                     a request takes 1 to capacity tokens"
                ),
            ));
        }
        Ok(())
    }

    /// Whether `tokens` could be taken now (nobody waits and they are
    /// there), else when; creates the bucket. Call after `bucket_check`.
    fn bucket_assess(&mut self, name: &str, asked: BucketSettings, tokens: u32) -> BucketVerdict {
        let now_ms = self.now_ms;
        let bucket =
            (self.buckets.entry(name.to_owned())).or_insert_with(|| Bucket::new(asked, now_ms));
        bucket.refill(now_ms);
        let ahead: u64 = (bucket.waiters.iter())
            .map(|w| u64::from(w.request) * 1000)
            .sum();
        let enough = bucket.waiters.is_empty() && bucket.milli_tokens >= u64::from(tokens) * 1000;
        BucketVerdict {
            enough,
            retry_after_ms: if enough {
                0
            } else {
                bucket.wait_ms(ahead, tokens)
            },
            remaining: bucket.whole_tokens(),
        }
    }

    /// The alarm rang or a waiter left: grant the head while its tokens are
    /// there, then re-arm for the next.
    pub(super) fn bucket_wake(&mut self, name: &str, out: &mut Outcome) {
        let now_ms = self.now_ms;
        let Some(bucket) = self.buckets.get_mut(name) else {
            return;
        };
        bucket.refill(now_ms);
        // Each grant hears the tokens left right after its own take.
        let mut granted = Vec::new();
        while let Some(head) = bucket.waiters.front() {
            let tokens = head.request;
            if !bucket.take(tokens) {
                break;
            }
            let waiter = bucket.waiters.pop_front().expect("front exists");
            granted.push((waiter.id, bucket.whole_tokens()));
        }
        out.changes.push(bucket_put(name, bucket));
        for (id, remaining) in granted {
            self.unregister_waiter(id);
            out.events.push((
                id,
                Ok(Reply::TryTaken {
                    taken: true,
                    retry_after_ms: 0,
                    remaining,
                }),
            ));
        }
        self.bucket_rearm(name);
    }

    /// Keeps exactly one alarm while the bucket has waiters: when the
    /// head's tokens are there.
    fn bucket_rearm(&mut self, name: &str) {
        let Some(bucket) = self.buckets.get_mut(name) else {
            return;
        };
        let next = bucket
            .waiters
            .front()
            .map(|head| bucket.updated_at_ms + bucket.wait_ms(0, head.request));
        let previous = std::mem::replace(&mut bucket.alarm_at_ms, next);
        let alarm = || Alarm::Primitive(Kind::TokenBucket, name.to_owned());
        if let Some(at) = previous {
            self.clear_alarm(at, alarm());
        }
        if let Some(at) = next {
            self.set_alarm(at, alarm());
        }
    }

    /// Forgets a bucket; its waiters hear NOT_FOUND.
    pub(super) fn bucket_delete(&mut self, name: &str, out: &mut Outcome) -> Result<Reply> {
        self.validate_name(Kind::TokenBucket, name)?;
        let Some(bucket) = self.buckets.remove(name) else {
            return Err(Rejection::new(
                Code::NotFound,
                format!("bucket {name:?} does not exist"),
            ));
        };
        if let Some(at) = bucket.alarm_at_ms {
            self.clear_alarm(at, Alarm::Primitive(Kind::TokenBucket, name.to_owned()));
        }
        let why = format!("bucket {name:?} was deleted while waiting");
        let waiters_ended = self.end_waiters(bucket.waiters.iter().map(|w| w.id), &why, out);
        out.changes.push(Change::Delete {
            key: bucket_key(name),
        });
        Ok(Reply::Deleted {
            waiters_ended,
            holds_dropped: 0,
        })
    }

    pub(super) fn bucket_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::TokenBucket, name)?;
        let mut info = BucketInfo {
            name: name.to_owned(),
            rate_per_s: 0,
            capacity: 0,
            tokens: 0,
            waiters: Vec::new(),
        };
        if let Some(bucket) = self.buckets.get(name) {
            let mut now = bucket.clone();
            now.refill(now_ms);
            info.rate_per_s = now.rate_per_s;
            info.capacity = now.capacity;
            info.tokens = now.whole_tokens();
            info.waiters = (bucket.waiters.iter())
                .map(|w| (self.waiter_info(now_ms, w), w.request))
                .collect();
        }
        Ok(Reply::BucketDescription(info))
    }

    pub(super) fn bucket_summaries(&self, now_ms: u64, prefix: &str) -> Vec<Summary> {
        super::named(&self.buckets, prefix)
            .map(|(name, b)| {
                let mut now = b.clone();
                now.refill(now_ms);
                Summary {
                    kind: Kind::TokenBucket,
                    name: name.clone(),
                    state: format!(
                        "{} of {} tokens at {}/s, {} waiting",
                        now.whole_tokens(),
                        b.capacity,
                        b.rate_per_s,
                        b.waiters.len()
                    ),
                }
            })
            .collect()
    }
}

// --- records -------------------------------------------------------------------

fn bucket_key(name: &str) -> Vec<u8> {
    [BUCKET_PREFIX, name.as_bytes()].concat()
}

fn bucket_put(name: &str, bucket: &Bucket) -> Change {
    let record = pb::BucketRecord {
        rate_per_s: bucket.rate_per_s,
        capacity: bucket.capacity,
        milli_tokens: bucket.milli_tokens,
        updated_at_ms: bucket.updated_at_ms,
    };
    Change::Put {
        key: bucket_key(name),
        value: record.encode_to_vec(),
    }
}

impl State {
    /// Takes a `bucket/` record; false for any other key.
    pub(super) fn restore_bucket_record(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<bool, super::RestoreError> {
        let Some(name) = key.strip_prefix(BUCKET_PREFIX) else {
            return Ok(false);
        };
        let name = String::from_utf8(name.to_vec()).map_err(|e| super::records::corrupt(key, e))?;
        let r: pb::BucketRecord = super::records::decode(key, value)?;
        let full = u64::from(r.capacity) * 1000;
        if r.rate_per_s == 0 || r.capacity == 0 || r.milli_tokens > full {
            return Err(super::records::corrupt(
                key,
                "rate, capacity or tokens out of range",
            ));
        }
        let bucket = Bucket {
            rate_per_s: r.rate_per_s,
            capacity: r.capacity,
            milli_tokens: r.milli_tokens,
            updated_at_ms: r.updated_at_ms,
            waiters: WaitQueue::default(),
            alarm_at_ms: None,
        };
        self.buckets.insert(name, bucket);
        Ok(true)
    }
}

impl State {
    /// Adds a restored waiter to its stored bucket.
    pub(super) fn restore_bucket_waiter(
        &mut self,
        name: &str,
        waiter: super::waitq::Waiter<u32>,
    ) -> std::result::Result<(), &'static str> {
        let bucket = self
            .buckets
            .get_mut(name)
            .ok_or("its bucket is not stored")?;
        if waiter.request == 0 || waiter.request > bucket.capacity {
            return Err("it takes no tokens, or more than its bucket's capacity");
        }
        super::records::waiters::push(bucket, waiter)
    }

    /// Arms the alarm of every restored bucket with waiters: it is a
    /// function of the bucket's record and its head, so it comes back at the
    /// same time.
    pub(super) fn finish_bucket_restore(&mut self) {
        let waited: Vec<String> = (self.buckets.iter())
            .filter(|(_, b)| !b.waiters.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for name in waited {
            self.bucket_rearm(&name);
        }
    }
}
