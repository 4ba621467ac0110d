//! Recovery under load, on both backends: the requests that fail during a
//! recovery, as the clients of an HTTP server count them, for
//!
//! - `heal`: the server with the crate (`DbLivenessLayer`, `LivePool`),
//!   which heals in process;
//! - `restart`: a server that crashes on a failed request and a supervisor
//!   that restarts it (the restart delay counted);
//! - `nothing`: the same server without the crate, left alone.
//!
//! Every server is its own process under a supervisor in this bench, which
//! restarts a process that exits (after `RESTART_DELAY`, systemd's default
//! `RestartSec=`). For `restart` the supervisor also kills the process
//! (SIGKILL, a crash) at the first failed request that started after the
//! process was listening: an application that exits on a database error,
//! as early as the error is seen. The load is 3 client tasks, each `POST
//! /notes` with a unique body then a 10 ms pause (hyper-util client,
//! keep-alive, 10 s timeout per request). A request fails on any status
//! but 201, a connection error or the timeout.
//!
//! **SQLite**: the database file replaced by another database of the same
//! application (an operator's restore: written beside it, renamed over it),
//! DELETE journal mode, so a write on the old file fails (1032); the fault
//! that heals (see `tests/file_faults.rs`). `heal` runs the notes example
//! (`examples/axum.rs`, release build, built by this bench as
//! `benches/restart.rs` does) as it ships; `restart` the same example with
//! `--watchdog-ms 0` (an application without the crate has no watchdog that
//! could heal before the first failed write), killed at that failure;
//! `nothing` the same route on a plain `SqlitePool` (this bench binary in
//! server mode). 2 to 3 s of load (out of step with the watchdog's ticks),
//! the fault, 5 s observed.
//!
//! **Postgres**: the switchover of `benches/pg_switchover.rs` (primary
//! stopped fast, standby promoted, old primary restarted as a standby, the
//! proxy left on it 8 s, then repointed; 10 s observed after the repoint).
//! The notes example does not take a Postgres URL, so all three servers are
//! this bench binary in server mode, with the same route: `heal` with
//! `LivePool::postgres(..)` (defaults), the layer and `/health`; `restart`
//! and `nothing` on a plain `PgPool` (sqlx defaults).
//!
//! **MySQL** (with the `mysql` feature): the switchover of
//! `benches/my_switchover.rs` on a MariaDB primary + GTID replica
//! (`tests/my_cluster`: the primary made read-only, the replica promoted,
//! the old primary made its replica and left up), the proxy left on the
//! demoted node 8 s, then repointed; 10 s observed after the repoint. As for
//! Postgres, the servers are this bench binary: `heal` with
//! `LivePool::mysql(..)` (defaults), the layer and `/health`; `restart` and
//! `nothing` on a plain `MySqlPool` (sqlx defaults).
//!
//! Printed per run and as a summary (median and max over the rounds):
//! requests failed from the fault on, the first clean second (a 1 s window
//! with at least one 201, no failure and no request over 1 s) after the
//! fault (SQLite) or the repoint (Postgres, MySQL), restarts, and writes
//! acknowledged (201) but missing from the database at the end.
//! `RECOVERY_ROUNDS` (default 3), `RECOVERY_ONLY` (`sqlite`, `postgres` or
//! `mysql`)
//! and `RECOVERY_VARIANTS` (`heal,restart,nothing`) narrow a run;
//! `RECOVERY_SERVER_LOG=1` shows the servers' logs (`RUST_LOG` applies).

#[cfg(feature = "mysql")]
#[path = "../tests/my_cluster/mod.rs"]
mod my_cluster;
#[path = "../tests/pg_cluster/mod.rs"]
mod pg_cluster;
#[path = "support/timeline.rs"]
mod timeline;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pg_cluster::Cluster;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, SqlitePool};
use timeline::{Done, Timeline};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tower_db_liveness::{DbError, DbLivenessLayer, HealthService, LivePool};

