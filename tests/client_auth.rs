//! Token authentication from the client side, against a real `syncd serve
//! --auth-tokens FILE`: the client library sends `ClientOptions::token` with
//! every call (session, keep-alive, locks, inspection, watches), refusals
//! come back as `Error::Unauthenticated` / `Error::PermissionDenied`, a
//! token withdrawn by a reload ends the session, and syncctl takes its
//! token from `--token`, `SYNCD_TOKEN`, `--token-file` or
//! `SYNCD_TOKEN_FILE`, and exits 8 with one line when refused.
//!
//! (The server's side of the rules — roles, prefixes, sessions of other
//! tokens — is tested in tests/auth.rs.) Timeouts here only stop a hang.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_bounded, send_signal, syncctl, Syncd, HANG_GUARD};
use serde_json::Value;
use syncd::client::{Client, ClientOptions, Error, HoldLoss, LossReason};

const ADMIN: &str = "admin-secret-0123456789";
const CI: &str = "ci-secret-0123456789abc";

const ADMIN_TOKEN: &str = r#"
[[token]]
name = "admin"
secret = "admin-secret-0123456789"
role = "admin"
prefixes = [""]
"#;

const CI_TOKEN: &str = r#"
[[token]]
name = "ci"
secret = "ci-secret-0123456789abc"
role = "use"
prefixes = ["build-"]
"#;

/// Writes the token file: the admin token, and the ci token if `with_ci`.
fn write_tokens(path: &Path, with_ci: bool) {
    let mut text = ADMIN_TOKEN.to_owned();
    if with_ci {
        text.push_str(CI_TOKEN);
    }
    std::fs::write(path, text).expect("write the token file");
}

/// A syncd that checks the tokens (admin and ci) of tokens.toml in a
/// temporary directory of its own.
struct Server {
    syncd: Syncd,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        write_tokens(&tokens, true);
        let syncd = Syncd::start_with(&["--auth-tokens", tokens.to_str().expect("UTF-8 path")]);
        Server { syncd, dir }
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }

    /// A client with `token` (or none) and a session of `ttl`.
    async fn connect(&self, token: Option<&str>, ttl: Duration) -> Result<Client, Error> {
        let options = ClientOptions {
            session_ttl: ttl,
            client_name: "client_auth".into(),
            token: token.map(str::to_owned),
            ..ClientOptions::default()
        };
        Client::connect_with(self.syncd.addr.clone(), options).await
    }

    /// A connected client with `token` and a session of `ttl`.
    async fn client(&self, token: &str, ttl: Duration) -> Client {
        self.connect(Some(token), ttl).await.expect("connect")
    }
}

/// A `syncctl` command for `addr` that takes no token from the test's
/// environment.
fn syncctl_clean(addr: &str) -> Command {
    let mut command = syncctl(addr);
    command
        .env_remove("SYNCD_TOKEN")
        .env_remove("SYNCD_TOKEN_FILE")
        .stdin(Stdio::null());
    command
}

