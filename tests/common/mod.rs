//! Helpers for integration tests: run the real `syncd` binary on port 0 in
//! a temporary data directory, kill it, restart it on the same data, and run
//! client processes with bounded waits.
#![allow(dead_code)]

pub mod certs;
pub mod cli;
pub mod rpc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a test waits for anything; only there to stop a hung test.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub fn syncd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncd"))
}

pub fn syncctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncctl"))
}

/// The path of a built example (cargo builds examples for `cargo test`),
/// after checking that none of the sources it was built from (as cargo's
/// dep-info file beside it lists them) changed since: `cargo test --test X`
/// does not rebuild examples, and a stale one would test old code.
pub fn example_bin(name: &str) -> PathBuf {
    let dir = syncd_bin()
        .parent()
        .expect("binary has a directory")
        .join("examples");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "example {name} is not built at {}; run `cargo test` (which builds examples) or `cargo build --examples`",
        bin.display()
    );
    let built = modified(&bin);
    let Ok(dep_info) = std::fs::read_to_string(bin.with_extension("d")) else {
        return bin;
    };
    // `target: source source ...`, spaces inside a path escaped as `\ `.
    let sources = dep_info.split_once(": ").map_or("", |(_, sources)| sources);
    let sources = sources.replace("\\ ", "\0");
    for source in sources.split_whitespace() {
        let source = PathBuf::from(source.replace('\0', " "));
        if source.exists() {
            assert!(
                modified(&source) <= built,
                "example {name} is older than {}: run `cargo build --examples` \
                 (`cargo test --test X` does not rebuild examples; `cargo test` does)",
                source.display()
            );
        }
    }
    bin
}

fn modified(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("mtime of {}: {e}", path.display()))
}

/// A running syncd with its own data directory.
pub struct Syncd {
    child: Option<Child>,
    pub addr: String,
    data: PathBuf,
    extra_args: Vec<String>,
    /// More environment for the syncd process (see [`Syncd::start_in`]).
    env: Vec<(String, String)>,
    /// Its stderr, when started with [`Syncd::start_logged`].
    log: Option<Log>,
    /// The open-file limit it starts with, if the test set one.
    nofile: Option<NoFile>,
    _dir: Option<tempfile::TempDir>,
}

impl Syncd {
    /// Starts syncd on 127.0.0.1:0 in a fresh temporary directory.
    pub fn start() -> Syncd {
        Syncd::start_with(&[])
    }

    /// The same with more `syncd serve` arguments; syncd logs at warn to
    /// the test's stderr.
    pub fn start_with(extra_args: &[&str]) -> Syncd {
        Syncd::start_inner(extra_args, None)
    }

    /// The same, with syncd logging at info into [`Syncd::log`] (and each
    /// line echoed to the test's stderr, so that a failing test shows it).
    pub fn start_logged(extra_args: &[&str]) -> Syncd {
        Syncd::start_inner(extra_args, Some(Log::default()))
    }

    /// Like [`Syncd::start_logged`], with syncd's open-file limit
    /// (RLIMIT_NOFILE) set to `nofile` before it runs (and at each
    /// restart).
    pub fn start_logged_with_nofile(extra_args: &[&str], nofile: NoFile) -> Syncd {
        Syncd::start_inner_with(extra_args, Some(Log::default()), Some(nofile))
    }

    fn start_inner(extra_args: &[&str], log: Option<Log>) -> Syncd {
        Syncd::start_inner_with(extra_args, log, None)
    }

    fn start_inner_with(extra_args: &[&str], log: Option<Log>, nofile: Option<NoFile>) -> Syncd {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = try_spawn(&data, "127.0.0.1:0", &extra_args, &[], log.as_ref(), nofile)
            .unwrap_or_else(|e| panic!("syncd did not start: {e}"));
        Syncd {
            child: Some(child),
            addr,
            data,
            extra_args,
            env: Vec::new(),
            log,
            nofile,
            _dir: Some(dir),
        }
    }

    /// Starts syncd on 127.0.0.1:0 over the data directory `data`, which
    /// the caller owns (and may create first), with more environment for
    /// the process (`LD_PRELOAD` and such), logging like
    /// [`Syncd::start_logged`].
    pub fn start_in(data: &Path, extra_args: &[&str], env: &[(String, String)]) -> Syncd {
        let log = Some(Log::default());
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = try_spawn(data, "127.0.0.1:0", &extra_args, env, log.as_ref(), None)
            .unwrap_or_else(|e| panic!("syncd did not start: {e}"));
        Syncd {
            child: Some(child),
            addr,
            data: data.to_path_buf(),
            extra_args,
            env: env.to_vec(),
            log,
            nofile: None,
            _dir: None,
        }
    }

    /// Replaces the extra environment of later restarts.
    pub fn set_env(&mut self, env: &[(String, String)]) {
        self.env = env.to_vec();
    }