const CLIENTS: usize = 3;
const PAUSE: Duration = Duration::from_millis(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// systemd's default `RestartSec=`.
const RESTART_DELAY: Duration = Duration::from_millis(100);
const SQLITE_STEADY: Duration = Duration::from_secs(2);
const SQLITE_OBSERVE: Duration = Duration::from_secs(5);
const PG_STEADY: Duration = Duration::from_secs(3);
const PG_PINNED: Duration = Duration::from_secs(8);
const PG_OBSERVE: Duration = Duration::from_secs(10);

/// The example's table (`examples/axum.rs`, `open_pool`).
const SQLITE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)";
const PG_TABLE: &str = "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)";
#[cfg(feature = "mysql")]
const MY_TABLE: &str =
    "CREATE TABLE notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL)";

// ------------------------------------------------------------ server mode

/// Set (with `RECOVERY_DB` and `RECOVERY_ADDR`) when the bench binary runs
/// as one of the servers.
const SERVE_ENV: &str = "RECOVERY_SERVE";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn pg_add(pool: &PgPool, body: String) -> Result<StatusCode, DbError> {
    sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind(body)
        .execute(pool)
        .await?;
    Ok(StatusCode::CREATED)
}

async fn pg_live_add(
    State(live): State<LivePool<Postgres>>,
    body: String,
) -> Result<StatusCode, DbError> {
    pg_add(&live.pool(), body).await
}

async fn pg_plain_add(State(pool): State<PgPool>, body: String) -> Result<StatusCode, DbError> {
    pg_add(&pool, body).await
}

#[cfg(feature = "mysql")]
async fn my_add(pool: &sqlx::MySqlPool, body: String) -> Result<StatusCode, DbError> {
    sqlx::query("INSERT INTO notes (body) VALUES (?)")
        .bind(body)
        .execute(pool)
        .await?;
    Ok(StatusCode::CREATED)
}

#[cfg(feature = "mysql")]
async fn my_live_add(
    State(live): State<LivePool<sqlx::MySql>>,
    body: String,
) -> Result<StatusCode, DbError> {
    my_add(&live.pool(), body).await
}

#[cfg(feature = "mysql")]
async fn my_plain_add(
    State(pool): State<sqlx::MySqlPool>,
    body: String,
) -> Result<StatusCode, DbError> {
    my_add(&pool, body).await
}

async fn sqlite_plain_add(
    State(pool): State<SqlitePool>,
    body: String,
) -> Result<StatusCode, DbError> {
    sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(body)
        .execute(&pool)
        .await?;
    Ok(StatusCode::CREATED)
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, BoxError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(listener)
}

async fn serve(mode: &str, db: &str, addr: SocketAddr) -> Result<i32, BoxError> {
    match mode {
        "pg-crate" => {
            let live = LivePool::postgres(db.parse()?).open().await?;
            let app = Router::new()
                .route("/notes", post(pg_live_add))
                .layer(DbLivenessLayer::new(live.clone()))
                .route_service("/health", HealthService::new(live.clone()))
                .with_state(live.clone());
            let listener = listen(addr).await?;
            let given_up = live.given_up();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        () = given_up => {}
                        () = terminated() => {}
                    }
                })
                .await?;
            live.close().await;
            Ok(live.gave_up().map_or(0, |g| g.exit_code))
        }
        "pg-plain" => {
            let pool = PgPoolOptions::new().connect_with(db.parse()?).await?;
            let app = Router::new()
                .route("/notes", post(pg_plain_add))
                .with_state(pool.clone());
            let listener = listen(addr).await?;
            axum::serve(listener, app)
                .with_graceful_shutdown(terminated())
                .await?;
            pool.close().await;
            Ok(0)
        }
        #[cfg(feature = "mysql")]
        "my-crate" => {
            let live = LivePool::mysql(db.parse()?).open().await?;
            let app = Router::new()
                .route("/notes", post(my_live_add))
                .layer(DbLivenessLayer::new(live.clone()))
                .route_service("/health", HealthService::new(live.clone()))
                .with_state(live.clone());
            let listener = listen(addr).await?;
            let given_up = live.given_up();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        () = given_up => {}
                        () = terminated() => {}
                    }
                })
                .await?;
            live.close().await;
            Ok(live.gave_up().map_or(0, |g| g.exit_code))
        }
        #[cfg(feature = "mysql")]
        "my-plain" => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .connect_with(db.parse()?)
                .await?;
            let app = Router::new()
                .route("/notes", post(my_plain_add))
                .with_state(pool.clone());
            let listener = listen(addr).await?;
            axum::serve(listener, app)
                .with_graceful_shutdown(terminated())
                .await?;
            pool.close().await;
            Ok(0)
        }
        "sqlite-plain" => {
            // The example's pool (`open_pool`), without the crate.
            let options = SqliteConnectOptions::new()
                .filename(db)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            sqlx::query(SQLITE_TABLE).execute(&pool).await?;
            let app = Router::new()
                .route("/notes", post(sqlite_plain_add))
                .with_state(pool.clone());
            let listener = listen(addr).await?;
            axum::serve(listener, app)
                .with_graceful_shutdown(terminated())
                .await?;
            pool.close().await;
            Ok(0)
        }
        other => Err(format!("unknown {SERVE_ENV} mode `{other}`").into()),
    }
}

