//! The history a chaos worker writes, one file per process, and its parser.
//! The worker (`client-examples/chaos_worker.rs`) includes this file with
//! `#[path]`, so that the writer and the parser cannot drift apart.
//!
//! # Format (UTF-8, one record per line, fields separated by one space)
//!
//! ```text
//! H <worker-id> <role> <pid>                       header, the first line
//! I <seq> <unix-µs> <op> [key=value ...]           an operation is invoked
//! R <seq> <unix-µs> ok [key=value ...]             ... and ended, successfully
//! R <seq> <unix-µs> err kind=<kind> [key=value ...] msg=<text to end of line>
//! E <unix-µs>                                      the worker exited by itself
//! ```
//!
//! - The `I` line is written (and flushed: every line is one `write` to a
//!   file opened for appending) *before* the call, the `R` line after it.
//!   An `I` without its `R` is an operation whose end nobody saw: allowed
//!   only as the last operation of a process killed with -9. Workers run
//!   their operations one at a time, so a process has at most one open.
//! - `seq` counts a process's operations from 1. Times are the wall clock
//!   in Unix microseconds, comparable across the processes of one machine.
//! - Keys and values never contain spaces or `=`, except `msg`, which is
//!   always the last field and runs to the end of the line.
//! - Every `R` line carries `sess=<id>`: the client's session at the end of
//!   the call. A change of session between two operations means the client
//!   lost its session (see the checker).
//! - `kind` of an error: `timeout`, `broken`, `session_lost`, `unavailable`,
//!   or the gRPC code of any other status (`FailedPrecondition`, ...).
//!
//! Operations (`op`) and their keys, `I` keys / `R ok` keys:
//!
//! | op | I | R ok |
//! |---|---|---|
//! | `connect` | | `sess` |
//! | `acquire` | `prim` (lock, sem, rw, condlock, pool), `name`, `mode` (rw: read/write), `permits` (sem) | `token` |
//! | `release` | `prim`, `name`, `token` | |
//! | `write` (fenced resource) | `res`, `token` | `accepted` (1/0), `highest` |
//! | `put` | `queue`, `qid` (unique, chosen by the producer) | `item` |
//! | `get` | `queue` | `item`, `qid`, `deliveries` |
//! | `ack`, `nack` | `queue`, `item` | |
//! | `cond_wait` | `name`, `token` (given up) | `token` (taken again), `notified` |
//! | `allow` (breaker) | `name` | `token` (0: rejected), `state` |
//! | others (misc) | free | free |
//! | `describe` (drain) | `prim`, `name` | `holders`, `waiters`, `ready`, `in_flight` |

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Appends history lines to one file, each flushed as it is written.
pub struct Writer {
    file: File,
    seq: u64,
}

impl Writer {
    /// Creates the file (it must not exist) and writes the header.
    pub fn create(path: &Path, worker: &str, role: &str) -> std::io::Result<Writer> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        let mut writer = Writer { file, seq: 0 };
        writer.line(&format!("H {worker} {role} {}", std::process::id()))?;
        Ok(writer)
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        self.file.write_all(text.as_bytes())
    }

    /// Writes the `I` line of a new operation; returns its `seq`.
    pub fn invoke(&mut self, op: &str, keys: &[(&str, &dyn Display)]) -> u64 {
        self.seq += 1;
        let line = format!("I {} {} {op}{}", self.seq, now_us(), fields(keys));
        self.line(&line).expect("write history");
        self.seq
    }

    /// Writes the `R ... ok` line of operation `seq`.
    pub fn ok(&mut self, seq: u64, keys: &[(&str, &dyn Display)]) {
        let line = format!("R {seq} {} ok{}", now_us(), fields(keys));
        self.line(&line).expect("write history");
    }

    /// Writes the `R ... err` line of operation `seq`.
    pub fn err(&mut self, seq: u64, kind: &str, keys: &[(&str, &dyn Display)], msg: &str) {
        let msg = msg.replace(['\n', '\r'], " ");
        let line = format!(
            "R {seq} {} err kind={kind}{} msg={msg}",
            now_us(),
            fields(keys)
        );
        self.line(&line).expect("write history");
    }

    /// Writes the `E` line: the worker ends by itself.
    pub fn exit(&mut self) {
        let line = format!("E {}", now_us());
        self.line(&line).expect("write history");
    }
}