    /// Starts syncd again on the same data directory, once, on a new port
    /// (so that no lingering port needs a retry); `Err` says why it did
    /// not come up (with what it logged, when logged), e.g. a data
    /// directory it refused.
    pub fn try_restart_on_new_port(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "stop syncd before restarting it");
        let spawned = try_spawn(
            &self.data,
            "127.0.0.1:0",
            &self.extra_args,
            &self.env,
            self.log.as_ref(),
            self.nofile,
        );
        match spawned {
            Ok((child, addr)) => {
                self.child = Some(child);
                self.addr = addr;
                Ok(())
            }
            Err(e) => {
                self.read_log_to_end();
                let said = self.log.as_ref().map(|log| log.lines().join("\n"));
                Err(format!("{e}; syncd logged:\n{}", said.unwrap_or_default()))
            }
        }
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("started");
        matches!(child.try_wait(), Ok(None))
    }

    /// What syncd logged so far (over all its restarts); complete once it
    /// was stopped. Only for a syncd started with [`Syncd::start_logged`].
    pub fn log(&self) -> &Log {
        self.log
            .as_ref()
            .expect("syncd was not started with start_logged")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush anything that was not flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.read_log_to_end();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        send_signal(child.id(), "TERM");
        let status =
            wait_bounded(&mut child, HANG_GUARD).expect("syncd did not exit after SIGTERM");
        self.read_log_to_end();
        status
    }

    fn read_log_to_end(&self) {
        if let Some(log) = &self.log {
            log.read_to_end();
        }
    }

    /// Starts syncd again on the same data directory and the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop syncd before restarting it");
        let listen = self.addr.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            // The port may linger briefly after a kill; retry binding.
            let log = self.log.as_ref();
            match try_spawn(
                &self.data,
                &listen,
                &self.extra_args,
                &self.env,
                log,
                self.nofile,
            ) {
                Ok((child, addr)) => {
                    self.child = Some(child);
                    self.addr = addr;
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart retry: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("syncd did not restart: {e}"),
            }
        }
    }
}

impl Drop for Syncd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An open-file limit (RLIMIT_NOFILE) for a child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

impl NoFile {
    /// Makes `command`'s child start with this limit.
    pub fn apply(self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        let NoFile { soft, hard } = self;
        // SAFETY: between fork and exec the closure only calls setrlimit,
        // which is async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

/// Spawns syncd and waits (bounded) for its `listening on` line. With a
/// `log`, syncd logs at info into it; without, at warn to the test's stderr.
fn try_spawn(
    data: &Path,
    listen: &str,
    extra_args: &[String],
    env: &[(String, String)],
    log: Option<&Log>,
    nofile: Option<NoFile>,
) -> Result<(Child, String), String> {
    let mut command = Command::new(syncd_bin());
    if let Some(nofile) = nofile {
        nofile.apply(&mut command);
    }
    let mut child = command
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(listen)
        .args(extra_args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if log.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(|e| format!("cannot spawn syncd: {e}"))?;
    if let Some(log) = log {
        log.capture(child.stderr.take().expect("piped stderr"));
    }
    await_listening(child)
}

/// Waits (bounded) for the `listening on ADDR` line a starting syncd
/// prints first on its piped stdout; returns the child and
/// `http://ADDR`, or kills it. The rest of stdout is drained, so that
/// syncd never blocks on a full pipe.
pub fn await_listening(mut child: Child) -> Result<(Child, String), String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let error = match rx.recv_timeout(HANG_GUARD) {
        Ok(line) => match line.strip_prefix("listening on ") {
            Some(addr) => return Ok((child, format!("http://{addr}"))),
            None => format!("unexpected first line: {line:?}"),
        },
        Err(_) => {
            let status = child.try_wait().ok().flatten();
            format!("no `listening on` line (exit status {status:?})")
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(error)
}

/// The stderr of a syncd started with [`Syncd::start_logged`], line by
/// line, as far as it has been read.
#[derive(Default)]
pub struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread reading the running syncd's stderr.
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Log {
    /// Reads `stderr` into the log in a thread, echoing each line.
    fn capture(&self, stderr: ChildStderr) {
        let lines = Arc::clone(&self.lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("syncd: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        *self.reader.lock().unwrap() = Some(reader);
    }

    /// Waits for the reader to reach the end of stderr (syncd has exited).
    fn read_to_end(&self) {
        if let Some(reader) = self.reader.lock().unwrap().take() {
            let _ = reader.join();
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|line| line.contains(needle)).count()
    }

    /// The first line that `matches`, if any yet.
    pub fn find(&self, matches: impl Fn(&str) -> bool) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().find(|line| matches(line)).cloned()
    }

    /// Waits (bounded) for a line that `matches`; returns it.
    pub async fn until(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        rpc::until(what, async || {
            found = self.find(&matches);
            found.is_some()
        })
        .await;
        found.expect("found")
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits for a child to exit, at most `limit`; kills it after that.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with the hang guard; returns its output.
pub fn run_bounded(command: &mut Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(output) => output.expect("wait for output"),
        Err(_) => {
            send_signal(pid, "KILL");
            panic!("command {command:?} hung for {HANG_GUARD:?}");
        }
    }
}

/// A `syncctl` command pointed at `addr`.
pub fn syncctl(addr: &str) -> Command {
    let mut command = Command::new(syncctl_bin());
    command.env("SYNCD_ADDR", addr).env("RUST_LOG", "warn");
    command
}

/// Polls `check` every 20 ms until it returns true or the hang guard ends.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the fencing token that `syncctl lock acquire NAME` (without a
/// command) prints as its first line of stdout.
pub fn read_token(child: &mut Child) -> u64 {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read token");
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("expected a token, got {line:?}"))
}