fn server_main(mode: String) -> ! {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_db_liveness=info".into()),
        )
        .init();
    let db = std::env::var("RECOVERY_DB").expect("RECOVERY_DB");
    let addr: SocketAddr = std::env::var("RECOVERY_ADDR")
        .expect("RECOVERY_ADDR")
        .parse()
        .expect("RECOVERY_ADDR is IP:PORT");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let code = match rt.block_on(serve(&mode, &db, addr)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{mode}: {err}");
            1
        }
    };
    drop(rt);
    std::process::exit(code)
}

// ------------------------------------------------------------ the supervisor

/// How to start one server process.
#[derive(Clone)]
enum Program {
    /// The notes example: `--db <file> --journal delete --addr <addr>`,
    /// plus `--watchdog-ms 0` without the watchdog.
    Example {
        binary: PathBuf,
        db: PathBuf,
        watchdog: bool,
    },
    /// This binary in server mode.
    Bench { mode: &'static str, db: String },
}

impl Program {
    fn command(&self, addr: SocketAddr) -> tokio::process::Command {
        match self {
            Program::Example {
                binary,
                db,
                watchdog,
            } => {
                let mut cmd = tokio::process::Command::new(binary);
                cmd.arg("--db")
                    .arg(db)
                    .args(["--journal", "delete", "--addr"])
                    .arg(addr.to_string());
                if !watchdog {
                    cmd.args(["--watchdog-ms", "0"]);
                }
                cmd
            }
            Program::Bench { mode, db } => {
                let mut cmd =
                    tokio::process::Command::new(std::env::current_exe().expect("current exe"));
                cmd.env(SERVE_ENV, mode)
                    .env("RECOVERY_DB", db)
                    .env("RECOVERY_ADDR", addr.to_string());
                cmd
            }
        }
    }
}

struct Supervised {
    restarts: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts `program` on `addr`, restarts it `RESTART_DELAY` after it exits,
/// and, with `crash_on_failure`, kills it at the first failure of a request
/// that started after it was listening. Resolves once the first start is
/// listening.
async fn supervise(
    program: Program,
    addr: SocketAddr,
    crash_on_failure: bool,
    timeline: Arc<Timeline>,
    mut failures: mpsc::UnboundedReceiver<Duration>,
) -> Supervised {
    let restarts = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (first_up_tx, first_up) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (restarts, stop) = (Arc::clone(&restarts), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut first_up_tx = Some(first_up_tx);
            let mut started = 0u32;
            let mut failures_open = true;
            while !stop.load(Ordering::SeqCst) {
                if started > 0 {
                    restarts.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(RESTART_DELAY).await;
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                started += 1;
                let mut child = program
                    .command(addr)
                    .stdout(Stdio::piped())
                    .stderr(if std::env::var_os("RECOVERY_SERVER_LOG").is_some() {
                        Stdio::inherit()
                    } else {
                        Stdio::null()
                    })
                    .kill_on_drop(true)
                    .spawn()
                    .expect("spawn a server");
                let stdout = child.stdout.take().expect("stdout");
                let mut lines = BufReader::new(stdout).lines();
                // Until it listens, or exits.
                let listening = loop {
                    match lines.next_line().await {
                        Ok(Some(line)) if line.starts_with("listening on ") => break true,
                        Ok(Some(_)) => continue,
                        _ => break false,
                    }
                };
                if !listening {
                    let _ = child.wait().await;
                    continue;
                }
                let up_at = timeline.now();
                if let Some(tx) = first_up_tx.take() {
                    let _ = tx.send(());
                }
                // Keep reading stdout so the child never blocks on it.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                loop {
                    tokio::select! {
                        _ = child.wait() => break,
                        failure = failures.recv(), if failures_open => match failure {
                            Some(started) if crash_on_failure && started >= up_at => {
                                let _ = child.start_kill();
                                let _ = child.wait().await;
                                break;
                            }
                            Some(_) => {}
                            None => failures_open = false,
                        },
                        () = tokio::time::sleep(Duration::from_millis(50)) => {
                            if stop.load(Ordering::SeqCst) {
                                // A graceful stop: SIGTERM, then SIGKILL.
                                if let Some(pid) = child.id() {
                                    let _ = tokio::process::Command::new("kill")
                                        .args(["-TERM", &pid.to_string()])
                                        .status()
                                        .await;
                                }
                                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                                    .await
                                    .is_err()
                                {
                                    let _ = child.start_kill();
                                    let _ = child.wait().await;
                                }
                                return;
                            }
                        }
                    }
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), first_up)
        .await
        .expect("the server did not start within 60 s")
        .expect("the supervisor ended before the server started");
    Supervised {
        restarts,
        stop,
        task,
    }
}

impl Supervised {
    async fn stop(self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.restarts.load(Ordering::SeqCst)
    }
}

// ------------------------------------------------------------ the load

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(Duration, String)>>>,
}

/// `CLIENTS` tasks posting unique notes; every failure's start goes to
/// `failures`. Each task returns its acknowledged bodies with their start.
fn load(
    addr: SocketAddr,
    tag: &str,
    timeline: &Arc<Timeline>,
    failures: mpsc::UnboundedSender<Duration>,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let uri: http::Uri = format!("http://{addr}/notes").parse().expect("uri");
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let tasks = (0..CLIENTS)
        .map(|worker| {
            let (stop, timeline, failures, uri, client) = (
                Arc::clone(&stop),
                Arc::clone(timeline),
                failures.clone(),
                uri.clone(),
                client.clone(),
            );
            let tag = tag.to_string();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!("{tag}-{worker}-{n}");
                    let request = http::Request::post(uri.clone())
                        .body(Full::new(Bytes::from(body.clone())))
                        .expect("a valid request");
                    let start = timeline.begin(worker);
                    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        let response = client.request(request).await?;
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        Ok::<_, hyper_util::client::legacy::Error>(status)
                    })
                    .await;
                    let failed = match answer {
                        Ok(Ok(status)) if status == StatusCode::CREATED => None,
                        Ok(Ok(status)) => Some(format!("HTTP {}", status.as_u16())),
                        Ok(Err(err)) if err.is_connect() => Some("connect error".to_string()),
                        Ok(Err(_)) => Some("connection error".to_string()),
                        Err(_) => Some("timeout".to_string()),
                    };
                    if failed.is_some() {
                        let _ = failures.send(start);
                    }
                    let ok = failed.is_none();
                    timeline.end(worker, start, failed);
                    if ok {
                        acked.push((start, body));
                    }
                    tokio::time::sleep(PAUSE).await;
                }
                acked
            })
        })
        .collect();
    Load { stop, tasks }
}

