//! The checker: pure functions over parsed histories (see `history.rs`), the
//! nemesis's record of pauses and kills, and the fenced server's log. Each
//! check adds counts and violations to a [`Report`]; a violation is a
//! sentence that names the worker, the operation and the times involved.
//!
//! Times: `grant_end` is when an acquire returned (the hold surely began
//! before), `release_start` when its release was sent (the hold surely
//! lasted until then). So `[grant_end, release_start]` lies inside the time
//! the server really had the hold, and two such intervals that overlap are
//! two real holders at once. Only holds whose release was acknowledged are
//! known to have lasted that long: holds that were lost or whose process
//! was killed count only as "later" holds.

use std::collections::{BTreeMap, BTreeSet};

use super::fenced::FencedWrite;
use super::history::{History, Op};

/// A SIGSTOP..SIGCONT of a worker process.
#[derive(Clone, Debug)]
pub struct Pause {
    pub worker: String,
    pub pid: u32,
    /// After SIGSTOP was delivered.
    pub start_us: u64,
    /// Before SIGCONT was sent.
    pub end_us: u64,
    /// The lock token the worker announced it held when it was stopped.
    pub holding: Option<u64>,
}

/// What the checker judges.
pub struct Input<'a> {
    pub histories: &'a [History],
    pub pauses: &'a [Pause],
    /// Workers killed with -9.
    pub killed: &'a BTreeSet<String>,
    pub fenced: &'a [FencedWrite],
    pub semaphore_capacity: u32,
    /// Require at least one stale write rejected (the run's scenario).
    pub require_stale: bool,
}

/// Counts and violations.
#[derive(Debug, Default)]
pub struct Report {
    pub ops: u64,
    pub holds: u64,
    pub grants: u64,
    pub stale_rejected: u64,
    pub writes: u64,
    pub queue_items: u64,
    pub deliveries: u64,
    pub losses_after_pause: u64,
    pub paused_holders: u64,
    pub unavailable_not_retried: u64,
    pub violations: Vec<String>,
}

impl Report {
    fn violation(&mut self, text: String) {
        self.violations.push(text);
    }
}

/// Runs every check.
pub fn check(input: &Input) -> Report {
    let ops = input
        .histories
        .iter()
        .flat_map(|h| &h.ops)
        .filter(|op| op.end.is_some())
        .count();
    let mut report = Report {
        ops: ops as u64,
        ..Report::default()
    };
    let holds = holds(input.histories);
    tagged(&mut report, "exclusion", |r| check_exclusion(&holds, r));
    tagged(&mut report, "semaphore", |r| {
        check_semaphore(&holds, input.semaphore_capacity, r)
    });
    tagged(&mut report, "fenced", |r| check_fenced(input, &holds, r));
    tagged(&mut report, "queue", |r| check_queue(input.histories, r));
    tagged(&mut report, "tokens", |r| check_tokens(input.histories, r));
    tagged(&mut report, "leases", |r| check_losses(input, r));
    tagged(&mut report, "ended", |r| check_ended(input, r));
    tagged(&mut report, "end-state", |r| {
        check_final_state(input.histories, r)
    });
    report.paused_holders = input
        .pauses
        .iter()
        .filter(|p| {
            holds.iter().any(|h| {
                h.pid == p.pid
                    && h.prim == "lock"
                    && h.grant_end < p.start_us
                    && h.release_start.is_none_or(|r| r > p.end_us)
            })
        })
        .count() as u64;
    report
}

/// Runs one check; its violations read `[tag] ...`.
fn tagged(report: &mut Report, tag: &str, check: impl FnOnce(&mut Report)) {
    let from = report.violations.len();
    check(report);
    for violation in &mut report.violations[from..] {
        *violation = format!("[{tag}] {violation}");
    }
}

/// How a hold ended, as its worker saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its release was acknowledged.
    Released,
    /// Its release was refused: the hold was gone.
    Lost,
    /// Not known: no release, or one without an answer (killed, unavailable).
    Unknown,
}

/// One grant of a lock, semaphore, rwlock, pool or condition lock and what
/// became of it.
#[derive(Clone, Debug)]
pub struct Hold {
    pub worker: String,
    pub pid: u32,
    pub prim: String,
    pub name: String,
    pub mode: String,
    pub permits: u32,
    pub token: u64,
    pub grant_start: u64,
    pub grant_end: u64,
    pub release_start: Option<u64>,
    pub outcome: Outcome,
}

