//! Lost-hold notices (`core::lost`): a hold taken from a living session —
//! revoked, a queue item's visibility timeout, a deleted breaker — is
//! reported in keep-alive replies until the client confirms it, survives a
//! restart, and never outlives the session.

use super::{code, granted, Sim};
use crate::core::breaker::BreakerSettings;
use crate::core::Query;
use crate::core::{Code, Command, Kind, LossCause, LostHold, Reply, Result, SessionId, WaiterId};

const TTL: u64 = 10_000;

impl Sim {
    fn renew(&mut self, session_id: SessionId, notices_seen_through: u64) -> Vec<LostHold> {
        match self.apply(Command::KeepAlive {
            session_id,
            notices_seen_through,
        }) {
            Ok(Reply::SessionRenewed { ttl_ms, lost }) => {
                assert_eq!(ttl_ms, TTL);
                lost
            }
            other => panic!("keep-alive: {other:?}"),
        }
    }

    fn revoke(&mut self, fencing_token: u64, detail: &str) -> (Result<Reply>, Vec<WaiterId>) {
        let (reply, events) = self.run(Command::Revoke {
            fencing_token,
            detail: detail.to_owned(),
        });
        (
            reply,
            events.into_iter().map(|(waiter, _)| waiter).collect(),
        )
    }
}

/// What a client checks of a notice: which hold, and why.
fn summary(notices: &[LostHold]) -> Vec<(u64, u64, Kind, &str, LossCause)> {
    notices
        .iter()
        .map(|n| {
            (
                n.seq,
                n.fencing_token,
                n.kind,
                n.name.as_str(),
                n.cause.clone(),
            )
        })
        .collect()
}

fn revoked(detail: &str) -> LossCause {
    LossCause::Revoked {
        detail: detail.to_owned(),
    }
}

#[test]
fn a_revoked_lock_goes_to_the_next_waiter_and_its_holder_is_told() {
    let mut sim = Sim::new();
    let (holder, next) = (sim.session(TTL), sim.session(TTL));
    let token = sim.take(holder, "db");
    let waiter = sim.queue(next, "db", None);
    assert!(sim.renew(holder, 0).is_empty(), "nothing lost yet");

    sim.at(1_500);
    let (reply, woken) = sim.revoke(token, "alice: stuck deploy");
    assert_eq!(
        reply,
        Ok(Reply::Revoked {
            session_id: holder,
            kind: Kind::Lock,
            name: "db".into(),
        })
    );
    assert_eq!(woken, vec![waiter], "the next waiter is granted at once");
    assert_eq!(sim.holder("db"), Some((next, token + 1)));

    let lost = sim.renew(holder, 0);
    let expected = (1, token, Kind::Lock, "db", revoked("alice: stuck deploy"));
    assert_eq!(summary(&lost), vec![expected.clone()]);
    assert_eq!(lost[0].lost_at_ms, 1_500);
    // Told again until confirmed, and not to the other session.
    assert_eq!(summary(&sim.renew(holder, 0)), vec![expected]);
    assert!(sim.renew(next, 0).is_empty());
    assert!(sim.renew(holder, 1).is_empty(), "confirmed: forgotten");

    // The old holder's release is refused; its session lives on.
    let (reply, _) = sim.release(holder, "db", token);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    assert_eq!(sim.take(holder, "other"), token + 2);
    sim.state.check_indexes().unwrap();
}

#[test]
fn revoking_what_is_not_held_is_refused_and_changes_nothing() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let token = sim.take(s, "db");
    assert_eq!(code(&sim.revoke(token + 1, "").0), Some(Code::NotFound));
    let too_long = "x".repeat(257);
    assert_eq!(
        code(&sim.revoke(token, &too_long).0),
        Some(Code::InvalidArgument)
    );
    assert_eq!(sim.holder("db"), Some((s, token)));
    assert!(sim.renew(s, 0).is_empty());
    // A second revoke of the same hold finds nothing.
    assert!(sim.revoke(token, "").0.is_ok());
    assert_eq!(code(&sim.revoke(token, "").0), Some(Code::NotFound));
}