impl Load {
    /// Stops the clients (waiting at most `REQUEST_TIMEOUT` for requests in
    /// flight) and returns the acknowledged bodies with their start.
    async fn stop(self) -> Vec<(Duration, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for task in self.tasks {
            if let Ok(Ok(mut bodies)) =
                tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), task).await
            {
                acked.append(&mut bodies);
            }
        }
        acked
    }
}

/// A pause in `[0, max)`, from the process's randomly seeded hasher.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(hasher.finish() % nanos)
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("addr")
}

// ------------------------------------------------------------ runs

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Heal,
    Restart,
    Nothing,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Heal, Variant::Restart, Variant::Nothing];

    fn name(self) -> &'static str {
        match self {
            Variant::Heal => "heal",
            Variant::Restart => "restart",
            Variant::Nothing => "nothing",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    MySql,
}

struct Run {
    backend: Backend,
    variant: Variant,
    /// Requests that failed from the fault on.
    failed: usize,
    /// Postgres: of those, the ones that ended after the repoint.
    failed_after_repoint: usize,
    ok_after_fault: usize,
    /// From the fault (SQLite) or the repoint (Postgres) to the start of the
    /// first clean second.
    clean: Option<Duration>,
    failed_after_clean: Option<usize>,
    max_latency: Duration,
    restarts: u32,
    /// Acknowledged, not in the database at the end (SQLite: of the
    /// requests that started after the file was replaced).
    missing: usize,
    kinds: Vec<(String, usize)>,
}

