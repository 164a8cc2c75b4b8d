//! `syncctl pool checkout|describe`.
//!
//! A checkout is a hold like a lock's: `pool checkout -- CMD` goes through
//! the same machinery (`hold`), and checks the resource in, healthy when
//! CMD exits 0 and unhealthy (evicted) otherwise.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::{
    client::{Error, Freshness, PooledResource},
    proto::v1::{DescribePoolResponse, PoolResource},
};

use crate::{
    args::{parse_positive_duration, NameArgs},
    exit::Failure,
    hold::{acquire_and_hold, with_token, Guard, HoldArgs},
    output::{format_ms, format_waiter, plural, section, waiter_json},
    session::one_call,
    Cli,
};

const CHECKOUT_AFTER_HELP: &str = concat!(
    "SYNCD_RESOURCE_FRESH:\n",
    "  new             a new slot: create the resource\n",
    "  reused          checked in healthy before: it exists\n",
    "  replaced-stale  older than --max-age or idle longer than --max-idle: create it\n",
    "                  anew (and remove the old one if you can)\n",
    "  recovered       its last holder died without a checkin: create it anew\n",
    "\n",
    "Exit codes:\n",
    "  0        CMD exited 0 (the resource was checked in healthy)\n",
    "  1        any other error (bad input refused by the server, ...)\n",
    "  2        invalid command line (also: no CMD)\n",
    "  3        no resource within --timeout\n",
    "  4        the server cannot be reached\n",
    "  6        the pool exists with another --size, --max-age or --max-idle\n",
    "           (nothing was checked out)\n",
    "  7        the checkout was lost while CMD ran: its session expired, or could\n",
    "           not be renewed for a full TTL; CMD was stopped\n",
    denied_exit_code!(),
    "  N        CMD's own exit code (the resource was checked in unhealthy: evicted)\n",
    "  126      CMD could not be executed\n",
    "  127      CMD was not found\n",
    "  128+N    interrupted by signal N while waiting, or CMD killed by signal N\n",
    "\n",
    "Example: at most 4 test databases, each rebuilt after an hour; CMD creates the\n",
    "database unless it is reused (test-db-$SYNCD_RESOURCE_ID exists from last time):\n",
    "  syncctl pool checkout test-dbs --size 4 --max-age 1h -- sh -c '\n",
    "    db=test-db-$SYNCD_RESOURCE_ID\n",
    "    [ \"$SYNCD_RESOURCE_FRESH\" = reused ] || createdb \"$db\"\n",
    "    ./run-tests --db \"$db\"'\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json pool describe test-dbs\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Check a resource out of a pool, run CMD with it, and check it in:
    /// healthy when CMD exits 0, unhealthy (evicted) otherwise.
    ///
    /// A pool has --size slots: at most that many resources out at once;
    /// checkouts wait first come, first served (--timeout: exit 3). The
    /// server only keeps the books: CMD creates the real resource (a
    /// database, a VM, ...) when SYNCD_RESOURCE_FRESH is not `reused`, and
    /// names it after SYNCD_RESOURCE_ID (a new id whenever the resource is
    /// to be created anew; the values of SYNCD_RESOURCE_FRESH are listed
    /// below). CMD also gets SYNCD_POOL_NAME and SYNCD_FENCING_TOKEN (this
    /// checkout's fencing token).
    ///
    /// The first checkout creates the pool with --size, --max-age and
    /// --max-idle; later ones must name the same size, and the same ages or
    /// none, while the pool exists (it exists while it has resources or
    /// waiters), else syncctl exits 6.
    ///
    /// As with `lock acquire`: SIGINT, SIGTERM and SIGHUP are forwarded to
    /// CMD; if the checkout is lost while CMD runs (the session expired, or
    /// could not be renewed for a full TTL), syncctl sends SIGTERM to CMD,
    /// SIGKILL after --kill-grace, and exits 7; a syncctl that dies (kill
    /// -9) keeps the resource out until its --ttl runs out, and the next
    /// checkout then gets it as `recovered`.
    #[command(after_help = CHECKOUT_AFTER_HELP)]
    Checkout(PoolCheckoutArgs),
    /// Show a pool's settings, its resources (idle, or out to which
    /// session) and its waiters, first in line first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct PoolCheckoutArgs {
    /// The pool's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    /// How many resources may be out at once. Fixed by whoever creates the
    /// pool; must match while it exists.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub size: u32,

    /// A resource is stale this long after its creation: replaced at the
    /// next checkout, evicted by the server while idle. Default: the
    /// existing pool's, or never for a new pool.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub max_age: Option<Duration>,

    /// A resource is stale after being idle (checked in) this long.
    /// Default: the existing pool's, or never for a new pool.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub max_idle: Option<Duration>,

    #[command(flatten)]
    pub hold: HoldArgs,
}

