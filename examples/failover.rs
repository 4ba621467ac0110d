//! A PostgreSQL switchover, replayed on a real primary and standby, side by
//! side: two plain `PgPool`s and a `LivePool<Postgres>`, each under its own
//! writer load, through the same failover.
//!
//! Run: `cargo run --release --example failover --features postgres` (about
//! 30 s, the cluster's set-up included; it needs PostgreSQL's server binaries,
//! see `tests/pg_cluster/mod.rs`).
//!
//! MySQL / MariaDB: `cargo run --release --example failover --features
//! postgres,mysql -- --db mysql` replays the same on `tests/my_cluster` (a
//! MariaDB primary m1, its GTID replica m2, the same kind of proxy; it needs
//! `mariadb-server`): m1 is made read-only, m2 caught up, promoted and made
//! writable, m1 made its replica and left up, the proxy left on m1 for 8 s,
//! then repointed. The pools are the same with `MySqlPool` and
//! `LivePool<MySql>`. MySQL has no `application_name`, so the connections at
//! the end are counted for the three pools together.
//!
//! The cluster is `tests/pg_cluster`: a primary (n1), its streaming hot
//! standby (n2), and a TCP proxy in front of them that plays the Kubernetes
//! Service / VIP every pool connects through. The switchover is the
//! realistic one (`postgres-failure-modes.md` S1): n1 is stopped fast, n2
//! promoted, n1 restarted as a standby of n2; the proxy keeps leading to n1
//! for 8 s more (the orchestrator has not moved the endpoint yet), then is
//! repointed to n2.
//!
//! The pools, each with three writers that insert every 20 ms (about 150
//! writes/s):
//!
//! * a plain `PgPool` with sqlx's defaults;
//! * a plain `PgPool` with `max_connections(2)`;
//! * a `LivePool<Postgres>` with the crate's defaults, written through
//!   `lease()`, its errors handed to `report()` in the background (as the
//!   layer does).
//!
//! While the proxy leads to the demoted node, each pool's health is sampled
//! every 250 ms: the crate's `HealthService` for the `LivePool`, and for the
//! plain pools what a hand-written `/health` usually runs, `SELECT 1` on the
//! pool (bounded by 500 ms, as `HealthService` is).
//!
//! Everything printed is measured in this run. A write counts where it
//! ended. The first clean second is the first 1 s window from the repoint on
//! in which at least one write succeeded and none failed; its row gives the
//! time from the repoint to the window's start.

#[cfg(feature = "mysql")]
#[path = "../tests/my_cluster/mod.rs"]
mod my_cluster;
#[path = "../tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use tower::ServiceExt;
use tower_db_liveness::{Backend, HealthService, LivePool, PoolStatus};

type Error = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;
/// One write of a pool: `Err` names what it failed with.
type WriteFn = Arc<dyn Fn(i64) -> BoxFuture<Result<(), String>> + Send + Sync>;
/// A hand-written `/health` over a plain pool.
type ProbeFn = Box<dyn Fn() -> BoxFuture<String> + Send + Sync>;

/// Steady writing before the switchover.
const WARM_UP: Duration = Duration::from_secs(3);
/// How long the proxy keeps leading to the demoted node after the switchover.
const PINNED: Duration = Duration::from_secs(8);
/// How long the run goes on after the repoint.
const AFTER: Duration = Duration::from_secs(12);
const WRITERS: usize = 3;
const WRITE_EVERY: Duration = Duration::from_millis(20);
const HEALTH_EVERY: Duration = Duration::from_millis(250);
const HEALTH_BOUND: Duration = Duration::from_millis(500);

/// The pools, in the table's column order; also their `application_name`.
const NAMES: [&str; 3] = ["plain-default", "plain-max2", "livepool"];

