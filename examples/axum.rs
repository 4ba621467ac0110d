//! The notes service: axum 0.8 on SQLite, PostgreSQL or MySQL/MariaDB, kept honest by
//! `DbLivenessLayer`.
//!
//! ```text
//! cargo run --example axum --features axum[,metrics] -- [--db FILE] [--addr IP:PORT]
//!     [--grace-secs N] [--journal wal|delete] [--rescue-dir DIR] [--watchdog-ms MS]
//! cargo run --example axum --features axum,postgres[,metrics] -- --db postgres://USER@HOST:PORT/DB
//!     [--addr IP:PORT] [--grace-secs N] [--failover-secs N]
//! cargo run --example axum --features axum,mysql[,metrics] -- --db mysql://USER:PASS@HOST:PORT/DB
//!     [--addr IP:PORT] [--grace-secs N] [--failover-secs N]
//!
//!   --db FILE|URL      a SQLite database file (default: notes.db in a new temporary
//!                      directory), or a postgres:// (postgresql://) URL: the endpoint
//!                      of your primary (the Service, VIP or PgBouncer in front of it),
//!                      or a mysql:// (mariadb://) URL: your primary's endpoint (the VIP,
//!                      the Aurora cluster endpoint)
//!   --addr IP:PORT     where to listen (default: 127.0.0.1:3000)
//!   --grace-secs N     on a give-up, how long requests in flight may take (default: 10)
//! SQLite only:
//!   --journal MODE     wal or delete (default: wal)
//!   --rescue-dir DIR   where rescue files go (default: beside the database's directory)
//!   --watchdog-ms MS   how often the file's identity is checked; 0 turns it off (default: 1000)
//! PostgreSQL and MySQL only:
//!   --failover-secs N  how long a failover may take to produce a writable primary
//!                      behind the URL before the process gives up (default: no
//!                      limit: a restart would wait the same way)
//! ```
//!
//! Routes, the same on both databases: `POST /notes` (the text body becomes a
//! note; 201 with `{"id":N}`), `GET /notes` (200 with
//! `[{"id":N,"body":"..."}]`), `GET /livez` (liveness: 503 only once the
//! policy has given up, for the liveness probe), `GET /readyz` (readiness:
//! 503 while a request routed here would fail, for the readiness probe),
//! `GET /health` (the same answer as `/readyz`, for people and monitors);
//! each is a `HealthService`, 200 `pass`/`warn` or 503 `fail`,
//! `application/health+json` whose `state` names the state; with the
//! `metrics` feature, `GET /metrics`: the crate's metrics in the Prometheus
//! text format, from `metrics-exporter-prometheus`'s recorder, served by the
//! same router.
//! It prints `listening on <addr>` once bound, and creates the `notes` table
//! at start if it is missing. Database errors go through `DbError`, so the
//! layer sees them. A 201 is only sent for a note that is stored.
//!
//! Shutdown is graceful: on SIGTERM or ctrl-c the server stops accepting,
//! lets the requests in flight finish and exits 0. When the policy gives up
//! (the database cannot be reopened) it does the same and exits with status
//! 1 for the supervisor to restart it, at the latest `--grace-secs` after
//! the give-up.
//!
//! SQLite: the watchdog and the rescue are on. Try it: start it with
//! `--journal delete`, add a note, delete the database's directory, add
//! another: that write fails with 503, the rescue saves what the old handle
//! sees, the reopen fails and the process exits with status 1. The reopen
//! never creates a database: a missing file is not healed onto a new, empty
//! one.
//!
//! PostgreSQL (feature `postgres`): the pool only ever holds connections to
//! a server that takes writes. In a failover the old primary is demoted and
//! the endpoint still leads to it for a while: writes answer 503 (never a
//! 201 for a write the server refused), `/health` answers `fail`, then
//! `warn` while the pool is closed and the policy waits, with single
//! connections and back-off, for the endpoint to lead to a writable primary
//! again; then a new pool is swapped in (`"generation":1` in `/health`,
//! `pass`) and writes succeed, with no restart. If no writable primary
//! appears within `--failover-secs`, the process exits with status 1.
//! `cargo run --release --example failover --features axum,postgres`
//! replays that on a real primary and standby.
//!
//! MySQL / MariaDB (feature `mysql`): a switchover leaves the old primary up
//! and read-only, and no connection breaks. While the endpoint still leads
//! to it, the pool cannot tell that from a primary made read-only in place:
//! reads are served, writes answer 503 (never a 201 for a write the server
//! refused), `/readyz` answers `warn` with `"state":"read_only"` (never
//! `pass`). Once the endpoint leads to another server that takes writes (the
//! background check asks it about every second), the pinned pool is closed
//! and a new one swapped in (`"generation":1`), with no failing write needed
//! and no restart.
//!
//! `tests/layer_axum.rs` serves this `app()` in-process and runs this binary
//! on SQLite files; `tests/layer_axum_pg.rs` and `tests/layer_axum_my.rs` run
//! it through a real switchover.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tower_db_liveness::{Backend, Check, DbError, DbLivenessLayer, HealthService, LivePool};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: axum [--db FILE|postgres://USER@HOST:PORT/DB|mysql://USER:PASS@HOST:PORT/DB] \
                     [--addr IP:PORT] \
                     [--grace-secs N] [--journal wal|delete] [--rescue-dir DIR] \
                     [--watchdog-ms MS] [--failover-secs N]";

