//! What the cross-process examples share: the server address, one binary
//! that plays coordinator or worker, worker processes that are killed if
//! the coordinator gives up, names unique to one run, scratch directories,
//! and a tally of counters in a file that is changed only under a syncd
//! lock (the examples' independent witness of who was inside when).
//!
//! Included by each example with `#[path = "support/mod.rs"] mod support;`;
//! not every example uses every item.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use syncd::client::{Client, Lock};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long a worker waits for anything (a grant, a signal, another
/// process); far above what a run needs, only there so that a broken run
/// fails instead of hanging.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// How long the coordinator lets its workers run before it kills them (the
/// integration tests give a whole example 120 s).
pub const WORKERS_LIMIT: Duration = Duration::from_secs(100);

/// The server's address: `SYNCD_ADDR`, default `http://127.0.0.1:7420`.
pub fn addr() -> String {
    std::env::var("SYNCD_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7420".to_owned())
}

/// The example's `main`: without arguments the process is the coordinator;
/// `worker ARGS...` (how the coordinator starts copies of itself) runs
/// `worker(ARGS)` on a tokio runtime. An error goes to stderr, prefixed
/// with the example's name, and the exit code is 1.
pub fn main<W, F>(
    example: &str,
    coordinator: impl FnOnce() -> Result<(), Error>,
    worker: W,
) -> ExitCode
where
    W: FnOnce(Vec<String>) -> F,
    F: Future<Output = Result<(), Error>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (role, result) = match args.split_first() {
        Some((first, rest)) if first == "worker" => ("worker", run_worker(worker, rest.to_vec())),
        Some((first, _)) => (
            "coordinator",
            Err(format!("unexpected argument {first:?}; run it without arguments").into()),
        ),
        None => ("coordinator", coordinator()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{example} {role} (pid {}): {error}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

fn run_worker<W, F>(worker: W, args: Vec<String>) -> Result<(), Error>
where
    W: FnOnce(Vec<String>) -> F,
    F: Future<Output = Result<(), Error>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(worker(args))
}

/// A name no earlier run used, so that state left on the server by another
/// run (a set event, a broken barrier) cannot change this one.
pub fn unique_name(example: &str, what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("example-{example}-{what}-{}-{nanos}", std::process::id())
}

/// A fresh directory for the run's shared files, removed when dropped.
pub fn scratch_dir(example: &str) -> Result<tempfile::TempDir, Error> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("syncd-example-{example}-"))
        .tempdir()?)
}

/// Worker processes of this same executable. Those still running when it
/// is dropped (the coordinator failed) are killed and reaped.
#[derive(Default)]
pub struct Workers {
    children: Vec<(String, Child)>,
}

impl Workers {
    pub fn new() -> Workers {
        Workers::default()
    }

    /// Starts `<this exe> worker ARGS...` with the coordinator's stdout and
    /// stderr; `label` names it in errors.
    pub fn spawn<I, S>(&mut self, label: impl Into<String>, args: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = worker_command(args)?.spawn()?;
        self.children.push((label.into(), child));
        Ok(())
    }

