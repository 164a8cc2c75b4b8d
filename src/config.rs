//! The optional TOML configuration file of `syncd serve --config FILE`.
//!
//! The file gives values for flags, one top-level key per flag, named like
//! the long flag with `-` or `_` (`max_sessions = 5000`, `listen =
//! "127.0.0.1:7420"`, `session_ttl_max = "1h"`). The allowed keys are not
//! listed here: they are derived from the clap [`Command`], every argument
//! that has an environment variable (all of `serve`'s do) except `--config`
//! itself, so a new flag is covered as soon as it has one.
//!
//! Precedence is flags > environment > file > built-in default. The binary
//! gets it from clap: each setting of the file whose variable is unset
//! becomes that variable ([`unset_in_env`]) before the command line is
//! parsed again, and clap then prefers a flag to the variable as always.
//! Each value is checked here first with the flag's own value parser, so a
//! mistake is reported with the file's name and the key.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{Arg, ArgAction, Command};

/// The long name of the flag that names the file (never a key in it).
pub const FLAG: &str = "config";

/// One setting of the file: the key as written, the environment variable of
/// its flag, and the value as that variable would hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub env: OsString,
    pub value: String,
}

/// Why the file cannot be used: one line naming the file (and the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Reads and checks the file at `path` against `command`'s flags.
pub fn read(command: &Command, path: &Path) -> Result<Vec<Setting>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error(format!(
            "cannot read config file {}: {}",
            path.display(),
            io_reason(&e)
        ))
    })?;
    parse(command, &text)
        .map_err(|reason| Error(format!("config file {}: {reason}", path.display())))
}

/// Parses and checks the text of a config file against `command`'s flags;
/// an error is one line, without the file's name.
pub fn parse(command: &Command, text: &str) -> Result<Vec<Setting>, String> {
    let table: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
    let mut settings = Vec::with_capacity(table.len());
    let mut seen: Vec<(String, String)> = Vec::new();
    for (key, value) in &table {
        let Some(arg) = find_arg(command, key) else {
            return Err(format!(
                "unknown key `{key}` (known keys: {})",
                keys(command).join(", ")
            ));
        };
        let long = arg.get_long().unwrap_or_default().to_owned();
        if let Some((other, _)) = seen.iter().find(|(_, l)| *l == long) {
            return Err(format!("`{key}` and `{other}` are the same setting"));
        }
        seen.push((key.clone(), long));
        let value = value_text(arg, value).map_err(|reason| format!("`{key}`: {reason}"))?;
        check_value(arg, &value).map_err(|reason| format!("`{key}`: {reason}"))?;
        let env = arg.get_env().expect("find_arg only returns args with env");
        settings.push(Setting {
            key: key.clone(),
            env: env.to_owned(),
            value,
        });
    }
    Ok(settings)
}

/// The settings whose environment variable is not set (`is_set` tells),
/// in the file's order: these take effect, the others are overridden by
/// the environment.
pub fn unset_in_env(settings: &[Setting], is_set: impl Fn(&OsStr) -> bool) -> Vec<&Setting> {
    settings.iter().filter(|s| !is_set(&s.env)).collect()
}

/// The keys a config file may use for `command`, in the `snake_case`
/// spelling, in the order of the flags.
pub fn keys(command: &Command) -> Vec<String> {
    configurable(command)
        .filter_map(|arg| arg.get_long())
        .map(|long| long.replace('-', "_"))
        .collect()
}

/// The flag a key names: `max_sessions` and `max-sessions` both name
/// `--max-sessions`. Only flags with an environment variable qualify.
pub fn find_arg<'a>(command: &'a Command, key: &str) -> Option<&'a Arg> {
    let long = normalize_key(key);
    configurable(command).find(|arg| arg.get_long() == Some(long.as_str()))
}

/// A key in the spelling of its long flag: `_` becomes `-`.
pub fn normalize_key(key: &str) -> String {
    key.replace('_', "-")
}

fn configurable(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        arg.get_env().is_some()
            && !arg.is_positional()
            && arg.get_long().is_some_and(|long| long != FLAG)
    })
}