/// When the fault came, what the clean second is counted from (the fault,
/// or the repoint), and the end of the observation.
struct Marks {
    fault: Duration,
    reference: Duration,
    until: Duration,
}

fn summarize(
    (backend, variant): (Backend, Variant),
    done: &[Done],
    Marks {
        fault,
        reference,
        until,
    }: Marks,
    restarts: u32,
    missing: usize,
) -> Run {
    let clean = timeline::first_clean_second(done, reference, until);
    Run {
        backend,
        variant,
        failed: timeline::failed_between(done, fault, Duration::MAX),
        failed_after_repoint: timeline::failed_between(done, reference, Duration::MAX),
        ok_after_fault: timeline::ok_between(done, fault, Duration::MAX),
        clean,
        failed_after_clean: clean
            .map(|c| timeline::failed_between(done, reference + c, Duration::MAX)),
        max_latency: timeline::max_latency_after(done, fault),
        restarts,
        missing,
        kinds: timeline::failures_by_kind(done, fault),
    }
}

/// Bodies in the notes table of a SQLite file.
async fn sqlite_bodies(path: &Path) -> HashSet<String> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let Ok(mut conn) = sqlx::SqliteConnection::connect_with(&options).await else {
        return HashSet::new();
    };
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    let _ = conn.close().await;
    bodies.into_iter().collect()
}

async fn sqlite_run(example: &Path, variant: Variant, round: usize) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("notes.db");
    let restore = dir.path().join("restore.db");
    // The database, and the restore that replaces it: another database of
    // the same application, empty.
    for path in [&db, &restore] {
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete),
        )
        .await
        .expect("create a database");
        sqlx::query(SQLITE_TABLE)
            .execute(&pool)
            .await
            .expect("create table");
        pool.close().await;
    }
    let program = match variant {
        // As it ships.
        Variant::Heal => Program::Example {
            binary: example.to_owned(),
            db: db.clone(),
            watchdog: true,
        },
        // An application without the crate has no watchdog: the first
        // failed write is where it crashes.
        Variant::Restart => Program::Example {
            binary: example.to_owned(),
            db: db.clone(),
            watchdog: false,
        },
        Variant::Nothing => Program::Bench {
            mode: "sqlite-plain",
            db: db.to_string_lossy().into_owned(),
        },
    };
    let addr = free_addr();
    let timeline = Arc::new(Timeline::new(CLIENTS));
    let (fail_tx, fail_rx) = mpsc::unbounded_channel();
    let server = supervise(
        program,
        addr,
        variant == Variant::Restart,
        Arc::clone(&timeline),
        fail_rx,
    )
    .await;
    let clients = load(
        addr,
        &format!("sqlite-{}-{round}", variant.name()),
        &timeline,
        fail_tx,
    );
    // Not in step with the watchdog's ticks (every second from the start).
    tokio::time::sleep(SQLITE_STEADY + jitter(Duration::from_secs(1))).await;
    let fault = timeline.now();
    std::fs::rename(&restore, &db).expect("replace the database file");
    let replaced = timeline.now();
    tokio::time::sleep(SQLITE_OBSERVE).await;
    let until = timeline.now();
    let acked = clients.stop().await;
    let restarts = server.stop().await;
    let done = timeline.finish(until);
    let stored = sqlite_bodies(&db).await;
    // Requests that started once the file was replaced: one that started
    // before may have committed to the old file, which the restore replaced.
    let missing = acked
        .iter()
        .filter(|(start, body)| *start >= replaced && !stored.contains(body))
        .count();
    summarize(
        (Backend::Sqlite, variant),
        &done,
        Marks {
            fault,
            reference: fault,
            until,
        },
        restarts,
        missing,
    )
}

