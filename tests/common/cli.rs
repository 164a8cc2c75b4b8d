//! Running `syncctl` as a process in tests: start it, wait for it bounded,
//! and keep how it ended.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{run_bounded, syncctl, wait_bounded, HANG_GUARD};

/// How a syncctl process ended.
#[derive(Debug)]
pub struct Ended {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Starts `syncctl ARGS...` with an empty stdin, stdout and stderr piped.
pub fn spawn(addr: &str, args: &[&str]) -> Child {
    syncctl(addr)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncctl")
}

/// Runs `syncctl ARGS...` to its end, with an empty stdin.
pub fn run(addr: &str, args: &[&str]) -> Ended {
    let output = run_bounded(syncctl(addr).args(args).stdin(Stdio::null()));
    Ended {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Waits for `child`, at most `limit`; None if it was still running then
/// (it is killed).
pub fn finish_within(mut child: Child, limit: Duration) -> Option<Ended> {
    let status = wait_bounded(&mut child, limit)?;
    Some(Ended {
        code: status.code(),
        stdout: read_all(child.stdout.take()),
        stderr: read_all(child.stderr.take()),
    })
}

/// Waits for `child`, which must end within [`HANG_GUARD`].
pub fn finish(child: Child) -> Ended {
    finish_within(child, HANG_GUARD).expect("syncctl exits")
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_string(&mut text).expect("read pipe");
    }
    text
}