/// What the demo needs of a database: its cluster, its three pools, and how
/// to write, probe and count through them. The timeline and the table are
/// the same for every database.
struct Setup {
    intro: &'static str,
    headings: [&'static str; 3],
    /// The old primary's and the new primary's names.
    nodes: [&'static str; 2],
    writes: [WriteFn; 3],
    plain_health: [ProbeFn; 2],
    health: HealthService,
    status: tower_db_liveness::StatusWatch,
    /// The switchover (blocking): returns once it is done.
    switchover: Arc<dyn Fn() -> Result<(), Error> + Send + Sync>,
    /// Points the proxy at the new primary.
    repoint: Box<dyn Fn()>,
    /// The connections at the end: a cell per pool, or one line for all.
    connections: Box<dyn Fn() -> BoxFuture<Result<Connections, Error>>>,
    close: Box<dyn FnOnce() -> BoxFuture<()>>,
}

enum Connections {
    /// On the old / the new primary, per pool.
    PerPool([String; 3]),
    /// On the old / the new primary, all pools together.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    All(String),
}

#[derive(Clone, Copy)]
enum Db {
    Postgres,
    #[cfg(feature = "mysql")]
    MySql,
}

fn db_from_args() -> Result<Db, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["--db", "postgres"] => Ok(Db::Postgres),
        #[cfg(feature = "mysql")]
        ["--db", "mysql"] => Ok(Db::MySql),
        other => Err(format!(
            "usage: failover [--db postgres|mysql] (mysql needs the `mysql` feature); got {other:?}"
        )
        .into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The crate's own logs are off unless RUST_LOG asks for them: the
    // timeline below tells the story.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let clock = Clock(Instant::now());
    let setup = match db_from_args()? {
        Db::Postgres => postgres_setup().await?,
        #[cfg(feature = "mysql")]
        Db::MySql => mysql_setup().await?,
    };
    clock.event(setup.intro);
    watch_policy(setup.status.clone(), clock);
    let [old, new] = setup.nodes;

    let stop = Arc::new(AtomicBool::new(false));
    let loads = setup.writes.clone().map(|write| {
        Load::start(clock, &stop, move |n| {
            let write = Arc::clone(&write);
            async move { write(n).await }
        })
    });

    tokio::time::sleep(WARM_UP).await;
    let switchover_at = clock.now();
    clock.event(&format!("switchover starts on {old}"));
    {
        let switchover = Arc::clone(&setup.switchover);
        tokio::task::spawn_blocking(move || switchover()).await??;
    }
    let pinned_at = clock.now();
    clock.event(&format!(
        "switchover done: {new} promoted, {old} now follows it; the proxy still leads to {old}"
    ));

    // While the proxy leads to the demoted node: what each /health says.
    let health = setup.health.clone();
    let mut said: [BTreeMap<String, usize>; 3] = Default::default();
    let repoint_at = pinned_at + PINNED.as_secs_f64();
    let mut next = tokio::time::Instant::now();
    while clock.now() < repoint_at {
        let answers = tokio::join!(
            (setup.plain_health[0])(),
            (setup.plain_health[1])(),
            crate_health(&health),
        );
        for (tally, answer) in said.iter_mut().zip([answers.0, answers.1, answers.2]) {
            *tally.entry(answer).or_default() += 1;
        }
        next += HEALTH_EVERY;
        tokio::time::sleep_until(next).await;
    }

    (setup.repoint)();
    let repoint_at = clock.now();
    clock.event(&format!("the proxy is repointed to {new}"));
    tokio::time::sleep(AFTER).await;
    let end = clock.now();
    stop.store(true, Ordering::SeqCst);

    let connections = (setup.connections)().await?;
    let results: Vec<Summary> = loads
        .iter()
        .map(|load| load.summary(switchover_at, repoint_at, end))
        .collect();

    println!();
    let window = format!(
        "switchover -> repoint ({:.1} s)",
        repoint_at - switchover_at
    );
    let after = format!("after the repoint ({:.0} s)", AFTER.as_secs_f64());
    let row = |name: &str, cells: [String; 3]| {
        println!(
            "{name:<40} {:>22} {:>22} {:>22}",
            cells[0], cells[1], cells[2]
        );
    };
    row("", setup.headings.map(String::from));
    let each = |f: &dyn Fn(&Summary) -> String| -> [String; 3] {
        [f(&results[0]), f(&results[1]), f(&results[2])]
    };
    row(
        "writes ok before the switchover",
        each(&|s| s.ok_before.to_string()),
    );
    row(
        &format!("{window}: failed"),
        each(&|s| s.failed_pinned.to_string()),
    );
    row(&format!("{window}: ok"), each(&|s| s.ok_pinned.to_string()));
    row(
        &format!("{after}: failed"),
        each(&|s| s.failed_after.to_string()),
    );
    row(&format!("{after}: ok"), each(&|s| s.ok_after.to_string()));
    row(
        "repoint -> first clean second",
        each(&|s| match s.clean_from {
            Some(t) => format!("+{t:.2} s"),
            None => format!("never (in {:.0} s)", AFTER.as_secs_f64()),
        }),
    );
    row("slowest write", each(&|s| s.slowest.clone()));
    let on_nodes = format!("connections on {old} (demoted) / {new} at end");
    match connections {
        Connections::PerPool(cells) => row(&on_nodes, cells),
        Connections::All(all) => println!("{on_nodes}, the three pools together: {all}"),
    }
    let samples = said[0].values().sum::<usize>();
    println!();
    println!("/health while the proxy led to the demoted node ({samples} samples, every 250 ms):");
    let probes = [
        "SELECT 1 on the pool",
        "SELECT 1 on the pool",
        "HealthService",
    ];
    for ((heading, probe), tally) in setup.headings.iter().zip(probes).zip(&said) {
        println!("  {heading:<20} {probe:<22} {}", tally_text(tally));
    }
    println!();
    println!("failed writes by error:");
    for (heading, summary) in setup.headings.iter().zip(&results) {
        println!("  {heading:<20} {}", tally_text(&summary.errors));
    }
    println!();
    println!("whole run: {:.1} s", clock.now());

    (setup.close)().await;
    Ok(())
}

/// PostgreSQL: `tests/pg_cluster`, `PgPool`s and a `LivePool<Postgres>`,
/// each pool with its own `application_name`.
async fn postgres_setup() -> Result<Setup, Error> {
    use pg_cluster::{Cluster, Node};
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let url: PgConnectOptions = cluster.url().parse()?;
    let plain_default = PgPoolOptions::new()
        .connect_with(url.clone().application_name(NAMES[0]))
        .await?;
    let plain_small = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(url.clone().application_name(NAMES[1]))
        .await?;
    let live = LivePool::postgres(url.clone().application_name(NAMES[2]))
        // Instead of exiting, the demo prints a give-up (`watch_policy`).
        .on_give_up(|_| {})
        .open()
        .await?;
    sqlx::query(
        "CREATE TABLE writes (id BIGSERIAL PRIMARY KEY, pool TEXT NOT NULL, n BIGINT NOT NULL)",
    )
    .execute(&plain_default)
    .await?;
    const INSERT: &str = "INSERT INTO writes (pool, n) VALUES ($1, $2)";
    let plain = |pool: &PgPool, name: &'static str| -> WriteFn {
        let pool = pool.clone();
        Arc::new(move |n| Box::pin(plain_write(pool.clone(), INSERT, name, n)))
    };
    let probe = |pool: &PgPool| -> ProbeFn {
        let pool = pool.clone();
        Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move { select_one(&pool).await })
        })
    };
    Ok(Setup {
        intro: "cluster up: n1 primary, n2 its streaming standby, the proxy leads to n1",
        headings: ["PgPool (defaults)", "PgPool (max 2)", "LivePool<Postgres>"],
        nodes: ["n1", "n2"],
        writes: [
            plain(&plain_default, NAMES[0]),
            plain(&plain_small, NAMES[1]),
            {
                let live = live.clone();
                Arc::new(move |n| Box::pin(live_write(live.clone(), INSERT, n)))
            },
        ],
        plain_health: [probe(&plain_default), probe(&plain_small)],
        health: HealthService::new(live.clone()),
        status: live.subscribe(),
        switchover: {
            let cluster = Arc::clone(&cluster);
            Arc::new(move || cluster.switchover().map(drop).map_err(Error::from))
        },
        repoint: {
            let cluster = Arc::clone(&cluster);
            Box::new(move || cluster.repoint(cluster.primary()))
        },
        connections: {
            let cluster = Arc::clone(&cluster);
            Box::new(move || {
                let cluster = Arc::clone(&cluster);
                Box::pin(async move {
                    let found = connections(&cluster).await?;
                    Ok(Connections::PerPool(NAMES.map(|name| {
                        let on = |node| found.get(&(node, name.to_owned())).copied().unwrap_or(0);
                        format!("{} / {}", on(Node::N1), on(Node::N2))
                    })))
                })
            })
        },
        close: Box::new(move || {
            Box::pin(async move {
                live.close().await;
                plain_default.close().await;
                plain_small.close().await;
                drop(cluster);
            })
        }),
    })
}