async fn admin<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    op: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || op(&cluster))
        .await
        .expect("the cluster operation panicked")
}

async fn pg_bodies(url: &str) -> HashSet<String> {
    let options: PgConnectOptions = url.parse().expect("url");
    let mut conn = PgConnection::connect_with(&options)
        .await
        .expect("connect to the new primary");
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_all(&mut conn)
        .await
        .expect("read the notes");
    let _ = conn.close().await;
    bodies.into_iter().collect()
}

async fn pg_run(variant: Variant, round: usize) -> Run {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("start")
            .expect("start a PostgreSQL primary + standby (tests/pg_cluster)"),
    );
    {
        let mut conn = PgConnection::connect(&cluster.url())
            .await
            .expect("connect");
        sqlx::query(PG_TABLE)
            .execute(&mut conn)
            .await
            .expect("create table");
        let _ = conn.close().await;
    }
    let program = Program::Bench {
        mode: match variant {
            Variant::Heal => "pg-crate",
            Variant::Restart | Variant::Nothing => "pg-plain",
        },
        db: cluster.url(),
    };
    let addr = free_addr();
    let timeline = Arc::new(Timeline::new(CLIENTS));
    let (fail_tx, fail_rx) = mpsc::unbounded_channel();
    let server = supervise(
        program,
        addr,
        variant == Variant::Restart,
        Arc::clone(&timeline),
        fail_rx,
    )
    .await;
    let clients = load(
        addr,
        &format!("pg-{}-{round}", variant.name()),
        &timeline,
        fail_tx,
    );
    tokio::time::sleep(PG_STEADY).await;
    let fault = timeline.now();
    let new_primary = admin(&cluster, |c| c.switchover())
        .await
        .expect("switchover");
    tokio::time::sleep(PG_PINNED).await;
    cluster.repoint(new_primary);
    let repoint = timeline.now();
    tokio::time::sleep(PG_OBSERVE).await;
    let until = timeline.now();
    let acked = clients.stop().await;
    let restarts = server.stop().await;
    let done = timeline.finish(until);
    let stored = pg_bodies(&cluster.direct_url(new_primary)).await;
    let missing = acked
        .iter()
        .filter(|(_, body)| !stored.contains(body))
        .count();
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    summarize(
        (Backend::Postgres, variant),
        &done,
        Marks {
            fault,
            reference: repoint,
            until,
        },
        restarts,
        missing,
    )
}

#[cfg(feature = "mysql")]
async fn my_bodies(url: &str) -> HashSet<String> {
    let mut conn = sqlx::MySqlConnection::connect(url)
        .await
        .expect("connect to the new primary");
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_all(&mut conn)
        .await
        .expect("read the notes");
    let _ = conn.close().await;
    bodies.into_iter().collect()
}

