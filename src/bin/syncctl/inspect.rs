//! `syncctl inspect KIND NAME`, `syncctl sessions` and `syncctl watch`:
//! who holds what, who waits, every session, as tables for people
//! (`--output json` for programs); and state changes as they happen. Answers "who holds this lock?" for every kind in one shape:
//! holders (session, client, host, fencing token, held for, lease left)
//! and waiters in line order (session, client, host, waiting for, what
//! they ask). On a server that checks tokens, each session's token name
//! (the proto's `identity`) shows in an `AUTH TOKEN` column, which is left
//! out when no row has one (so that the tables of a server without tokens
//! look as they always did); `--output json` always has `identity`.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use syncd::client::{Client, Error, SessionInfo};
use syncd::proto::v1::{Holder, RwMode, Waiter};

use crate::{
    exit::Failure,
    output::{format_ms, write_stdout, Output},
    session::{connect, end_watch, interruptible, one_call, Signals},
    Cli,
};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindArg {
    /// Every kind (`watch` only).
    All,
    Lock,
    #[value(alias = "sem")]
    Semaphore,
    Rwlock,
    Event,
    #[value(alias = "cond")]
    Condition,
    Barrier,
    Queue,
    Pool,
    Ratelimit,
    Breaker,
}

/// Parses one kind (every kind but `all`), so that `inspect all` is a
/// usage error that lists the kinds.
fn one_kind() -> impl TypedValueParser<Value = KindArg> {
    let kinds: Vec<PossibleValue> = KindArg::value_variants()
        .iter()
        .filter(|kind| **kind != KindArg::All)
        .filter_map(ValueEnum::to_possible_value)
        .collect();
    PossibleValuesParser::new(kinds)
        .map(|name| KindArg::from_str(&name, false).expect("a listed kind"))
}

impl KindArg {
    /// The kind's name on the wire (`System.List`, lost-hold notices).
    fn as_str(self) -> &'static str {
        match self {
            KindArg::All => "",
            KindArg::Lock => "lock",
            KindArg::Semaphore => "semaphore",
            KindArg::Rwlock => "rwlock",
            KindArg::Event => "event",
            KindArg::Condition => "condition",
            KindArg::Barrier => "barrier",
            KindArg::Queue => "queue",
            KindArg::Pool => "pool",
            KindArg::Ratelimit => "ratelimit",
            KindArg::Breaker => "breaker",
        }
    }
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The kind of primitive.
    #[arg(value_parser = one_kind())]
    kind: KindArg,
    /// Its name.
    name: String,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The kind of primitive, or `all`.
    #[arg(value_enum)]
    kind: KindArg,
    /// Its name; with --prefix, the start of the names to watch (may be
    /// empty: every name).
    name: String,
    /// Watch every primitive whose name starts with NAME, as they come
    /// and go.
    #[arg(long)]
    prefix: bool,
    /// Stop after printing this many lines (the first ones are the states
    /// now). Default: until interrupted.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

/// One holder, whatever the kind.
#[derive(Debug, Default, PartialEq)]
struct HolderRow {
    session_id: u64,
    /// The name of the token its session was created with ("" without).
    identity: String,
    client_name: String,
    host: String,
    fencing_token: u64,
    held_ms: u64,
    lease_left_ms: u64,
    /// What it holds besides the primitive: permits, a mode, a resource.
    what: String,
}

/// One waiter, in line order.
#[derive(Debug, Default, PartialEq)]
struct WaiterRow {
    session_id: u64,
    /// The name of the token its session was created with ("" without).
    identity: String,
    client_name: String,
    host: String,
    waiting_ms: u64,
    /// What it asks for: permits, a mode, tokens.
    asks: String,
}

/// A primitive's holders and waiters, and its one-line state.
#[derive(Debug, Default, PartialEq)]
struct Inspection {
    kind: &'static str,
    name: String,
    state: String,
    holders: Vec<HolderRow>,
    waiters: Vec<WaiterRow>,
}

pub async fn inspect(cli: &Cli, args: &InspectArgs) -> Result<i32, Failure> {
    let (kind, name) = (args.kind, args.name.as_str());
    let inspection = one_call(cli, |client| async move {
        let mut inspection = describe(&client, kind, name).await?;
        inspection.state = state_line(&client, kind, name).await?;
        Ok(inspection)
    })
    .await?;
    cli.output
        .describe(format_inspection(&inspection), inspection_json(&inspection))
}

