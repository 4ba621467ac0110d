//! An existing axum 0.8 + sqlx 0.9 + SQLite app, adopting tower-db-liveness.
//!
//! ```text
//! cargo run --example adopt --features axum,migrate -- [--db FILE] [--addr IP:PORT]
//! ```
//!
//! The shape of a typical app: a `#[derive(FromRef)]` `AppState`, handlers
//! on `State<SqlitePool>`, `sqlx::migrate!` at start-up, `BEGIN IMMEDIATE`
//! transactions, its own error enum, a background task, `#[sqlx::test]`
//! tests (in `tests/adopt.rs`). Every line that exists only because of the
//! crate ends with `// liveness`; the walk-through is the crate's guide
//! (`tower_db_liveness::guide`).
//!
//! Routes: `POST /notes` (201 `{"id":N}`, 409 for a note that exists),
//! `GET /notes` (`[{"id":N,"body":"..."}]`), `GET /notes/{id}` (the body, or
//! 404), `GET /health`. It prints `listening on <addr>` once bound; when the
//! policy gives up it drains and exits with status 1.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{DbLivenessLayer, ErrorMark, HealthService, LivePool}; // liveness

pub static MIGRATOR: Migrator = sqlx::migrate!("examples/adopt/migrations");

#[derive(Clone, FromRef)]
pub struct AppState {
    pub live: LivePool, // liveness
    pub limits: Limits,
}

#[derive(Clone)]
pub struct Limits {
    pub max_note_len: usize,
}

// Every handler keeps `State<SqlitePool>` and gets the pool in service now.
#[rustfmt::skip] // liveness: keeps the markers on these lines
impl FromRef<AppState> for SqlitePool { // liveness
    fn from_ref(state: &AppState) -> Self { // liveness
        state.live.pool() // liveness
    } // liveness
} // liveness

/// The app's own error type.
#[derive(Debug)]
pub enum AppError {
    NotFound,
    Conflict,
    TooLong,
    Db(ErrorMark), // liveness
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => AppError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => AppError::Conflict,
            _ => {
                tracing::error!(error = %err, "database error");
                AppError::Db(ErrorMark::from(&err)) // liveness
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "no such note\n").into_response(),
            AppError::Conflict => (StatusCode::CONFLICT, "that note exists\n").into_response(),
            AppError::TooLong => (StatusCode::PAYLOAD_TOO_LARGE, "too long\n").into_response(),
            AppError::Db(mark) => (mark.status(), mark, "database error\n").into_response(), // liveness
        }
    }
}

async fn add_note(
    State(pool): State<SqlitePool>,
    State(limits): State<Limits>,
    body: String,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    if body.len() > limits.max_note_len {
        return Err(AppError::TooLong);
    }
    // `execute`, not `fetch_one` on `INSERT … RETURNING`: a commit that
    // fails after the returned row would be dropped.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let done = sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(&body)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let id = done.last_insert_rowid();
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn list_notes(State(pool): State<SqlitePool>) -> Result<Json<serde_json::Value>, AppError> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
        .fetch_all(&pool)
        .await?;
    let notes = rows
        .into_iter()
        .map(|(id, body)| serde_json::json!({ "id": id, "body": body }))
        .collect();
    Ok(Json(serde_json::Value::Array(notes)))
}

async fn get_note(State(pool): State<SqlitePool>, Path(id): Path<i64>) -> Result<String, AppError> {
    let body = sqlx::query_scalar("SELECT body FROM notes WHERE id = ?")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    Ok(body)
}

/// The router. The layer is outermost of the layers that touch the
/// database; `/health` is mounted after it, so it is not held during a heal.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/notes", post(add_note).get(list_notes))
        .route("/notes/{id}", get(get_note))
        .layer(DbLivenessLayer::new(state.live.clone())) // liveness
        .route_service("/health", HealthService::new(state.live.clone())) // liveness
        .with_state(state)
}

/// A background job: deletes notes older than 30 days, every `period`. It
/// takes the pool in service on every iteration.
pub async fn purge_old_notes(
    live: LivePool, // liveness
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let lease = live.lease(); // liveness
        let purged = sqlx::query("DELETE FROM notes WHERE created_at < unixepoch() - 30 * 86400")
            .execute(lease.pool()) // liveness
            .await;
        if let Err(err) = purged {
            tracing::warn!(error = %err, "purge failed");
            lease.report(&err).await; // liveness
        }
    }
}

fn parse_args() -> Result<(PathBuf, SocketAddr), String> {
    let (mut db, mut addr) = (
        PathBuf::from("notes.db"),
        SocketAddr::from(([127, 0, 0, 1], 3000)),
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--db" => db = PathBuf::from(value),
            "--addr" => addr = value.parse().map_err(|_| format!("--addr: `{value}`"))?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok((db, addr))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (db, addr) = parse_args()?;
    let options = SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let live = LivePool::builder(options) // liveness
        .migrations(&MIGRATOR) // liveness
        .shutdown_grace(Duration::from_secs(10)) // liveness
        .open() // liveness
        .await?; // liveness
    let state = AppState {
        live: live.clone(), // liveness
        limits: Limits { max_note_len: 4096 },
    };
    tokio::spawn(purge_old_notes(live.clone(), Duration::from_secs(3600))); // liveness

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, app(state))
        .with_graceful_shutdown(live.given_up()) // liveness
        .await?;
    live.close().await; // liveness
    let gave_up = live.gave_up(); // liveness
    std::process::exit(gave_up.map_or(0, |gave_up| gave_up.exit_code)) // liveness
}