/// MySQL / MariaDB: `tests/my_cluster`, `MySqlPool`s and a `LivePool<MySql>`.
#[cfg(feature = "mysql")]
async fn mysql_setup() -> Result<Setup, Error> {
    use my_cluster::{Cluster, Node};
    use sqlx::MySqlPool;
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let url: MySqlConnectOptions = cluster.url().parse()?;
    let plain_default = MySqlPoolOptions::new().connect_with(url.clone()).await?;
    let plain_small = MySqlPoolOptions::new()
        .max_connections(2)
        .connect_with(url.clone())
        .await?;
    let live = LivePool::mysql(url)
        // Instead of exiting, the demo prints a give-up (`watch_policy`).
        .on_give_up(|_| {})
        .open()
        .await?;
    sqlx::query(
        "CREATE TABLE writes (id BIGINT AUTO_INCREMENT PRIMARY KEY, pool TEXT NOT NULL, n BIGINT NOT NULL)",
    )
    .execute(&plain_default)
    .await?;
    const INSERT: &str = "INSERT INTO writes (pool, n) VALUES (?, ?)";
    let plain = |pool: &MySqlPool, name: &'static str| -> WriteFn {
        let pool = pool.clone();
        Arc::new(move |n| Box::pin(plain_write(pool.clone(), INSERT, name, n)))
    };
    let probe = |pool: &MySqlPool| -> ProbeFn {
        let pool = pool.clone();
        Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move { select_one(&pool).await })
        })
    };
    Ok(Setup {
        intro: "cluster up: m1 primary, m2 its GTID replica (read_only), the proxy leads to m1",
        headings: [
            "MySqlPool (defaults)",
            "MySqlPool (max 2)",
            "LivePool<MySql>",
        ],
        nodes: ["m1", "m2"],
        writes: [
            plain(&plain_default, NAMES[0]),
            plain(&plain_small, NAMES[1]),
            {
                let live = live.clone();
                Arc::new(move |n| Box::pin(live_write(live.clone(), INSERT, n)))
            },
        ],
        plain_health: [probe(&plain_default), probe(&plain_small)],
        health: HealthService::new(live.clone()),
        status: live.subscribe(),
        switchover: {
            let cluster = Arc::clone(&cluster);
            Arc::new(move || cluster.switchover().map(drop).map_err(Error::from))
        },
        repoint: {
            let cluster = Arc::clone(&cluster);
            Box::new(move || cluster.repoint(cluster.primary()))
        },
        connections: {
            let cluster = Arc::clone(&cluster);
            Box::new(move || {
                let cluster = Arc::clone(&cluster);
                Box::pin(async move {
                    let counts = tokio::task::spawn_blocking(move || {
                        Ok::<_, my_cluster::ClusterError>((
                            cluster.app_connections(Node::M1)?,
                            cluster.app_connections(Node::M2)?,
                        ))
                    })
                    .await??;
                    Ok(Connections::All(format!("{} / {}", counts.0, counts.1)))
                })
            })
        },
        close: Box::new(move || {
            Box::pin(async move {
                live.close().await;
                plain_default.close().await;
                plain_small.close().await;
                drop(cluster);
            })
        }),
    })
}