fn fields(keys: &[(&str, &dyn Display)]) -> String {
    let mut text = String::new();
    for (key, value) in keys {
        let value = value.to_string();
        debug_assert!(!key.contains([' ', '=']) && !value.contains([' ', '=', '\n']));
        text.push_str(&format!(" {key}={value}"));
    }
    text
}

/// One process's history.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub file: PathBuf,
    pub worker: String,
    pub role: String,
    pub pid: u32,
    /// In `seq` order.
    pub ops: Vec<Op>,
    /// When the worker wrote `E`.
    pub exited_us: Option<u64>,
    /// A last line without its newline (cut by a kill), dropped.
    pub torn_tail: bool,
}

/// One operation: its `I` line and, if it was written, its `R` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Op {
    pub seq: u64,
    pub op: String,
    pub start_us: u64,
    pub keys: BTreeMap<String, String>,
    pub end: Option<End>,
}

/// How an operation ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    pub end_us: u64,
    pub ok: bool,
    /// The `R` line's keys (`kind` and `msg` for an error).
    pub keys: BTreeMap<String, String>,
}

impl Op {
    /// A key of the `I` line.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// A key of the `I` line, as a number.
    pub fn arg_u64(&self, key: &str) -> Option<u64> {
        self.arg(key)?.parse().ok()
    }

    /// True when the operation ended successfully.
    pub fn is_ok(&self) -> bool {
        self.end.as_ref().is_some_and(|end| end.ok)
    }

    /// A key of the `R` line.
    pub fn result(&self, key: &str) -> Option<&str> {
        self.end.as_ref()?.keys.get(key).map(String::as_str)
    }

    /// A key of the `R` line, as a number.
    pub fn result_u64(&self, key: &str) -> Option<u64> {
        self.result(key)?.parse().ok()
    }

    /// The error's kind, if the operation ended with an error.
    pub fn error_kind(&self) -> Option<&str> {
        match &self.end {
            Some(end) if !end.ok => end.keys.get("kind").map(String::as_str),
            _ => None,
        }
    }

    pub fn end_us(&self) -> Option<u64> {
        self.end.as_ref().map(|end| end.end_us)
    }

    /// `worker#seq op key=value...`, for messages.
    pub fn describe(&self, worker: &str) -> String {
        let keys: Vec<String> = self.keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let end = match &self.end {
            None => "no end".to_string(),
            Some(end) => {
                let keys: Vec<String> = end.keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "{} at {} {}",
                    if end.ok { "ok" } else { "err" },
                    end.end_us,
                    keys.join(" ")
                )
            }
        };
        format!(
            "{worker}#{} {} {} started {} -> {end}",
            self.seq,
            self.op,
            keys.join(" "),
            self.start_us
        )
    }
}

/// Reads and parses a history file.
pub fn read(path: &Path) -> Result<History, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut history = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    history.file = path.to_path_buf();
    Ok(history)
}