/// The holds of every history: an `acquire` that ended ok, with the first
/// later `release` of the same primitive and token (a condition wait's
/// token counts for the condition lock).
pub fn holds(histories: &[History]) -> Vec<Hold> {
    let mut holds = Vec::new();
    for history in histories {
        for (index, op) in history.ops.iter().enumerate() {
            if op.op != "acquire" || !op.is_ok() {
                continue;
            }
            let (Some(prim), Some(token)) = (op.arg("prim"), op.result_u64("token")) else {
                continue;
            };
            let name = op.arg("name").unwrap_or("");
            let mut hold = Hold {
                worker: history.worker.clone(),
                pid: history.pid,
                prim: prim.to_string(),
                name: name.to_string(),
                mode: op.arg("mode").unwrap_or("write").to_string(),
                permits: op.arg_u64("permits").unwrap_or(1) as u32,
                token,
                grant_start: op.start_us,
                grant_end: op.end_us().unwrap_or(op.start_us),
                release_start: None,
                outcome: Outcome::Unknown,
            };
            let mut current = token;
            for later in &history.ops[index + 1..] {
                if later.op == "cond_wait" && later.arg_u64("token") == Some(current) {
                    // The lock was given up and taken again: judge only
                    // the first part (the condition lock is not checked).
                    if let Some(again) = later.result_u64("token") {
                        current = again;
                    }
                    continue;
                }
                if later.op == "release"
                    && later.arg("prim") == Some(prim)
                    && later.arg("name") == Some(name)
                    && later.arg_u64("token") == Some(current)
                {
                    hold.release_start = Some(later.start_us);
                    hold.outcome = match (&later.end, later.error_kind()) {
                        (Some(end), _) if end.ok => Outcome::Released,
                        (Some(_), Some("unavailable" | "timeout")) | (None, _) => Outcome::Unknown,
                        (Some(_), _) => Outcome::Lost,
                    };
                    if current != token {
                        hold.outcome = Outcome::Unknown;
                    }
                    break;
                }
            }
            holds.push(hold);
        }
    }
    holds
}

fn conflict(a: &Hold, b: &Hold) -> bool {
    a.prim == "lock" || a.mode == "write" || b.mode == "write"
}

/// Lock and rwlock exclusion: for a hold A whose release was
/// acknowledged, every conflicting hold B of the same primitive with a
/// higher token was granted after A's release was sent.
fn check_exclusion(holds: &[Hold], report: &mut Report) {
    let mut by_name: BTreeMap<(&str, &str), Vec<&Hold>> = BTreeMap::new();
    for hold in holds {
        if hold.prim == "lock" || hold.prim == "rw" {
            by_name
                .entry((&hold.prim, &hold.name))
                .or_default()
                .push(hold);
        }
    }
    for ((prim, name), mut list) in by_name {
        list.sort_by_key(|h| h.token);
        for (i, a) in list.iter().enumerate() {
            if a.outcome != Outcome::Unknown {
                report.holds += 1;
            }
            if a.outcome != Outcome::Released {
                continue;
            }
            let released = a.release_start.expect("released holds have a release");
            for b in &list[i + 1..] {
                if conflict(a, b) && b.grant_end <= released {
                    report.violation(format!(
                        "{prim} {name:?}: {} hold of {} (token {}) was granted at {} while the \
                         {} hold of {} (token {}, granted at {}) was held until its release at {}",
                        b.mode,
                        b.worker,
                        b.token,
                        b.grant_end,
                        a.mode,
                        a.worker,
                        a.token,
                        a.grant_end,
                        released
                    ));
                }
            }
        }
    }
}

