//! `syncd serve --config FILE` and shell completions, against the real
//! binaries: a config file sets limits that the running server enforces;
//! its precedence is flag > environment (`SYNCD_*`) > file > default; a bad
//! file is a usage error (exit 2, one line naming the file and the key)
//! and the server never starts; `completions` prints a script per shell.
//!
//! The limit used to observe which value won is `max_sessions`: the server
//! grants that many sessions and refuses the next with RESOURCE_EXHAUSTED.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{await_listening, run_bounded, syncctl_bin, syncd_bin, Syncd};
use syncd::proto::v1::{sessions_client::SessionsClient, CreateSessionRequest};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A temporary directory with a config file `syncd.toml` in it.
struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    fn new(text: &str) -> ConfigDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("syncd.toml"), text).expect("write config");
        ConfigDir { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("syncd.toml")
    }

    fn path_str(&self) -> String {
        self.path().to_str().expect("utf-8 temp path").to_owned()
    }

    /// A data directory inside, for a server started without `--data`.
    fn data(&self) -> String {
        self.dir.path().join("data").to_str().expect("utf-8").into()
    }
}

/// `syncd ARGS...` run in `cwd`, with no `SYNCD_*` variable of the test's
/// own environment, only those of `env`.
fn syncd(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(syncd_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SYNCD_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(cwd)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn");
    command
}

/// A syncd this file started itself (to give it an environment); killed
/// when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `syncd serve ARGS...` with `env` and waits (bounded) for its
/// `listening on` line.
fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let child = syncd(cwd, &[&["serve"], args].concat(), env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn syncd");
    let (child, addr) = await_listening(child).unwrap_or_else(|e| panic!("syncd: {e}"));
    Server { child, addr }
}

/// How many sessions the server at `addr` grants before it refuses one
/// (at most 10 are tried); the refusal must be RESOURCE_EXHAUSTED naming
/// `sessions_max`.
async fn sessions_granted(addr: &str) -> usize {
    let channel = Channel::from_shared(addr.to_owned())
        .expect("valid address")
        .connect()
        .await
        .expect("connect to syncd");
    let mut sessions = SessionsClient::new(channel);
    for granted in 0..10 {
        let request = CreateSessionRequest {
            ttl_ms: 60_000,
            client_name: "config-test".into(),
        };
        match sessions.create(request).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().starts_with("sessions_max"), "{status:?}");
                return granted;
            }
        }
    }
    panic!("10 sessions granted: no session limit from the config applies");
}

/// Runs a command to its end and returns (exit code, stdout, stderr).
fn outcome(command: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = run_bounded(command.stdin(Stdio::null()));
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `syncd serve` with a config file that is wrong must end with exit 2 and
/// one line on stderr that contains each of `wanted`, without starting.
fn assert_refused(args: &[&str], env: &[(&str, &str)], wanted: &[&str]) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let data = cwd.path().join("data");
    let data = data.to_str().expect("utf-8");
    let serve = [
        &["serve", "--listen", "127.0.0.1:0", "--data", data][..],
        args,
    ]
    .concat();
    let (code, stdout, stderr) = outcome(&mut syncd(cwd.path(), &serve, env));
    assert_eq!(code, Some(2), "{args:?} {env:?}: stderr {stderr:?}");
    assert!(!stdout.contains("listening on"), "it started: {stdout:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("syncd: "), "{stderr:?}");
    for want in wanted {
        assert!(stderr.contains(want), "{want:?} not in {stderr:?}");
    }
    assert!(!Path::new(data).exists(), "the data directory was created");
}

// ---------------------------------------------------------------------------
// The file applies, and its precedence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_config_file_sets_a_limit_that_the_server_enforces() {
    let config = ConfigDir::new(
        "# a limit, and other keys in both spellings\n\
         max_sessions = 2\n\
         session_ttl_max = \"1h\"\n\
         max-waiters = 50\n\
         durability = \"sync\"\n",
    );
    let syncd = Syncd::start_with(&["--config", &config.path_str()]);
    assert_eq!(sessions_granted(&syncd.addr).await, 2);
}

#[tokio::test]
async fn syncd_config_names_the_file_and_the_file_may_give_listen_and_data() {
    let config = ConfigDir::new("");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata = \"{}\"\nmax_sessions = 1\n",
        config.data()
    );
    std::fs::write(config.path(), text).expect("write config");
    let cwd = tempfile::tempdir().expect("temp dir");
    let path = config.path_str();
    let server = start(cwd.path(), &[], &[("SYNCD_CONFIG", &path)]);
    assert_eq!(sessions_granted(&server.addr).await, 1);
    assert!(
        Path::new(&config.data()).is_dir(),
        "the file's data directory is used"
    );
    assert!(
        !cwd.path().join("syncd-data").exists(),
        "the default data directory is not used"
    );
}

#[tokio::test]
async fn the_environment_beats_the_file() {
    let config = ConfigDir::new("max_sessions = 1\nlisten = \"127.0.0.1:0\"\n");
    let (path, data) = (config.path_str(), config.data());
    let server = start(
        config.dir.path(),
        &["--config", &path, "--data", &data],
        &[("SYNCD_MAX_SESSIONS", "3")],
    );
    // The environment's 3 wins over the file's 1; the file's other key
    // (listen on port 0) still applies, or the server would not have started
    // on a free port.
    assert_eq!(sessions_granted(&server.addr).await, 3);
}

