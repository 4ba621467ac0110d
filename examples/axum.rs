//! The notes service: axum 0.8 and SQLite, kept honest by `DbLivenessLayer`.
//!
//! ```text
//! cargo run --example axum --features axum -- [--db FILE] [--addr IP:PORT] [--journal wal|delete]
//!
//!   --db FILE          the database file (default: notes.db in a new temporary directory)
//!   --addr IP:PORT     where to listen (default: 127.0.0.1:3000)
//!   --journal MODE     wal or delete (default: wal)
//! ```
//!
//! Routes: `POST /notes` (the text body becomes a note; 201 with `{"id":N}`),
//! `GET /notes` (200 with `[{"id":N,"body":"..."}]`), `GET /health`
//! (`HealthService`: 200 `pass`/`warn` or 503 `fail`, `application/health+json`).
//! It prints `listening on <addr>` once bound. Database errors go through
//! `DbError`, so the layer sees them; the watchdog and the rescue are on;
//! when the policy gives up (the database cannot be reopened) the process
//! exits with status 1 for the supervisor to restart it.
//!
//! Try it: start it with `--journal delete`, add a note, `rm` the database
//! file, add another: the first write after the `rm` fails with 503 and the
//! pool is reopened (the watchdog may get there first); the next write
//! succeeds. Delete the directory instead and the process exits with status 1.
//!
//! `tests/layer_axum.rs` serves this `app()` in-process and runs this binary.

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

const USAGE: &str = "usage: axum [--db FILE] [--addr IP:PORT] [--journal wal|delete]";

/// Opens a pool on `options` and creates the table. Used at start and as the
/// `LivePool`'s reopen: a reopened file may be a new, empty one.
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
    let id: i64 = sqlx::query_scalar("INSERT INTO notes(body) VALUES (?) RETURNING id")
        .bind(&body)
        .fetch_one(&live.pool())
        .await?;
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
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        db: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        journal: SqliteJournalMode::Wal,
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
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(parsed)
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

    let options = SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .journal_mode(args.journal);
    let pool = open_pool(options.clone()).await?;
    // The default exit action ends the process with status 1 on a give-up.
    let live = LivePool::builder_with_pool(pool, move || open_pool(options.clone()))
        .watchdog_interval(Some(Duration::from_secs(1)))
        .rescue(true)
        .open()
        .await?;

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    eprintln!("database: {}", db.display());
    axum::serve(listener, app(live)).await?;
    Ok(())
}