/// Semaphore: the permits of holds with acknowledged releases, over their
/// `[grant_end, release_start]`, never add up to more than the capacity.
fn check_semaphore(holds: &[Hold], capacity: u32, report: &mut Report) {
    let mut events: Vec<(u64, i64, &Hold)> = Vec::new();
    for hold in holds.iter().filter(|h| h.prim == "sem") {
        if hold.outcome != Outcome::Unknown {
            report.holds += 1;
        }
        if hold.permits > capacity {
            report.violation(format!(
                "semaphore {:?}: {} got {} permits of {capacity} (token {})",
                hold.name, hold.worker, hold.permits, hold.token
            ));
        }
        if hold.outcome == Outcome::Released {
            let end = hold.release_start.expect("released");
            events.push((hold.grant_end, i64::from(hold.permits), hold));
            events.push((end, -i64::from(hold.permits), hold));
        }
    }
    // At one instant, releases first: touching intervals do not overlap.
    events.sort_by_key(|(at, delta, _)| (*at, *delta));
    let mut held = 0i64;
    let mut inside: Vec<&Hold> = Vec::new();
    for (at, delta, hold) in events {
        held += delta;
        if delta < 0 {
            inside.retain(|h| h.token != hold.token);
            continue;
        }
        inside.push(hold);
        if held > i64::from(capacity) {
            let who: Vec<String> = inside
                .iter()
                .map(|h| format!("{} token {} x{}", h.worker, h.token, h.permits))
                .collect();
            report.violation(format!(
                "semaphore {:?}: {held} permits of {capacity} held at {at}: {}",
                hold.name,
                who.join(", ")
            ));
        }
    }
}

/// Whether worker `pid` was stopped at some time after `from` began and
/// before `until`.
fn paused_between(pauses: &[Pause], pid: u32, from: u64, until: u64) -> bool {
    pauses
        .iter()
        .any(|p| p.pid == pid && p.start_us < until && p.end_us > from)
}

/// The fenced resource: a hold that was released as held had every write
/// accepted; a rejected write comes from a hold that was lost because its
/// process was paused; the server accepted tokens only in increasing order.
fn check_fenced(input: &Input, holds: &[Hold], report: &mut Report) {
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    for write in input.fenced.iter().filter(|w| w.accepted) {
        let top = highest.entry(&write.resource).or_insert(0);
        if write.token < *top {
            report.violation(format!(
                "fenced {:?} accepted token {} from {} after token {}",
                write.resource, write.token, write.worker, top
            ));
        }
        *top = write.token;
    }
    let logged: BTreeSet<(&str, u64, bool)> = input
        .fenced
        .iter()
        .map(|w| (w.worker.as_str(), w.token, w.accepted))
        .collect();
    for history in input.histories {
        for op in history
            .ops
            .iter()
            .filter(|op| op.op == "write" && op.is_ok())
        {
            report.writes += 1;
            let token = op.arg_u64("token").unwrap_or(0);
            let accepted = op.result("accepted") == Some("1");
            if !logged.contains(&(history.worker.as_str(), token, accepted)) {
                report.violation(format!(
                    "fenced server has no record of {}",
                    op.describe(&history.worker)
                ));
            }
            let hold = holds
                .iter()
                .find(|h| h.pid == history.pid && h.prim == "lock" && h.token == token);
            let Some(hold) = hold else {
                report.violation(format!(
                    "a write under no hold: {}",
                    op.describe(&history.worker)
                ));
                continue;
            };
            if accepted {
                continue;
            }
            report.stale_rejected += 1;
            if hold.outcome == Outcome::Released {
                report.violation(format!(
                    "a write of a holder whose release was acknowledged was rejected as \
                     stale (a wrong token order?): {}",
                    op.describe(&history.worker)
                ));
            } else if !paused_between(input.pauses, history.pid, hold.grant_start, op.start_us) {
                report.violation(format!(
                    "a write was rejected as stale although its process was never paused \
                     while it held the lock: {}",
                    op.describe(&history.worker)
                ));
            }
        }
    }
    if input.require_stale && report.stale_rejected == 0 {
        report.violation(
            "no stale write was rejected: the scenario (a paused holder resumes and writes) \
             was not hit"
                .to_string(),
        );
    }
}