/// Runs a syncctl command; its exit code, stdout and stderr.
fn run(command: &mut Command) -> (Option<i32>, String, String) {
    let output = run_bounded(command);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_right_token_goes_with_every_call() {
    let server = Server::start();
    let ttl = Duration::from_secs(3);
    let admin = server.client(ADMIN, ttl).await;
    let session_id = admin.session_id();
    admin.ping().await.expect("ping");

    let guard = admin.lock("deploy").acquire().await.expect("acquire");
    let described = admin.lock("deploy").describe().await.expect("describe");
    let holder = described.holder.expect("held");
    assert_eq!(holder.fencing_token, guard.fencing_token());
    assert_eq!(holder.identity, "admin");
    let sessions = admin.sessions().await.expect("sessions");
    let mine = sessions
        .iter()
        .find(|s| s.session_id == admin.session_id())
        .expect("own session listed");
    assert_eq!(mine.identity, "admin");
    assert!(!admin.list("", "").await.expect("list").is_empty());
    let mut watch = admin.watch_state("lock", "deploy").await.expect("watch");
    let now = watch.next().await.expect("the state now");
    assert!(now.state.starts_with("held"), "{now:?}");

    // The keep-alive carries the token too (a refused one would end the
    // session at once): after a few renewals (every TTL/3) the session and
    // the hold are still there.
    tokio::time::sleep(ttl).await;
    assert_eq!(admin.session_id(), session_id);
    assert!(admin.lost_holds().is_empty(), "{:?}", admin.lost_holds());
    let still = admin.lock("deploy").describe().await.expect("describe");
    assert_eq!(
        still.holder.map(|h| h.fencing_token),
        Some(guard.fencing_token())
    );
    guard.release().await.expect("release");
    admin.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_an_unknown_one_is_not_authenticated() {
    let server = Server::start();
    let ttl = Duration::from_secs(10);

    let error = server.connect(None, ttl).await.unwrap_err();
    let Error::Unauthenticated(message) = &error else {
        panic!("expected Unauthenticated, got {error:?}");
    };
    assert!(message.contains("needs a token"), "{message}");
    assert!(
        error.to_string().starts_with("not authenticated: "),
        "{error}"
    );

    let error = server
        .connect(Some("not-a-known-secret"), ttl)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "not authenticated: the token is not known to this server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_may_touch_only_its_prefixes() {
    let server = Server::start();
    let ci = server.client(CI, Duration::from_secs(10)).await;

    let error = ci.lock("deploy").acquire().await.unwrap_err();
    let Error::PermissionDenied(message) = &error else {
        panic!("expected PermissionDenied, got {error:?}");
    };
    assert_eq!(
        message,
        "token \"ci\" may not touch \"deploy\": its names start with \"build-\""
    );
    assert_eq!(error.to_string(), format!("permission denied: {message}"));
    // Also for a call that would be retried if the server could not be
    // reached, and a try.
    let error = ci.lock("deploy").describe().await;
    assert!(
        matches!(error, Err(Error::PermissionDenied(_))),
        "{error:?}"
    );
    assert!(matches!(
        ci.lock("deploy").try_acquire().await,
        Err(Error::PermissionDenied(_))
    ));
    // Listing every session needs a token for every name.
    assert!(matches!(
        ci.sessions().await,
        Err(Error::PermissionDenied(_))
    ));

    // The session lives on, and names with the prefix work.
    let guard = ci.lock("build-1").acquire().await.expect("acquire build-1");
    let holder = ci.lock("build-1").describe().await.unwrap().holder.unwrap();
    assert_eq!(holder.identity, "ci");
    guard.release().await.expect("release");
    ci.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_token_ends_the_session() {
    let server = Server::start();
    let ci = server.client(CI, Duration::from_secs(1)).await;
    let guard = ci.lock("build-2").acquire().await.expect("acquire");
    let session_id = ci.session_id();

    write_tokens(&server.tokens(), false);
    send_signal(server.syncd.pid(), "HUP");
    let lost = tokio::time::timeout(HANG_GUARD, guard.lost())
        .await
        .expect("the hold is lost");
    let HoldLoss::Session(loss) = lost else {
        panic!("expected the session to be lost, got {lost:?}");
    };
    assert_eq!(loss.session_id, session_id);
    let LossReason::Refused(reason) = &loss.reason else {
        panic!("expected a refusal, got {loss:?}");
    };
    assert!(reason.starts_with("not authenticated: "), "{reason}");
    assert!(reason.contains("withdrawn"), "{reason}");
    assert!(
        loss.to_string()
            .contains("the server refused its keep-alive"),
        "{loss}"
    );
    // Calls are refused too, and are not retried for ever.
    let error = tokio::time::timeout(HANG_GUARD, ci.lock("build-3").acquire())
        .await
        .expect("an answer")
        .unwrap_err();
    assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
}

#[test]
fn syncctl_takes_its_token_from_a_flag_the_environment_or_a_file() {
    let server = Server::start();
    let addr = server.syncd.addr.as_str();
    let acquire = [
        "lock",
        "acquire",
        "build-1",
        "--timeout",
        "30s",
        "--",
        "true",
    ];

    let (code, _, stderr) = run(syncctl_clean(addr).args(["--token", CI]).args(acquire));
    assert_eq!(code, Some(0), "--token: {stderr}");

    let (code, _, stderr) = run(syncctl_clean(addr).env("SYNCD_TOKEN", CI).args(acquire));
    assert_eq!(code, Some(0), "SYNCD_TOKEN: {stderr}");

    let file = server.dir.path().join("ci.token");
    std::fs::write(&file, format!("{CI}\n")).unwrap();
    let (code, _, stderr) = run(syncctl_clean(addr)
        .arg("--token-file")
        .arg(&file)
        .args(acquire));
    assert_eq!(code, Some(0), "--token-file: {stderr}");

    let (code, _, stderr) = run(syncctl_clean(addr)
        .env("SYNCD_TOKEN_FILE", &file)
        .args(acquire));
    assert_eq!(code, Some(0), "SYNCD_TOKEN_FILE: {stderr}");

    let (code, _, stderr) = run(syncctl_clean(addr)
        .args(["--token", CI, "--token-file"])
        .arg(&file)
        .arg("ping"));
    assert_eq!(code, Some(2), "both: {stderr}");
    assert!(!stderr.contains(CI), "{stderr}");
}

#[test]
fn syncctl_exits_8_with_one_line_when_refused() {
    let server = Server::start();
    let addr = server.syncd.addr.as_str();

    let (code, stdout, stderr) = run(syncctl_clean(addr)
        .args(["--token", CI])
        .args(["lock", "acquire", "deploy", "--", "true"]));
    assert_eq!(code, Some(8), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "syncctl: permission denied: token \"ci\" may not touch \"deploy\": its names start \
         with \"build-\"\n"
    );

    let (code, _, stderr) = run(syncctl_clean(addr).arg("ping"));
    assert_eq!(code, Some(8), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("syncctl: not authenticated: this server needs a token"),
        "{stderr}"
    );

    let (code, _, stderr) = run(syncctl_clean(addr)
        .env("SYNCD_TOKEN", "wrong-secret")
        .arg("ping"));
    assert_eq!(code, Some(8), "{stderr}");
    assert_eq!(
        stderr,
        "syncctl: not authenticated: the token is not known to this server\n"
    );

    // A read-only view of every session needs a token for every name.
    let (code, _, stderr) = run(syncctl_clean(addr).args(["--token", CI, "sessions"]));
    assert_eq!(code, Some(8), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("syncctl: permission denied: "),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inspection_shows_which_token_holds() {
    let server = Server::start();
    let ci = server.client(CI, Duration::from_secs(20)).await;
    let guard = ci.lock("build-7").acquire().await.expect("acquire");

    let addr = server.syncd.addr.clone();
    let (text, json, sessions) = tokio::task::spawn_blocking(move || {
        let inspect = ["--token", ADMIN, "inspect", "lock", "build-7"];
        let (code, text, stderr) = run(syncctl_clean(&addr).args(inspect));
        assert_eq!(code, Some(0), "{stderr}");
        let (code, json, stderr) = run(syncctl_clean(&addr)
            .args(inspect)
            .args(["--output", "json"]));
        assert_eq!(code, Some(0), "{stderr}");
        let (code, sessions, stderr) =
            run(syncctl_clean(&addr).args(["--token", ADMIN, "sessions", "--output", "json"]));
        assert_eq!(code, Some(0), "{stderr}");
        (text, json, sessions)
    })
    .await
    .unwrap();

    let header = text
        .lines()
        .find(|line| line.trim_start().starts_with("SESSION"))
        .expect("a holders table");
    assert!(header.contains("SESSION  AUTH TOKEN  CLIENT"), "{text}");
    let row = text
        .lines()
        .find(|line| line.trim_start().starts_with(&ci.session_id().to_string()))
        .expect("the holder's row");
    assert!(row.contains("  ci  "), "{text}");

    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["holders"][0]["identity"], "ci", "{json}");
    let sessions: Value = serde_json::from_str(&sessions).expect("JSON");
    let mine = sessions
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["session_id"] == ci.session_id())
        .expect("the ci session");
    assert_eq!(mine["identity"], "ci", "{sessions}");

    guard.release().await.expect("release");
    ci.close().await.expect("close");
}
