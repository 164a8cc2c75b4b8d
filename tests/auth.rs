//! Token authentication (`syncd serve --auth-tokens FILE`) as any gRPC
//! client sees it, against the real `syncd` process with the raw generated
//! stubs: each call carries `authorization: Bearer SECRET` (or nothing),
//! and the test asserts the exact status code.
//!
//! - The matrix: every RPC of the ten kinds × {no token, a wrong secret, a
//!   read token, a read token limited to "build-", a use token on a name
//!   outside its prefix, the same on a name inside it, an admin token
//!   limited to "build-", an admin token for every name}. Where the call is
//!   allowed it must really work (an acquire is granted, a put item comes
//!   back from a get, ...).
//! - Sessions belong to the token that created them: every call that names
//!   a session refuses another token's, even an admin's; operators (admin
//!   with every name) close and revoke, and the log says who did it.
//! - Calls that name several primitives (a condition and its lock, the
//!   buckets of TryTakeMany) need every name allowed.
//! - System calls check the names under a prefix; health checking and
//!   reflection stay open; a malformed header is UNAUTHENTICATED.
//! - SIGHUP re-reads the file; a bad file keeps the old tokens, and a bad
//!   file at startup stops syncd with one line.
//! - Tokens over TLS.
//!
//! Timeouts here only stop a hang; nothing asserts a duration.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};

use common::certs::Pki;
use common::rpc::{assert_serving, end, list_services_v1, next, until};
use common::{run_bounded, send_signal, syncd_bin, Syncd, HANG_GUARD};
use syncd::proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status, Streaming};

// ---------------------------------------------------------------------------
// The token file
// ---------------------------------------------------------------------------

const OPS: &str = "ops-secret-0123456789abcdef";
const CI: &str = "ci-secret-0123456789abcdef";
const DASH: &str = "dash-secret-0123456789abcdef";
const RO_BUILD: &str = "ro-build-secret-0123456789abcdef";
const BUILD_ADMIN: &str = "build-admin-secret-0123456789abcdef";
/// Known to no server here.
const WRONG: &str = "wrong-secret-0123456789abcdef";

/// (name, secret, role, prefixes)
type TokenLine<'a> = (&'a str, &'a str, &'a str, &'a [&'a str]);

const TOKENS: &[TokenLine] = &[
    ("ops", OPS, "admin", &[""]),
    ("ci", CI, "use", &["build-"]),
    ("dash", DASH, "read", &[""]),
    ("ro-build", RO_BUILD, "read", &["build-"]),
    ("build-admin", BUILD_ADMIN, "admin", &["build-"]),
];

fn tokens_toml(tokens: &[TokenLine]) -> String {
    let mut text = String::new();
    for (name, secret, role, prefixes) in tokens {
        let prefixes: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
        text.push_str(&format!(
            "[[token]]\nname = {name:?}\nsecret = {secret:?}\nrole = {role:?}\nprefixes = [{}]\n\n",
            prefixes.join(", ")
        ));
    }
    text
}

/// A token file in a temporary directory.
struct TokenFile {
    dir: tempfile::TempDir,
}

impl TokenFile {
    fn new(text: &str) -> TokenFile {
        let file = TokenFile {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        file.write(text);
        file
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }

    fn arg(&self) -> String {
        self.path().to_str().expect("utf-8 temp path").to_owned()
    }

    /// Replaces the file in one step (a reader never sees half of it).
    fn write(&self, text: &str) {
        let temporary = self.dir.path().join("tokens.toml.new");
        std::fs::write(&temporary, text).expect("write tokens");
        std::fs::rename(&temporary, self.path()).expect("rename tokens");
    }
}

fn start_with_tokens(file: &TokenFile) -> Syncd {
    Syncd::start_with(&["--auth-tokens", &file.arg()])
}

// ---------------------------------------------------------------------------
// Callers: a channel, a bearer header (or none), and the caller's session
// ---------------------------------------------------------------------------

/// Adds `authorization: Bearer SECRET` to every call (streams included).
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(secret: Option<&str>) -> Bearer {
        Bearer(secret.map(|secret| {
            MetadataValue::try_from(format!("Bearer {secret}")).expect("ASCII secret")
        }))
    }
}

