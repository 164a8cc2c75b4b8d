//! `syncctl ls`, `syncctl ping` and `syncctl revoke`.

use std::time::Instant;

use clap::Args;
use serde_json::json;
use syncd::proto::v1::PrimitiveSummary;

use crate::{
    exit::Failure,
    output::{write_stdout, Output},
    session::{close, connect},
    Cli,
};

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only primitives of this kind: lock, semaphore, rwlock, event,
    /// condition, barrier, queue, pool, ratelimit or breaker. Default: every
    /// kind.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,

    /// Only names that start with this prefix. Default: every name.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["fencing_token", "session"])))]
pub struct RevokeArgs {
    /// The fencing token of the hold to take away (`inspect` shows each
    /// holder's).
    #[arg(value_name = "TOKEN")]
    fencing_token: Option<u64>,

    /// Instead of one hold, end this whole session (`syncctl sessions`
    /// lists them): everything it holds is released, its waits end.
    #[arg(long, value_name = "ID", conflicts_with = "fencing_token")]
    session: Option<u64>,

    /// Who asks and why, e.g. "alice: deploy stuck on host-3" (at most 256
    /// bytes). Logged by the server and passed on to the holder.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    reason: String,
}

pub async fn revoke(cli: &Cli, args: &RevokeArgs) -> Result<i32, Failure> {
    let reason = args.reason.as_str();
    let token = match (args.fencing_token, args.session) {
        (Some(token), _) => token,
        (None, Some(session_id)) => return close_session(cli, session_id, reason).await,
        (None, None) => unreachable!("clap requires a token or --session"),
    };
    let revoked =
        crate::session::one_call(
            cli,
            |client| async move { client.revoke(token, reason).await },
        )
        .await?;
    let text = format!(
        "revoked {} {:?} (token {token}) from session {}",
        revoked.kind, revoked.name, revoked.session_id
    );
    let json = json!({
        "fencing_token": token,
        "kind": revoked.kind,
        "name": revoked.name,
        "session_id": revoked.session_id,
    });
    cli.output.print(text, json)?;
    Ok(0)
}

async fn close_session(cli: &Cli, session_id: u64, reason: &str) -> Result<i32, Failure> {
    let released = crate::session::one_call(cli, |client| async move {
        client.close_session(session_id, reason).await
    })
    .await?;
    let holds = crate::output::plural(u64::from(released), "hold", "holds");
    let text = format!("closed session {session_id}: {holds} released");
    let json = json!({ "session_id": session_id, "released": released });
    cli.output.print(text, json)?;
    Ok(0)
}

pub async fn ping(cli: &Cli) -> Result<i32, Failure> {
    let client = connect(cli, None).await?;
    let started = Instant::now();
    let pinged = client.ping().await;
    let rtt = started.elapsed();
    let addr = client.addr().to_string();
    close(client).await;
    pinged?;
    let rtt_ms = rtt.as_secs_f64() * 1000.0;
    let text = format!("pong from {addr} in {rtt_ms:.1}ms");
    cli.output
        .print(text, json!({ "addr": addr, "rtt_ms": rtt_ms }))?;
    Ok(0)
}

pub async fn list(cli: &Cli, args: &LsArgs) -> Result<i32, Failure> {
    let kind = args.kind.as_deref().unwrap_or_default();
    let prefix = args.prefix.as_deref().unwrap_or_default();
    let primitives =
        crate::session::one_call(cli, |client| async move { client.list(kind, prefix).await })
            .await?;
    match cli.output {
        Output::Text => write_stdout(&format_list(&primitives)),
        Output::Json => {
            let rows: Vec<_> = primitives
                .iter()
                .map(|p| json!({ "kind": p.kind, "name": p.name, "state": p.state }))
                .collect();
            write_stdout(&format!("{}\n", serde_json::Value::Array(rows)))
        }
    }?;
    Ok(0)
}

/// One line per primitive, columns aligned: kind, name (quoted, as
/// `describe` shows it, so that spaces are unambiguous), state.
pub fn format_list(primitives: &[PrimitiveSummary]) -> String {
    let names: Vec<String> = primitives.iter().map(|p| format!("{:?}", p.name)).collect();
    let kind_width = primitives.iter().map(|p| p.kind.len()).max().unwrap_or(0);
    let name_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    primitives
        .iter()
        .zip(&names)
        .map(|(p, name)| format!("{:kind_width$}  {name:name_width$}  {}\n", p.kind, p.state))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_format() {
        let rows = [PrimitiveSummary {
            kind: "lock".into(),
            name: "db".into(),
            state: "free".into(),
        }];
        assert_eq!(format_list(&rows), "lock  \"db\"  free\n");
        let spaced = [
            PrimitiveSummary {
                kind: "lock".into(),
                name: "a b".into(),
                state: "held".into(),
            },
            rows[0].clone(),
        ];
        assert_eq!(
            format_list(&spaced),
            "lock  \"a b\"  held\nlock  \"db\"   free\n"
        );
    }
}