/// Opens a pool on `options` and creates the table if it is missing. Used at
/// start and as the `LivePool`'s reopen.
pub async fn open_pool(options: SqliteConnectOptions) -> sqlx::Result<SqlitePool> {
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// The service: the routes behind the layer, and the health check.
pub fn app(live: LivePool) -> Router {
    with_liveness(routes(), live)
}

/// The database routes alone.
pub fn routes() -> Router<LivePool> {
    Router::new().route("/notes", post(add_note).get(list_notes))
}

/// The database routes behind the layer, and the probes beside them (not
/// behind the layer: a health check is never held during a heal). The
/// same for every database.
fn with_liveness<DB: Backend>(routes: Router<LivePool<DB>>, live: LivePool<DB>) -> Router {
    // Clones share one probe in flight.
    let health = HealthService::new(live.clone());
    routes
        .layer(DbLivenessLayer::new(live.clone()))
        .route_service("/livez", health.clone().check(Check::Liveness))
        .route_service("/readyz", health.clone())
        .route_service("/health", health)
        .with_state(live)
}

async fn add_note(State(live): State<LivePool>, body: String) -> Result<Response, DbError> {
    if body.trim().is_empty() {
        return Ok(empty_note());
    }
    // Take the pool per request: after a reopen this is the new one.
    // `execute`, not `fetch_one` on `INSERT … RETURNING`: sqlx stops at the
    // returned row and drops a failed commit (a full disk), so `fetch_one`
    // can return an id for a row that was never stored.
    let done = sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(&body)
        .execute(&live.pool())
        .await?;
    Ok(created(done.last_insert_rowid()))
}

async fn list_notes(State(live): State<LivePool>) -> Result<Json<serde_json::Value>, DbError> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
        .fetch_all(&live.pool())
        .await?;
    Ok(notes(rows))
}

/// Not a database error: the layer lets it through untouched.
fn empty_note() -> Response {
    (StatusCode::BAD_REQUEST, "empty note\n").into_response()
}