impl Bearer {
    /// Any `authorization` value, well-formed or not.
    fn raw(value: &str) -> Bearer {
        Bearer(Some(
            MetadataValue::try_from(value).expect("a valid header value"),
        ))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Caller {
    /// The token's name, or "no token" / "a wrong secret".
    label: &'static str,
    channel: Channel,
    bearer: Bearer,
    /// A session this caller created (0 when it could not create one).
    session: u64,
}

macro_rules! clients {
    ($($method:ident => $module:ident :: $client:ident),* $(,)?) => {
        impl Caller {
            $(
                fn $method(&self) -> pb::$module::$client<Svc> {
                    pb::$module::$client::with_interceptor(self.channel.clone(), self.bearer.clone())
                }
            )*
        }
    };
}

clients! {
    system => system_client::SystemClient,
    sessions => sessions_client::SessionsClient,
    locks => locks_client::LocksClient,
    semaphores => semaphores_client::SemaphoresClient,
    rwlocks => rw_locks_client::RwLocksClient,
    events => events_client::EventsClient,
    conditions => conditions_client::ConditionsClient,
    barriers => barriers_client::BarriersClient,
    queues => queues_client::QueuesClient,
    pools => pools_client::PoolsClient,
    ratelimits => rate_limits_client::RateLimitsClient,
    breakers => circuit_breakers_client::CircuitBreakersClient,
}

impl Caller {
    /// A caller without a session.
    fn new(channel: &Channel, label: &'static str, secret: Option<&str>) -> Caller {
        Caller {
            label,
            channel: channel.clone(),
            bearer: Bearer::new(secret),
            session: 0,
        }
    }

    /// A caller with a session of its own (a 10-minute TTL: the tests
    /// never keep it alive).
    async fn with_session(channel: &Channel, label: &'static str, secret: &str) -> Caller {
        let mut caller = Caller::new(channel, label, Some(secret));
        caller.session = caller
            .create_session()
            .await
            .unwrap_or_else(|e| panic!("{label} creates a session: {e:?}"));
        caller
    }

    async fn create_session(&self) -> Result<u64, Status> {
        let reply = self
            .sessions()
            .create(pb::CreateSessionRequest {
                ttl_ms: 600_000,
                client_name: format!("auth-test-{}", self.label),
            })
            .await?;
        Ok(reply.into_inner().session_id)
    }

    /// The same credentials with another session.
    fn on_session(&self, session: u64) -> Caller {
        Caller {
            session,
            ..self.clone()
        }
    }
}

async fn connect(syncd: &Syncd) -> Channel {
    common::rpc::open_channel(syncd).await
}

/// A failure of the test's own expectation (the server answered, but not
/// with what the call should give): reported like a status, marked TEST.
fn wrong(what: impl std::fmt::Display) -> Status {
    Status::internal(format!("TEST: {what}"))
}

/// The first message of a streaming call, or the status that ended it.
async fn first<T>(stream: &mut Streaming<T>) -> Result<T, Status> {
    match tokio::time::timeout(HANG_GUARD, stream.message()).await {
        Ok(Ok(Some(message))) => Ok(message),
        Ok(Ok(None)) => Err(wrong("the stream ended without a message")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no answer within {HANG_GUARD:?}"),
    }
}

fn code_of<T>(result: &Result<T, Status>) -> Option<Code> {
    result.as_ref().err().map(Status::code)
}

/// Asserts a call was refused with `code`; returns the status's message.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) -> String {
    match result {
        Err(status) if status.code() == code => status.message().to_owned(),
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

/// The role a call needs (the contract's access table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Read,
    Use,
    Admin,
}
use Role::{Admin, Read, Use};

/// What one call of the matrix gets: the caller (credentials and its own
/// session), a name unique to the cell, and what the preparation made.
#[derive(Clone)]
struct Call {
    who: Caller,
    /// The admin token, for preparations that need no session of `who`.
    ops: Caller,
    name: String,
    /// A fencing token or item id from the preparation; 1 (belonging to
    /// nobody here) when the call is expected to be refused, so that no
    /// preparation runs and the refusal can only come from the auth check.
    fixture: u64,
}

type Fut = Pin<Box<dyn Future<Output = Result<u64, Status>> + Send>>;
type Step = fn(Call) -> Fut;

macro_rules! step {
    ($f:expr) => {
        |call: Call| -> Fut { Box::pin($f(call)) }
    };
}

struct Case {
    kind: &'static str,
    rpc: &'static str,
    needs: Role,
    /// Run first, as the same caller, only when the call should succeed:
    /// makes the hold to release, the item to ack, the breaker to force...
    prepare: Option<Step>,
    call: Step,
}

fn row(
    kind: &'static str,
    rpc: &'static str,
    needs: Role,
    prepare: Option<Step>,
    call: Step,
) -> Case {
    Case {
        kind,
        rpc,
        needs,
        prepare,
        call,
    }
}

/// Every RPC of the ten kinds, with the role it needs.
#[rustfmt::skip]
fn matrix() -> Vec<Case> {
    vec![
        row("lock", "Acquire", Use, None, step!(lock_acquire)),
        row("lock", "Release", Use, Some(step!(lock_acquire)), step!(lock_release)),
        row("lock", "Describe", Read, None, step!(lock_describe)),
        row("semaphore", "Acquire", Use, None, step!(semaphore_acquire)),
        row("semaphore", "Release", Use, Some(step!(semaphore_acquire)), step!(semaphore_release)),
        row("semaphore", "Describe", Read, None, step!(semaphore_describe)),
        row("rwlock", "Acquire", Use, None, step!(rwlock_acquire)),
        row("rwlock", "Release", Use, Some(step!(rwlock_acquire)), step!(rwlock_release)),
        row("rwlock", "Describe", Read, None, step!(rwlock_describe)),
        row("event", "Set", Use, None, step!(event_set)),
        row("event", "Clear", Use, None, step!(event_clear)),
        row("event", "Wait", Use, Some(step!(event_set)), step!(event_wait)),
        row("event", "Describe", Read, None, step!(event_describe)),
        row("condition", "Wait", Use, Some(step!(condition_lock)), step!(condition_wait)),
        row("condition", "Notify", Use, None, step!(condition_notify)),
        row("condition", "Describe", Read, None, step!(condition_describe)),
        row("barrier", "Wait", Use, None, step!(barrier_wait)),
        row("barrier", "Reset", Admin, Some(step!(barrier_wait)), step!(barrier_reset)),
        row("barrier", "Describe", Read, None, step!(barrier_describe)),
        row("barrier", "Delete", Admin, Some(step!(barrier_wait)), step!(barrier_delete)),
        row("queue", "Put", Use, None, step!(queue_put)),
        row("queue", "Get", Use, Some(step!(queue_put)), step!(queue_get)),
        row("queue", "Ack", Use, Some(step!(queue_put_get)), step!(queue_ack)),
        row("queue", "Nack", Use, Some(step!(queue_put_get)), step!(queue_nack)),
        row("queue", "Join", Use, None, step!(queue_join)),
        row("queue", "Describe", Read, None, step!(queue_describe)),
        row("pool", "Checkout", Use, None, step!(pool_checkout)),
        row("pool", "Checkin", Use, Some(step!(pool_checkout)), step!(pool_checkin)),
        row("pool", "Describe", Read, None, step!(pool_describe)),
        row("ratelimit", "Take", Use, None, step!(ratelimit_take)),
        row("ratelimit", "TryTake", Use, None, step!(ratelimit_try_take)),
        row("ratelimit", "TryTakeMany", Use, None, step!(ratelimit_try_take_many)),
        row("ratelimit", "Describe", Read, None, step!(ratelimit_describe)),
        row("ratelimit", "Delete", Admin, Some(step!(ratelimit_try_take)), step!(ratelimit_delete)),
        row("breaker", "Allow", Use, None, step!(breaker_allow)),
        row("breaker", "Record", Use, Some(step!(breaker_allow)), step!(breaker_record)),
        row("breaker", "Watch", Read, Some(step!(breaker_create_by_ops)), step!(breaker_watch)),
        row("breaker", "Describe", Read, None, step!(breaker_describe)),
        row("breaker", "ForceOpen", Admin, Some(step!(breaker_allow)), step!(breaker_force_open)),
        row("breaker", "ForceClose", Admin, Some(step!(breaker_allow)), step!(breaker_force_close)),
        row("breaker", "Reset", Admin, Some(step!(breaker_allow)), step!(breaker_reset)),
        row("breaker", "Delete", Admin, Some(step!(breaker_allow)), step!(breaker_delete)),
    ]
}

/// Who calls, on which names, and what they must get.
#[derive(Clone, Copy, Debug)]
enum Column {
    NoToken,
    WrongSecret,
    /// dash: read, every name.
    Read,
    /// ro-build: read, names starting with "build-", on such a name.
    ReadOnPrefix,
    /// ci: use, "build-", on a name outside it.
    UseOffPrefix,
    /// ci on a "build-" name.
    UseOnPrefix,
    /// build-admin: admin, "build-", on such a name.
    AdminOnPrefix,
    /// ops: admin, every name.
    Admin,
}

const COLUMNS: [Column; 8] = [
    Column::NoToken,
    Column::WrongSecret,
    Column::Read,
    Column::ReadOnPrefix,
    Column::UseOffPrefix,
    Column::UseOnPrefix,
    Column::AdminOnPrefix,
    Column::Admin,
];

impl Column {
    /// The start of every name this column's calls touch.
    fn prefix(self) -> &'static str {
        match self {
            Column::Read => "any-",
            Column::UseOffPrefix | Column::Admin => "deploy-",
            _ => "build-",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Column::NoToken => "anon",
            Column::WrongSecret => "wrong",
            Column::Read => "dash",
            Column::ReadOnPrefix => "ro",
            Column::UseOffPrefix => "ci-off",
            Column::UseOnPrefix => "ci",
            Column::AdminOnPrefix => "badmin",
            Column::Admin => "ops",
        }
    }

    /// The status code the call must end with; None = success.
    fn expect(self, needs: Role) -> Option<Code> {
        let allowed = match self {
            Column::NoToken | Column::WrongSecret => return Some(Code::Unauthenticated),
            Column::Read | Column::ReadOnPrefix => needs == Read,
            Column::UseOffPrefix => false,
            Column::UseOnPrefix => needs <= Use,
            Column::AdminOnPrefix | Column::Admin => true,
        };
        (!allowed).then_some(Code::PermissionDenied)
    }
}

struct Callers {
    anonymous: Caller,
    wrong: Caller,
    dash: Caller,
    ro_build: Caller,
    ci: Caller,
    build_admin: Caller,
    ops: Caller,
}

impl Callers {
    async fn new(channel: &Channel) -> Callers {
        let ops = Caller::with_session(channel, "ops", OPS).await;
        Callers {
            // Without valid credentials the session named does not matter.
            anonymous: Caller::new(channel, "no token", None).on_session(ops.session),
            wrong: Caller::new(channel, "a wrong secret", Some(WRONG)).on_session(ops.session),
            dash: Caller::with_session(channel, "dash", DASH).await,
            ro_build: Caller::with_session(channel, "ro-build", RO_BUILD).await,
            ci: Caller::with_session(channel, "ci", CI).await,
            build_admin: Caller::with_session(channel, "build-admin", BUILD_ADMIN).await,
            ops,
        }
    }

    fn of(&self, column: Column) -> &Caller {
        match column {
            Column::NoToken => &self.anonymous,
            Column::WrongSecret => &self.wrong,
            Column::Read => &self.dash,
            Column::ReadOnPrefix => &self.ro_build,
            Column::UseOffPrefix | Column::UseOnPrefix => &self.ci,
            Column::AdminOnPrefix => &self.build_admin,
            Column::Admin => &self.ops,
        }
    }
}

fn describe_code(code: Option<Code>) -> String {
    match code {
        None => "OK".to_owned(),
        Some(code) => format!("{code:?}"),
    }
}

/// Checks one answer; None when it is right.
fn judge(expected: Option<Code>, who: &Caller, got: &Result<u64, Status>) -> Option<String> {
    let got_code = code_of(got);
    if got_code != expected {
        let detail = match got {
            Ok(_) => String::new(),
            Err(status) => format!(" ({:?})", status.message()),
        };
        return Some(format!(
            "expected {}, got {}{detail}",
            describe_code(expected),
            describe_code(got_code)
        ));
    }
    let Err(status) = got else { return None };
    let message = status.message();
    let secrets = TOKENS.iter().map(|(_, secret, _, _)| *secret);
    if secrets
        .chain([WRONG])
        .any(|secret| message.contains(secret))
    {
        return Some(format!("the message echoes a secret: {message:?}"));
    }
    if status.code() == Code::PermissionDenied {
        let names_the_token = format!("token {:?}", who.label);
        if !message.contains(&names_the_token) {
            return Some(format!(
                "PERMISSION_DENIED does not say {names_the_token}: {message:?}"
            ));
        }
    }
    None
}

async fn guarded(future: Fut) -> Result<u64, Status> {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("a call hung for {HANG_GUARD:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_kind_answers_each_kind_of_caller_as_the_access_table_says() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = start_with_tokens(&file);
    let channel = connect(&syncd).await;
    let callers = Callers::new(&channel).await;

    let cases = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        for column in COLUMNS {
            checked += 1;
            let who = callers.of(column).clone();
            let name = format!(
                "{}{}-{}-{}",
                column.prefix(),
                case.kind,
                case.rpc.to_lowercase(),
                column.tag()
            );
            let expected = column.expect(case.needs);
            let cell = format!("{}.{} as {} on {name:?}", case.kind, case.rpc, who.label);
            let mut call = Call {
                who: who.clone(),
                ops: callers.ops.clone(),
                name,
                fixture: 1,
            };
            if let (None, Some(prepare)) = (expected, case.prepare) {
                match guarded(prepare(call.clone())).await {
                    Ok(fixture) => call.fixture = fixture,
                    Err(status) => {
                        failures.push(format!("{cell}: the preparation failed: {status:?}"));
                        continue;
                    }
                }
            }
            let got = guarded((case.call)(call)).await;
            if let Some(failure) = judge(expected, &who, &got) {
                failures.push(format!("{cell}: {failure}"));
            }
        }
    }
    eprintln!(
        "{checked} cases ({} RPCs x {} callers), {} wrong",
        cases.len(),
        COLUMNS.len(),
        failures.len()
    );
    assert_eq!(checked, 42 * 8, "the matrix has every RPC of the ten kinds");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The RPCs of the matrix whose request names a session.
const SESSION_RPCS: &[(&str, &str)] = &[
    ("lock", "Acquire"),
    ("lock", "Release"),
    ("semaphore", "Acquire"),
    ("semaphore", "Release"),
    ("rwlock", "Acquire"),
    ("rwlock", "Release"),
    ("event", "Wait"),
    ("condition", "Wait"),
    ("barrier", "Wait"),
    ("queue", "Put"),
    ("queue", "Get"),
    ("queue", "Ack"),
    ("queue", "Nack"),
    ("queue", "Join"),
    ("pool", "Checkout"),
    ("pool", "Checkin"),
    ("ratelimit", "Take"),
    ("breaker", "Allow"),
    ("breaker", "Record"),
    ("breaker", "Watch"),
];

#[tokio::test]
async fn every_call_naming_a_session_refuses_another_tokens_session_even_for_an_admin() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = start_with_tokens(&file);
    let channel = connect(&syncd).await;
    let ci = Caller::with_session(&channel, "ci", CI).await;
    let ops = Caller::with_session(&channel, "ops", OPS).await;
    let build_admin = Caller::with_session(&channel, "build-admin", BUILD_ADMIN).await;

    let cases = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for &(kind, rpc) in SESSION_RPCS {
        let case = (cases.iter())
            .find(|case| (case.kind, case.rpc) == (kind, rpc))
            .unwrap_or_else(|| panic!("{kind}.{rpc} is not in the matrix"));
        // (user, owner): admins with ci's session, ci with ops's.
        for (user, owner) in [(&ops, &ci), (&build_admin, &ci), (&ci, &ops)] {
            checked += 1;
            let name = format!("build-{kind}-{}-foreign-{}", rpc.to_lowercase(), user.label);
            let call = Call {
                who: user.on_session(owner.session),
                ops: ops.clone(),
                name: name.clone(),
                fixture: 1,
            };
            let cell = format!(
                "{kind}.{rpc} as {} with {}'s session on {name:?}",
                user.label, owner.label
            );
            let expected = format!(
                "session {} belongs to token {:?}; token {:?} may not use it",
                owner.session, owner.label, user.label
            );
            match guarded((case.call)(call)).await {
                Err(status)
                    if status.code() == Code::PermissionDenied
                        && status.message().contains(&expected) => {}
                other => failures.push(format!(
                    "{cell}: expected PermissionDenied ({expected:?}), got {other:?}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- the calls of the matrix -----------------------------------------------
// Each returns a value the next step may need (a fencing token, an item id)
// or 0, and an error status when the server refused or answered wrongly.

async fn lock_acquire(c: Call) -> Result<u64, Status> {
    acquire_lock(&c.who, &c.name).await
}

async fn acquire_lock(who: &Caller, name: &str) -> Result<u64, Status> {
    let request = pb::AcquireLockRequest {
        session_id: who.session,
        name: name.to_owned(),
        timeout_ms: None,
        acquire_id: 0,
    };
    let mut stream = who.locks().acquire(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::acquire_lock_response::Event::Granted(g)) => Ok(g.fencing_token),
        other => Err(wrong(format!("expected a grant, got {other:?}"))),
    }
}

async fn lock_release(c: Call) -> Result<u64, Status> {
    let request = pb::ReleaseLockRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        fencing_token: c.fixture,
    };
    c.who.locks().release(request).await?;
    Ok(0)
}

fn same_name(described: &str, name: &str) -> Result<u64, Status> {
    if described == name {
        Ok(0)
    } else {
        Err(wrong(format!("described {described:?}, not {name:?}")))
    }
}

/// Describe calls: the request is only the cell's name (`pb::REQUEST`),
/// and the reply must describe that name.
macro_rules! describe {
    ($($f:ident => $client:ident().describe($request:ident),)*) => {$(
        async fn $f(c: Call) -> Result<u64, Status> {
            let request = pb::$request { name: c.name.clone() };
            let described = c.who.$client().describe(request).await?.into_inner();
            same_name(&described.name, &c.name)
        }
    )*};
}

/// Calls whose request is only the cell's name (`pb::REQUEST`) and whose
/// reply has nothing to check.
macro_rules! by_name {
    ($($f:ident => $client:ident().$rpc:ident($request:ident),)*) => {$(
        async fn $f(c: Call) -> Result<u64, Status> {
            let request = pb::$request { name: c.name.clone() };
            c.who.$client().$rpc(request).await?;
            Ok(0)
        }
    )*};
}

describe! {
    lock_describe => locks().describe(DescribeLockRequest),
    semaphore_describe => semaphores().describe(DescribeSemaphoreRequest),
    rwlock_describe => rwlocks().describe(DescribeRwLockRequest),
    event_describe => events().describe(DescribeEventRequest),
    condition_describe => conditions().describe(DescribeConditionRequest),
    barrier_describe => barriers().describe(DescribeBarrierRequest),
    queue_describe => queues().describe(DescribeQueueRequest),
    pool_describe => pools().describe(DescribePoolRequest),
    ratelimit_describe => ratelimits().describe(DescribeRateLimitRequest),
    breaker_describe => breakers().describe(DescribeBreakerRequest),
}

by_name! {
    event_set => events().set(SetEventRequest),
    event_clear => events().clear(ClearEventRequest),
    barrier_reset => barriers().reset(ResetBarrierRequest),
    barrier_delete => barriers().delete(DeleteBarrierRequest),
    ratelimit_delete => ratelimits().delete(DeleteRateLimitRequest),
    breaker_delete => breakers().delete(DeleteBreakerRequest),
}

async fn semaphore_acquire(c: Call) -> Result<u64, Status> {
    let request = pb::AcquireSemaphoreRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        capacity: 2,
        permits: 1,
        timeout_ms: None,
        acquire_id: 0,
    };
    let mut stream = c.who.semaphores().acquire(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::acquire_semaphore_response::Event::Granted(g)) => Ok(g.fencing_token),
        other => Err(wrong(format!("expected a grant, got {other:?}"))),
    }
}

async fn semaphore_release(c: Call) -> Result<u64, Status> {
    let request = pb::ReleaseSemaphoreRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        fencing_token: c.fixture,
    };
    c.who.semaphores().release(request).await?;
    Ok(0)
}

async fn rwlock_acquire(c: Call) -> Result<u64, Status> {
    let request = pb::AcquireRwLockRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        mode: pb::RwMode::Write.into(),
        timeout_ms: None,
        acquire_id: 0,
    };
    let mut stream = c.who.rwlocks().acquire(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::acquire_rw_lock_response::Event::Granted(g)) => Ok(g.fencing_token),
        other => Err(wrong(format!("expected a grant, got {other:?}"))),
    }
}

async fn rwlock_release(c: Call) -> Result<u64, Status> {
    let request = pb::ReleaseRwLockRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        fencing_token: c.fixture,
    };
    c.who.rwlocks().release(request).await?;
    Ok(0)
}