#[test]
fn an_expired_queue_delivery_and_a_deleted_breaker_leave_notices() {
    let mut sim = Sim::new();
    let consumer = sim.session(TTL);
    let waiter = sim.waiter();
    sim.apply(Command::QueuePut {
        session_id: consumer,
        name: "jobs".into(),
        waiter,
        timeout_ms: None,
        value: b"job".to_vec(),
        priority: 0,
        capacity: None,
        max_deliveries: 0,
        put_id: 0,
    })
    .unwrap();
    let waiter = sim.waiter();
    let item_token = match sim.apply(Command::QueueGet {
        session_id: consumer,
        name: "jobs".into(),
        waiter,
        timeout_ms: Some(0),
        visibility_timeout_ms: 1_000,
        no_ack: false,
    }) {
        Ok(Reply::Delivered(delivery)) => delivery.fencing_token.expect("in flight"),
        other => panic!("get: {other:?}"),
    };
    let settings = BreakerSettings {
        failure_threshold: 3,
        ..BreakerSettings::default()
    };
    let permit = match sim.apply(Command::BreakerAllow {
        session_id: consumer,
        name: "api".into(),
        settings: Some(settings),
        acquire_id: 0,
    }) {
        Ok(Reply::BreakerVerdict(verdict)) => verdict.permit.expect("closed").0,
        other => panic!("allow: {other:?}"),
    };

    assert!(sim.tick_at(1_000).is_empty());
    sim.apply(Command::BreakerDelete { name: "api".into() })
        .unwrap();
    let lost = sim.renew(consumer, 0);
    assert_eq!(
        summary(&lost),
        vec![
            (
                1,
                item_token,
                Kind::Queue,
                "jobs",
                LossCause::VisibilityExpired
            ),
            (2, permit, Kind::Breaker, "api", LossCause::Deleted),
        ]
    );
    // Confirming the first keeps the second.
    assert_eq!(summary(&sim.renew(consumer, 1))[0].0, 2);
    sim.state.check_indexes().unwrap();
}

#[test]
fn notices_and_their_numbers_survive_a_restart() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let first = sim.take(s, "a");
    let second = sim.take(s, "b");
    sim.revoke(first, "one").0.unwrap();
    sim.revoke(second, "two").0.unwrap();
    assert_eq!(sim.renew(s, 1).len(), 1, "the first is confirmed");

    sim.state = sim.restored();
    let lost = sim.renew(s, 0);
    let expected = (2, second, Kind::Lock, "b", revoked("two"));
    assert_eq!(summary(&lost), vec![expected]);
    // Numbering goes on where it was: a client never sees a seq again.
    let third = sim.take(s, "c");
    sim.revoke(third, "three").0.unwrap();
    let seqs: Vec<u64> = sim.renew(s, 0).iter().map(|n| n.seq).collect();
    assert_eq!(seqs, vec![2, 3]);
    sim.state.check_indexes().unwrap();
}

#[test]
fn notices_go_with_their_session() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let token = sim.take(s, "db");
    sim.revoke(token, "").0.unwrap();
    let (reply, _) = sim.close(s);
    assert!(reply.is_ok());
    let renewed = sim.run(Command::KeepAlive {
        session_id: s,
        notices_seen_through: 0,
    });
    assert_eq!(code(&renewed.0), Some(Code::NotFound));
    let restored = sim.restored();
    assert_eq!(restored.session_count(), 0, "nothing stored for it");
    // A grant to a new session is unaffected.
    let other = sim.session(TTL);
    assert_eq!(sim.acquire(other, "db", None).1, granted(token + 1));
}

#[test]
fn a_step_that_adds_a_notice_names_its_session_and_pending_notices_renews_nothing() {
    let mut sim = Sim::new();
    let (holder, other) = (sim.session(TTL), sim.session(TTL));
    let token = sim.take(holder, "db");
    let mut out = crate::core::Outcome::default();
    let revoke = Command::Revoke {
        fencing_token: token,
        detail: "ops".into(),
    };
    sim.state.apply(0, revoke, &mut out).expect("revoke");
    assert_eq!(out.sessions_noticed, vec![holder]);

    // Reading the notices (what a keep-alive stream pushes) neither
    // confirms them nor renews the lease.
    sim.at(TTL - 1);
    let pending = |sim: &mut Sim, session_id| match sim.query(Query::PendingNotices { session_id })
    {
        Ok(Reply::Notices(notices)) => notices,
        other => panic!("pending notices: {other:?}"),
    };
    assert_eq!(pending(&mut sim, holder).len(), 1);
    assert_eq!(
        pending(&mut sim, holder).len(),
        1,
        "not confirmed by reading"
    );
    assert!(pending(&mut sim, other).is_empty());
    sim.tick_at(TTL);
    let gone = sim.query(Query::PendingNotices { session_id: holder });
    assert_eq!(
        code(&gone),
        Some(Code::NotFound),
        "the lease was not renewed"
    );
}