/// `pg_run` on a MariaDB primary + replica (`tests/my_cluster`).
#[cfg(feature = "mysql")]
async fn my_run(variant: Variant, round: usize) -> Run {
    use my_cluster::Cluster;
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("start")
            .expect("start a MariaDB primary + replica (tests/my_cluster)"),
    );
    {
        let mut conn = sqlx::MySqlConnection::connect(&cluster.url())
            .await
            .expect("connect");
        sqlx::query(MY_TABLE)
            .execute(&mut conn)
            .await
            .expect("create table");
        let _ = conn.close().await;
    }
    let program = Program::Bench {
        mode: match variant {
            Variant::Heal => "my-crate",
            Variant::Restart | Variant::Nothing => "my-plain",
        },
        db: cluster.url(),
    };
    let addr = free_addr();
    let timeline = Arc::new(Timeline::new(CLIENTS));
    let (fail_tx, fail_rx) = mpsc::unbounded_channel();
    let server = supervise(
        program,
        addr,
        variant == Variant::Restart,
        Arc::clone(&timeline),
        fail_rx,
    )
    .await;
    let clients = load(
        addr,
        &format!("my-{}-{round}", variant.name()),
        &timeline,
        fail_tx,
    );
    tokio::time::sleep(PG_STEADY).await;
    let fault = timeline.now();
    let switching = Arc::clone(&cluster);
    let new_primary = tokio::task::spawn_blocking(move || switching.switchover())
        .await
        .expect("the switchover panicked")
        .expect("switchover");
    tokio::time::sleep(PG_PINNED).await;
    cluster.repoint(new_primary);
    let repoint = timeline.now();
    tokio::time::sleep(PG_OBSERVE).await;
    let until = timeline.now();
    let acked = clients.stop().await;
    let restarts = server.stop().await;
    let done = timeline.finish(until);
    let stored = my_bodies(&cluster.direct_url(new_primary)).await;
    let missing = acked
        .iter()
        .filter(|(_, body)| !stored.contains(body))
        .count();
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    summarize(
        (Backend::MySql, variant),
        &done,
        Marks {
            fault,
            reference: repoint,
            until,
        },
        restarts,
        missing,
    )
}

// ------------------------------------------------------------ the example

/// `target/<profile>`, from this bench's own path.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the bench runs from target/<profile>/deps")
        .to_owned()
}

