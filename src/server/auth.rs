//! Token authentication (`syncd serve --auth-tokens FILE`) and the checks
//! every RPC makes before it reaches the engine.
//!
//! Each caller sends `authorization: Bearer SECRET`. The interceptor
//! ([`Authenticate`]) turns the header into a [`Caller`] and puts it in the
//! request's extensions, or ends the call with UNAUTHENTICATED; each
//! handler then asks the caller for the role and name it needs
//! ([`authorize`]), which gives PERMISSION_DENIED or an engine handle that
//! acts for the caller. That handle makes the engine refuse a session the
//! caller did not create, so a session is usable only by its own token.
//!
//! Rules:
//! - roles are ordered: `read` < `use` < `admin`; a token may do what its
//!   role and every lower role allows;
//! - a name is allowed when it starts with one of the token's prefixes
//!   (`""` allows every name); calls about no single name (listing
//!   sessions, revoking by fencing token, closing another's session) need
//!   a token that allows every name;
//! - health checking and reflection stay open, so that probes and grpcurl's
//!   `list` work without a secret;
//! - without `--auth-tokens` every caller is [`Caller::Anyone`] and may do
//!   everything.
//!
//! Secrets are kept only as SHA-256 digests, and a request's secret is
//! looked up by its digest, so the lookup's timing says nothing about how
//! close a guess came. The file is re-read on SIGHUP; a file that fails to
//! load leaves the tokens in force unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::engine::{EngineHandle, Identity};

/// The most tokens a file may hold.
pub const TOKENS_MAX: usize = 10_000;
/// The largest token file read, in bytes.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// The longest token name, in bytes (names are shown in logs and
/// inspection, and stored with each session).
pub const TOKEN_NAME_BYTES_MAX: usize = 64;
/// Secrets shorter than this are accepted with a warning in the log.
const SECRET_BYTES_ADVISED: usize = 16;

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Describe, list, watch, ping.
    Read,
    /// Acquire, release, put, get, wait, set...: operate primitives and
    /// open sessions.
    Use,
    /// Revoke holds, close others' sessions, reset and delete primitives.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Use => "use",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "use" => Some(Role::Use),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One token of the file, without its secret.
#[derive(Debug)]
pub struct Token {
    pub name: Identity,
    pub role: Role,
    /// Names it may touch start with one of these; `""` allows all.
    pub prefixes: Vec<String>,
    /// The digest of its secret: finds it again after a reload.
    digest: Digest,
}

impl Token {
    fn allows_name(&self, name: &str) -> bool {
        self.prefixes.iter().any(|prefix| name.starts_with(prefix))
    }

    fn allows_every_name(&self) -> bool {
        self.prefixes.iter().any(String::is_empty)
    }
}

type Digest = [u8; 32];

fn digest(secret: &str) -> Digest {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The tokens of one load of the file, by the digest of their secret.
#[derive(Debug, Default)]
struct Tokens {
    by_digest: HashMap<Digest, Arc<Token>>,
    /// Names of tokens with secrets shorter than advised, for the log.
    short_secrets: Vec<String>,
}

/// Why the token file cannot be used: one line naming the file.
#[derive(Debug)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

/// The token file and the tokens loaded from it.
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
}

impl Auth {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let tokens = read_tokens(path)?;
        warn_short_secrets(&tokens);
        Ok(Auth {
            path: path.to_owned(),
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens are in force.
    pub fn token_count(&self) -> usize {
        self.current().by_digest.len()
    }

    /// Reads the file again. On success its tokens replace the old ones for
    /// every later call (calls already past their check go on); on failure
    /// the old ones stay.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let tokens = read_tokens(&self.path)?;
        warn_short_secrets(&tokens);
        let count = tokens.by_digest.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
        Ok(count)
    }

    /// Whether the caller's token is still in the file as it was (same
    /// secret, same name): long-lived streams ask before each step, so a
    /// token withdrawn by a reload stops renewing its sessions.
    pub fn in_force(&self, caller: &Caller) -> bool {
        let Caller::Token(token) = caller else {
            return true;
        };
        self.current()
            .by_digest
            .get(&token.digest)
            .is_some_and(|now| now.name == token.name)
    }

    fn current(&self) -> Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The token a request's `authorization` header names.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Token>, Status> {
        let secret = bearer_secret(metadata)?;
        self.current()
            .by_digest
            .get(&digest(secret))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the token is not known to this server"))
    }
}