    /// Like [`Workers::spawn`], but the worker's stdout is a pipe to the
    /// coordinator, returned here.
    pub fn spawn_piped<I, S>(
        &mut self,
        label: impl Into<String>,
        args: I,
    ) -> Result<ChildStdout, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = worker_command(args)?.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or("worker has no stdout pipe")?;
        self.children.push((label.into(), child));
        Ok(stdout)
    }

    /// Waits for every worker to exit successfully. As soon as one fails,
    /// or after [`WORKERS_LIMIT`], the others are killed and an error says
    /// which.
    pub fn wait(mut self) -> Result<(), Error> {
        let deadline = Instant::now() + WORKERS_LIMIT;
        while !self.children.is_empty() {
            let mut index = 0;
            while index < self.children.len() {
                let Some(status) = self.children[index].1.try_wait()? else {
                    index += 1;
                    continue;
                };
                let (label, _) = self.children.remove(index);
                if !status.success() {
                    return Err(format!(
                        "{label} failed ({status}); the other workers are stopped"
                    )
                    .into());
                }
            }
            if Instant::now() >= deadline {
                let running: Vec<&str> = self.children.iter().map(|(l, _)| l.as_str()).collect();
                return Err(format!(
                    "workers still running after {WORKERS_LIMIT:?}, killed: {}",
                    running.join(", ")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn worker_command<I, S>(args: I) -> Result<Command, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("worker").args(args);
    Ok(command)
}

/// Prints a line and flushes it at once: lines of several processes that
/// share one stdout appear in the order in which they were written.
pub fn say(line: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Calls `check` every 5 ms until it returns true; an error naming `what`
/// after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("gave up after {limit:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Named counters (missing ones read as 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(BTreeMap<String, i64>);

impl Counts {
    pub fn get(&self, key: &str) -> i64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Adds `delta` to `key`; returns the new value.
    pub fn add(&mut self, key: &str, delta: i64) -> i64 {
        let value = self.0.entry(key.to_owned()).or_insert(0);
        *value += delta;
        *value
    }

    /// Raises `key` to `value` if it is below.
    pub fn raise(&mut self, key: &str, value: i64) {
        let current = self.0.entry(key.to_owned()).or_insert(0);
        *current = (*current).max(value);
    }
}

/// Counters in a file that every worker process changes only while holding
/// one syncd lock. The file is replaced atomically (write, then rename), so
/// a reader without the lock still sees one consistent snapshot. Every
/// change stores the lock's fencing token and checks that it is larger than
/// the one before, like any fenced resource would.
pub struct Tally {
    path: PathBuf,
    lock: Lock,
}

impl Tally {
    pub fn new(client: &Client, path: impl Into<PathBuf>, lock_name: &str) -> Tally {
        Tally {
            path: path.into(),
            lock: client.lock(lock_name),
        }
    }

    /// Under the lock: reads the counters, lets `change` change them (or
    /// refuse with an error, which leaves the file as it was), writes them.
    pub async fn update<T>(
        &self,
        change: impl FnOnce(&mut Counts) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let guard = self.lock.acquire_timeout(WAIT_LIMIT).await?;
        let token = guard.fencing_token();
        let mut counts = Tally::read(&self.path)?;
        let last = counts.get("token");
        if i64::try_from(token)? <= last {
            return Err(format!(
                "tally: fencing token {token} is not above the last writer's {last}"
            )
            .into());
        }
        let result = change(&mut counts);
        if result.is_ok() {
            counts.0.insert("token".to_owned(), i64::try_from(token)?);
            Tally::write(&self.path, &counts)?;
        }
        guard.release().await?;
        result
    }

    /// The counters now, without the lock (a consistent snapshot; it may be
    /// stale at once). A missing file reads as all zeros.
    pub fn read(path: &Path) -> Result<Counts, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Counts::default()),
            Err(e) => return Err(e.into()),
        };
        let mut counts = Counts::default();
        for line in text.lines() {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("tally {}: bad line {line:?}", path.display()))?;
            counts.0.insert(key.to_owned(), value.parse()?);
        }
        Ok(counts)
    }

    fn write(path: &Path, counts: &Counts) -> Result<(), Error> {
        let text: String = counts
            .0
            .iter()
            .map(|(key, value)| format!("{key} {value}\n"))
            .collect();
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, path)?;
        Ok(())
    }
}

/// Runs `future` on a fresh tokio runtime: for a coordinator that talks to
/// syncd itself (its `main` is not async).
pub fn block_on<T>(future: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// Runs `f` with a client of its own: for a coordinator that cleans up
/// after its workers (deletes what the server would otherwise keep).
pub fn with_client<F, Fut>(f: F) -> Result<(), Error>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), syncd::client::Error>>,
{
    block_on(async {
        let client = Client::connect(addr()).await?;
        f(client.clone()).await?;
        client.close().await?;
        Ok(())
    })
}

/// Runs one worker process to completion, before the next step of the
/// coordinator: for scenarios where one process must be done before
/// another starts. An error names `label` if it failed.
pub fn run_worker_to_end<I, S>(label: &str, args: I) -> Result<(), Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut workers = Workers::new();
    workers.spawn(label, args)?;
    workers.wait()
}
