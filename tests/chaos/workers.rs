//! The chaos test's worker processes (`chaos_worker`): start one per role
//! slot, replace one that was killed, and know which lock worker holds the
//! lock right now (it says so on its stdout). Every process still running
//! when the [`Fleet`] is dropped (a panic) is killed by PID and reaped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One worker process.
pub struct Proc {
    pub id: String,
    pub role: String,
    pub history: PathBuf,
    pub child: Child,
    /// The lock token a lock worker holds now (between its `holding` and
    /// `released` lines).
    pub holding: Arc<Mutex<Option<u64>>>,
    /// Killed with -9 by the nemesis.
    pub killed: bool,
    /// How it ended, once it did.
    pub status: Option<std::process::ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn holding(&self) -> Option<u64> {
        *self.holding.lock().expect("holding flag")
    }

    pub fn running(&self) -> bool {
        !self.killed && self.status.is_none()
    }
}

/// How every worker is started.
pub struct Setup {
    pub bin: PathBuf,
    pub addr: String,
    pub histories: PathBuf,
    pub deadline_ms: u64,
    pub ttl_ms: u64,
    pub fenced: String,
    pub seed: u64,
}

/// All worker processes of the run, the killed ones included.
pub struct Fleet {
    pub setup: Setup,
    pub procs: Vec<Proc>,
}

impl Fleet {
    pub fn new(setup: Setup) -> Fleet {
        Fleet {
            setup,
            procs: Vec::new(),
        }
    }

    /// Starts worker `id` in `role`; returns its index.
    pub fn spawn(&mut self, role: &str, id: &str) -> usize {
        let history = self.setup.histories.join(id);
        let seed = self.setup.seed ^ fnv(id);
        let mut child = Command::new(&self.setup.bin)
            .arg("--role")
            .arg(role)
            .arg("--id")
            .arg(id)
            .arg("--history")
            .arg(&history)
            .arg("--addr")
            .arg(&self.setup.addr)
            .arg("--deadline-ms")
            .arg(self.setup.deadline_ms.to_string())
            .arg("--ttl-ms")
            .arg(self.setup.ttl_ms.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--fenced")
            .arg(&self.setup.fenced)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn chaos_worker {id}: {e}"));
        let holding = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().expect("piped stdout");
        let flag = holding.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let mut flag = flag.lock().expect("holding flag");
                if let Some(token) = line.strip_prefix("holding ") {
                    *flag = token.trim().parse().ok();
                } else if line == "released" {
                    *flag = None;
                }
            }
        });
        self.procs.push(Proc {
            id: id.to_string(),
            role: role.to_string(),
            history,
            child,
            holding,
            killed: false,
            status: None,
        });
        self.procs.len() - 1
    }

    /// Kills worker `index` with -9, waits for it, and starts a
    /// replacement in the same role under a new id; returns its index.
    pub fn kill_and_replace(&mut self, index: usize) -> usize {
        let count = self.procs.len();
        let proc = &mut self.procs[index];
        let _ = proc.child.kill();
        proc.status = proc.child.wait().ok();
        proc.killed = true;
        let role = proc.role.clone();
        let id = format!("{}.r{count}", proc.id);
        self.spawn(&role, &id)
    }

    /// Waits until every running worker has exited, at most until `limit`;
    /// returns the ids of those that had to be killed then.
    pub fn wait_all(&mut self, limit: Instant) -> Vec<String> {
        let mut hung = Vec::new();
        for proc in self.procs.iter_mut().filter(|p| p.running()) {
            loop {
                if let Ok(Some(status)) = proc.child.try_wait() {
                    proc.status = Some(status);
                    break;
                }
                if Instant::now() >= limit {
                    let _ = proc.child.kill();
                    proc.status = proc.child.wait().ok();
                    hung.push(proc.id.clone());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        hung
    }

    /// The history files of every worker, killed ones included.
    pub fn history_files(&self) -> Vec<&Path> {
        self.procs.iter().map(|p| p.history.as_path()).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            if let Ok(None) = proc.child.try_wait() {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
        }
    }
}

/// FNV-1a: a stable per-worker seed from its id.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
