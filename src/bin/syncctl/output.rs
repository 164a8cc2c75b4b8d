//! What syncctl prints on stdout: the two formats, and the pieces every
//! `describe` shares (holders and waiters, as text and as JSON).

use std::{
    io::{self, Write},
    time::Duration,
};

use clap::ValueEnum;
use serde_json::{json, Map, Value};
use syncd::{
    duration,
    proto::v1::{Holder, RwMode, Waiter},
};

use crate::exit::Failure;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    /// Prints `text` (one line, a newline is added) or `json` (one JSON
    /// value on one line), whichever is asked for.
    pub fn print(self, text: impl std::fmt::Display, json: Value) -> Result<(), Failure> {
        match self {
            Output::Text => write_stdout(&format!("{text}\n")),
            Output::Json => write_stdout(&format!("{json}\n")),
        }
    }

    /// Prints `json` on one line with `--output json`; nothing as text.
    pub fn print_json_only(self, json: Value) -> Result<(), Failure> {
        match self {
            Output::Text => Ok(()),
            Output::Json => write_stdout(&format!("{json}\n")),
        }
    }

    /// Prints a description: `text` as it is (lines that end in a newline),
    /// or `json` on one line.
    pub fn describe(self, text: String, json: Value) -> Result<i32, Failure> {
        match self {
            Output::Text => write_stdout(&text)?,
            Output::Json => write_stdout(&format!("{json}\n"))?,
        }
        Ok(0)
    }
}

/// Writes text to stdout; a closed pipe is an error, not a panic.
pub fn write_stdout(text: &str) -> Result<(), Failure> {
    write_stdout_bytes(text.as_bytes())
}

/// Writes bytes to stdout as they are and flushes them; a closed pipe is
/// an error, not a panic.
pub fn write_stdout_bytes(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::other(format!("cannot write to stdout: {e}")))
}

pub fn format_ms(ms: u64) -> String {
    duration::format(Duration::from_millis(ms))
}

/// `1 permit`, `3 permits`.
pub fn plural(count: u64, one: &str, many: &str) -> String {
    match count {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

/// A numbered section under a description's first line:
/// `holders: 2` and `  1. ...` per entry. Nothing when there are none.
pub fn section(title: &str, entries: impl IntoIterator<Item = String>) -> String {
    let entries: Vec<String> = entries.into_iter().collect();
    if entries.is_empty() {
        return String::new();
    }
    let mut text = format!("{title}: {}\n", entries.len());
    for (place, entry) in entries.iter().enumerate() {
        text.push_str(&format!("  {}. {entry}\n", place + 1));
    }
    text
}

/// `session 4 (w@h:1), fencing token 17, held for 1s 500ms, lease left 8s`.
pub fn format_holder(holder: &Holder) -> String {
    format!(
        "session {} ({}), fencing token {}, held for {}, lease left {}",
        holder.session_id,
        holder.client_name,
        holder.fencing_token,
        format_ms(holder.held_ms),
        format_ms(holder.lease_left_ms)
    )
}

/// `session 5 (v@h:2), waiting for 900ms`.
pub fn format_waiter(waiter: &Waiter) -> String {
    format!(
        "session {} ({}), waiting for {}",
        waiter.session_id,
        waiter.client_name,
        format_ms(waiter.waiting_ms)
    )
}

/// A holder's fields that every kind has, as a JSON object.
pub fn holder_json(holder: &Holder) -> Map<String, Value> {
    let value = json!({
        "session_id": holder.session_id,
        "client_name": holder.client_name,
        "fencing_token": holder.fencing_token,
        "held_ms": holder.held_ms,
        "lease_left_ms": holder.lease_left_ms,
    });
    into_map(value)
}

/// A waiter's fields that every kind has, as a JSON object.
pub fn waiter_json(waiter: &Waiter) -> Map<String, Value> {
    let value = json!({
        "session_id": waiter.session_id,
        "client_name": waiter.client_name,
        "waiting_ms": waiter.waiting_ms,
    });
    into_map(value)
}

/// Waiters with only the common fields, as a JSON array.
pub fn waiters_json(waiters: &[Waiter]) -> Value {
    Value::Array(
        waiters
            .iter()
            .map(|w| Value::Object(waiter_json(w)))
            .collect(),
    )
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

/// `read` or `write` for a read-write lock's mode on the wire.
pub fn mode_name(mode: i32) -> &'static str {
    match RwMode::try_from(mode) {
        Ok(RwMode::Read) => "read",
        Ok(RwMode::Write) => "write",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_number_their_entries() {
        assert_eq!(section("waiters", Vec::new()), "");
        let text = section("waiters", ["a".to_string(), "b".to_string()]);
        assert_eq!(text, "waiters: 2\n  1. a\n  2. b\n");
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "permit", "permits"), "1 permit");
        assert_eq!(plural(0, "permit", "permits"), "0 permits");
    }

    #[test]
    fn modes_read_as_words() {
        assert_eq!(mode_name(RwMode::Read as i32), "read");
        assert_eq!(mode_name(RwMode::Write as i32), "write");
        assert_eq!(mode_name(0), "unspecified");
        assert_eq!(mode_name(99), "unspecified");
    }
}