/// Prepared by a Set: the wait answers at once.
async fn event_wait(c: Call) -> Result<u64, Status> {
    let request = pb::WaitEventRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        timeout_ms: None,
    };
    let mut stream = c.who.events().wait(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::wait_event_response::Event::Set(_)) => Ok(0),
        other => Err(wrong(format!("expected `set`, got {other:?}"))),
    }
}

/// The lock a condition wait gives up: NAME-lock (so inside the same
/// prefix as the condition).
fn condition_lock_name(condition: &str) -> String {
    format!("{condition}-lock")
}

async fn condition_lock(c: Call) -> Result<u64, Status> {
    acquire_lock(&c.who, &condition_lock_name(&c.name)).await
}

/// Prepared by acquiring the lock: waits (`queued`), is notified, and
/// holds the lock again under a new token.
async fn condition_wait(c: Call) -> Result<u64, Status> {
    let request = pb::WaitConditionRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        lock: condition_lock_name(&c.name),
        fencing_token: c.fixture,
        timeout_ms: None,
    };
    let mut stream = c.who.conditions().wait(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::wait_condition_response::Event::Queued(_)) => {}
        other => return Err(wrong(format!("expected `queued`, got {other:?}"))),
    }
    let notify = pb::NotifyConditionRequest {
        name: c.name.clone(),
        count: 1,
        all: false,
    };
    let woken = c.who.conditions().notify(notify).await?.into_inner().woken;
    if woken != 1 {
        return Err(wrong(format!("notify woke {woken}, not 1")));
    }
    match first(&mut stream).await?.event {
        Some(pb::wait_condition_response::Event::Reacquired(r))
            if !r.timed_out && r.fencing_token > c.fixture =>
        {
            Ok(r.fencing_token)
        }
        other => Err(wrong(format!("expected `reacquired`, got {other:?}"))),
    }
}

