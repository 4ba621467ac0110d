//! The notes service: axum 0.8 and SQLite, kept honest by `DbLivenessLayer`.
//!
//! ```text
//! cargo run --example axum --features axum[,metrics] -- [--db FILE] [--addr IP:PORT] [--journal wal|delete]
//!     [--rescue-dir DIR] [--grace-secs N] [--watchdog-ms MS]
//!
//!   --db FILE          the database file (default: notes.db in a new temporary directory)
//!   --addr IP:PORT     where to listen (default: 127.0.0.1:3000)
//!   --journal MODE     wal or delete (default: wal)
//!   --rescue-dir DIR   where rescue files go (default: next to the database)
//!   --grace-secs N     on a give-up, how long requests in flight may take (default: 10)
//!   --watchdog-ms MS   how often the file's identity is checked; 0 turns it off (default: 1000)
//! ```
//!
//! Routes: `POST /notes` (the text body becomes a note; 201 with `{"id":N}`),
//! `GET /notes` (200 with `[{"id":N,"body":"..."}]`), `GET /health`
//! (`HealthService`: 200 `pass`/`warn` or 503 `fail`, `application/health+json`);
//! with the `metrics` feature, `GET /metrics`: the crate's metrics in the
//! Prometheus text format, from `metrics-exporter-prometheus`'s recorder,
//! served by the same router.
//! It prints `listening on <addr>` once bound. Database errors go through
//! `DbError`, so the layer sees them; the watchdog and the rescue are on.
//!
//! Shutdown is graceful: on SIGTERM or ctrl-c the server stops accepting,
//! lets the requests in flight finish and exits 0. When the policy gives up
//! (the database cannot be reopened) it does the same and exits with status
//! 1 for the supervisor to restart it, at the latest `--grace-secs` after
//! the give-up.
//!
//! Try it: start it with `--journal delete`, add a note, delete the
//! database's directory, add another: that write fails with 503, the rescue
//! saves what the old handle sees, the reopen fails and the process exits
//! with status 1. The reopen never creates a database: a missing file is
//! not healed onto a new, empty one.
//!
//! `tests/layer_axum.rs` serves this `app()` in-process and runs this binary.

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
use tower_db_liveness::{DbError, DbLivenessLayer, HealthService, LivePool};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: axum [--db FILE] [--addr IP:PORT] [--journal wal|delete] \
                     [--rescue-dir DIR] [--grace-secs N] [--watchdog-ms MS]";

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
    routes()
        .layer(DbLivenessLayer::new(live.clone()))
        .route_service("/health", HealthService::new(live.clone()))
        .with_state(live)
}

/// The database routes alone.
pub fn routes() -> Router<LivePool> {
    Router::new().route("/notes", post(add_note).get(list_notes))
}

async fn add_note(State(live): State<LivePool>, body: String) -> Result<Response, DbError> {
    if body.trim().is_empty() {
        // Not a database error: the layer lets it through untouched.
        return Ok((StatusCode::BAD_REQUEST, "empty note\n").into_response());
    }
    // Take the pool per request: after a reopen this is the new one.
    // `execute`, not `fetch_one` on `INSERT … RETURNING`: sqlx stops at the
    // returned row and drops a failed commit (a full disk), so `fetch_one`
    // can return an id for a row that was never stored.
    let done = sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(&body)
        .execute(&live.pool())
        .await?;
    let id = done.last_insert_rowid();
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

async fn list_notes(State(live): State<LivePool>) -> Result<Json<serde_json::Value>, DbError> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
        .fetch_all(&live.pool())
        .await?;
    let notes = rows
        .into_iter()
        .map(|(id, body)| serde_json::json!({ "id": id, "body": body }))
        .collect();
    Ok(Json(serde_json::Value::Array(notes)))
}

struct Args {
    db: Option<PathBuf>,
    addr: SocketAddr,
    journal: SqliteJournalMode,
    rescue_dir: Option<PathBuf>,
    grace: Duration,
    watchdog: Option<Duration>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        db: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        journal: SqliteJournalMode::Wal,
        rescue_dir: None,
        grace: Duration::from_secs(10),
        watchdog: Some(Duration::from_secs(1)),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--db" => parsed.db = Some(PathBuf::from(value()?)),
            "--addr" => {
                let text = value()?;
                parsed.addr = text
                    .parse()
                    .map_err(|_| format!("--addr: `{text}` is not IP:PORT"))?;
            }
            "--journal" => {
                parsed.journal = match value()?.as_str() {
                    "wal" => SqliteJournalMode::Wal,
                    "delete" => SqliteJournalMode::Delete,
                    other => return Err(format!("--journal: `{other}` is not wal or delete")),
                }
            }
            "--rescue-dir" => parsed.rescue_dir = Some(PathBuf::from(value()?)),
            "--grace-secs" => {
                let text = value()?;
                let secs = text
                    .parse()
                    .map_err(|_| format!("--grace-secs: `{text}` is not a number of seconds"))?;
                parsed.grace = Duration::from_secs(secs);
            }
            "--watchdog-ms" => {
                let text = value()?;
                let ms = text
                    .parse()
                    .map_err(|_| format!("--watchdog-ms: `{text}` is not a number"))?;
                parsed.watchdog = Some(Duration::from_millis(ms)).filter(|d| !d.is_zero());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(parsed)
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
    // Kept alive until the process ends.
    let temp_dir;
    let db = match args.db {
        Some(path) => path,
        None => {
            temp_dir = tempfile::tempdir()?;
            temp_dir.path().join("notes.db")
        }
    };

    // Installed before the `LivePool` opens, so its first generation is recorded.
    #[cfg(feature = "metrics")]
    let metrics = prometheus()?;

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
        // On a give-up the default exit action waits this long (on a thread
        // of its own) for the graceful shutdown below, then exits with 1.
        .shutdown_grace(args.grace);
    if let Some(dir) = args.rescue_dir {
        builder = builder.rescue_dir(dir);
    }
    let live = builder.open().await?;

    let stop = stop_signal()?;
    let given_up = live.given_up();
    let shutdown = async move {
        tokio::select! {
            _ = given_up => {}
            _ = stop => {}
        }
    };

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    eprintln!("database: {}", db.display());
    let app = app(live.clone());
    #[cfg(feature = "metrics")]
    let app = app.route(
        "/metrics",
        axum::routing::get(move || std::future::ready(metrics.render())),
    );
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