impl PoolCheckoutArgs {
    /// The command-line mistake the parser cannot see, if any.
    pub fn usage_error(&self) -> Option<String> {
        self.hold.command.is_empty().then(|| {
            "a command is required: `-- CMD [ARGS...]` uses the resource (it is checked in \
             healthy when CMD exits 0)"
                .to_string()
        })
    }
}

pub async fn run(cli: &Cli, command: &PoolCommand) -> Result<i32, Failure> {
    match command {
        PoolCommand::Checkout(args) => {
            acquire_and_hold(cli, &args.hold, |client| {
                let mut pool = client.pool(args.name.as_str(), args.size);
                if let Some(max_age) = args.max_age {
                    pool = pool.with_max_age(max_age);
                }
                if let Some(max_idle) = args.max_idle {
                    pool = pool.with_max_idle(max_idle);
                }
                let timeout = args.hold.timeout;
                async move {
                    match timeout {
                        Some(timeout) => pool.checkout_timeout(timeout).await,
                        None => pool.checkout().await,
                    }
                }
            })
            .await
        }
        PoolCommand::Describe(args) => {
            let name = args.name.as_str();
            let pool = one_call(cli, |client| async move {
                client.pool(name, 0).describe().await
            })
            .await?;
            cli.output
                .describe(format_description(&pool), description_json(&pool))
        }
    }
}

/// `new`, `reused`, `replaced-stale`, `recovered`: SYNCD_RESOURCE_FRESH.
pub fn freshness_word(freshness: Freshness) -> &'static str {
    match freshness {
        Freshness::New => "new",
        Freshness::Reused => "reused",
        Freshness::ReplacedStale => "replaced-stale",
        Freshness::Recovered => "recovered",
    }
}

impl Guard for PooledResource {
    fn what(&self) -> String {
        let what = format!("resource {} of pool {:?}", self.resource_id(), self.name());
        with_token(what, self.fencing_token())
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_FENCING_TOKEN", self.fencing_token().to_string()),
            ("SYNCD_POOL_NAME", self.name().to_string()),
            ("SYNCD_RESOURCE_ID", self.resource_id().to_string()),
            (
                "SYNCD_RESOURCE_FRESH",
                freshness_word(self.freshness()).to_string(),
            ),
        ]
    }

    fn text(&self) -> String {
        self.resource_id().to_string()
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name(),
            "resource_id": self.resource_id(),
            "freshness": freshness_word(self.freshness()),
            "fencing_token": self.fencing_token(),
        })
    }

    async fn lost(&self) -> String {
        PooledResource::lost(self).await.why()
    }

    async fn release(self, succeeded: bool) -> Result<(), Error> {
        let what = self.what();
        let evicted = self.checkin(succeeded, None).await?;
        if evicted && succeeded {
            tracing::info!("{what} was checked in healthy, but evicted: stale by now");
        }
        Ok(())
    }

    fn release_action(&self, succeeded: bool) -> String {
        let health = if succeeded { "healthy" } else { "unhealthy" };
        format!("check in {} as {health}", self.what())
    }

    fn left_to_lease(&self) -> &'static str {
        "the server takes it back when the session's lease runs out (the next checkout gets \
         it as recovered)"
    }
}