/// Parses the text of a history file.
pub fn parse(text: &str) -> Result<History, String> {
    let mut history = History::default();
    let mut body = text;
    if !text.is_empty() && !text.ends_with('\n') {
        // A kill can only cut the last line.
        body = text.rfind('\n').map_or("", |at| &text[..=at]);
        history.torn_tail = true;
    }
    let mut by_seq: BTreeMap<u64, usize> = BTreeMap::new();
    for (number, line) in body.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        let mut parts = line.splitn(2, ' ');
        let tag = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("");
        match tag {
            "H" => {
                let words: Vec<&str> = rest.split(' ').collect();
                let [worker, role, pid] = words[..] else {
                    return Err(fail("bad header"));
                };
                history.worker = worker.to_string();
                history.role = role.to_string();
                history.pid = pid.parse().map_err(|_| fail("bad pid"))?;
            }
            "I" => {
                let (head, keys) = split_keys(rest, 3).map_err(|e| fail(&e))?;
                let seq: u64 = head[0].parse().map_err(|_| fail("bad seq"))?;
                let start_us = head[1].parse().map_err(|_| fail("bad time"))?;
                if by_seq.insert(seq, history.ops.len()).is_some() {
                    return Err(fail("seq used twice"));
                }
                history.ops.push(Op {
                    seq,
                    op: head[2].to_string(),
                    start_us,
                    keys,
                    end: None,
                });
            }
            "R" => {
                let (head, keys) = split_keys(rest, 3).map_err(|e| fail(&e))?;
                let seq: u64 = head[0].parse().map_err(|_| fail("bad seq"))?;
                let end_us = head[1].parse().map_err(|_| fail("bad time"))?;
                let ok = match head[2].as_str() {
                    "ok" => true,
                    "err" => false,
                    _ => return Err(fail("neither ok nor err")),
                };
                let index = *by_seq
                    .get(&seq)
                    .ok_or_else(|| fail("end of an unknown op"))?;
                let op = &mut history.ops[index];
                if op.end.is_some() {
                    return Err(fail("op ended twice"));
                }
                op.end = Some(End { end_us, ok, keys });
            }
            "E" => {
                history.exited_us = Some(rest.parse().map_err(|_| fail("bad time"))?);
            }
            _ => return Err(fail("unknown record")),
        }
    }
    if history.worker.is_empty() {
        return Err("no header".to_string());
    }
    Ok(history)
}

/// Splits `n` leading words from `key=value` fields; `msg=` takes the rest
/// of the line.
fn split_keys(text: &str, n: usize) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let mut head = Vec::new();
    let mut keys = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        if head.len() == n {
            if let Some(msg) = rest.strip_prefix("msg=") {
                keys.insert("msg".to_string(), msg.to_string());
                break;
            }
        }
        let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        rest = tail;
        if head.len() < n {
            head.push(word.to_string());
            continue;
        }
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("field {word:?} is not key=value"))?;
        keys.insert(key.to_string(), value.to_string());
    }
    if head.len() < n {
        return Err("too few fields".to_string());
    }
    Ok((head, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        let mut writer = Writer::create(&path, "lock-0", "lock").unwrap();
        let seq = writer.invoke("acquire", &[("prim", &"lock"), ("name", &"x")]);
        writer.ok(seq, &[("token", &7), ("sess", &3)]);
        let seq = writer.invoke("release", &[("token", &7)]);
        writer.err(
            seq,
            "session_lost",
            &[("sess", &4)],
            "session 3 expired\nreally",
        );
        writer.invoke("acquire", &[]);
        drop(writer);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("R 3 17"); // cut by a kill
        let history = parse(&text).unwrap();
        assert!(history.torn_tail);
        assert_eq!(history.worker, "lock-0");
        assert_eq!(history.pid, std::process::id());
        assert_eq!(history.ops.len(), 3);
        assert_eq!(history.ops[0].result_u64("token"), Some(7));
        assert_eq!(history.ops[1].error_kind(), Some("session_lost"));
        assert_eq!(
            history.ops[1].result("msg"),
            Some("session 3 expired really")
        );
        assert!(history.ops[2].end.is_none());
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(parse("H a b 1\nR 1 5 ok\n").is_err());
        assert!(parse("H a b 1\nI 1 5 x\nI 1 6 y\n").is_err());
        assert!(parse("I 1 5 x\n").is_err());
        assert!(parse("H a b 1\nI 1 5 x nokey\n").is_err());
    }
}