/// The TOML value as the flag's environment variable would hold it.
fn value_text(arg: &Arg, value: &toml::Value) -> Result<String, String> {
    let takes_values = arg.get_action().takes_values();
    match value {
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ if !takes_values => Err(format!(
            "expected a boolean (true or false), found {}",
            a(value.type_str())
        )),
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string, a number or a boolean, found {}",
            a(other.type_str())
        )),
    }
}

/// A type name with its article: "an array", "a table".
fn a(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// Runs the flag's own value parser on the value, so that the file is held
/// to the same rules (and messages) as the command line.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    // A switch's variable holds true or false, like a bool value.
    let parser = if arg.get_action().takes_values() {
        arg.get_value_parser().clone()
    } else {
        clap::builder::BoolishValueParser::new().into()
    };
    let probe = Arg::new("value")
        .long("value")
        .value_parser(parser)
        .action(ArgAction::Set)
        .num_args(1)
        .allow_hyphen_values(true);
    Command::new("syncd")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(probe)
        .try_get_matches_from([format!("--value={value}")])
        .map(|_| ())
        .map_err(|e| clap_reason(&e, value))
}

/// A clap error as one line: the reason and, if clap offers them, the
/// possible values.
fn clap_reason(error: &clap::Error, value: &str) -> String {
    use clap::error::{ContextKind, ContextValue};
    use std::error::Error as _;
    let mut reason = match error.source() {
        Some(source) => format!("invalid value '{value}': {source}"),
        None => format!("invalid value '{value}'"),
    };
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        reason.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    reason
}

/// A TOML syntax error as one line with its line and column.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