pub async fn watch(cli: &Cli, args: &WatchArgs) -> Result<i32, Failure> {
    let mut signals = Signals::catch()?;
    let client = connect(cli, None).await?;
    let (output, count) = (cli.output, args.count);
    let kind = args.kind.as_str();
    let watched = interruptible(&mut signals, async {
        let mut changes = if args.prefix {
            client.watch_prefix(kind, &args.name).await?
        } else {
            client.watch_state(kind, &args.name).await?
        };
        let mut printed = 0;
        while count.is_none_or(|count| printed < count) {
            let change = changes.next().await?;
            let json = json!({
                "kind": change.kind,
                "name": change.name,
                "state": change.state,
                "gone": change.gone,
                "server_time_ms": change.server_time_ms,
            });
            output.print(&change, json)?;
            printed += 1;
        }
        Ok::<(), Failure>(())
    })
    .await;
    end_watch(client, watched).await
}

pub async fn sessions(cli: &Cli) -> Result<i32, Failure> {
    let sessions = one_call(cli, |client| async move { client.sessions().await }).await?;
    match cli.output {
        Output::Text => write_stdout(&format_sessions(&sessions))?,
        Output::Json => {
            let rows: Vec<Value> = sessions.iter().map(session_json).collect();
            write_stdout(&format!("{}\n", Value::Array(rows)))?;
        }
    }
    Ok(0)
}

/// The primitive's line in `System.List`, or that it does not exist.
async fn state_line(client: &Client, kind: KindArg, name: &str) -> Result<String, Error> {
    let listed = client.list(kind.as_str(), name).await?;
    Ok(listed
        .into_iter()
        .find(|p| p.name == name)
        .map_or_else(|| "does not exist".to_owned(), |p| p.state))
}

/// The holders and waiters from the kind's own `Describe`.
async fn describe(client: &Client, kind: KindArg, name: &str) -> Result<Inspection, Error> {
    let (holders, waiters) = match kind {
        KindArg::All => {
            let status = tonic::Status::invalid_argument("inspect needs one kind, not `all`");
            return Err(Error::Status(status));
        }
        KindArg::Lock => {
            let lock = client.lock(name).describe().await?;
            let holders = lock.holder.into_iter().map(|h| HolderRow {
                session_id: h.session_id,
                identity: h.identity,
                client_name: h.client_name,
                host: h.host,
                fencing_token: h.fencing_token,
                held_ms: h.held_ms,
                lease_left_ms: h.lease_left_ms,
                what: String::new(),
            });
            let waiters = lock.waiters.into_iter().map(|w| WaiterRow {
                session_id: w.session_id,
                identity: w.identity,
                client_name: w.client_name,
                host: w.host,
                waiting_ms: w.waiting_ms,
                asks: String::new(),
            });
            (holders.collect(), waiters.collect())
        }
        KindArg::Semaphore => {
            let s = client.semaphore(name, 0).describe().await?;
            (holder_rows(s.holders), waiter_rows(s.waiters, "permit"))
        }
        KindArg::Rwlock => {
            let rw = client.rwlock(name).describe().await?;
            (holder_rows(rw.holders), waiter_rows(rw.waiters, ""))
        }
        KindArg::Event => {
            let event = client.event(name).describe().await?;
            (Vec::new(), waiter_rows(event.waiters, ""))
        }
        KindArg::Condition => {
            let cond = client.condition(name).describe().await?;
            (Vec::new(), waiter_rows(cond.waiters, ""))
        }
        KindArg::Barrier => {
            let barrier = client.barrier(name, 0).describe().await?;
            (Vec::new(), waiter_rows(barrier.waiters, ""))
        }
        KindArg::Queue => {
            let queue = client.queue(name).describe().await?;
            (Vec::new(), waiter_rows(queue.waiters, ""))
        }
        KindArg::Pool => {
            let pool = client.pool(name, 0).describe().await?;
            let holders = pool
                .resources
                .into_iter()
                .filter(|r| r.session_id != 0)
                .map(|r| HolderRow {
                    session_id: r.session_id,
                    identity: r.identity,
                    client_name: r.client_name,
                    host: r.host,
                    fencing_token: r.fencing_token,
                    held_ms: r.held_ms,
                    lease_left_ms: r.lease_left_ms,
                    what: format!("resource {}", r.resource_id),
                });
            (holders.collect(), waiter_rows(pool.waiters, ""))
        }
        KindArg::Ratelimit => {
            let bucket = client.rate_limit(name, 0, 0).describe().await?;
            (Vec::new(), waiter_rows(bucket.waiters, "token"))
        }
        KindArg::Breaker => {
            let breaker = client.breaker(name).describe().await?;
            (holder_rows(breaker.permits), Vec::new())
        }
    };
    Ok(Inspection {
        kind: kind.as_str(),
        name: name.to_owned(),
        state: String::new(),
        holders,
        waiters,
    })
}