#[tokio::test]
async fn a_flag_beats_the_environment_and_the_file() {
    let config = ConfigDir::new("max_sessions = 1\n");
    let (path, data) = (config.path_str(), config.data());
    let server = start(
        config.dir.path(),
        &[
            "--config",
            &path,
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--max-sessions",
            "2",
        ],
        &[("SYNCD_MAX_SESSIONS", "3")],
    );
    assert_eq!(sessions_granted(&server.addr).await, 2);
    drop(server);
    // And a flag beats the file without any variable. (A fresh data
    // directory: sessions are durable, the first server's two live on.)
    let data = format!("{data}-2");
    let server = start(
        config.dir.path(),
        &[
            "--config",
            &path,
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--max-sessions=4",
        ],
        &[],
    );
    assert_eq!(sessions_granted(&server.addr).await, 4);
}

// ---------------------------------------------------------------------------
// A wrong file: exit 2, one line, never started
// ---------------------------------------------------------------------------

#[test]
fn an_unknown_key_is_refused_naming_the_file_and_the_key() {
    let config = ConfigDir::new("max_sessions = 5\nmax_sesions = 5\n");
    let path = config.path_str();
    assert_refused(
        &["--config", &path],
        &[],
        &[&path, "unknown key `max_sesions`", "max_sessions"],
    );
    // --config is not a key of the file.
    let config = ConfigDir::new("config = \"other.toml\"\n");
    let path = config.path_str();
    assert_refused(&["--config", &path], &[], &[&path, "`config`"]);
}

#[test]
fn a_bad_value_is_refused_naming_the_file_the_key_and_why() {
    let cases: &[(&str, &[&str])] = &[
        (
            "max_sessions = 0",
            &["`max_sessions`", "must be at least 1"],
        ),
        ("max_sessions = \"many\"", &["`max_sessions`", "'many'"]),
        ("max_sessions = [1, 2]", &["`max_sessions`", "array"]),
        ("session_ttl_max = 60", &["`session_ttl_max`", "'60'"]),
        ("durability = \"fast\"", &["`durability`", "sync, none"]),
        ("[serve]\nmax_sessions = 2", &["`serve`"]),
        ("max_sessions = = 2", &["invalid TOML at line 1"]),
    ];
    for (text, wanted) in cases {
        let config = ConfigDir::new(text);
        let path = config.path_str();
        let wanted = [&[path.as_str()][..], wanted].concat();
        assert_refused(&["--config", &path], &[], &wanted);
    }
}

#[test]
fn a_bad_value_is_refused_even_where_the_environment_overrides_it() {
    let config = ConfigDir::new("max_sessions = 0\n");
    let path = config.path_str();
    assert_refused(
        &["--config", &path],
        &[("SYNCD_MAX_SESSIONS", "3")],
        &[&path, "`max_sessions`"],
    );
}

#[test]
fn a_missing_or_unreadable_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().expect("utf-8");
    let wanted = ["cannot read config file", missing];
    assert_refused(&["--config", missing], &[], &wanted);
    assert_refused(&[], &[("SYNCD_CONFIG", missing)], &wanted);
    // A directory is not a file.
    let dir_path = dir.path().to_str().expect("utf-8");
    assert_refused(&["--config", dir_path], &[], &[dir_path]);
}

// ---------------------------------------------------------------------------
// Help and completions
// ---------------------------------------------------------------------------

#[test]
fn serve_help_documents_config_and_precedence_and_every_flag_s_variable() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let (code, help, _) = outcome(&mut syncd(cwd.path(), &["serve", "--help"], &[]));
    assert_eq!(code, Some(0));
    for want in [
        "--config <FILE>",
        "SYNCD_CONFIG",
        "Precedence",
        "max_sessions = 5000",
    ] {
        assert!(help.contains(want), "{want:?} not in serve --help");
    }
    // Every option (but --help) shows its variable, SYNCD_ + its name.
    // (Option lines are indented by 6, their descriptions by 10.)
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|line| line.strip_prefix("      --"))
        .filter_map(|rest| rest.split([' ', '=']).next())
        .filter(|flag| *flag != "help")
        .collect();
    assert!(flags.len() >= 15, "{flags:?}");
    for flag in flags {
        let env = format!("[env: SYNCD_{}=", flag.replace('-', "_").to_uppercase());
        assert!(help.contains(&env), "--{flag} shows no {env}");
    }
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    let cwd = tempfile::tempdir().expect("temp dir");
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = outcome(&mut syncd(cwd.path(), &["completions", shell], &[]));
        assert_eq!(code, Some(0), "syncd completions {shell}: {stderr}");
        for want in ["serve", "completions", "max-sessions", "config"] {
            assert!(script.contains(want), "syncd {shell}: no {want:?}");
        }

        let (code, script, stderr) = outcome(
            Command::new(syncctl_bin())
                .args(["completions", shell])
                .env_remove("SYNCD_ADDR"),
        );
        assert_eq!(code, Some(0), "syncctl completions {shell}: {stderr}");
        for want in ["lock", "queue", "breaker", "revoke", "completions", "addr"] {
            assert!(script.contains(want), "syncctl {shell}: no {want:?}");
        }
    }
}

#[test]
fn completions_are_listed_in_help_and_an_unknown_shell_is_a_usage_error() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let (code, help, _) = outcome(&mut syncd(cwd.path(), &["--help"], &[]));
    assert_eq!(code, Some(0));
    assert!(help.contains("completions"), "{help}");
    let (code, help, _) = outcome(Command::new(syncctl_bin()).arg("--help"));
    assert_eq!(code, Some(0));
    assert!(help.contains("completions"), "{help}");

    let (code, stdout, _) = outcome(&mut syncd(cwd.path(), &["completions", "tcsh"], &[]));
    assert_eq!((code, stdout.as_str()), (Some(2), ""));
    let (code, stdout, _) = outcome(Command::new(syncctl_bin()).args(["completions", "tcsh"]));
    assert_eq!((code, stdout.as_str()), (Some(2), ""));
}