/// An I/O error without Rust's `(os error N)` suffix.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Clone, Copy, Debug, ValueEnum)]
    enum Mode {
        Fast,
        Safe,
    }

    /// A stand-in for `syncd serve`: flags with and without env variables.
    #[derive(Parser, Debug)]
    #[command(name = "serve")]
    #[allow(dead_code)]
    struct Serve {
        #[arg(long, env = "T_CONFIG")]
        config: Option<std::path::PathBuf>,
        #[arg(long, env = "T_LISTEN", default_value = "127.0.0.1:7420")]
        listen: String,
        #[arg(long, env = "T_MAX_SESSIONS", default_value_t = 10, value_parser = at_least_one)]
        max_sessions: usize,
        #[arg(long, env = "T_TTL", default_value = "1s", value_parser = duration)]
        session_ttl_max: Duration,
        #[arg(long, env = "T_MODE", value_enum, default_value_t = Mode::Safe)]
        mode: Mode,
        #[arg(long, env = "T_VERBOSE")]
        verbose: bool,
        #[arg(long, default_value_t = 1)]
        no_env: u32,
    }

    fn at_least_one(text: &str) -> Result<usize, String> {
        match text.parse::<usize>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.to_string()),
        }
    }

    fn duration(text: &str) -> Result<Duration, String> {
        crate::duration::parse(text)
    }

    fn command() -> Command {
        use clap::CommandFactory;
        Serve::command()
    }

    fn settings(text: &str) -> Vec<(String, String, String)> {
        parse(&command(), text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .into_iter()
            .map(|s| (s.key, s.env.to_string_lossy().into_owned(), s.value))
            .collect()
    }

    fn error(text: &str) -> String {
        let e = parse(&command(), text).expect_err(text);
        assert!(!e.contains('\n'), "one line: {e:?}");
        e
    }

    #[test]
    fn keys_are_the_flags_with_an_env_variable_except_config() {
        assert_eq!(
            keys(&command()),
            [
                "listen",
                "max_sessions",
                "session_ttl_max",
                "mode",
                "verbose"
            ]
        );
    }

    #[test]
    fn a_key_names_its_flag_with_underscores_or_dashes() {
        assert_eq!(normalize_key("max_sessions"), "max-sessions");
        assert_eq!(normalize_key("max-sessions"), "max-sessions");
        let command = command();
        for key in ["max_sessions", "max-sessions"] {
            let arg = find_arg(&command, key).expect(key);
            assert_eq!(arg.get_long(), Some("max-sessions"));
        }
        assert!(find_arg(&command, "config").is_none());
        assert!(find_arg(&command, "no_env").is_none());
        assert!(find_arg(&command, "help").is_none());
        assert!(find_arg(&command, "MAX_SESSIONS").is_none());
    }

    #[test]
    fn values_become_the_text_of_their_env_variable() {
        let got = settings(
            "max_sessions = 5000\nlisten = \"0.0.0.0:1\"\nsession-ttl-max = \"1h\"\n\
             mode = \"fast\"\nverbose = true\n",
        );
        let want = [
            ("listen", "T_LISTEN", "0.0.0.0:1"),
            ("max_sessions", "T_MAX_SESSIONS", "5000"),
            ("mode", "T_MODE", "fast"),
            ("session-ttl-max", "T_TTL", "1h"),
            ("verbose", "T_VERBOSE", "true"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, e, v)| (k.to_string(), e.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        // A number may also be written as a string.
        assert_eq!(settings("max_sessions = \"7\"")[0].2, "7");
        assert!(settings("# nothing\n").is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_known_ones() {
        let e = error("max_session = 5");
        assert!(e.contains("unknown key `max_session`"), "{e}");
        assert!(e.contains("max_sessions"), "{e}");
        assert!(error("config = \"other.toml\"").contains("unknown key `config`"));
        assert!(error("no_env = 2").contains("unknown key `no_env`"));
        assert!(error("[serve]\nlisten = \"x\"").contains("unknown key `serve`"));
    }

    #[test]
    fn wrong_types_and_values_name_the_key_and_the_reason() {
        let e = error("max_sessions = [1, 2]");
        assert!(
            e.contains("`max_sessions`") && e.contains("found an array"),
            "{e}"
        );
        let e = error("max_sessions = 0");
        assert!(
            e.contains("`max_sessions`: invalid value '0': must be at least 1"),
            "{e}"
        );
        let e = error("max_sessions = \"lots\"");
        assert!(e.contains("`max_sessions`: invalid value 'lots'"), "{e}");
        let e = error("session_ttl_max = 5");
        assert!(e.contains("`session_ttl_max`: invalid value '5'"), "{e}");
        let e = error("mode = \"slow\"");
        assert!(
            e.contains("`mode`") && e.contains("possible values: fast, safe"),
            "{e}"
        );
        let e = error("verbose = \"yes\"");
        assert!(e.contains("`verbose`: expected a boolean"), "{e}");
        let e = error("listen = 1979-05-27T07:32:00Z");
        assert!(
            e.contains("`listen`") && e.contains("found a datetime"),
            "{e}"
        );
        let e = error("max_sessions = 1\nmax-sessions = 2");
        assert!(e.contains("same setting"), "{e}");
    }

    #[test]
    fn syntax_errors_are_one_line_with_the_position() {
        let e = error("listen = \"127.0.0.1:1\"\nmax_sessions = = 5\n");
        assert!(e.starts_with("invalid TOML at line 2, column "), "{e}");
        let e = error("max_sessions = 1\nmax_sessions = 2\n");
        assert!(e.starts_with("invalid TOML at line 2"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let all = parse(&command(), "listen = \"a:1\"\nmax_sessions = 3\n").unwrap();
        let kept = unset_in_env(&all, |name| name == "T_LISTEN");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].key, "max_sessions");
        assert_eq!(unset_in_env(&all, |_| false).len(), 2);
        assert!(unset_in_env(&all, |_| true).is_empty());
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let e = read(&command(), &path).unwrap_err().0;
        assert_eq!(
            e,
            format!(
                "cannot read config file {}: No such file or directory",
                path.display()
            )
        );
        std::fs::write(&path, "max_sessions = 0\n").unwrap();
        let e = read(&command(), &path).unwrap_err().0;
        assert!(
            e.starts_with(&format!("config file {}: `max_sessions`", path.display())),
            "{e}"
        );
    }
}