fn warn_short_secrets(tokens: &Tokens) {
    for name in &tokens.short_secrets {
        tracing::warn!(
            token = %name,
            "the secret of this token is shorter than {SECRET_BYTES_ADVISED} bytes: easy to guess"
        );
    }
}

/// The secret of an `authorization: Bearer SECRET` header.
fn bearer_secret(metadata: &MetadataMap) -> Result<&str, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Err(Status::unauthenticated(
            "this server needs a token: send the header `authorization: Bearer SECRET` \
             (syncctl --token or SYNCD_TOKEN)",
        ));
    };
    let malformed = || Status::unauthenticated("the authorization header is not `Bearer SECRET`");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, secret) = text.split_once(' ').ok_or_else(malformed)?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
        return Err(malformed());
    }
    Ok(secret)
}

fn read_tokens(path: &Path) -> Result<Tokens, AuthError> {
    let fail = |reason: String| AuthError(format!("--auth-tokens {}: {reason}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read it: {e}")))?
        .len();
    if size > TOKEN_FILE_BYTES_MAX {
        return Err(fail(format!(
            "it is {size} bytes, the limit is {TOKEN_FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    parse_tokens(&text).map_err(fail)
}

/// Parses the TOML token file: `[[token]]` tables of `name`, `secret`,
/// `role` and `prefixes`, nothing else.
fn parse_tokens(text: &str) -> Result<Tokens, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    if let Some(key) = table.keys().find(|key| *key != "token") {
        return Err(format!(
            "unknown key `{key}` (the file holds [[token]] tables)"
        ));
    }
    let entries = match table.get("token") {
        None => return Err("no [[token]] tables: no one could call the server".into()),
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => return Err("`token` must be a list of tables: write [[token]]".into()),
    };
    if entries.len() > TOKENS_MAX {
        return Err(format!(
            "{} tokens, the limit is {TOKENS_MAX}",
            entries.len()
        ));
    }
    let mut tokens = Tokens::default();
    let mut names = std::collections::HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let (token, secret) =
            parse_token(entry).map_err(|reason| format!("token {}: {reason}", index + 1))?;
        if !names.insert(token.name.clone()) {
            return Err(format!("two tokens are named {:?}", token.name));
        }
        if secret.len() < SECRET_BYTES_ADVISED {
            tokens.short_secrets.push(token.name.to_string());
        }
        let name = token.name.clone();
        if tokens
            .by_digest
            .insert(token.digest, Arc::new(token))
            .is_some()
        {
            return Err(format!("token {name:?} has the same secret as another"));
        }
    }
    Ok(tokens)
}

fn parse_token(entry: &toml::Value) -> Result<(Token, String), String> {
    let toml::Value::Table(table) = entry else {
        return Err("not a table".into());
    };
    if let Some(key) = table
        .keys()
        .find(|key| !["name", "secret", "role", "prefixes"].contains(&key.as_str()))
    {
        return Err(format!(
            "unknown key `{key}` (a token has name, secret, role, prefixes)"
        ));
    }
    let text = |key: &str| match table.get(key) {
        Some(toml::Value::String(value)) => Ok(value.clone()),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Err(format!("`{key}` is missing")),
    };
    let name = text("name")?;
    if name.is_empty() || name.len() > TOKEN_NAME_BYTES_MAX {
        return Err(format!("`name` must be 1 to {TOKEN_NAME_BYTES_MAX} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("`name` {name:?} has control characters"));
    }
    let in_token = |reason: String| format!("({name}) {reason}");
    let secret = text("secret").map_err(in_token)?;
    if secret.is_empty() || secret.trim() != secret || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(in_token(
            "`secret` must be printable ASCII without spaces (it travels in an HTTP header)".into(),
        ));
    }
    let role = text("role").map_err(in_token)?;
    let role = Role::parse(&role)
        .ok_or_else(|| in_token(format!("`role` {role:?} is not one of read, use, admin")))?;
    let prefixes = match table.get("prefixes") {
        Some(toml::Value::Array(values)) => values
            .iter()
            .map(|value| match value {
                toml::Value::String(prefix) => Ok(prefix.clone()),
                _ => Err(in_token("`prefixes` must be a list of strings".into())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(in_token("`prefixes` must be a list of strings".into())),
        None => {
            return Err(in_token(
                "`prefixes` is missing (write [\"\"] to allow every name)".into(),
            ))
        }
    };
    if prefixes.is_empty() {
        return Err(in_token(
            "`prefixes` is empty: the token could touch nothing (write [\"\"] to allow every name)"
                .into(),
        ));
    }
    let token = Token {
        name: Identity::from(name),
        role,
        prefixes,
        digest: digest(&secret),
    };
    Ok((token, secret))
}

/// Who is calling: set on every request by [`Authenticate`].
#[derive(Clone, Debug)]
pub enum Caller {
    /// The server checks no tokens: everything is allowed.
    Anyone,
    Token(Arc<Token>),
}

impl Caller {
    /// The caller of a request that passed [`Authenticate`]. A request that
    /// did not (a service added without the interceptor) is refused rather
    /// than let through.
    pub fn of<T>(request: &Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("the request was not authenticated"))
    }

    /// The token's name for logs ("-" without tokens).
    pub fn name(&self) -> &str {
        match self {
            Caller::Anyone => "-",
            Caller::Token(token) => &token.name,
        }
    }

    /// Refuses unless the caller's role is at least `needed` and it may
    /// touch `name`.
    pub fn may(&self, needed: Role, name: &str) -> Result<(), Status> {
        let Caller::Token(token) = self else {
            return Ok(());
        };
        self.has_role(needed)?;
        if token.allows_name(name) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token {:?} may not touch {name:?}: its names start with {}",
            token.name,
            prefix_list(&token.prefixes)
        )))
    }

    /// Refuses unless the caller's role is at least `needed` and every name
    /// that starts with `prefix` is one it may touch.
    pub fn may_all_under(&self, needed: Role, prefix: &str) -> Result<(), Status> {
        let Caller::Token(token) = self else {
            return Ok(());
        };
        self.has_role(needed)?;
        if token
            .prefixes
            .iter()
            .any(|p| prefix.starts_with(p.as_str()))
        {
            return Ok(());
        }
        let asked = if prefix.is_empty() {
            "every name".to_owned()
        } else {
            format!("the names starting with {prefix:?}")
        };
        Err(Status::permission_denied(format!(
            "token {:?} may not see {asked}: its names start with {}; ask for one of those",
            token.name,
            prefix_list(&token.prefixes)
        )))
    }

    /// Refuses unless the caller's role is at least `needed` and it may
    /// touch every name: for calls about no single name.
    pub fn may_everything(&self, needed: Role) -> Result<(), Status> {
        let Caller::Token(token) = self else {
            return Ok(());
        };
        self.has_role(needed)?;
        if token.allows_every_name() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token {:?} may only touch names starting with {}; this call needs a token \
             with prefixes [\"\"]",
            token.name,
            prefix_list(&token.prefixes)
        )))
    }

    fn has_role(&self, needed: Role) -> Result<(), Status> {
        match self {
            Caller::Token(token) if token.role < needed => Err(Status::permission_denied(format!(
                "token {:?} has role {}; this call needs role {}",
                token.name,
                token.role.as_str(),
                needed.as_str()
            ))),
            _ => Ok(()),
        }
    }

    /// A handle on the engine that acts for this caller (see
    /// [`EngineHandle::acting_as`]).
    pub fn engine(&self, engine: &EngineHandle) -> EngineHandle {
        match self {
            Caller::Anyone => engine.clone(),
            Caller::Token(token) => engine.acting_as(token.name.clone()),
        }
    }
}