fn holder_rows(holders: Vec<Holder>) -> Vec<HolderRow> {
    holders
        .into_iter()
        .map(|h| HolderRow {
            what: what_of(h.permits, h.mode, "permit"),
            session_id: h.session_id,
            identity: h.identity,
            client_name: h.client_name,
            host: h.host,
            fencing_token: h.fencing_token,
            held_ms: h.held_ms,
            lease_left_ms: h.lease_left_ms,
        })
        .collect()
}

/// `unit` names what `permits` counts for this kind ("" when nothing).
fn waiter_rows(waiters: Vec<Waiter>, unit: &str) -> Vec<WaiterRow> {
    waiters
        .into_iter()
        .map(|w| WaiterRow {
            asks: what_of(w.permits, w.mode, unit),
            session_id: w.session_id,
            identity: w.identity,
            client_name: w.client_name,
            host: w.host,
            waiting_ms: w.waiting_ms,
        })
        .collect()
}

/// `2 permits`, `read`, `write`, or nothing.
fn what_of(count: u32, mode: i32, unit: &str) -> String {
    match RwMode::try_from(mode) {
        Ok(RwMode::Read) => return "read".to_owned(),
        Ok(RwMode::Write) => return "write".to_owned(),
        _ => {}
    }
    match (count, unit) {
        (0, _) | (_, "") => String::new(),
        (1, unit) => format!("1 {unit}"),
        (n, unit) => format!("{n} {unit}s"),
    }
}

/// The header of the column that shows each session's token name.
const IDENTITY_HEADER: &str = "AUTH TOKEN";

/// Columns aligned under a header, two spaces apart, each line indented.
/// `identities` holds each row's token name: when any is non-empty they
/// are shown in a column right after the SESSION column.
fn table_with_identities(header: &[&str], rows: &[Vec<String>], identities: &[&str]) -> String {
    if identities.iter().all(|identity| identity.is_empty()) {
        return table(header, rows);
    }
    let at = header
        .iter()
        .position(|h| *h == "SESSION")
        .map_or(header.len(), |session| session + 1);
    let mut header = header.to_vec();
    header.insert(at, IDENTITY_HEADER);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .zip(identities)
        .map(|(row, identity)| {
            let mut row = row.clone();
            let shown = if identity.is_empty() { "-" } else { identity };
            row.insert(at, shown.to_owned());
            row
        })
        .collect();
    table(&header, &rows)
}

/// Columns aligned under a header, two spaces apart, each line indented.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn format_inspection(inspection: &Inspection) -> String {
    let mut text = format!(
        "{} {:?}: {}\n",
        inspection.kind, inspection.name, inspection.state
    );
    if inspection.holders.is_empty() {
        text.push_str("holders: none\n");
    } else {
        let rows: Vec<Vec<String>> = inspection
            .holders
            .iter()
            .map(|h| {
                vec![
                    h.session_id.to_string(),
                    h.client_name.clone(),
                    h.host.clone(),
                    h.fencing_token.to_string(),
                    format_ms(h.held_ms),
                    format_ms(h.lease_left_ms),
                    h.what.clone(),
                ]
            })
            .collect();
        let header = [
            "SESSION",
            "CLIENT",
            "HOST",
            "TOKEN",
            "HELD FOR",
            "LEASE LEFT",
            "HOLDS",
        ];
        let identities: Vec<&str> = inspection
            .holders
            .iter()
            .map(|h| h.identity.as_str())
            .collect();
        text.push_str(&format!("holders: {}\n", rows.len()));
        text.push_str(&table_with_identities(&header, &rows, &identities));
    }
    if inspection.waiters.is_empty() {
        text.push_str("waiters: none\n");
    } else {
        let rows: Vec<Vec<String>> = inspection
            .waiters
            .iter()
            .enumerate()
            .map(|(place, w)| {
                vec![
                    (place + 1).to_string(),
                    w.session_id.to_string(),
                    w.client_name.clone(),
                    w.host.clone(),
                    format_ms(w.waiting_ms),
                    w.asks.clone(),
                ]
            })
            .collect();
        let header = ["#", "SESSION", "CLIENT", "HOST", "WAITING FOR", "ASKS"];
        let identities: Vec<&str> = inspection
            .waiters
            .iter()
            .map(|w| w.identity.as_str())
            .collect();
        text.push_str(&format!("waiters: {}\n", rows.len()));
        text.push_str(&table_with_identities(&header, &rows, &identities));
    }
    text
}