async fn condition_notify(c: Call) -> Result<u64, Status> {
    let request = pb::NotifyConditionRequest {
        name: c.name.clone(),
        count: 0,
        all: true,
    };
    c.who.conditions().notify(request).await?;
    Ok(0)
}

/// A barrier of one party: passes at once (and so exists afterwards).
async fn barrier_wait(c: Call) -> Result<u64, Status> {
    let request = pb::WaitBarrierRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        parties: 1,
        timeout_ms: None,
    };
    let mut stream = c.who.barriers().wait(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::wait_barrier_response::Event::Passed(_)) => Ok(0),
        other => Err(wrong(format!("expected `passed`, got {other:?}"))),
    }
}

const ITEM: &[u8] = b"the item";

async fn queue_put(c: Call) -> Result<u64, Status> {
    let request = pb::PutRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        value: ITEM.to_vec(),
        priority: 0,
        capacity: None,
        max_deliveries: 0,
        timeout_ms: None,
        put_id: 0,
    };
    let mut stream = c.who.queues().put(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::put_response::Event::Stored(stored)) => Ok(stored.item_id),
        other => Err(wrong(format!("expected `stored`, got {other:?}"))),
    }
}

/// Prepared by a put: gets that very item.
async fn queue_get(c: Call) -> Result<u64, Status> {
    let request = pb::GetRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        timeout_ms: None,
        visibility_timeout_ms: 0,
        no_ack: false,
    };
    let mut stream = c.who.queues().get(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::get_response::Event::Item(item)) if item.value == ITEM => Ok(item.id),
        other => Err(wrong(format!("expected the item put, got {other:?}"))),
    }
}

/// An item in flight under the caller's session.
async fn queue_put_get(c: Call) -> Result<u64, Status> {
    let put = queue_put(c.clone()).await?;
    let got = queue_get(c).await?;
    if got == put {
        Ok(got)
    } else {
        Err(wrong(format!("put item {put}, got item {got}")))
    }
}

async fn queue_ack(c: Call) -> Result<u64, Status> {
    let request = pb::AckRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        item_id: c.fixture,
    };
    c.who.queues().ack(request).await?;
    Ok(0)
}

async fn queue_nack(c: Call) -> Result<u64, Status> {
    let request = pb::NackRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        item_id: c.fixture,
    };
    c.who.queues().nack(request).await?;
    Ok(0)
}

/// Nothing pending: joined at once.
async fn queue_join(c: Call) -> Result<u64, Status> {
    let request = pb::JoinRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        timeout_ms: None,
    };
    let mut stream = c.who.queues().join(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::join_response::Event::Joined(_)) => Ok(0),
        other => Err(wrong(format!("expected `joined`, got {other:?}"))),
    }
}