fn created(id: i64) -> Response {
    (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()
}

fn notes(rows: Vec<(i64, String)>) -> Json<serde_json::Value> {
    let notes = rows
        .into_iter()
        .map(|(id, body)| serde_json::json!({ "id": id, "body": body }))
        .collect();
    Json(serde_json::Value::Array(notes))
}

/// The same service on PostgreSQL (feature `postgres`): the routes have the
/// same shapes; only the SQL and the pool's type differ.
#[cfg(feature = "postgres")]
pub mod postgres {
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::response::Response;
    use axum::routing::post;
    use sqlx::Postgres;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use tower_db_liveness::{DbError, LivePool};

    use super::{created, empty_note, notes, with_liveness};

    /// Opens the `LivePool` (it waits, up to `failover` if given, for a
    /// writable primary) and creates the table if it is missing. A reopen
    /// after a failover needs no table: the new primary is a replica of the
    /// old one.
    pub async fn open(
        options: PgConnectOptions,
        failover: Option<Duration>,
        grace: Duration,
    ) -> sqlx::Result<LivePool<Postgres>> {
        let mut builder = LivePool::postgres(options)
            .pool_options(PgPoolOptions::new().max_connections(4))
            .shutdown_grace(grace);
        if let Some(failover) = failover {
            // How long a failover may take (the orchestrator promoting a
            // standby and moving the endpoint) before the policy gives up.
            // Without it the policy waits: a restart would wait the same way.
            builder = builder.reopen_timeout(failover);
        }
        let live = builder.open().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)",
        )
        .execute(&live.pool())
        .await?;
        Ok(live)
    }

    /// The service: the routes behind the layer, and the health check.
    pub fn app(live: LivePool<Postgres>) -> Router {
        with_liveness(routes(), live)
    }

    /// The database routes alone.
    pub fn routes() -> Router<LivePool<Postgres>> {
        Router::new().route("/notes", post(add_note).get(list_notes))
    }

    async fn add_note(
        State(live): State<LivePool<Postgres>>,
        body: String,
    ) -> Result<Response, DbError> {
        if body.trim().is_empty() {
            return Ok(empty_note());
        }
        // `fetch_one` on `INSERT … RETURNING` is safe here, unlike on
        // SQLite: sqlx's Postgres driver reads every answer up to
        // ReadyForQuery, which the server sends after the statement's
        // implicit commit, so a failed commit is an error, never an id.
        let id: i64 = sqlx::query_scalar("INSERT INTO notes (body) VALUES ($1) RETURNING id")
            .bind(&body)
            .fetch_one(&live.pool())
            .await?;
        Ok(created(id))
    }

    async fn list_notes(
        State(live): State<LivePool<Postgres>>,
    ) -> Result<axum::Json<serde_json::Value>, DbError> {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
            .fetch_all(&live.pool())
            .await?;
        Ok(notes(rows))
    }
}

/// The same service on MySQL or MariaDB (feature `mysql`): the routes have
/// the same shapes; only the SQL and the pool's type differ.
#[cfg(feature = "mysql")]
pub mod mysql {
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::response::Response;
    use axum::routing::post;
    use sqlx::MySql;
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use tower_db_liveness::{DbError, LivePool};

    use super::{created, empty_note, notes, with_liveness};

    /// Opens the `LivePool` (it waits, up to `failover` if given, for a
    /// writable primary) and creates the table if it is missing.
    pub async fn open(
        options: MySqlConnectOptions,
        failover: Option<Duration>,
        grace: Duration,
    ) -> sqlx::Result<LivePool<MySql>> {
        let mut builder = LivePool::mysql(options)
            .pool_options(MySqlPoolOptions::new().max_connections(4))
            .shutdown_grace(grace);
        if let Some(failover) = failover {
            // Without it the policy waits for a writable primary for as long
            // as it takes: a restart would wait the same way.
            builder = builder.reopen_timeout(failover);
        }
        let live = builder.open().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS notes \
             (id BIGINT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL)",
        )
        .execute(&live.pool())
        .await?;
        Ok(live)
    }

    /// The service: the routes behind the layer, and the health check.
    pub fn app(live: LivePool<MySql>) -> Router {
        with_liveness(routes(), live)
    }

    /// The database routes alone.
    pub fn routes() -> Router<LivePool<MySql>> {
        Router::new().route("/notes", post(add_note).get(list_notes))
    }

    async fn add_note(
        State(live): State<LivePool<MySql>>,
        body: String,
    ) -> Result<Response, DbError> {
        if body.trim().is_empty() {
            return Ok(empty_note());
        }
        // An autocommit INSERT's OK packet comes after its commit: a failed
        // commit (1290 on a server turned read-only) is an error, never an id.
        let done = sqlx::query("INSERT INTO notes (body) VALUES (?)")
            .bind(&body)
            .execute(&live.pool())
            .await?;
        let id = i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX);
        Ok(created(id))
    }

    async fn list_notes(
        State(live): State<LivePool<MySql>>,
    ) -> Result<axum::Json<serde_json::Value>, DbError> {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
            .fetch_all(&live.pool())
            .await?;
        Ok(notes(rows))
    }
}

