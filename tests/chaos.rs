//! The chaos suite: one syncd, thirteen worker processes (`chaos_worker`)
//! on every primitive for about 50 s, and a nemesis that kills syncd with -9
//! and restarts it on the same data (11 times), kills workers with -9 and
//! replaces them (3), and stops workers with SIGSTOP for longer than their
//! session TTL (4, three of them lock holders). Then a checker reads every
//! worker's history (see `chaos/history.rs`) and the fenced resource's log
//! and verifies what syncd promises (see `chaos/checker.rs`).
//!
//! `CHAOS_SEED=N` repeats a run's schedule (the seed is printed). On a
//! failure the directory with `histories/`, `data/` (syncd's, copied after
//! the last kill), `nemesis.log` and `fenced.log` is kept and named in the
//! panic message.

mod common;

mod chaos {
    pub mod checker;
    pub mod fenced;
    // Shared with the worker, which uses other parts of them.
    #[allow(dead_code)]
    pub mod history;
    pub mod nemesis;
    #[allow(dead_code)]
    pub mod rng;
    pub mod workers;
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos::checker::{self, Input};
use chaos::fenced::FencedServer;
use chaos::history;
use chaos::nemesis::{Fault, Nemesis};
use chaos::workers::{Fleet, Setup};
use common::{example_bin, Syncd};

const TTL: Duration = Duration::from_secs(3);
/// Longer than the TTL: a paused worker's session expires on the server.
const PAUSE: Duration = Duration::from_millis(4500);
const WORKLOAD: Duration = Duration::from_secs(52);
const SEMAPHORE_CAPACITY: u32 = 2;
const ROLES: &[(&str, u32)] = &[
    ("lock", 3),
    ("sem", 3),
    ("rw", 2),
    ("producer", 1),
    ("consumer", 2),
    ("misc", 2),
];
const FAULTS: &[(Fault, u32)] = &[
    (Fault::KillServer, 11),
    (Fault::KillWorker, 3),
    (Fault::PauseHolder, 3),
    (Fault::PauseOther, 1),
];

/// The run's directory: kept (and named) if the test panics.
struct RunDir(Option<tempfile::TempDir>);

impl RunDir {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("run dir").path()
    }

    fn keep(&mut self) -> PathBuf {
        self.0.take().expect("run dir").keep()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("chaos: run directory kept at {}", dir.keep().display());
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(text) => text.trim().parse().expect("CHAOS_SEED is a number"),
        Err(_) => history::now_us(),
    }
}

