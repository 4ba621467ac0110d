//! An existing axum 0.8 + sqlx 0.9 + SQLite app, adopting tower-db-liveness.
//!
//! ```text
//! cargo run --example adopt --features axum,migrate -- [--db FILE] [--addr IP:PORT]
//! ```
//!
//! The shape of a typical app: a `#[derive(FromRef)]` `AppState`, handlers
//! on `State<SqlitePool>`, its own pool function (migrations and a seed,
//! shared with a CLI), `BEGIN IMMEDIATE` transactions, its own error enum
//! with a boxed, nested error type, a session middleware that turns every
//! lookup error into 401, a background task, its own shutdown signal,
//! `#[sqlx::test]` tests (in `tests/adopt.rs`). Every line that exists only
//! because of the crate ends with `// liveness`; the walk-through is the
//! crate's guide (`tower_db_liveness::guide`).
//!
//! Routes: `POST /notes` (201 `{"id":N}`, 409 for a note that exists),
//! `GET /notes` (`[{"id":N,"body":"..."}]`), `GET /notes/{id}` (the body, or
//! 404), `POST /login` (the body is a user name; 200 with a session token),
//! `GET /me` (behind the session middleware: the user, or 401),
//! `GET /livez`, `GET /readyz`. It prints `listening on <addr>` once bound;
//! when the policy gives up it drains and exits with status 1.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{FromRef, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{Check, DbLivenessLayer, ErrorMark, HealthService, LivePool}; // liveness

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
    Db(sqlx::Error),
    /// Errors of the authentication module, boxed as the app keeps them.
    Auth(Box<AuthError>),
}

/// The authentication module's own error type, nested in [`AppError`].
#[derive(Debug)]
pub enum AuthError {
    EmptyName,
    Database(sqlx::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppError::NotFound => "not found",
            AppError::Conflict => "conflict",
            AppError::TooLong => "too long",
            AppError::Db(_) => "database error",
            AppError::Auth(_) => "authentication error",
        })
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppError::Db(err) => Some(err),
            AppError::Auth(err) => Some(err.as_ref()),
            _ => None,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("authentication failed")
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Database(err) => Some(err),
            AuthError::EmptyName => None,
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => AppError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => AppError::Conflict,
            _ => AppError::Db(err),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // Found however deep it is nested: the layer reads it from the response.
        let mark = ErrorMark::find(&self); // liveness
        if let AppError::Db(err) = &self {
            tracing::error!(error = %err, "database error");
        }
        let response = match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "no such note\n").into_response(),
            AppError::Conflict => (StatusCode::CONFLICT, "that note exists\n").into_response(),
            AppError::TooLong => (StatusCode::PAYLOAD_TOO_LARGE, "too long\n").into_response(),
            AppError::Auth(_) => (StatusCode::BAD_REQUEST, "cannot log in\n").into_response(),
            AppError::Db(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "database error\n").into_response()
            }
        };
        (mark, response).into_response() // liveness
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

async fn login(State(pool): State<SqlitePool>, user: String) -> Result<String, AppError> {
    if user.trim().is_empty() {
        return Err(AppError::Auth(Box::new(AuthError::EmptyName)));
    }
    let token = format!("{:016x}", rand_token());
    sqlx::query("INSERT INTO sessions(token, user) VALUES (?, ?)")
        .bind(&token)
        .bind(user.trim())
        .execute(&pool)
        .await
        .map_err(|err| AppError::Auth(Box::new(AuthError::Database(err))))?;
    Ok(token)
}

fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
    hasher.finish()
}

/// The signed-in user, put in the request by [`require_session`].
#[derive(Clone)]
pub struct User(pub String);

async fn me(axum::Extension(User(user)): axum::Extension<User>) -> String {
    user
}

/// The session middleware: a bearer token looked up (and touched) in
/// `sessions`. Like many, it answers 401 for every failure, its database
/// errors included; the mark on that 401 lets the layer report the error
/// and answer 503 with `Retry-After` instead, so no client is sent to log
/// in again during a heal.
pub async fn require_session(
    State(pool): State<SqlitePool>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let found: Result<Option<String>, sqlx::Error> = async {
        sqlx::query("UPDATE sessions SET uses = uses + 1 WHERE token = ?")
            .bind(&token)
            .execute(&pool)
            .await?;
        sqlx::query_scalar("SELECT user FROM sessions WHERE token = ?")
            .bind(&token)
            .fetch_optional(&pool)
            .await
    }
    .await;
    match found {
        Ok(Some(user)) => {
            request.extensions_mut().insert(User(user));
            next.run(request).await
        }
        Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "session lookup failed");
            (StatusCode::UNAUTHORIZED, ErrorMark::from(&err)).into_response() // liveness
        }
    }
}

/// The router. The layer is outermost of the layers that touch the
/// database (the session middleware included); the probes are mounted after
/// it, so they are never held during a heal.
pub fn app(state: AppState) -> Router {
    let health = HealthService::new(state.live.clone()); // liveness
    Router::new()
        .route("/me", get(me))
        .layer(from_fn_with_state(state.clone(), require_session))
        .route("/notes", post(add_note).get(list_notes))
        .route("/notes/{id}", get(get_note))
        .route("/login", post(login))
        .layer(DbLivenessLayer::new(state.live.clone())) // liveness
        .route_service("/livez", health.clone().check(Check::Liveness)) // liveness
        .route_service("/readyz", health) // liveness
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

/// The app's pool function, shared with its CLI: opens the database,
/// migrates it and seeds it. The crate adopts the pool it returns.
pub async fn open_pool(db: &std::path::Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        // The guide's recommended settings: no connection is recycled, so a
        // restore by rename never meets a new connection on the old log.
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    sqlx::query("INSERT OR IGNORE INTO notes(body) VALUES ('welcome')")
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// The app's own shutdown signal.
async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
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
    LivePool::check_pending_rescue(&db, None, Duration::from_secs(60)).await?; // liveness
    let pool = open_pool(&db).await?;
    let live = LivePool::from_pool(pool) // liveness
        .migrations(&MIGRATOR) // liveness
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
        .with_graceful_shutdown(live.shutdown_on(shutdown_signal())) // liveness
        .await?;
    live.close().await; // liveness
    let gave_up = live.gave_up(); // liveness
    std::process::exit(gave_up.map_or(0, |gave_up| gave_up.exit_code)) // liveness
}