/// Where the notes are.
enum Database {
    /// A SQLite file; `None`: a new one in a temporary directory.
    File(Option<PathBuf>),
    /// A `postgres://` URL.
    Postgres(String),
    /// A `mysql://` URL.
    MySql(String),
}

struct Args {
    db: Database,
    addr: SocketAddr,
    grace: Duration,
    journal: SqliteJournalMode,
    rescue_dir: Option<PathBuf>,
    watchdog: Option<Duration>,
    failover: Option<Duration>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        db: Database::File(None),
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        grace: Duration::from_secs(10),
        journal: SqliteJournalMode::Wal,
        rescue_dir: None,
        watchdog: Some(Duration::from_secs(1)),
        failover: None,
    };
    // The flags given that only one database takes, to refuse a mix.
    let (mut file_only, mut postgres_only) = (None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--db" => {
                let db = value()?;
                parsed.db = if db.starts_with("postgres://") || db.starts_with("postgresql://") {
                    Database::Postgres(db)
                } else if db.starts_with("mysql://") || db.starts_with("mariadb://") {
                    Database::MySql(db)
                } else {
                    Database::File(Some(PathBuf::from(db)))
                };
            }
            "--addr" => {
                let text = value()?;
                parsed.addr = text
                    .parse()
                    .map_err(|_| format!("--addr: `{text}` is not IP:PORT"))?;
            }
            "--grace-secs" => parsed.grace = seconds(&arg, &value()?)?,
            "--journal" => {
                parsed.journal = match value()?.as_str() {
                    "wal" => SqliteJournalMode::Wal,
                    "delete" => SqliteJournalMode::Delete,
                    other => return Err(format!("--journal: `{other}` is not wal or delete")),
                };
                file_only = Some("--journal");
            }
            "--rescue-dir" => {
                parsed.rescue_dir = Some(PathBuf::from(value()?));
                file_only = Some("--rescue-dir");
            }
            "--watchdog-ms" => {
                let text = value()?;
                let ms = text
                    .parse()
                    .map_err(|_| format!("--watchdog-ms: `{text}` is not a number"))?;
                parsed.watchdog = Some(Duration::from_millis(ms)).filter(|d| !d.is_zero());
                file_only = Some("--watchdog-ms");
            }
            "--failover-secs" => {
                parsed.failover = Some(seconds(&arg, &value()?)?);
                postgres_only = Some("--failover-secs");
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    match (&parsed.db, file_only, postgres_only) {
        (Database::Postgres(_) | Database::MySql(_), Some(flag), _) => Err(format!(
            "{flag} is for a SQLite file, not a database server's URL"
        )),
        (Database::File(_), _, Some(flag)) => {
            Err(format!("{flag} is for a postgres:// or mysql:// URL"))
        }
        _ => Ok(parsed),
    }
}

fn seconds(flag: &str, text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("{flag}: `{text}` is not a number of seconds"))
}