#[test]
fn chaos_nothing_promised_is_broken() {
    let began = Instant::now();
    let seed = seed();
    println!("chaos: seed {seed} (CHAOS_SEED={seed} repeats the schedule)");
    eprintln!("chaos: seed {seed}");
    let bin = example_bin("chaos_worker");
    let mut dir = RunDir(Some(
        tempfile::Builder::new()
            .prefix("syncd-chaos-")
            .tempdir()
            .expect("temp dir"),
    ));
    let histories = dir.path().join("histories");
    std::fs::create_dir_all(&histories).expect("histories dir");
    let fenced = FencedServer::start(&dir.path().join("fenced.log"));
    let mut syncd = Syncd::start_with(&[]);
    let nemesis_log = std::fs::File::create(dir.path().join("nemesis.log")).expect("nemesis.log");
    let deadline_ms = (history::now_us() / 1000) + WORKLOAD.as_millis() as u64;
    let until = Instant::now() + WORKLOAD;

    let mut fleet = Fleet::new(Setup {
        bin,
        addr: syncd.addr.clone(),
        histories,
        deadline_ms,
        ttl_ms: TTL.as_millis() as u64,
        fenced: fenced.addr.to_string(),
        seed,
    });
    for (role, n) in ROLES {
        for i in 0..*n {
            fleet.spawn(role, &format!("{role}-{i}"));
        }
    }

    let mut nemesis = Nemesis::new(seed, nemesis_log, PAUSE);
    let faults = nemesis.schedule(FAULTS);
    nemesis.run(
        &faults,
        &mut syncd,
        &mut fleet,
        until - Duration::from_secs(2),
    );

    // Every worker ends by itself soon after its deadline (its waits are
    // bounded by 8 s, its unary calls retry for 5 s).
    let hung = fleet.wait_all(until + Duration::from_secs(40));
    let failed: Vec<String> = fleet
        .procs
        .iter()
        .filter(|p| !p.killed && p.status.is_some_and(|s| !s.success()))
        .map(|p| format!("{} ({:?})", p.id, p.status))
        .collect();

    // The drain: once every worker is gone, nothing is held or awaited,
    // and every item left is taken.
    let drain_deadline = history::now_us() / 1000;
    fleet.setup.deadline_ms = drain_deadline;
    let drain = fleet.spawn("drain", "drain");
    let drain_hung = fleet.wait_all(Instant::now() + Duration::from_secs(90));
    let drain_status = fleet.procs[drain].status;

    let mut histories = Vec::new();
    let mut unreadable = Vec::new();
    for file in fleet.history_files() {
        match history::read(file) {
            Ok(history) => histories.push(history),
            Err(error) => unreadable.push(error),
        }
    }
    let killed: BTreeSet<String> = nemesis.killed.clone();
    let report = checker::check(&Input {
        histories: &histories,
        pauses: &nemesis.pauses,
        killed: &killed,
        fenced: &fenced.log(),
        semaphore_capacity: SEMAPHORE_CAPACITY,
        require_stale: true,
    });
    let mut violations = report.violations.clone();
    violations.extend(unreadable);
    if nemesis.server_kills < 10 {
        violations.push(format!(
            "only {} server kills (at least 10 wanted): the nemesis ran out of time",
            nemesis.server_kills
        ));
    }
    if report.paused_holders == 0 {
        violations.push("no pause hit a lock holder".to_string());
    }
    if !hung.is_empty() || !drain_hung.is_empty() {
        violations.push(format!(
            "workers that did not exit by themselves in time (killed): {hung:?} {drain_hung:?}"
        ));
    }
    if !failed.is_empty() {
        violations.push(format!("workers that failed: {failed:?}"));
    }
    if !drain_status.is_some_and(|s| s.success()) {
        violations.push(format!("the drain worker ended with {drain_status:?}"));
    }

    let summary = format!(
        "chaos: seed {seed}, server kills {}, client kills {}, pauses {} (of lock holders {}), \
         processes {}, ops checked {}, holds checked {}, grants checked {}, fenced writes {}, \
         stale writes rejected {}, queue items checked {}, deliveries {}, losses after a pause {}, \
         unavailable (calls not retried by design) {}, longest server downtime {:?}, took {:?}",
        nemesis.server_kills,
        nemesis.worker_kills,
        nemesis.pauses.len(),
        report.paused_holders,
        histories.len(),
        report.ops,
        report.holds,
        report.grants,
        report.writes,
        report.stale_rejected,
        report.queue_items,
        report.deliveries,
        report.losses_after_pause,
        report.unavailable_not_retried,
        nemesis.downtime_max,
        began.elapsed(),
    );
    println!("{summary}");
    eprintln!("{summary}");
    for pause in &nemesis.pauses {
        let line = format!(
            "chaos: paused {} (pid {}) for {} ms, announced holding token {:?}",
            pause.worker,
            pause.pid,
            (pause.end_us - pause.start_us) / 1000,
            pause.holding
        );
        println!("{line}");
    }

    syncd.kill9();
    if violations.is_empty() {
        return;
    }
    let _ = copy_dir(syncd.data_dir(), &dir.path().join("data"));
    let kept = dir.keep();
    // Up to 5 violations of each check, and how many each found.
    let mut by_check: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for violation in &violations {
        let check = violation
            .strip_prefix('[')
            .and_then(|v| v.split_once(']'))
            .map_or("run", |(tag, _)| tag);
        by_check.entry(check).or_default().push(violation);
    }
    let mut text = String::new();
    for (check, list) in &by_check {
        text.push_str(&format!("{check}: {} violation(s)\n", list.len()));
        for violation in list.iter().take(5) {
            text.push_str(&format!("- {violation}\n"));
        }
    }
    panic!(
        "chaos: {} violation(s) (seed {seed}); run kept at {}:\n{text}",
        violations.len(),
        kept.display(),
    );
}