pub fn format_description(pool: &DescribePoolResponse) -> String {
    let name = &pool.name;
    if pool.size == 0 {
        return format!("pool {name:?}: does not exist (no resources, nobody waits)\n");
    }
    let out = pool.resources.iter().filter(|r| r.session_id != 0).count();
    let idle = pool.resources.len() - out;
    let mut text = format!(
        "pool {name:?}: {out} of {} out, {idle} idle, {} waiting\n",
        plural(pool.size.into(), "slot", "slots"),
        pool.waiters.len()
    );
    text += &format!(
        "stale after: age {}, idle {}; {} evicted since the pool was created\n",
        limit_text(pool.max_age_ms),
        limit_text(pool.max_idle_ms),
        pool.evicted
    );
    text += &section("resources", pool.resources.iter().map(format_resource));
    text += &section("waiters", pool.waiters.iter().map(format_waiter));
    text
}

/// `10m`, or `never` for 0.
fn limit_text(ms: u64) -> String {
    match ms {
        0 => "never".to_string(),
        ms => format_ms(ms),
    }
}

/// `resource 4: out to session 7, fencing token 12, age 3s` or
/// `resource 5: idle for 2s, age 1m`.
fn format_resource(resource: &PoolResource) -> String {
    let age = format_ms(resource.age_ms);
    match resource.session_id {
        0 => format!(
            "resource {}: idle for {}, age {age}",
            resource.resource_id,
            format_ms(resource.idle_ms)
        ),
        session_id => format!(
            "resource {}: out to session {session_id}, fencing token {}, age {age}",
            resource.resource_id, resource.fencing_token
        ),
    }
}

pub fn description_json(pool: &DescribePoolResponse) -> Value {
    let resources: Vec<Value> = pool
        .resources
        .iter()
        .map(|r| {
            json!({
                "resource_id": r.resource_id,
                "session_id": r.session_id,
                "fencing_token": r.fencing_token,
                "age_ms": r.age_ms,
                "idle_ms": r.idle_ms,
            })
        })
        .collect();
    let waiters: Vec<Value> = pool
        .waiters
        .iter()
        .map(|w| Value::Object(waiter_json(w)))
        .collect();
    json!({
        "name": pool.name,
        "size": pool.size,
        "max_age_ms": pool.max_age_ms,
        "max_idle_ms": pool.max_idle_ms,
        "evicted": pool.evicted,
        "resources": resources,
        "waiters": waiters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::Waiter;

    #[test]
    fn freshness_reads_as_in_the_environment() {
        assert_eq!(freshness_word(Freshness::New), "new");
        assert_eq!(freshness_word(Freshness::Reused), "reused");
        assert_eq!(freshness_word(Freshness::ReplacedStale), "replaced-stale");
        assert_eq!(freshness_word(Freshness::Recovered), "recovered");
    }

    #[test]
    fn description_formats() {
        let missing = DescribePoolResponse {
            name: "p".into(),
            ..Default::default()
        };
        assert_eq!(
            format_description(&missing),
            "pool \"p\": does not exist (no resources, nobody waits)\n"
        );
        let pool = DescribePoolResponse {
            name: "p".into(),
            size: 2,
            max_age_ms: 600_000,
            max_idle_ms: 0,
            resources: vec![
                PoolResource {
                    resource_id: 4,
                    session_id: 7,
                    fencing_token: 12,
                    age_ms: 3000,
                    idle_ms: 0,
                    ..PoolResource::default()
                },
                PoolResource {
                    resource_id: 5,
                    session_id: 0,
                    fencing_token: 9,
                    age_ms: 60_000,
                    idle_ms: 2000,
                    ..PoolResource::default()
                },
            ],
            waiters: vec![Waiter {
                session_id: 9,
                client_name: "c".into(),
                waiting_ms: 1000,
                ..Default::default()
            }],
            evicted: 3,
        };
        assert_eq!(
            format_description(&pool),
            "pool \"p\": 1 of 2 slots out, 1 idle, 1 waiting\n\
             stale after: age 10m, idle never; 3 evicted since the pool was created\n\
             resources: 2\n\
             \x20 1. resource 4: out to session 7, fencing token 12, age 3s\n\
             \x20 2. resource 5: idle for 2s, age 1m\n\
             waiters: 1\n\
             \x20 1. session 9 (c), waiting for 1s\n"
        );
        let json = description_json(&pool);
        assert_eq!(json["resources"][1]["idle_ms"], 2000);
        assert_eq!(json["waiters"][0]["session_id"], 9);
        assert_eq!(json["size"], 2);
    }
}