async fn pool_checkout(c: Call) -> Result<u64, Status> {
    let request = pb::CheckoutRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        size: 1,
        max_age_ms: 0,
        max_idle_ms: 0,
        timeout_ms: None,
        acquire_id: 0,
    };
    let mut stream = c.who.pools().checkout(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::checkout_response::Event::Resource(resource)) => Ok(resource.fencing_token),
        other => Err(wrong(format!("expected a resource, got {other:?}"))),
    }
}

async fn pool_checkin(c: Call) -> Result<u64, Status> {
    let request = pb::CheckinRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        fencing_token: c.fixture,
        healthy: true,
        metadata: None,
    };
    c.who.pools().checkin(request).await?;
    Ok(0)
}

fn try_take_request(name: &str) -> pb::TryTakeTokensRequest {
    pb::TryTakeTokensRequest {
        name: name.to_owned(),
        rate_per_s: 10,
        capacity: 5,
        tokens: 1,
    }
}

async fn ratelimit_take(c: Call) -> Result<u64, Status> {
    let request = pb::TakeTokensRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        rate_per_s: 10,
        capacity: 5,
        tokens: 1,
        timeout_ms: None,
    };
    let mut stream = c.who.ratelimits().take(request).await?.into_inner();
    match first(&mut stream).await?.event {
        Some(pb::take_tokens_response::Event::Taken(_)) => Ok(0),
        other => Err(wrong(format!("expected `taken`, got {other:?}"))),
    }
}

async fn ratelimit_try_take(c: Call) -> Result<u64, Status> {
    let reply = c
        .who
        .ratelimits()
        .try_take(try_take_request(&c.name))
        .await?
        .into_inner();
    if reply.taken {
        Ok(0)
    } else {
        Err(wrong(format!(
            "a full bucket did not give a token: {reply:?}"
        )))
    }
}

/// Two buckets, both under the cell's name.
async fn ratelimit_try_take_many(c: Call) -> Result<u64, Status> {
    let request = pb::TryTakeManyRequest {
        buckets: vec![
            try_take_request(&c.name),
            try_take_request(&format!("{}-2", c.name)),
        ],
    };
    let reply = c
        .who
        .ratelimits()
        .try_take_many(request)
        .await?
        .into_inner();
    if reply.taken {
        Ok(0)
    } else {
        Err(wrong(format!(
            "full buckets did not give tokens: {reply:?}"
        )))
    }
}

fn breaker_settings() -> pb::BreakerSettings {
    pb::BreakerSettings {
        failure_threshold: 5,
        ..Default::default()
    }
}

async fn allow_call(who: &Caller, name: &str) -> Result<u64, Status> {
    let request = pb::AllowCallRequest {
        session_id: who.session,
        name: name.to_owned(),
        settings: Some(breaker_settings()),
        acquire_id: 0,
    };
    let reply = who.breakers().allow(request).await?.into_inner();
    match reply.verdict {
        Some(pb::allow_call_response::Verdict::Permit(permit)) => Ok(permit.fencing_token),
        other => Err(wrong(format!("expected a permit, got {other:?}"))),
    }
}

async fn breaker_allow(c: Call) -> Result<u64, Status> {
    allow_call(&c.who, &c.name).await
}

/// A breaker to watch, made by ops (a read token cannot make one).
async fn breaker_create_by_ops(c: Call) -> Result<u64, Status> {
    allow_call(&c.ops, &c.name).await
}

async fn breaker_record(c: Call) -> Result<u64, Status> {
    let request = pb::RecordCallRequest {
        session_id: c.who.session,
        name: c.name.clone(),
        fencing_token: c.fixture,
        outcome: pb::CallOutcome::Success.into(),
    };
    let reply = c.who.breakers().record(request).await?.into_inner();
    if reply.counted {
        Ok(0)
    } else {
        Err(wrong(format!("the outcome was not counted: {reply:?}")))
    }
}

async fn breaker_watch(c: Call) -> Result<u64, Status> {
    let request = pb::WatchBreakerRequest {
        session_id: c.who.session,
        name: c.name.clone(),
    };
    let mut stream = c.who.breakers().watch(request).await?.into_inner();
    let state = first(&mut stream).await?.state();
    if state == pb::BreakerState::Closed {
        Ok(0)
    } else {
        Err(wrong(format!("a new breaker watched as {state:?}")))
    }
}

fn control(c: &Call) -> pb::ControlBreakerRequest {
    pb::ControlBreakerRequest {
        name: c.name.clone(),
    }
}

fn in_state(reply: pb::ControlBreakerResponse, want: pb::BreakerState) -> Result<u64, Status> {
    if reply.state() == want {
        Ok(0)
    } else {
        Err(wrong(format!("expected {want:?}, got {reply:?}")))
    }
}

async fn breaker_force_open(c: Call) -> Result<u64, Status> {
    let reply = c.who.breakers().force_open(control(&c)).await?.into_inner();
    in_state(reply, pb::BreakerState::ForcedOpen)
}

async fn breaker_force_close(c: Call) -> Result<u64, Status> {
    let reply = c
        .who
        .breakers()
        .force_close(control(&c))
        .await?
        .into_inner();
    in_state(reply, pb::BreakerState::ForcedClosed)
}

async fn breaker_reset(c: Call) -> Result<u64, Status> {
    let reply = c.who.breakers().reset(control(&c)).await?.into_inner();
    in_state(reply, pb::BreakerState::Closed)
}

