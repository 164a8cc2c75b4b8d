//! The nemesis: a seeded schedule of faults, run on the test's thread one
//! fault at a time (so a server kill never lands inside a pause, which would
//! give the paused session a fresh TTL and spoil the scenario):
//!
//! - `kill -9` syncd and restart it on the same data directory and port;
//! - `kill -9` a worker and start a replacement in the same role;
//! - SIGSTOP a worker for longer than its TTL, then SIGCONT it. Most pauses
//!   hit a lock worker right after it said `holding <token>` (it then sleeps
//!   100-300 ms before its second write), so that it resumes as a stale
//!   holder and writes to the fenced resource with an old token.
//!
//! Everything is written to `nemesis.log` as it happens; pauses and kills
//! are kept for the checker.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use super::checker::Pause;
use super::history::now_us;
use super::rng::Rng;
use super::workers::Fleet;
use crate::common::Syncd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillServer,
    KillWorker,
    /// Pause a lock worker while it holds the lock.
    PauseHolder,
    /// Pause any other worker.
    PauseOther,
}

/// The shortest time between two faults: enough for every client to
/// reconnect after a restart (its backoff is 100, 200, 400 ms...).
const GAP_MIN: Duration = Duration::from_millis(1200);
const GAP_MAX: Duration = Duration::from_millis(3000);

pub struct Nemesis {
    rng: Rng,
    log: File,
    pub pause_for: Duration,
    pub server_kills: u32,
    pub worker_kills: u32,
    pub pauses: Vec<Pause>,
    pub killed: BTreeSet<String>,
    /// The longest time from a server kill to its `listening on` line.
    pub downtime_max: Duration,
}

impl Nemesis {
    pub fn new(seed: u64, log: File, pause_for: Duration) -> Nemesis {
        Nemesis {
            rng: Rng::new(seed),
            log,
            pause_for,
            server_kills: 0,
            worker_kills: 0,
            pauses: Vec::new(),
            killed: BTreeSet::new(),
            downtime_max: Duration::ZERO,
        }
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.log, "{} {text}", now_us());
    }

    /// The faults, in a seeded order.
    pub fn schedule(&mut self, counts: &[(Fault, u32)]) -> Vec<Fault> {
        let mut faults: Vec<Fault> = counts
            .iter()
            .flat_map(|(fault, n)| std::iter::repeat_n(*fault, *n as usize))
            .collect();
        for i in (1..faults.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            faults.swap(i, j);
        }
        faults
    }

    /// Runs `faults` one after the other, spread over the time left until
    /// `until`; faults that no longer fit are skipped (and logged).
    pub fn run(&mut self, faults: &[Fault], syncd: &mut Syncd, fleet: &mut Fleet, until: Instant) {
        for (done, fault) in faults.iter().enumerate() {
            let left = faults.len() - done;
            let pauses_left = faults[done..]
                .iter()
                .filter(|f| matches!(f, Fault::PauseHolder | Fault::PauseOther))
                .count() as u32;
            let budget = until
                .saturating_duration_since(Instant::now())
                .saturating_sub(self.pause_for * pauses_left);
            let even = budget / (left as u32 + 1);
            let gap = even.clamp(GAP_MIN, GAP_MAX);
            let jitter = self.rng.range(70, 131);
            std::thread::sleep(gap * jitter as u32 / 100);
            if Instant::now() + Duration::from_millis(500) >= until {
                self.note(&format!("out of time: {} faults skipped", left));
                return;
            }
            match fault {
                Fault::KillServer => self.kill_server(syncd),
                Fault::KillWorker => self.kill_worker(fleet),
                Fault::PauseHolder => self.pause(fleet, true),
                Fault::PauseOther => self.pause(fleet, false),
            }
        }
    }

    fn kill_server(&mut self, syncd: &mut Syncd) {
        let pid = syncd.pid();
        let killed = Instant::now();
        syncd.kill9();
        self.note(&format!("syncd {pid} killed with -9"));
        syncd.restart();
        let down = killed.elapsed();
        self.downtime_max = self.downtime_max.max(down);
        self.server_kills += 1;
        let pid = syncd.pid();
        self.note(&format!("syncd restarted as {pid} after {down:?}"));
    }

    fn kill_worker(&mut self, fleet: &mut Fleet) {
        let running: Vec<usize> = (0..fleet.procs.len())
            .filter(|&i| fleet.procs[i].running())
            .collect();
        let index = running[self.rng.range(0, running.len() as u64) as usize];
        let (id, pid) = (fleet.procs[index].id.clone(), fleet.procs[index].pid());
        let new = fleet.kill_and_replace(index);
        self.worker_kills += 1;
        self.killed.insert(id.clone());
        let text = format!(
            "worker {id} (pid {pid}) killed with -9; replaced by {} (pid {})",
            fleet.procs[new].id,
            fleet.procs[new].pid()
        );
        self.note(&text);
    }

    fn pause(&mut self, fleet: &mut Fleet, holder: bool) {
        let candidates: Vec<usize> = (0..fleet.procs.len())
            .filter(|&i| {
                let p = &fleet.procs[i];
                p.running() && (p.role == "lock") == holder
            })
            .collect();
        let index = candidates[self.rng.range(0, candidates.len() as u64) as usize];
        let proc = &fleet.procs[index];
        let (id, pid) = (proc.id.clone(), proc.pid());
        let mut holding = None;
        if holder {
            // Wait (bounded) for the moment it says it holds the lock.
            let give_up = Instant::now() + Duration::from_secs(5);
            while holding.is_none() && Instant::now() < give_up {
                holding = proc.holding();
                if holding.is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        signal(pid, libc::SIGSTOP);
        let start_us = now_us();
        self.note(&format!(
            "worker {id} (pid {pid}) stopped, holding lock token {holding:?}"
        ));
        std::thread::sleep(self.pause_for);
        let end_us = now_us();
        signal(pid, libc::SIGCONT);
        self.note(&format!("worker {id} (pid {pid}) continued"));
        self.pauses.push(Pause {
            worker: id,
            pid,
            start_us,
            end_us,
            holding,
        });
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) with a PID of a child this test started and has not
    // reaped yet (so the PID cannot have been reused).
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal}) failed");
}