/// Seconds since the start of the run.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    fn event(&self, what: &str) {
        println!("+{:>6.2} s  {what}", self.now());
    }
}

/// Prints the `LivePool`'s policy as it changes: heal started, new
/// generation, give-up.
fn watch_policy(mut status: tower_db_liveness::StatusWatch, clock: Clock) {
    tokio::spawn(async move {
        while let Some(now) = status.changed().await {
            clock.event(&match now {
                PoolStatus::Healing { generation, fault } => {
                    format!("LivePool: generation {generation} is fatal, healing: {fault}")
                }
                PoolStatus::Live { generation, .. } => {
                    format!("LivePool: generation {generation} swapped in")
                }
                PoolStatus::AwaitingPrimary {
                    attempts: 1, last, ..
                } => {
                    format!("LivePool: waiting for a writable primary ({last})")
                }
                // Later attempts of the same wait.
                PoolStatus::AwaitingPrimary { .. } => continue,
                PoolStatus::GaveUp(gave_up) => format!("LivePool: gave up: {}", gave_up.reason),
                other => format!("LivePool: {other:?}"),
            });
        }
    });
}

async fn plain_write<DB>(
    pool: sqlx::Pool<DB>,
    insert: &'static str,
    name: &'static str,
    n: i64,
) -> Result<(), String>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    sqlx::query::<DB>(insert)
        .bind(name)
        .bind(n)
        .execute(&pool)
        .await
        .map(drop)
        .map_err(|err| kind(&err))
}