fn prefix_list(prefixes: &[String]) -> String {
    let quoted: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
    quoted.join(" or ")
}

/// A caller that long-lived streams (keep-alives, watches) check again
/// before each step, so that a token withdrawn by a reload stops them.
#[derive(Clone, Debug)]
pub struct Standing {
    auth: Option<Arc<Auth>>,
    caller: Caller,
}

impl Standing {
    /// `auth`: the server's tokens (`None`: it checks none).
    pub fn new(auth: Option<Arc<Auth>>, caller: Caller) -> Standing {
        Standing { auth, caller }
    }

    /// UNAUTHENTICATED once the caller's token is no longer in the file.
    pub fn check(&self) -> Result<(), Status> {
        match &self.auth {
            Some(auth) if !auth.in_force(&self.caller) => Err(Status::unauthenticated(format!(
                "token {:?} was withdrawn (the server reloaded its tokens)",
                self.caller.name()
            ))),
            _ => Ok(()),
        }
    }
}

/// Checks that the caller of `request` has at least `needed` and may touch
/// `name`; gives an engine handle that acts for it.
pub fn authorize<T>(
    request: &Request<T>,
    engine: &EngineHandle,
    needed: Role,
    name: &str,
) -> Result<EngineHandle, Status> {
    let caller = Caller::of(request)?;
    caller.may(needed, name)?;
    Ok(caller.engine(engine))
}