/// Builds the notes example with this bench's profile (as
/// `benches/restart.rs` does) and returns its path.
fn example_binary() -> PathBuf {
    let profile_dir = profile_dir();
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--example",
            "axum",
            "--profile",
            profile,
            "--features",
            "axum",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the axum example failed");
    let binary = profile_dir
        .join("examples")
        .join(format!("axum{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

// ------------------------------------------------------------ report

fn print_run(round: usize, run: &Run) {
    let kinds: Vec<String> = run
        .kinds
        .iter()
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect();
    let reference = match run.backend {
        Backend::Sqlite => "fault",
        Backend::Postgres | Backend::MySql => "repoint",
    };
    println!(
        "{:?} round {round} {:<7} | failed {:>5}{} (ok {:>5}) | clean second {} after the {reference}, \
         failed after it {} | max latency {:.0} ms | restarts {} | acknowledged but missing {} | {}",
        run.backend,
        run.variant.name(),
        run.failed,
        match run.backend {
            Backend::Postgres | Backend::MySql => {
                format!(" ({} after the repoint)", run.failed_after_repoint)
            }
            Backend::Sqlite => String::new(),
        },
        run.ok_after_fault,
        timeline::secs(run.clean),
        run.failed_after_clean
            .map_or("-".to_string(), |n| n.to_string()),
        run.max_latency.as_secs_f64() * 1e3,
        run.restarts,
        run.missing,
        if kinds.is_empty() {
            "no failure".to_string()
        } else {
            kinds.join(", ")
        }
    );
}

fn print_summary(backend: Backend, runs: &[Run]) {
    let reference = match backend {
        Backend::Sqlite => "fault",
        Backend::Postgres | Backend::MySql => "repoint",
    };
    println!();
    println!("{backend:?}:");
    println!(
        "| variant | requests failed, median / max | {}first clean second after the {reference}, median / max | restarts, median | max latency | acknowledged but missing, max |",
        match backend {
            Backend::Postgres | Backend::MySql => "failed after the repoint, median / max | ",
            Backend::Sqlite => "",
        }
    );
    println!(
        "|---|---|{}---|---|---|---|",
        match backend {
            Backend::Postgres | Backend::MySql => "---|",
            Backend::Sqlite => "",
        }
    );
    for variant in Variant::ALL {
        let of: Vec<&Run> = runs
            .iter()
            .filter(|r| r.backend == backend && r.variant == variant)
            .collect();
        if of.is_empty() {
            continue;
        }
        let (failed_med, failed_max) =
            timeline::median_max_count(&of.iter().map(|r| r.failed).collect::<Vec<_>>());
        let (after_med, after_max) = timeline::median_max_count(
            &of.iter()
                .map(|r| r.failed_after_repoint)
                .collect::<Vec<_>>(),
        );
        let (clean_med, clean_max) =
            timeline::median_max(&of.iter().map(|r| r.clean).collect::<Vec<_>>());
        let (restarts_med, _) =
            timeline::median_max_count(&of.iter().map(|r| r.restarts as usize).collect::<Vec<_>>());
        let latency = of.iter().map(|r| r.max_latency).max().unwrap_or_default();
        let missing = of.iter().map(|r| r.missing).max().unwrap_or(0);
        println!(
            "| {} | {failed_med} / {failed_max} | {}{} / {} | {restarts_med} | {:.0} ms | {missing} |",
            variant.name(),
            match backend {
                Backend::Postgres | Backend::MySql => format!("{after_med} / {after_max} | "),
                Backend::Sqlite => String::new(),
            },
            timeline::secs(clean_med),
            timeline::secs(clean_max),
            latency.as_secs_f64() * 1e3,
        );
    }
}

fn rounds() -> usize {
    std::env::var("RECOVERY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

fn main() {
    if let Ok(mode) = std::env::var(SERVE_ENV) {
        server_main(mode);
    }
    let only = std::env::var("RECOVERY_ONLY").unwrap_or_default();
    let variants = std::env::var("RECOVERY_VARIANTS").unwrap_or_default();
    let selected =
        |v: Variant| variants.is_empty() || variants.split(',').any(|name| name == v.name());
    let rounds = rounds();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "recovery: {rounds} rounds; {CLIENTS} clients, {PAUSE:?} pause, restart delay {RESTART_DELAY:?}"
    );
    let mut runs = Vec::new();
    if only.is_empty() || only == "sqlite" {
        let example = example_binary();
        for round in 0..rounds {
            for i in 0..Variant::ALL.len() {
                let variant = Variant::ALL[(round + i) % Variant::ALL.len()];
                if !selected(variant) {
                    continue;
                }
                let run = rt.block_on(sqlite_run(&example, variant, round + 1));
                print_run(round + 1, &run);
                runs.push(run);
            }
        }
    }
    if only.is_empty() || only == "postgres" {
        for round in 0..rounds {
            for i in 0..Variant::ALL.len() {
                let variant = Variant::ALL[(round + i) % Variant::ALL.len()];
                if !selected(variant) {
                    continue;
                }
                let run = rt.block_on(pg_run(variant, round + 1));
                print_run(round + 1, &run);
                runs.push(run);
            }
        }
    }
    #[cfg(feature = "mysql")]
    if only.is_empty() || only == "mysql" {
        for round in 0..rounds {
            for i in 0..Variant::ALL.len() {
                let variant = Variant::ALL[(round + i) % Variant::ALL.len()];
                if !selected(variant) {
                    continue;
                }
                let run = rt.block_on(my_run(variant, round + 1));
                print_run(round + 1, &run);
                runs.push(run);
            }
        }
    }
    for backend in [Backend::Sqlite, Backend::Postgres, Backend::MySql] {
        if runs.iter().any(|r| r.backend == backend) {
            print_summary(backend, &runs);
        }
    }
}