/// The pool in service, and its errors reported to the policy, tagged with
/// the generation that produced them. The report runs in the background:
/// the write has failed either way.
async fn live_write<DB>(live: LivePool<DB>, insert: &'static str, n: i64) -> Result<(), String>
where
    DB: Backend,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    let lease = live.lease();
    let written = sqlx::query::<DB>(insert)
        .bind(NAMES[2])
        .bind(n)
        .execute(lease.pool())
        .await;
    match written {
        Ok(_) => Ok(()),
        Err(err) => {
            let kind = kind(&err);
            tokio::spawn(async move { lease.report(&err).await });
            Err(kind)
        }
    }
}

/// A short name for an error: the SQLSTATE (MySQL: the error number, its
/// SQLSTATE is a generic `HY000`), or the sqlx variant.
fn kind(err: &sqlx::Error) -> String {
    match err {
        #[cfg(feature = "mysql")]
        sqlx::Error::Database(db)
            if db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some() =>
        {
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map_or("database".into(), |my| my.number().to_string())
        }
        sqlx::Error::Database(db) => db.code().map_or("database".into(), |c| c.into_owned()),
        sqlx::Error::Io(io) => format!("Io({:?})", io.kind()),
        sqlx::Error::PoolClosed => "PoolClosed".into(),
        sqlx::Error::PoolTimedOut => "PoolTimedOut".into(),
        sqlx::Error::Protocol(_) => "Protocol".into(),
        other => format!("{other:?}").chars().take(24).collect(),
    }
}

/// What a hand-written `/health` over a plain pool answers.
async fn select_one<DB>(pool: &sqlx::Pool<DB>) -> String
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    match tokio::time::timeout(HEALTH_BOUND, sqlx::query::<DB>("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => "200 pass".into(),
        Ok(Err(err)) => format!("503 fail ({})", kind(&err)),
        Err(_) => "503 fail (no answer in 500 ms)".into(),
    }
}

/// What the crate's `HealthService` answers: HTTP status and `status`.
async fn crate_health(health: &HealthService) -> String {
    let request = http::Request::get("/health")
        .body(())
        .expect("a valid request");
    let Ok(response) = health.clone().oneshot(request).await;
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["status"].as_str().map(String::from))
        .unwrap_or_else(|| "?".into());
    format!("{code} {status}")
}