/// The interceptor in front of every syncd service: authenticates the
/// caller and records it in the request (see the module doc).
#[derive(Clone, Debug)]
pub struct Authenticate {
    auth: Option<Arc<Auth>>,
}

impl Authenticate {
    /// `None`: the server checks no tokens.
    pub fn new(auth: Option<Arc<Auth>>) -> Authenticate {
        Authenticate { auth }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match &self.auth {
            None => Caller::Anyone,
            Some(auth) => match auth.authenticate(request.metadata()) {
                Ok(token) => Caller::Token(token),
                Err(refusal) => {
                    let peer = request.remote_addr().map(|addr| addr.to_string());
                    tracing::info!(
                        peer = peer.as_deref().unwrap_or("unknown peer"),
                        "refused a caller: {}",
                        refusal.message()
                    );
                    return Err(refusal);
                }
            },
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tokens, String> {
        parse_tokens(text)
    }

    const GOOD: &str = r#"
        [[token]]
        name = "ci"
        secret = "s3cret-s3cret-s3cret"
        role = "use"
        prefixes = ["build-", "test-"]

        [[token]]
        name = "ops"
        secret = "0ps-0ps-0ps-0ps-0ps"
        role = "admin"
        prefixes = [""]

        [[token]]
        name = "dash"
        secret = "short"
        role = "read"
        prefixes = ["build-"]
    "#;

    fn caller(tokens: &Tokens, secret: &str) -> Caller {
        Caller::Token(tokens.by_digest[&digest(secret)].clone())
    }

    #[test]
    fn a_good_file_loads_every_token() {
        let tokens = parse(GOOD).unwrap();
        assert_eq!(tokens.by_digest.len(), 3);
        assert_eq!(tokens.short_secrets, vec!["dash".to_owned()]);
        let ci = caller(&tokens, "s3cret-s3cret-s3cret");
        assert_eq!(ci.name(), "ci");
    }

    #[test]
    fn roles_include_the_lower_ones_and_prefixes_bound_names() {
        let tokens = parse(GOOD).unwrap();
        let ci = caller(&tokens, "s3cret-s3cret-s3cret");
        let ops = caller(&tokens, "0ps-0ps-0ps-0ps-0ps");
        let dash = caller(&tokens, "short");
        let denied = |r: Result<(), Status>| r.unwrap_err().code() == tonic::Code::PermissionDenied;

        assert!(ci.may(Role::Use, "build-7").is_ok());
        assert!(ci.may(Role::Read, "test-x").is_ok());
        assert!(denied(ci.may(Role::Use, "deploy")));
        assert!(denied(ci.may(Role::Admin, "build-7")));
        assert!(dash.may(Role::Read, "build-1").is_ok());
        assert!(denied(dash.may(Role::Use, "build-1")));
        assert!(ops.may(Role::Admin, "anything").is_ok());

        assert!(ci.may_all_under(Role::Read, "build-").is_ok());
        assert!(ci.may_all_under(Role::Read, "build-x").is_ok());
        assert!(denied(ci.may_all_under(Role::Read, "")));
        assert!(denied(ci.may_all_under(Role::Read, "buil")));
        assert!(denied(ci.may_everything(Role::Read)));
        assert!(ops.may_everything(Role::Admin).is_ok());
        assert!(Caller::Anyone.may_everything(Role::Admin).is_ok());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("", "no [[token]]"),
            ("x = 1", "unknown key `x`"),
            ("token = 1", "write [[token]]"),
            (
                "[[token]]\nname = \"a\"\nsecret = \"s\"\nrole = \"root\"\nprefixes = [\"\"]",
                "is not one of read, use, admin",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"s\"\nrole = \"use\"",
                "`prefixes` is missing",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"s\"\nrole = \"use\"\nprefixes = []",
                "`prefixes` is empty",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"a b\"\nrole = \"use\"\nprefixes = [\"\"]",
                "printable ASCII",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"s\"\nrole = \"use\"\nprefixes = [\"\"]\nextra = 1",
                "unknown key `extra`",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"s\"\nrole = \"use\"\nprefixes = [\"\"]\n\
                 [[token]]\nname = \"a\"\nsecret = \"t\"\nrole = \"use\"\nprefixes = [\"\"]",
                "two tokens are named \"a\"",
            ),
            (
                "[[token]]\nname = \"a\"\nsecret = \"s\"\nrole = \"use\"\nprefixes = [\"\"]\n\
                 [[token]]\nname = \"b\"\nsecret = \"s\"\nrole = \"use\"\nprefixes = [\"\"]",
                "the same secret",
            ),
            ("[[token]]\nname = ", "not valid TOML"),
        ];
        for (text, expected) in cases {
            let error = parse(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_reload_replaces_the_tokens_and_a_bad_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, GOOD).unwrap();
        let auth = Auth::load(&path).unwrap();
        let ci = caller(&auth.current(), "s3cret-s3cret-s3cret");
        assert!(auth.in_force(&ci));

        let without_ci = GOOD.replacen("name = \"ci\"", "name = \"ci-2\"", 1);
        std::fs::write(&path, without_ci).unwrap();
        assert_eq!(auth.reload().unwrap(), 3);
        assert!(!auth.in_force(&ci), "renamed: no longer the same token");

        std::fs::write(&path, "[[token]]\nname = ").unwrap();
        let error = auth.reload().unwrap_err();
        assert!(error.0.contains("tokens.toml: not valid TOML"), "{error}");
        assert_eq!(auth.token_count(), 3, "the tokens in force stay");
        assert!(Auth::load(&dir.path().join("missing.toml")).is_err());
    }

    #[test]
    fn the_header_must_be_a_bearer_secret() {
        let tokens = Arc::new(parse(GOOD).unwrap());
        let auth = Auth {
            path: PathBuf::from("tokens.toml"),
            tokens: RwLock::new(tokens),
        };
        let with = |value: Option<&str>| {
            let mut metadata = MetadataMap::new();
            if let Some(value) = value {
                metadata.insert("authorization", value.parse().unwrap());
            }
            auth.authenticate(&metadata).map(|t| t.name.to_string())
        };
        assert_eq!(with(Some("Bearer short")).unwrap(), "dash");
        assert_eq!(with(Some("bearer  short")).unwrap(), "dash");
        for bad in [
            None,
            Some("short"),
            Some("Basic short"),
            Some("Bearer "),
            Some("Bearer nope"),
        ] {
            let status = with(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!status.message().contains("short"), "echoes the secret");
        }
    }
}