fn inspection_json(inspection: &Inspection) -> Value {
    let holders: Vec<Value> = inspection
        .holders
        .iter()
        .map(|h| {
            json!({
                "session_id": h.session_id,
                "identity": h.identity,
                "client_name": h.client_name,
                "host": h.host,
                "fencing_token": h.fencing_token,
                "held_ms": h.held_ms,
                "lease_left_ms": h.lease_left_ms,
                "holds": h.what,
            })
        })
        .collect();
    let waiters: Vec<Value> = inspection
        .waiters
        .iter()
        .enumerate()
        .map(|(place, w)| {
            json!({
                "position": place + 1,
                "session_id": w.session_id,
                "identity": w.identity,
                "client_name": w.client_name,
                "host": w.host,
                "waiting_ms": w.waiting_ms,
                "asks": w.asks,
            })
        })
        .collect();
    json!({
        "kind": inspection.kind,
        "name": inspection.name,
        "state": inspection.state,
        "holders": holders,
        "waiters": waiters,
    })
}

/// `lock "db" (token 5), semaphore "x" (token 9)`, or `-`.
fn holds_text(session: &SessionInfo) -> String {
    if session.holds.is_empty() {
        return "-".to_owned();
    }
    let holds: Vec<String> = session
        .holds
        .iter()
        .map(|h| format!("{} {:?} (token {})", h.kind, h.name, h.fencing_token))
        .collect();
    holds.join(", ")
}

fn format_sessions(sessions: &[SessionInfo]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".to_owned();
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.to_string(),
                s.client_name.clone(),
                s.host.clone(),
                format_ms(s.ttl_ms),
                format_ms(s.lease_left_ms),
                s.waiting.to_string(),
                holds_text(s),
            ]
        })
        .collect();
    let header = [
        "SESSION",
        "CLIENT",
        "HOST",
        "TTL",
        "LEASE LEFT",
        "WAITING",
        "HOLDS",
    ];
    let identities: Vec<&str> = sessions.iter().map(|s| s.identity.as_str()).collect();
    table_with_identities(&header, &rows, &identities)
}