fn tally_text(tally: &BTreeMap<String, usize>) -> String {
    if tally.is_empty() {
        return "none".into();
    }
    let mut entries: Vec<_> = tally.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1));
    entries
        .iter()
        .map(|(what, n)| format!("{what} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The app's backends per node and pool (`application_name`), read from
/// `pg_stat_activity` on each node.
async fn connections(
    cluster: &pg_cluster::Cluster,
) -> Result<HashMap<(pg_cluster::Node, String), i64>, Error> {
    use pg_cluster::Node;
    let mut found = HashMap::new();
    for node in Node::ALL {
        let mut conn = PgConnection::connect(&cluster.superuser_url(node)).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT application_name, count(*) FROM pg_stat_activity \
             WHERE usename = 'app' GROUP BY application_name",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        for (name, count) in rows {
            found.insert((node, name), count);
        }
    }
    Ok(found)
}

/// One write: when it started and ended (seconds since the start of the
/// run) and how it ended.
struct Write {
    start: f64,
    end: f64,
    result: Result<(), String>,
}

/// A pool's writers and what they recorded.
struct Load {
    clock: Clock,
    writes: Arc<Mutex<Vec<Write>>>,
    /// When each writer's write in flight started, if one is.
    in_flight: Vec<Arc<Mutex<Option<f64>>>>,
}

impl Load {
    fn start<F, Fut>(clock: Clock, stop: &Arc<AtomicBool>, write: F) -> Load
    where
        F: Fn(i64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let in_flight: Vec<_> = (0..WRITERS).map(|_| Arc::new(Mutex::new(None))).collect();
        for (writer, current) in in_flight.iter().enumerate() {
            let (write, stop) = (write.clone(), Arc::clone(stop));
            let (writes, current) = (Arc::clone(&writes), Arc::clone(current));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(WRITE_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = writer as i64;
                while !stop.load(Ordering::SeqCst) {
                    every.tick().await;
                    let start = clock.now();
                    *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
                    let result = write(n).await;
                    *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    let end = clock.now();
                    if let Ok(mut writes) = writes.lock() {
                        writes.push(Write { start, end, result });
                    }
                    n += WRITERS as i64;
                }
            });
        }
        Load {
            clock,
            writes,
            in_flight,
        }
    }

    fn summary(&self, switchover: f64, repoint: f64, end: f64) -> Summary {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let count = |from: f64, to: f64, ok: bool| {
            writes
                .iter()
                .filter(|w| w.end >= from && w.end < to && w.result.is_ok() == ok)
                .count()
        };
        let mut errors = BTreeMap::new();
        for write in writes.iter().filter(|w| w.end >= switchover && w.end < end) {
            if let Err(kind) = &write.result {
                *errors.entry(kind.clone()).or_default() += 1;
            }
        }
        // The earliest 1 s window from the repoint on with at least one
        // write ok and none failed (by when each write ended), in 10 ms steps.
        let mut clean_from = None;
        let mut t = repoint;
        while t + 1.0 <= end {
            let in_window = |ok| count(t, t + 1.0, ok);
            if in_window(true) > 0 && in_window(false) == 0 {
                clean_from = Some(t - repoint);
                break;
            }
            t += 0.01;
        }
        let now = self.clock.now();
        let done = writes.iter().map(|w| w.end - w.start).fold(0.0, f64::max);
        let pending = self
            .in_flight
            .iter()
            .filter_map(|c| *c.lock().unwrap_or_else(|e| e.into_inner()))
            .map(|start| now - start)
            .fold(0.0, f64::max);
        let slowest = if pending > done {
            format!("{pending:.2} s, in flight")
        } else {
            format!("{done:.2} s")
        };
        Summary {
            ok_before: count(0.0, switchover, true),
            failed_pinned: count(switchover, repoint, false),
            ok_pinned: count(switchover, repoint, true),
            failed_after: count(repoint, end, false),
            ok_after: count(repoint, end, true),
            clean_from,
            slowest,
            errors,
        }
    }
}

struct Summary {
    ok_before: usize,
    failed_pinned: usize,
    ok_pinned: usize,
    failed_after: usize,
    ok_after: usize,
    /// Seconds from the repoint to the start of the first clean second.
    clean_from: Option<f64>,
    slowest: String,
    errors: BTreeMap<String, usize>,
}
