//! What a node must refuse to apply, and what it must refuse to log.

use std::sync::Arc;

use prost::Message;

use crate::core::{Command, WaiterId};
use crate::proto::log::{self as pb, command::Command as C};
use crate::replica::codec::{
    decode, encode, DecodeError, EncodeError, Entry, Step, StepProblem, FORMAT,
};

fn entry_of(command: Option<C>) -> pb::Entry {
    pb::Entry {
        format: FORMAT,
        now_ms: 5,
        steps: vec![
            pb::Step {
                identity: String::new(),
                command: Some(pb::Command {
                    command: Some(C::Cancel(pb::Cancel { waiter: 1 })),
                }),
            },
            pb::Step {
                identity: "alice".to_owned(),
                command: Some(pb::Command { command }),
            },
        ],
    }
}

fn refusal(message: &pb::Entry) -> (DecodeError, String) {
    let error = decode(&message.encode_to_vec()).expect_err("must be refused");
    let text = error.to_string();
    (error, text)
}

fn step_problem(command: Option<C>) -> (StepProblem, String) {
    match refusal(&entry_of(command)) {
        (DecodeError::Step { index: 1, problem }, text) => (problem, text),
        (other, _) => panic!("refused for another reason: {other:?}"),
    }
}

#[test]
fn the_written_shape_itself_decodes() {
    let message = entry_of(Some(C::EventSet(pb::EventSet { name: "e".into() })));
    let entry = decode(&message.encode_to_vec()).expect("a valid entry");
    assert_eq!(entry.steps.len(), 2);
    assert_eq!(entry.steps[1].identity.as_deref(), Some("alice"));
}

#[test]
fn another_format_is_refused() {
    for format in [0, 2, u32::MAX] {
        let message = pb::Entry {
            format,
            ..entry_of(None)
        };
        let (error, text) = refusal(&message);
        assert_eq!(error, DecodeError::Format(format));
        assert!(text.contains(&format!("format {format}")), "{text}");
        assert!(text.contains("only format 1"), "{text}");
    }
}

#[test]
fn a_step_without_a_command_is_refused() {
    let (problem, text) = step_problem(None);
    assert_eq!(problem, StepProblem::NoCommand);
    assert!(text.contains("step 1: no command"), "{text}");
    let mut message = entry_of(None);
    message.steps[1].command = None;
    assert_eq!(
        refusal(&message).0,
        DecodeError::Step {
            index: 1,
            problem: StepProblem::NoCommand
        }
    );
}

/// A command from a newer format: a tag of the oneof this build lacks.
#[test]
fn an_unknown_command_is_refused() {
    let mut message = entry_of(None);
    message.steps.truncate(1);
    let mut bytes = message.encode_to_vec();
    let mut step = pb::Step {
        identity: "alice".to_owned(),
        command: None,
    }
    .encode_to_vec();
    // Step.command (field 2) holding field 99 (varint 7) of Command.
    step.extend_from_slice(&[0x12, 3, 0x98, 0x06, 0x07]);
    // A second Entry.steps (field 3).
    bytes.extend_from_slice(&[0x1a, step.len() as u8]);
    bytes.extend_from_slice(&step);
    let error = decode(&bytes).expect_err("must be refused");
    assert_eq!(
        error,
        DecodeError::Step {
            index: 1,
            problem: StepProblem::NoCommand
        }
    );
}

#[test]
fn unknown_enum_values_are_refused() {
    let release = |kind| {
        C::Release(pb::Release {
            kind,
            session_id: 1,
            name: "l".into(),
            fencing_token: 2,
        })
    };
    let rw = |mode| {
        C::RwLockAcquire(pb::RwLockAcquire {
            mode,
            ..Default::default()
        })
    };
    let control = |action| {
        C::BreakerControl(pb::BreakerControl {
            name: "k".into(),
            action,
        })
    };
    let cases = [
        (release(99), "Release.kind", 99),
        (release(0), "Release.kind", 0),
        (release(-1), "Release.kind", -1),
        (rw(3), "RwLockAcquire.mode", 3),
        (rw(0), "RwLockAcquire.mode", 0),
        (control(4), "BreakerControl.action", 4),
        (control(0), "BreakerControl.action", 0),
    ];
    for (command, field, value) in cases {
        let (problem, text) = step_problem(Some(command));
        assert_eq!(problem, StepProblem::EnumValue { field, value });
        assert!(
            text.contains(&format!("{field} has value {value}, unknown")),
            "{text}"
        );
    }
}

#[test]
fn missing_bucket_settings_are_refused() {
    let take = C::BucketTake(pb::BucketTake {
        name: "t".into(),
        settings: None,
        ..Default::default()
    });
    let many = C::BucketTryMany(pb::BucketTryMany {
        asks: vec![pb::BucketAsk {
            name: "t".into(),
            settings: None,
            tokens: 1,
        }],
    });
    let try_one = C::BucketTry(pb::BucketTry::default());
    for (command, field) in [
        (take, "BucketTake.settings"),
        (many, "BucketAsk.settings"),
        (try_one, "BucketTry.settings"),
    ] {
        let (problem, text) = step_problem(Some(command));
        assert_eq!(problem, StepProblem::Missing(field));
        assert!(text.contains(&format!("{field} is missing")), "{text}");
    }
}

/// prost skips fields it does not know; the codec must not.
#[test]
fn fields_this_build_does_not_read_are_refused() {
    let message = entry_of(Some(C::EventSet(pb::EventSet { name: "e".into() })));
    let mut bytes = message.encode_to_vec();
    let read_bytes = bytes.len();
    // Field 15 of Entry, varint 1.
    bytes.extend_from_slice(&[0x78, 0x01]);
    let error = decode(&bytes).expect_err("must be refused");
    assert_eq!(
        error,
        DecodeError::Unread {
            entry_bytes: read_bytes + 2,
            read_bytes
        }
    );
    assert!(error.to_string().contains("reads only"), "{error}");
}

#[test]
fn truncated_bytes_are_refused() {
    let message = entry_of(Some(C::EventSet(pb::EventSet { name: "e".into() })));
    let bytes = message.encode_to_vec();
    let error = decode(&bytes[..bytes.len() - 1]).expect_err("must be refused");
    assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");
    assert!(error.to_string().contains("not valid protobuf"), "{error}");
}

#[test]
fn an_empty_identity_is_not_logged() {
    let entry = Entry {
        now_ms: 1,
        steps: vec![Step {
            identity: Some(Arc::from("")),
            command: Command::Cancel {
                waiter: WaiterId(1),
            },
        }],
    };
    assert_eq!(encode(&entry), Err(EncodeError::EmptyIdentity));
}

#[test]
fn a_pure_tick_round_trips() {
    let entry = Entry {
        now_ms: u64::MAX,
        steps: Vec::new(),
    };
    assert_eq!(decode(&encode(&entry).expect("a tick")), Ok(entry));
}