fn session_json(session: &SessionInfo) -> Value {
    let holds: Vec<Value> = session
        .holds
        .iter()
        .map(|h| json!({ "kind": h.kind, "name": h.name, "fencing_token": h.fencing_token }))
        .collect();
    json!({
        "session_id": session.session_id,
        "identity": session.identity,
        "client_name": session.client_name,
        "host": session.host,
        "ttl_ms": session.ttl_ms,
        "lease_left_ms": session.lease_left_ms,
        "waiting": session.waiting,
        "lost_holds_unconfirmed": session.lost_holds_unconfirmed,
        "holds": holds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::client::SessionHold;

    #[test]
    fn an_inspection_reads_as_two_tables() {
        let inspection = Inspection {
            kind: "semaphore",
            name: "db".into(),
            state: "2 of 3 permits held, 1 waiting".into(),
            holders: vec![HolderRow {
                session_id: 4,
                identity: String::new(),
                client_name: "w@h:1".into(),
                host: "127.0.0.1:5000".into(),
                fencing_token: 17,
                held_ms: 1_500,
                lease_left_ms: 8_000,
                what: "2 permits".into(),
            }],
            waiters: vec![WaiterRow {
                session_id: 5,
                identity: String::new(),
                client_name: "v@h:2".into(),
                host: "127.0.0.1:5001".into(),
                waiting_ms: 900,
                asks: "3 permits".into(),
            }],
        };
        let expected = "\
semaphore \"db\": 2 of 3 permits held, 1 waiting
holders: 1
  SESSION  CLIENT  HOST            TOKEN  HELD FOR  LEASE LEFT  HOLDS
  4        w@h:1   127.0.0.1:5000  17     1s 500ms  8s          2 permits
waiters: 1
  #  SESSION  CLIENT  HOST            WAITING FOR  ASKS
  1  5        v@h:2   127.0.0.1:5001  900ms        3 permits
";
        assert_eq!(format_inspection(&inspection), expected);
        let json = inspection_json(&inspection);
        assert_eq!(json["holders"][0]["fencing_token"], 17);
        assert_eq!(json["waiters"][0]["position"], 1);
        assert_eq!(json["waiters"][0]["host"], "127.0.0.1:5001");
    }

    #[test]
    fn nobody_is_said_in_words() {
        let inspection = Inspection {
            kind: "lock",
            name: "db".into(),
            state: "free".into(),
            ..Inspection::default()
        };
        assert_eq!(
            format_inspection(&inspection),
            "lock \"db\": free\nholders: none\nwaiters: none\n"
        );
    }

    #[test]
    fn what_a_hold_takes() {
        assert_eq!(what_of(2, 0, "permit"), "2 permits");
        assert_eq!(what_of(1, 0, "token"), "1 token");
        assert_eq!(what_of(3, 0, ""), "");
        assert_eq!(what_of(0, RwMode::Write as i32, ""), "write");
    }

    #[test]
    fn sessions_read_as_one_table() {
        let session = SessionInfo {
            session_id: 3,
            client_name: "deploy@ci".into(),
            host: "10.0.0.5:41000".into(),
            ttl_ms: 10_000,
            lease_left_ms: 9_000,
            holds: vec![SessionHold {
                kind: "lock".into(),
                name: "db".into(),
                fencing_token: 12,
            }],
            waiting: 1,
            lost_holds_unconfirmed: 0,
            identity: String::new(),
        };
        let expected = "  SESSION  CLIENT     HOST            TTL  LEASE LEFT  WAITING  HOLDS
  3        deploy@ci  10.0.0.5:41000  10s  9s          1        lock \"db\" (token 12)
";
        assert_eq!(format_sessions(std::slice::from_ref(&session)), expected);
        assert_eq!(format_sessions(&[]), "no sessions\n");
        assert_eq!(session_json(&session)["identity"], "");

        // With tokens: a column for their names; a session without one
        // shows `-`.
        let ci = SessionInfo {
            identity: "ci".into(),
            ..session.clone()
        };
        let anonymous = SessionInfo {
            session_id: 4,
            holds: Vec::new(),
            ..session
        };
        let expected =
            "  SESSION  AUTH TOKEN  CLIENT     HOST            TTL  LEASE LEFT  WAITING  HOLDS
  3        ci          deploy@ci  10.0.0.5:41000  10s  9s          1        lock \"db\" (token 12)
  4        -           deploy@ci  10.0.0.5:41000  10s  9s          1        -
";
        assert_eq!(format_sessions(&[ci.clone(), anonymous]), expected);
        assert_eq!(session_json(&ci)["identity"], "ci");
    }

    #[test]
    fn token_names_show_in_their_own_column() {
        let inspection = Inspection {
            kind: "lock",
            name: "build-1".into(),
            state: "held by session 4 (token 17), 1 waiting".into(),
            holders: vec![HolderRow {
                session_id: 4,
                identity: "ci".into(),
                client_name: "w@h:1".into(),
                host: "127.0.0.1:5000".into(),
                fencing_token: 17,
                held_ms: 1_500,
                lease_left_ms: 8_000,
                what: String::new(),
            }],
            waiters: vec![WaiterRow {
                session_id: 5,
                identity: "ops".into(),
                client_name: "v@h:2".into(),
                host: "127.0.0.1:5001".into(),
                waiting_ms: 900,
                asks: String::new(),
            }],
        };
        let expected = "\
lock \"build-1\": held by session 4 (token 17), 1 waiting
holders: 1
  SESSION  AUTH TOKEN  CLIENT  HOST            TOKEN  HELD FOR  LEASE LEFT  HOLDS
  4        ci          w@h:1   127.0.0.1:5000  17     1s 500ms  8s
waiters: 1
  #  SESSION  AUTH TOKEN  CLIENT  HOST            WAITING FOR  ASKS
  1  5        ops         v@h:2   127.0.0.1:5001  900ms
";
        assert_eq!(format_inspection(&inspection), expected);
        let json = inspection_json(&inspection);
        assert_eq!(json["holders"][0]["identity"], "ci");
        assert_eq!(json["waiters"][0]["identity"], "ops");
    }
}