/// Queue: every acknowledged put was delivered; no item was delivered after
/// its ack was acknowledged; no delivered item that no put started; an
/// item id always carries the same payload.
fn check_queue(histories: &[History], report: &mut Report) {
    let mut started: BTreeSet<&str> = BTreeSet::new();
    let mut stored: BTreeMap<u64, (&str, String)> = BTreeMap::new();
    let mut gets: Vec<(&History, &Op)> = Vec::new();
    let mut acks: BTreeMap<u64, (&History, &Op)> = BTreeMap::new();
    for history in histories {
        for op in &history.ops {
            match op.op.as_str() {
                "put" => {
                    let qid = op.arg("qid").unwrap_or("");
                    started.insert(qid);
                    if let Some(item) = op.result_u64("item") {
                        stored.insert(item, (qid, op.describe(&history.worker)));
                    }
                }
                "get" if op.is_ok() => gets.push((history, op)),
                "ack" if op.is_ok() => {
                    if let Some(item) = op.arg_u64("item") {
                        let earliest = acks.entry(item).or_insert((history, op));
                        if op.end_us() < earliest.1.end_us() {
                            *earliest = (history, op);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut delivered: BTreeSet<u64> = BTreeSet::new();
    for (history, get) in &gets {
        report.deliveries += 1;
        let item = get.result_u64("item").unwrap_or(0);
        let qid = get.result("qid").unwrap_or("");
        delivered.insert(item);
        if !started.contains(qid) {
            report.violation(format!(
                "an item no put started was delivered: {}",
                get.describe(&history.worker)
            ));
        }
        if let Some((put_qid, put)) = stored.get(&item) {
            if *put_qid != qid {
                report.violation(format!(
                    "item {item} was stored by {put} but delivered with payload {qid:?}: {}",
                    get.describe(&history.worker)
                ));
            }
        }
        if let Some((ack_history, ack)) = acks.get(&item) {
            let acked = ack.end_us().expect("acks ended");
            if get.start_us > acked {
                report.violation(format!(
                    "item {item} was delivered after its ack was acknowledged: {} after {}",
                    get.describe(&history.worker),
                    ack.describe(&ack_history.worker)
                ));
            }
        }
    }
    for (item, (_, put)) in &stored {
        report.queue_items += 1;
        if !delivered.contains(item) {
            report.violation(format!(
                "item {item}, stored by an acknowledged put, was never delivered: {put}"
            ));
        }
    }
}

/// Tokens: a grant that ended before another was asked for has a smaller
/// token; no token was handed out twice.
fn check_tokens(histories: &[History], report: &mut Report) {
    // (start, end, token, description)
    let mut grants: Vec<(u64, u64, u64, String)> = Vec::new();
    for history in histories {
        for op in &history.ops {
            let grants_token = matches!(op.op.as_str(), "acquire" | "cond_wait" | "allow");
            let Some(token) = op.result_u64("token").filter(|t| *t > 0) else {
                continue;
            };
            if grants_token && op.is_ok() {
                let end = op.end_us().expect("ok ops ended");
                grants.push((op.start_us, end, token, op.describe(&history.worker)));
            }
        }
    }
    report.grants = grants.len() as u64;
    let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
    for (_, _, token, what) in &grants {
        if let Some(first) = seen.insert(*token, what) {
            report.violation(format!(
                "token {token} was handed out twice: {first} and {what}"
            ));
        }
    }
    let mut by_end: Vec<&(u64, u64, u64, String)> = grants.iter().collect();
    by_end.sort_by_key(|g| g.1);
    let mut by_start: Vec<&(u64, u64, u64, String)> = grants.iter().collect();
    by_start.sort_by_key(|g| g.0);
    let mut next = 0;
    let mut top: Option<&(u64, u64, u64, String)> = None;
    for b in by_start {
        while next < by_end.len() && by_end[next].1 < b.0 {
            if top.is_none_or(|t| by_end[next].2 > t.2) {
                top = Some(by_end[next]);
            }
            next += 1;
        }
        if let Some(a) = top {
            if a.2 >= b.2 {
                report.violation(format!(
                    "tokens went backwards: {} ended before {} was asked for, yet has \
                     token {} >= {}",
                    a.3, b.3, a.2, b.2
                ));
            }
        }
    }
}

/// Calls the client library does not retry by design (a condition or
/// barrier wait, a notify or reset, which must not be applied twice), or
/// whose short timeout may pass while a restart is under way (an event
/// wait of 0.5 s, a rate limit take of 2 s): `unavailable` is their
/// documented answer to a server restart. Every other call retries for
/// longer than a restart takes, so `unavailable` there is a violation.
const NOT_RETRIED: &[&str] = &[
    "cond_wait",
    "cond_notify",
    "barrier_wait",
    "barrier_reset",
    "event_wait",
    "rate_acquire",
];

/// Leases: a worker that was never paused never lost its session or a
/// hold. A loss is seen as a session that changed between two answers, a
/// `session_lost` error, a refused release, or a refused ack or nack.
fn check_losses(input: &Input, report: &mut Report) {
    for history in input.histories {
        let mut session: Option<&str> = None;
        for op in &history.ops {
            let Some(end) = &op.end else { continue };
            let mut lost = None;
            if let Some(now) = end.keys.get("sess").map(String::as_str) {
                if session.is_some_and(|s| s != now) {
                    lost = Some(format!(
                        "its session changed from {}",
                        session.unwrap_or("")
                    ));
                }
                session = Some(now);
            }
            let kind = op.error_kind();
            if kind == Some("session_lost") {
                lost = Some("session_lost".to_string());
            }
            let refused = kind.is_some_and(|k| k != "unavailable" && k != "timeout");
            let checked_release = op.op == "release"
                && matches!(op.arg("prim"), Some("lock" | "sem" | "rw" | "pool"));
            if refused && (checked_release || op.op == "ack" || op.op == "nack") {
                lost = Some(format!("its {} was refused", op.op));
            }
            if kind == Some("unavailable") && NOT_RETRIED.contains(&op.op.as_str()) {
                report.unavailable_not_retried += 1;
            } else if kind == Some("unavailable")
                && !paused_between(input.pauses, history.pid, op.start_us, end.end_us)
            {
                report.violation(format!(
                    "syncd was unreachable for a whole retry budget: {}",
                    op.describe(&history.worker)
                ));
            }
            let Some(why) = lost else { continue };
            let paused_before = input
                .pauses
                .iter()
                .any(|p| p.pid == history.pid && p.start_us < end.end_us);
            if paused_before {
                report.losses_after_pause += 1;
            } else {
                report.violation(format!(
                    "{} was never paused, yet lost a lease ({why}): {}",
                    history.worker,
                    op.describe(&history.worker)
                ));
            }
        }
    }
}

/// Every operation ended, except the last one of a process killed with -9;
/// every process that was not killed exited by itself.
fn check_ended(input: &Input, report: &mut Report) {
    for history in input.histories {
        let killed = input.killed.contains(&history.worker);
        let open: Vec<&Op> = history.ops.iter().filter(|op| op.end.is_none()).collect();
        let last_seq = history.ops.last().map_or(0, |op| op.seq);
        for op in &open {
            if !killed || op.seq != last_seq {
                report.violation(format!(
                    "an operation never ended: {}",
                    op.describe(&history.worker)
                ));
            }
        }
        if !killed && history.exited_us.is_none() {
            report.violation(format!(
                "{} was not killed, yet did not exit by itself ({})",
                history.worker,
                history.file.display()
            ));
        }
        if !killed && history.torn_tail {
            report.violation(format!("{} has a torn last line", history.worker));
        }
    }
}

/// After the run, the drain worker's last look at each checked primitive
/// found no holders, no waiters, and an empty queue.
fn check_final_state(histories: &[History], report: &mut Report) {
    let Some(drain) = histories.iter().find(|h| h.role == "drain") else {
        if !histories.is_empty() {
            report.violation("no drain history: the end state was not checked".to_string());
        }
        return;
    };
    let mut last: BTreeMap<(&str, &str), &Op> = BTreeMap::new();
    for op in drain.ops.iter().filter(|op| op.op == "describe") {
        last.insert(
            (op.arg("prim").unwrap_or(""), op.arg("name").unwrap_or("")),
            op,
        );
    }
    for prim in ["lock", "sem", "rw", "pool", "queue"] {
        if !last.keys().any(|(p, _)| *p == prim) {
            report.violation(format!("the drain never described a {prim}"));
        }
    }
    for ((prim, name), op) in last {
        if !op.is_ok() {
            report.violation(format!(
                "the last describe failed: {}",
                op.describe("drain")
            ));
            continue;
        }
        for key in ["holders", "waiters", "permits_held", "ready", "in_flight"] {
            if op.result_u64(key).is_some_and(|n| n > 0) {
                report.violation(format!(
                    "after every worker was gone, {prim} {name:?} still has {key} > 0: {}",
                    op.describe("drain")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::parse;
    use super::*;

    fn judge(texts: &[&str], pauses: &[Pause], killed: &[&str], fenced: &[FencedWrite]) -> Report {
        let histories: Vec<History> = texts.iter().map(|t| parse(t).expect("parses")).collect();
        let killed: BTreeSet<String> = killed.iter().map(|s| s.to_string()).collect();
        check(&Input {
            histories: &histories,
            pauses,
            killed: &killed,
            fenced,
            semaphore_capacity: 2,
            require_stale: false,
        })
    }

    fn found(report: &Report, needle: &str) -> bool {
        report.violations.iter().any(|v| v.contains(needle))
    }

    fn pause(pid: u32, start_us: u64, end_us: u64) -> Pause {
        Pause {
            worker: format!("w{pid}"),
            pid,
            start_us,
            end_us,
            holding: None,
        }
    }

    fn fenced(worker: &str, token: u64, accepted: bool) -> FencedWrite {
        FencedWrite {
            resource: "L".into(),
            token,
            accepted,
            worker: worker.into(),
            at_us: 0,
        }
    }

    const DRAIN: &str = "H drain drain 99
I 1 9000 describe prim=lock name=L
R 1 9001 ok holders=0 waiters=0 sess=9
I 2 9002 describe prim=sem name=S
R 2 9003 ok holders=0 waiters=0 permits_held=0 sess=9
I 3 9004 describe prim=rw name=R
R 3 9005 ok holders=0 waiters=0 sess=9
I 4 9006 describe prim=pool name=P
R 4 9007 ok holders=0 waiters=0 sess=9
I 5 9008 describe prim=queue name=Q
R 5 9009 ok ready=0 in_flight=0 waiters=0 sess=9
E 9010
";

    #[test]
    fn a_clean_run_has_no_violations() {
        let a = "H a lock 1
I 1 100 acquire prim=lock name=L
R 1 110 ok token=5 sess=1
I 2 120 write res=L token=5
R 2 121 ok accepted=1 highest=5 sess=1
I 3 130 release prim=lock name=L token=5
R 3 140 ok sess=1
E 150
";
        let b = "H b lock 2
I 1 100 acquire prim=lock name=L
R 1 135 ok token=6 sess=2
I 2 136 release prim=lock name=L token=6
R 2 137 ok sess=2
E 150
";
        let report = judge(&[a, b, DRAIN], &[], &[], &[fenced("a", 5, true)]);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.holds, 2);
        assert_eq!(report.grants, 2);
    }

    #[test]
    fn two_lock_holders_at_once_are_found() {
        let a = "H a lock 1
I 1 100 acquire prim=lock name=L
R 1 110 ok token=5 sess=1
I 2 130 release prim=lock name=L token=5
R 2 140 ok sess=1
E 150
";
        let b = "H b lock 2
I 1 100 acquire prim=lock name=L
R 1 125 ok token=6 sess=2
E 150
";
        let report = judge(&[a, b, DRAIN], &[], &[], &[]);
        assert!(
            found(&report, "was granted at 125 while"),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_reader_beside_a_writer_is_found_but_readers_together_are_fine() {
        let w = "H w rw 1
I 1 100 acquire prim=rw name=R mode=write
R 1 110 ok token=5 sess=1
I 2 130 release prim=rw name=R mode=write token=5
R 2 140 ok sess=1
E 150
";
        let r = "H r rw 2
I 1 100 acquire prim=rw name=R mode=read
R 1 120 ok token=6 sess=2
I 2 200 release prim=rw name=R mode=read token=6
R 2 210 ok sess=2
I 3 300 acquire prim=rw name=R mode=read
R 3 310 ok token=7 sess=2
I 4 400 release prim=rw name=R mode=read token=7
R 4 410 ok sess=2
I 5 320 acquire prim=rw name=R mode=read
E 450
";
        let r2 = "H r2 rw 3
I 1 100 acquire prim=rw name=R mode=read
R 1 305 ok token=8 sess=3
I 2 330 release prim=rw name=R mode=read token=8
R 2 340 ok sess=3
E 450
";
        let report = judge(&[w, r, r2, DRAIN], &[], &[], &[]);
        assert!(
            found(&report, "read hold of r (token 6)"),
            "{:?}",
            report.violations
        );
        assert!(!found(&report, "token 8"), "{:?}", report.violations);
        assert!(!found(&report, "token 7"), "{:?}", report.violations);
    }

    #[test]
    fn a_semaphore_above_its_capacity_is_found() {
        let mut texts = Vec::new();
        for (pid, token) in [(1, 5), (2, 6), (3, 7)] {
            texts.push(format!(
                "H s{pid} sem {pid}
I 1 100 acquire prim=sem name=S permits=1
R 1 110 ok token={token} sess={pid}
I 2 200 release prim=sem name=S token={token}
R 2 210 ok sess={pid}
E 300
"
            ));
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).chain([DRAIN]).collect();
        let report = judge(&texts, &[], &[], &[]);
        assert!(
            found(&report, "3 permits of 2 held"),
            "{:?}",
            report.violations
        );
        // Two at once are fine.
        let report = judge(&[texts[0], texts[1], DRAIN], &[], &[], &[]);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    const STALE: &str = "H a lock 1
I 1 100 acquire prim=lock name=L
R 1 110 ok token=5 sess=1
I 2 120 write res=L token=5
R 2 121 ok accepted=1 highest=5 sess=1
I 3 5000 write res=L token=5
R 3 5001 ok accepted=0 highest=6 sess=2
I 4 5002 release prim=lock name=L token=5
R 4 5003 err kind=session_lost sess=2 msg=session 1 expired
E 6000
";

    #[test]
    fn stale_writes_count_only_after_a_pause() {
        let log = [fenced("a", 5, true), fenced("a", 5, false)];
        let report = judge(&[STALE, DRAIN], &[pause(1, 200, 4800)], &[], &log);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.stale_rejected, 1);
        assert_eq!(report.paused_holders, 1);
        let report = judge(&[STALE, DRAIN], &[], &[], &log);
        assert!(
            found(&report, "never paused while it held"),
            "{:?}",
            report.violations
        );
        assert!(found(&report, "a was never paused, yet lost a lease"));
    }

    #[test]
    fn a_legit_holder_rejected_or_an_unlogged_write_is_found() {
        let text = STALE.replace(
            "R 4 5003 err kind=session_lost sess=2 msg=session 1 expired",
            "R 4 5003 ok sess=1",
        );
        let text = text.replace("sess=2", "sess=1");
        let report = judge(
            &[&text, DRAIN],
            &[pause(1, 200, 4800)],
            &[],
            &[fenced("a", 5, true)],
        );
        assert!(found(&report, "release was acknowledged was rejected"));
        assert!(found(&report, "fenced server has no record"));
    }

    #[test]
    fn no_stale_write_at_all_fails_a_run_that_requires_one() {
        let histories = vec![parse(DRAIN).unwrap()];
        let report = check(&Input {
            histories: &histories,
            pauses: &[],
            killed: &BTreeSet::new(),
            fenced: &[],
            semaphore_capacity: 2,
            require_stale: true,
        });
        assert!(found(&report, "no stale write was rejected"));
    }

    #[test]
    fn a_fenced_server_that_accepts_an_older_token_is_found() {
        let log = [fenced("a", 6, true), fenced("b", 5, true)];
        let report = judge(&[DRAIN], &[], &[], &log);
        assert!(found(&report, "accepted token 5 from b after token 6"));
    }

    #[test]
    fn queue_violations_are_found() {
        let producer = "H p producer 1
I 1 100 put queue=Q qid=p-1
R 1 110 ok item=1 sess=1
I 2 120 put queue=Q qid=p-2
R 2 130 ok item=2 sess=1
I 3 140 put queue=Q qid=p-3
R 3 150 ok item=3 sess=1
E 1000
";
        let consumer = "H c consumer 2
I 1 200 get queue=Q
R 1 210 ok item=1 qid=p-1 deliveries=1 sess=2
I 2 220 ack queue=Q item=1
R 2 230 ok sess=2
I 3 240 get queue=Q
R 3 250 ok item=1 qid=p-1 deliveries=2 sess=2
I 4 260 get queue=Q
R 4 270 ok item=9 qid=x-1 deliveries=1 sess=2
I 5 280 get queue=Q
R 5 290 ok item=3 qid=p-2 deliveries=1 sess=2
E 1000
";
        let report = judge(&[producer, consumer, DRAIN], &[], &[], &[]);
        assert!(found(&report, "item 1 was delivered after its ack"));
        assert!(found(&report, "an item no put started"));
        assert!(found(
            &report,
            "item 2, stored by an acknowledged put, was never delivered"
        ));
        assert!(found(&report, "item 3 was stored by"));
        assert_eq!(report.queue_items, 3);
    }

    #[test]
    fn tokens_that_go_backwards_or_repeat_are_found() {
        let a = "H a misc 1
I 1 100 acquire prim=pool name=P
R 1 110 ok token=50 sess=1
I 2 120 allow name=B
R 2 130 ok token=0 state=Open sess=1
I 3 140 acquire prim=condlock name=C
R 3 150 ok token=7 sess=1
E 1000
";
        let b = "H b misc 2
I 1 115 allow name=B
R 1 125 ok token=40 state=Closed sess=2
I 2 200 acquire prim=pool name=P
R 2 210 ok token=7 sess=2
E 1000
";
        let report = judge(&[a, b, DRAIN], &[], &[], &[]);
        assert!(
            found(&report, "tokens went backwards"),
            "{:?}",
            report.violations
        );
        assert!(found(&report, "token 7 was handed out twice"));
        assert!(!found(&report, "token 40 >="), "{:?}", report.violations);
    }

    #[test]
    fn a_loss_without_a_pause_is_found() {
        let a = "H a sem 1
I 1 100 acquire prim=sem name=S permits=1
R 1 110 ok token=5 sess=1
I 2 120 acquire prim=sem name=S permits=1
R 2 130 ok token=6 sess=3
I 3 140 release prim=sem name=S token=6
R 3 150 err kind=FailedPrecondition sess=3 msg=not held
I 4 160 ack queue=Q item=1
R 4 170 err kind=unavailable sess=3 msg=cannot reach syncd
I 5 180 barrier_wait name=B
R 5 190 err kind=unavailable sess=3 msg=cannot reach syncd
E 1000
";
        let report = judge(&[a, DRAIN], &[], &[], &[]);
        assert!(
            found(&report, "session changed from 1"),
            "{:?}",
            report.violations
        );
        assert!(found(&report, "its release was refused"));
        assert!(found(&report, "unreachable for a whole retry budget: a#4"));
        assert!(!found(&report, "a#5"), "{:?}", report.violations);
        assert_eq!(report.unavailable_not_retried, 1);
        let report = judge(&[a, DRAIN], &[pause(1, 111, 119)], &[], &[]);
        assert!(!found(&report, "never paused"), "{:?}", report.violations);
        assert_eq!(report.losses_after_pause, 2);
    }

    #[test]
    fn hung_waiters_and_workers_that_did_not_exit_are_found() {
        let killed = "H k lock 1
I 1 100 acquire prim=lock name=L
";
        let hung = "H h lock 2
I 1 100 acquire prim=lock name=L
I 2 100 acquire prim=lock name=L
R 2 110 ok token=3 sess=1
";
        let report = judge(&[killed, hung, DRAIN], &[], &["k"], &[]);
        assert!(!found(&report, "k#1"), "{:?}", report.violations);
        assert!(found(&report, "an operation never ended: h#1"));
        assert!(found(&report, "h was not killed, yet did not exit"));
        let report = judge(&[killed, DRAIN], &[], &[], &[]);
        assert!(found(&report, "an operation never ended: k#1"));
    }

    #[test]
    fn holders_left_at_the_end_are_found() {
        let drain = DRAIN
            .replace("R 1 9001 ok holders=0", "R 1 9001 ok holders=1")
            .replace("ready=0", "ready=2");
        let report = judge(&[&drain], &[], &[], &[]);
        assert!(found(&report, "lock \"L\" still has holders > 0"));
        assert!(found(&report, "queue \"Q\" still has ready > 0"));
        let no_drain = "H a sem 1\nE 5\n";
        let report = judge(&[no_drain], &[], &[], &[]);
        assert!(found(&report, "no drain history"));
    }
}
