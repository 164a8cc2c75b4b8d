//! Sessions bound to the identity that created them: the check the engine
//! makes before every command of a caller with a token.

use super::*;

fn session_of(sim: &mut Sim, owner: &str) -> SessionId {
    let reply = sim.apply(Command::CreateSession {
        ttl_ms: 10_000,
        client_name: format!("{owner}-client"),
        host: "127.0.0.1:1".into(),
        owner: owner.into(),
    });
    match reply {
        Ok(Reply::SessionCreated { session_id, .. }) => session_id,
        other => panic!("create session: {other:?}"),
    }
}

fn acquire(session_id: SessionId) -> Command {
    Command::LockAcquire {
        session_id,
        name: "build-db".into(),
        waiter: WaiterId(1),
        timeout_ms: Some(0),
        acquire_id: 0,
    }
}

#[test]
fn only_the_creating_identity_may_act_for_a_session() {
    let mut sim = Sim::new();
    let ci = session_of(&mut sim, "ci");
    let anonymous = session_of(&mut sim, "");
    let state = &sim.state;

    assert_eq!(state.check_session_owner(&acquire(ci), "ci"), Ok(()));
    let refused = state.check_session_owner(&acquire(ci), "ops").unwrap_err();
    assert_eq!(refused.code, Code::PermissionDenied);
    assert!(
        refused.message.contains("belongs to token \"ci\""),
        "{}",
        refused.message
    );
    let refused = state
        .check_session_owner(&acquire(anonymous), "ci")
        .unwrap_err();
    assert!(refused.message.contains("created without a token"));

    // Every command that names the session is covered, not just acquires.
    let others = [
        Command::KeepAlive {
            session_id: ci,
            notices_seen_through: 0,
        },
        Command::CloseSession {
            session_id: ci,
            reason: String::new(),
        },
        Command::Release {
            kind: Kind::Lock,
            session_id: ci,
            name: "build-db".into(),
            fencing_token: 1,
        },
        Command::QueueAck {
            session_id: ci,
            name: "build-q".into(),
            item_id: 1,
        },
    ];
    for command in &others {
        assert_eq!(
            state
                .check_session_owner(command, "ops")
                .map_err(|r| r.code),
            Err(Code::PermissionDenied),
            "{command:?}"
        );
    }
    // A query that names the session is covered too.
    let notices = Query::PendingNotices { session_id: ci };
    assert_eq!(
        state.check_query_owner(&notices, "ops").map_err(|r| r.code),
        Err(Code::PermissionDenied)
    );
    assert_eq!(state.check_query_owner(&notices, "ci"), Ok(()));
    // Commands and queries without a session, and unknown sessions, are
    // left to the command itself.
    let describe = Query::LockDescribe {
        name: "build-db".into(),
    };
    assert_eq!(state.check_query_owner(&describe, "ops"), Ok(()));
    let event = Command::EventSet {
        name: "build-ready".into(),
    };
    assert_eq!(state.check_session_owner(&event, "ops"), Ok(()));
    assert_eq!(state.check_session_owner(&acquire(999), "ops"), Ok(()));
}

#[test]
fn the_owner_is_shown_and_survives_a_restart() {
    let mut sim = Sim::new();
    let ci = session_of(&mut sim, "ci");
    session_of(&mut sim, "");
    let token = match sim.apply(acquire(ci)) {
        Ok(Reply::Granted { fencing_token }) => fencing_token,
        other => panic!("acquire: {other:?}"),
    };
    let holder = sim.describe("build-db").holder.expect("held");
    assert_eq!(
        (holder.identity.as_str(), holder.fencing_token),
        ("ci", token)
    );

    let restored = State::restore(Limits::default(), sim.store.clone()).expect("restore");
    assert_eq!(restored.check_session_owner(&acquire(ci), "ci"), Ok(()));
    assert_eq!(
        restored
            .check_session_owner(&acquire(ci), "ops")
            .map_err(|r| r.code),
        Err(Code::PermissionDenied)
    );
    let list = Query::ListSessions {
        after_session_id: 0,
        limit: 0,
    };
    match restored.query(restored.now_ms(), &list) {
        Ok(Reply::SessionList(infos)) => {
            // A limit of 0 is a full page.
            let identities: Vec<&str> = infos.iter().map(|s| s.identity.as_str()).collect();
            assert_eq!(identities, ["ci", ""]);
        }
        other => panic!("list: {other:?}"),
    }
}

#[test]
fn an_owner_name_is_bounded_like_other_labels() {
    let mut sim = Sim::new();
    let reply = sim.apply(Command::CreateSession {
        ttl_ms: 10_000,
        client_name: String::new(),
        host: String::new(),
        owner: "x".repeat(Limits::default().name_bytes_max + 1),
    });
    assert_eq!(reply.map_err(|r| r.code), Err(Code::InvalidArgument));
}