/// Resolves on SIGTERM or ctrl-c. The handlers are installed when this is
/// called, before the server is announced, so an early SIGTERM is not lost.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The Prometheus recorder, installed for the whole process; `_seconds`
/// histograms get buckets (the exporter's default would be a summary).
#[cfg(feature = "metrics")]
fn prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, Error> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()?;
    // Rendering drains the histograms too; this bounds them between scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_db_liveness=info".into()),
        )
        .init();

    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };

    // Routes that do not touch the database, merged into either service.
    // The recorder is installed before the `LivePool` opens, so its first
    // generation is recorded.
    let extra = Router::new();
    #[cfg(feature = "metrics")]
    let extra = {
        let metrics = prometheus()?;
        extra.route(
            "/metrics",
            axum::routing::get(move || std::future::ready(metrics.render())),
        )
    };

    match args.db {
        Database::File(path) => {
            // Kept alive until the process ends.
            let temp_dir;
            let db = match path {
                Some(path) => path,
                None => {
                    temp_dir = tempfile::tempdir()?;
                    temp_dir.path().join("notes.db")
                }
            };
            // After a give-up that lost the database, refuse to start (the
            // error names the rescue and how to restore it) before our own
            // pool's `create_if_missing(true)` makes an empty one.
            LivePool::check_pending_rescue(
                &db,
                args.rescue_dir.as_deref(),
                Duration::from_secs(60),
            )
            .await?;
            let options = SqliteConnectOptions::new()
                .filename(&db)
                .create_if_missing(true)
                .journal_mode(args.journal);
            let pool = open_pool(options.clone()).await?;
            // A reopen reattaches the database that was open; it never creates one.
            let reopen = options.create_if_missing(false);
            let mut builder = LivePool::builder_with_pool(pool, move || open_pool(reopen.clone()))
                .watchdog_interval(args.watchdog)
                .rescue(true)
                // On a give-up the default exit action waits this long (on a
                // thread of its own) for the graceful shutdown in `serve`,
                // then exits with 1.
                .shutdown_grace(args.grace);
            if let Some(dir) = args.rescue_dir {
                builder = builder.rescue_dir(dir);
            }
            let live = builder.open().await?;
            eprintln!("database: {}", db.display());
            serve(live.clone(), app(live).merge(extra), args.addr).await
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            let options: sqlx::postgres::PgConnectOptions = url.parse()?;
            eprintln!(
                "database: postgres {}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            );
            let live = postgres::open(options, args.failover, args.grace).await?;
            serve(live.clone(), postgres::app(live).merge(extra), args.addr).await
        }
        #[cfg(not(feature = "postgres"))]
        Database::Postgres(_url) => {
            eprintln!(
                "error: this build has no PostgreSQL support: \
                 cargo run --example axum --features axum,postgres\n{USAGE}"
            );
            std::process::exit(2);
        }
        #[cfg(feature = "mysql")]
        Database::MySql(url) => {
            let options: sqlx::mysql::MySqlConnectOptions = url.parse()?;
            eprintln!(
                "database: mysql {}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            );
            let live = mysql::open(options, args.failover, args.grace).await?;
            serve(live.clone(), mysql::app(live).merge(extra), args.addr).await
        }
        #[cfg(not(feature = "mysql"))]
        Database::MySql(_url) => {
            eprintln!(
                "error: this build has no MySQL support: \
                 cargo run --example axum --features axum,mysql\n{USAGE}"
            );
            std::process::exit(2);
        }
    }
}

/// Serves `app` on `addr` until SIGTERM, ctrl-c or the policy's give-up,
/// then closes the pool and, if the policy gave up, exits with its code.
async fn serve<DB: Backend>(
    live: LivePool<DB>,
    app: Router,
    addr: SocketAddr,
) -> Result<(), Error> {
    let stop = stop_signal()?;
    let given_up = live.given_up();
    let shutdown = async move {
        tokio::select! {
            _ = given_up => {}
            _ = stop => {}
        }
    };

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;

    // Every request in flight has had its answer. Wait (bounded) until any
    // replaced database is sealed and rescued, then exit with the give-up's
    // code, if the policy gave up.
    live.close().await;
    if let Some(gave_up) = live.gave_up() {
        std::process::exit(gave_up.exit_code);
    }
    Ok(())
}