// ---------------------------------------------------------------------------
// Calls about more than one name
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_name_a_call_touches_is_checked() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = start_with_tokens(&file);
    let channel = connect(&syncd).await;
    let ci = Caller::with_session(&channel, "ci", CI).await;
    let ops = Caller::with_session(&channel, "ops", OPS).await;

    // A condition inside the prefix bound to a lock outside it, and the
    // reverse: both names are checked.
    let outside_lock = acquire_lock(&ops, "deploy-lock").await.expect("ops locks");
    let request = |name: &str, lock: &str, fencing_token| pb::WaitConditionRequest {
        session_id: ci.session,
        name: name.into(),
        lock: lock.into(),
        fencing_token,
        timeout_ms: None,
    };
    let message = refused(
        "ci waits on build-cond with deploy-lock",
        ci.conditions()
            .wait(request("build-cond", "deploy-lock", outside_lock))
            .await,
        Code::PermissionDenied,
    );
    assert!(message.contains("deploy-lock"), "{message}");
    let inside_lock = acquire_lock(&ci, "build-lock").await.expect("ci locks");
    let message = refused(
        "ci waits on deploy-cond with build-lock",
        ci.conditions()
            .wait(request("deploy-cond", "build-lock", inside_lock))
            .await,
        Code::PermissionDenied,
    );
    assert!(message.contains("deploy-cond"), "{message}");

    // One bucket of many outside the prefix refuses the whole request, and
    // nothing is taken from the others.
    let one_token = |name: &str| pb::TryTakeTokensRequest {
        name: name.into(),
        rate_per_s: 1,
        capacity: 1,
        tokens: 1,
    };
    let mixed = pb::TryTakeManyRequest {
        buckets: vec![one_token("build-bucket"), one_token("deploy-bucket")],
    };
    let message = refused(
        "ci takes from build-bucket and deploy-bucket",
        ci.ratelimits().try_take_many(mixed).await,
        Code::PermissionDenied,
    );
    assert!(message.contains("deploy-bucket"), "{message}");
    let taken = ci
        .ratelimits()
        .try_take(one_token("build-bucket"))
        .await
        .expect("try take")
        .into_inner();
    assert!(taken.taken, "the refused request took nothing: {taken:?}");
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// One keep-alive on a fresh stream: its reply, or the status that ended it.
async fn keep_alive(caller: &Caller, session_id: u64) -> Result<pb::KeepAliveResponse, Status> {
    let request = pb::KeepAliveRequest {
        session_id,
        notices_seen_through: 0,
    };
    let mut replies = caller
        .sessions()
        .keep_alive(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    first(&mut replies).await
}

/// The refusal for using another token's session, per the contract.
fn assert_foreign_session(message: &str, session: u64, owner: &str, user: &str) {
    let expected =
        format!("session {session} belongs to token {owner:?}; token {user:?} may not use it");
    assert!(
        message.contains(&expected),
        "expected {expected:?} in {message:?}"
    );
}

/// Waits for a log line with `message`, then asserts it has `field=value`.
async fn assert_logged(syncd: &Syncd, message: &str, field: &str, value: &str) {
    let line = syncd
        .log()
        .until(message, |line| line.contains(message))
        .await;
    let bare = format!("{field}={value}");
    assert!(
        line.contains(&bare),
        "expected {bare} in the log line {line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_only_for_its_token_and_only_operators_close_or_revoke_others() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = Syncd::start_logged(&["--auth-tokens", &file.arg()]);
    let channel = connect(&syncd).await;

    // Creating a session needs a token; a read token may.
    for caller in [
        Caller::new(&channel, "no token", None),
        Caller::new(&channel, "a wrong secret", Some(WRONG)),
    ] {
        refused(
            &format!("Create with {}", caller.label),
            caller.create_session().await,
            Code::Unauthenticated,
        );
    }
    let dash = Caller::with_session(&channel, "dash", DASH).await;
    let ro_build = Caller::with_session(&channel, "ro-build", RO_BUILD).await;
    let ci = Caller::with_session(&channel, "ci", CI).await;
    let ops = Caller::with_session(&channel, "ops", OPS).await;
    let build_admin = Caller::with_session(&channel, "build-admin", BUILD_ADMIN).await;
    keep_alive(&ci, ci.session)
        .await
        .expect("ci keeps its own session alive");
    keep_alive(&dash, dash.session)
        .await
        .expect("dash keeps its own session alive");

    // Nobody else may use ci's session, not even an operator.
    for other in [&ops, &dash, &build_admin] {
        let message = refused(
            &format!("KeepAlive of ci's session by {}", other.label),
            keep_alive(other, ci.session).await,
            Code::PermissionDenied,
        );
        assert_foreign_session(&message, ci.session, "ci", other.label);
    }
    let ops_on_ci = ops.on_session(ci.session);
    let message = refused(
        "ops acquires with ci's session",
        acquire_lock(&ops_on_ci, "build-stolen").await,
        Code::PermissionDenied,
    );
    assert_foreign_session(&message, ci.session, "ci", "ops");
    // And ci may not use the operator's.
    let message = refused(
        "ci acquires with ops's session",
        acquire_lock(&ci.on_session(ops.session), "build-stolen").await,
        Code::PermissionDenied,
    );
    assert_foreign_session(&message, ops.session, "ops", "ci");

    // ci holds a lock, ops waits for it: Describe shows who, by token.
    let held = acquire_lock(&ci, "build-held").await.expect("ci acquires");
    let mut waiting = ops
        .locks()
        .acquire(pb::AcquireLockRequest {
            session_id: ops.session,
            name: "build-held".into(),
            timeout_ms: None,
            acquire_id: 0,
        })
        .await
        .expect("ops waits")
        .into_inner();
    let queued = first(&mut waiting).await.expect("queued").event;
    assert!(
        matches!(queued, Some(pb::acquire_lock_response::Event::Queued(_))),
        "{queued:?}"
    );
    let described = dash
        .locks()
        .describe(pb::DescribeLockRequest {
            name: "build-held".into(),
        })
        .await
        .expect("dash describes")
        .into_inner();
    let holder = described.holder.clone().expect("held");
    assert_eq!(
        (holder.session_id, holder.fencing_token),
        (ci.session, held)
    );
    assert_eq!(holder.identity, "ci");
    assert_eq!(described.waiters.len(), 1, "{described:?}");
    assert_eq!(described.waiters[0].identity, "ops");

    // The other kinds show the identity too.
    let permits = semaphore_acquire(Call {
        who: ci.clone(),
        ops: ops.clone(),
        name: "build-sem".into(),
        fixture: 0,
    })
    .await
    .expect("ci takes a permit");
    let semaphore = dash
        .semaphores()
        .describe(pb::DescribeSemaphoreRequest {
            name: "build-sem".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(semaphore.holders.len(), 1, "{semaphore:?}");
    assert_eq!(semaphore.holders[0].fencing_token, permits);
    assert_eq!(semaphore.holders[0].identity, "ci");
    pool_checkout(Call {
        who: ci.clone(),
        ops: ops.clone(),
        name: "build-pool".into(),
        fixture: 0,
    })
    .await
    .expect("ci checks out");
    let pool = dash
        .pools()
        .describe(pb::DescribePoolRequest {
            name: "build-pool".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(pool.resources.len(), 1, "{pool:?}");
    assert_eq!(pool.resources[0].identity, "ci");

    // Listing sessions needs every name; it shows each session's token.
    let list = |caller: &Caller| {
        let mut sessions = caller.sessions();
        async move {
            sessions
                .list(pb::ListSessionsRequest {
                    after_session_id: 0,
                    // 0: a full page.
                    limit: 0,
                })
                .await
                .map(|reply| reply.into_inner().sessions)
        }
    };
    let listed = list(&dash).await.expect("dash lists sessions");
    let identity_of = |session: u64| {
        let info = listed.iter().find(|s| s.session_id == session);
        info.unwrap_or_else(|| panic!("session {session} not listed: {listed:?}"))
            .identity
            .clone()
    };
    assert_eq!(identity_of(ci.session), "ci");
    assert_eq!(identity_of(ops.session), "ops");
    assert_eq!(identity_of(dash.session), "dash");
    for caller in [&ci, &ro_build, &build_admin] {
        let message = refused(
            &format!("List sessions as {}", caller.label),
            list(caller).await,
            Code::PermissionDenied,
        );
        assert!(
            message.contains(&format!("token {:?}", caller.label)),
            "{message}"
        );
    }
    refused(
        "List sessions without a token",
        list(&Caller::new(&channel, "no token", None)).await,
        Code::Unauthenticated,
    );

    // Another token's session: neither use it nor release its holds.
    let message = refused(
        "ops releases ci's lock with ci's session",
        ops.locks()
            .release(pb::ReleaseLockRequest {
                session_id: ci.session,
                name: "build-held".into(),
                fencing_token: held,
            })
            .await,
        Code::PermissionDenied,
    );
    assert_foreign_session(&message, ci.session, "ci", "ops");
    let message = refused(
        "ops puts with ci's session",
        queue_put(Call {
            who: ops_on_ci.clone(),
            ops: ops.clone(),
            name: "build-queue".into(),
            fixture: 0,
        })
        .await,
        Code::PermissionDenied,
    );
    assert_foreign_session(&message, ci.session, "ci", "ops");

    // Revoke: operators only (admin for every name).
    let revoke = |caller: &Caller| {
        let mut sessions = caller.sessions();
        async move {
            sessions
                .revoke(pb::RevokeRequest {
                    fencing_token: held,
                    reason: "stuck in the test".into(),
                })
                .await
                .map(|reply| reply.into_inner())
        }
    };
    for caller in [&ci, &dash, &build_admin] {
        let message = refused(
            &format!("Revoke as {}", caller.label),
            revoke(caller).await,
            Code::PermissionDenied,
        );
        assert!(
            message.contains(&format!("token {:?}", caller.label)),
            "{message}"
        );
    }
    let revoked = revoke(&ops).await.expect("ops revokes");
    assert_eq!(
        (
            revoked.session_id,
            revoked.kind.as_str(),
            revoked.name.as_str()
        ),
        (ci.session, "lock", "build-held")
    );
    let granted = first(&mut waiting).await.expect("ops is next").event;
    assert!(
        matches!(granted, Some(pb::acquire_lock_response::Event::Granted(_))),
        "{granted:?}"
    );
    let notices = keep_alive(&ci, ci.session)
        .await
        .expect("ci lives on")
        .lost_holds;
    assert!(
        notices.iter().any(|n| n.fencing_token == held
            && n.reason() == pb::HoldLossReason::Revoked
            && n.detail == "stuck in the test"),
        "{notices:?}"
    );
    assert_logged(&syncd, "hold revoked", "by", "ops").await;

    // Close: one's own session with any token; another's only as operator.
    let close = |caller: &Caller, session_id: u64, reason: &str| {
        let mut sessions = caller.sessions();
        let reason = reason.to_owned();
        async move {
            sessions
                .close(pb::CloseSessionRequest { session_id, reason })
                .await
                .map(|reply| reply.into_inner())
        }
    };
    for (caller, session) in [
        (&ci, ops.session),
        (&dash, ci.session),
        (&build_admin, ci.session),
    ] {
        let message = refused(
            &format!("{} closes session {session}", caller.label),
            close(caller, session, "not mine").await,
            Code::PermissionDenied,
        );
        assert!(
            message.contains(&format!("token {:?}", caller.label)),
            "{message}"
        );
    }
    refused(
        "closing without a token",
        close(&Caller::new(&channel, "no token", None), ci.session, "").await,
        Code::Unauthenticated,
    );
    close(&dash, dash.session, "")
        .await
        .expect("dash closes its own session");
    let closed = close(&ops, ci.session, "ops: cleaning up")
        .await
        .expect("ops closes ci's session");
    assert_eq!(closed.released, 2, "the permit and the pool resource");
    refused(
        "keep-alive of the closed session",
        keep_alive(&ci, ci.session).await,
        Code::NotFound,
    );
    assert_logged(&syncd, "session closed", "by", "ops").await;
}

// ---------------------------------------------------------------------------
// System, health, reflection
// ---------------------------------------------------------------------------

#[tokio::test]
async fn system_calls_check_every_name_under_the_prefix_and_health_stays_open() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = start_with_tokens(&file);
    let channel = connect(&syncd).await;
    let anonymous = Caller::new(&channel, "no token", None);
    let wrong_secret = Caller::new(&channel, "a wrong secret", Some(WRONG));
    let dash = Caller::new(&channel, "dash", Some(DASH));
    let ro_build = Caller::with_session(&channel, "ro-build", RO_BUILD).await;
    let ci = Caller::with_session(&channel, "ci", CI).await;
    let ops = Caller::with_session(&channel, "ops", OPS).await;
    let build_admin = Caller::new(&channel, "build-admin", Some(BUILD_ADMIN));

    // Standard health checking and reflection need no token.
    assert_serving(&channel, &["", "syncd.v1.Locks"]).await;
    let services = list_services_v1(channel.clone()).await;
    assert!(
        services.iter().any(|s| s == "syncd.v1.Locks"),
        "{services:?}"
    );

    for caller in [&dash, &ro_build, &ci, &ops, &build_admin] {
        caller
            .system()
            .ping(pb::PingRequest {})
            .await
            .unwrap_or_else(|e| panic!("ping as {}: {e:?}", caller.label));
    }
    for caller in [&anonymous, &wrong_secret] {
        let message = refused(
            &format!("ping with {}", caller.label),
            caller.system().ping(pb::PingRequest {}).await,
            Code::Unauthenticated,
        );
        assert!(!message.contains(WRONG), "{message}");
    }

    // Something to list, in and out of the prefix.
    for name in ["build-listed", "deploy-listed"] {
        ops.events()
            .set(pb::SetEventRequest { name: name.into() })
            .await
            .expect("set");
    }

    // List: every name under the request's prefix must be allowed.
    let list = |caller: &Caller, kind: &str, prefix: &str| {
        let mut system = caller.system();
        let request = pb::ListRequest {
            kind: kind.into(),
            prefix: prefix.into(),
        };
        async move {
            system
                .list(request)
                .await
                .map(|r| r.into_inner().primitives)
        }
    };
    let cases: &[(&Caller, &str, &str, Option<Code>)] = &[
        (&dash, "", "", None),
        (&ops, "", "", None),
        (&ro_build, "", "", Some(Code::PermissionDenied)),
        (&ro_build, "event", "", Some(Code::PermissionDenied)),
        (&ro_build, "", "build-", None),
        (&ro_build, "event", "build-", None),
        (&ro_build, "", "build-li", None),
        (&ro_build, "", "buil", Some(Code::PermissionDenied)),
        (&ro_build, "", "deploy-", Some(Code::PermissionDenied)),
        (&ci, "", "", Some(Code::PermissionDenied)),
        (&ci, "", "build-", None),
        (&build_admin, "", "", Some(Code::PermissionDenied)),
        (&build_admin, "", "build-", None),
        (&anonymous, "", "build-", Some(Code::Unauthenticated)),
        (&wrong_secret, "", "build-", Some(Code::Unauthenticated)),
    ];
    for &(caller, kind, prefix, expected) in cases {
        let got = list(caller, kind, prefix).await;
        assert_eq!(
            code_of(&got),
            expected,
            "List kind {kind:?} prefix {prefix:?} as {}: {got:?}",
            caller.label
        );
        if let Ok(primitives) = got {
            assert!(
                primitives.iter().all(|p| p.name.starts_with(prefix)),
                "{primitives:?}"
            );
            if "build-listed".starts_with(prefix) {
                assert!(
                    primitives.iter().any(|p| p.name == "build-listed"),
                    "List {prefix:?} as {}: {primitives:?}",
                    caller.label
                );
            }
        }
    }

    // Watch: an exact name, or a prefix as for List.
    let watch = |caller: &Caller, name: &str, prefix: bool| {
        let mut system = caller.system();
        let request = pb::WatchRequest {
            kind: String::new(),
            name: name.into(),
            prefix,
        };
        async move {
            let mut stream = system.watch(request).await?.into_inner();
            first(&mut stream).await
        }
    };
    let cases: &[(&Caller, &str, bool, Option<Code>)] = &[
        (&dash, "", true, None),
        (&dash, "deploy-listed", false, None),
        (&ro_build, "build-listed", false, None),
        (&ro_build, "build-", true, None),
        (
            &ro_build,
            "deploy-listed",
            false,
            Some(Code::PermissionDenied),
        ),
        (&ro_build, "", true, Some(Code::PermissionDenied)),
        (&ro_build, "deploy-", true, Some(Code::PermissionDenied)),
        (&ro_build, "buil", true, Some(Code::PermissionDenied)),
        (&ci, "build-listed", false, None),
        (&ci, "", true, Some(Code::PermissionDenied)),
        (
            &anonymous,
            "build-listed",
            false,
            Some(Code::Unauthenticated),
        ),
        (&wrong_secret, "build-", true, Some(Code::Unauthenticated)),
    ];
    for &(caller, name, prefix, expected) in cases {
        let got = watch(caller, name, prefix).await;
        assert_eq!(
            code_of(&got),
            expected,
            "Watch {name:?} (prefix: {prefix}) as {}: {got:?}",
            caller.label
        );
    }
}

#[tokio::test]
async fn a_malformed_authorization_header_is_unauthenticated() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = start_with_tokens(&file);
    let channel = connect(&syncd).await;
    let with_header = |value: &str| Caller {
        bearer: Bearer::raw(value),
        ..Caller::new(&channel, "a raw header", None)
    };
    let basic = format!("Basic {OPS}");
    let doubled = format!("Bearer {OPS} {OPS}");
    for value in [OPS, basic.as_str(), "Bearer", "Bearer ", doubled.as_str()] {
        let message = refused(
            &format!("ping with `authorization: {value}`"),
            with_header(value).system().ping(pb::PingRequest {}).await,
            Code::Unauthenticated,
        );
        assert!(!message.contains(OPS), "echoes the secret: {message}");
    }
    // The scheme is case-insensitive (RFC 7235).
    let lower = format!("bearer {OPS}");
    with_header(&lower)
        .system()
        .ping(pb::PingRequest {})
        .await
        .expect("`bearer` in lower case");
}

// ---------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_and_a_bad_file_keeps_the_old_ones() {
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let syncd = Syncd::start_logged(&["--auth-tokens", &file.arg()]);
    let channel = connect(&syncd).await;
    let ping = |secret: &'static str| {
        let mut system = Caller::new(&channel, "pinger", Some(secret)).system();
        async move { system.ping(pb::PingRequest {}).await.map(|_| ()) }
    };
    ping(CI).await.expect("ci before the reload");
    // A watch opened before the reload ends at the first change after it.
    let mut watch = Caller::new(&channel, "watcher", Some(DASH))
        .system()
        .watch(pb::WatchRequest {
            kind: String::new(),
            name: "build-".into(),
            prefix: true,
        })
        .await
        .expect("dash watches")
        .into_inner();
    while !next(&mut watch).await.synced {}

    // ci is gone, ci2 is new, ops stays.
    const CI2: &str = "ci2-secret-0123456789abcdef";
    let second: &[TokenLine] = &[
        ("ops", OPS, "admin", &[""]),
        ("ci2", CI2, "use", &["build-"]),
    ];
    file.write(&tokens_toml(second));
    send_signal(syncd.pid(), "HUP");
    until("ci's secret is refused after SIGHUP", async || {
        code_of(&ping(CI).await) == Some(Code::Unauthenticated)
    })
    .await;
    ping(CI2).await.expect("the new token works");
    ping(OPS).await.expect("ops still works");
    refused("dash is gone too", ping(DASH).await, Code::Unauthenticated);
    let ci2 = Caller::with_session(&channel, "ci2", CI2).await;
    acquire_lock(&ci2, "build-after-reload")
        .await
        .expect("ci2 uses a build- lock");
    let ended = end(&mut watch).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains("\"dash\" was withdrawn"),
        "{ended:?}"
    );
    refused(
        "ci2 outside its prefix",
        acquire_lock(&ci2, "deploy-after-reload").await,
        Code::PermissionDenied,
    );
    syncd
        .log()
        .until("SIGHUP: reloaded", |line| line.contains("SIGHUP: reloaded"))
        .await;

    // A bad file: an error in the log, the tokens of before stay.
    let reloads = syncd.log().count("SIGHUP");
    file.write(&format!(
        "{}[[token]]\nname = \"bad\"\nsecret = \"bad-secret-0123456789abcdef\"\nrole = \"superuser\"\nprefixes = [\"\"]\n",
        tokens_toml(second)
    ));
    send_signal(syncd.pid(), "HUP");
    let line = syncd
        .log()
        .until("the failed reload", |line| {
            line.contains("SIGHUP") && !line.contains("SIGHUP: reloaded")
        })
        .await;
    assert_eq!(syncd.log().count("SIGHUP"), reloads + 1, "{line}");
    assert!(line.contains(&file.arg()), "names the file: {line}");
    assert!(line.contains("ERROR"), "an error: {line}");
    ping(CI2).await.expect("ci2 still works");
    ping(OPS).await.expect("ops still works");
    refused("ci stays out", ping(CI).await, Code::Unauthenticated);
    assert_serving(&channel, &[""]).await;
}

// ---------------------------------------------------------------------------
// A bad token file at startup
// ---------------------------------------------------------------------------

/// Runs `syncd serve --auth-tokens FILE` (or the file through `env`), which
/// must fail with exit 1 and one line naming the file, before the data
/// directory is made.
fn assert_bad_file(path: &Path, how: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut command = Command::new(syncd_bin());
    command
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("SYNCD_AUTH_TOKENS")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    match how {
        "flag" => {
            command.arg("--auth-tokens").arg(path);
        }
        "env" => {
            command.env("SYNCD_AUTH_TOKENS", path);
        }
        other => panic!("no way {other}"),
    }
    let output = run_bounded(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}: {stderr}",
        path.display()
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    let start = format!("syncd: --auth-tokens {}: ", path.display());
    assert!(
        stderr.starts_with(&start),
        "expected {start:?}…, got {stderr:?}"
    );
    assert!(!data.exists(), "the data directory was made: {stderr}");
    stderr
}

#[test]
fn a_bad_token_file_stops_syncd_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = |name: &str, secret: &str, role: &str, prefixes: &str| {
        format!("[[token]]\nname = {name:?}\nsecret = {secret:?}\nrole = {role:?}\n{prefixes}\n")
    };
    let good = token("ci", CI, "use", "prefixes = [\"build-\"]");
    let files: Vec<(&str, String)> = vec![
        (
            "unknown-role",
            token("ci", CI, "superuser", "prefixes = [\"\"]"),
        ),
        ("missing-prefixes", token("ci", CI, "use", "")),
        ("empty-prefixes", token("ci", CI, "use", "prefixes = []")),
        ("unknown-key", format!("{good}colour = \"blue\"\n")),
        (
            "duplicate-name",
            format!("{good}{}", token("ci", OPS, "admin", "prefixes = [\"\"]")),
        ),
        (
            "duplicate-secret",
            format!("{good}{}", token("ops", CI, "admin", "prefixes = [\"\"]")),
        ),
        (
            "secret-with-space",
            token("ci", "two words-0123456789", "use", "prefixes = [\"\"]"),
        ),
        ("not-toml", "[[token]\nname = ".to_owned()),
    ];
    for (name, text) in &files {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let stderr = assert_bad_file(&path, "flag");
        // Never the secret in the message.
        assert!(!stderr.contains(CI) && !stderr.contains(OPS), "{stderr}");
        eprintln!("{name}: {}", stderr.trim_end());
    }
    let missing = dir.path().join("missing.toml");
    assert_bad_file(&missing, "flag");
    assert_bad_file(&missing, "env");
}

// ---------------------------------------------------------------------------
// Tokens over TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokens_work_over_tls() {
    let pki = Pki::new();
    let file = TokenFile::new(&tokens_toml(TOKENS));
    let (_syncd, https) = pki.start_syncd_with(false, &["--auth-tokens", &file.arg()]);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.pem("ca.pem")))
        .domain_name("localhost");
    let channel = Channel::from_shared(https)
        .expect("address")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("connect over TLS");

    let ci = Caller::with_session(&channel, "ci", CI).await;
    let token = acquire_lock(&ci, "build-over-tls").await.expect("acquire");
    assert!(token > 0);
    refused(
        "ci outside its prefix over TLS",
        acquire_lock(&ci, "deploy-over-tls").await,
        Code::PermissionDenied,
    );
    for caller in [
        Caller::new(&channel, "no token", None),
        Caller::new(&channel, "a wrong secret", Some(WRONG)),
    ] {
        refused(
            &format!("ping over TLS with {}", caller.label),
            caller.system().ping(pb::PingRequest {}).await,
            Code::Unauthenticated,
        );
    }
    assert_serving(&channel, &[""]).await;
}
