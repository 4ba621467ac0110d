//! Adopting in an existing app: an axum 0.8 + sqlx 0.9 + SQLite service
//! with handlers on `State<SqlitePool>`, `sqlx::migrate!` at start-up, its
//! own error enum and `#[sqlx::test]` tests takes the crate without
//! rewriting a handler or a test helper.
//!
//! `examples/adopt.rs` is such an app, with every line that exists only
//! because of the crate marked `// liveness`: 27 lines added or changed
//! (11 lines of the plain app replaced), plus one `#[rustfmt::skip]` that
//! only keeps the marks in place. `tests/adopt.rs` holds its tests,
//! including real faults. The steps:
//!
//! 1. [Keep `State<SqlitePool>`](#1-keep-statesqlitepool-in-every-handler)
//! 2. [Your own error enum](#2-your-own-error-enum)
//! 3. [Migrations, at start-up and on every reopen](#3-migrations-at-start-up-and-on-every-reopen)
//! 4. [Where things go](#4-where-things-go): the layer, `/health`,
//!    background tasks, middleware that swallows errors
//! 5. [Tests: `#[sqlx::test]`](#5-tests-sqlxtest)
//!
//! # 1. Keep `State<SqlitePool>` in every handler
//!
//! Put a [`LivePool`](crate::LivePool) in your state where the `SqlitePool`
//! was, and tell axum how to get a `SqlitePool` from the state: the pool in
//! service *now*. Handlers that extract `State<SqlitePool>` stay as they are
//! and get the new pool on their next request after a heal.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod state {
//! use axum::extract::{FromRef, State};
//! use sqlx::SqlitePool;
//! use tower_db_liveness::LivePool;
//!
//! #[derive(Clone, FromRef)]
//! pub struct AppState {
//!     pub live: LivePool, // was: pub pool: SqlitePool
//!     pub app_name: String,
//! }
//!
//! impl FromRef<AppState> for SqlitePool {
//!     fn from_ref(state: &AppState) -> Self {
//!         state.live.pool() // a reference count: cheap per request
//!     }
//! }
//!
//! // Unchanged:
//! async fn count(State(pool): State<SqlitePool>) -> Result<String, sqlx::Error> {
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&pool).await?;
//!     Ok(n.to_string())
//! }
//! # }
//! ```
//!
//! Never keep a `SqlitePool` taken from the `LivePool` beyond one request or
//! one iteration of a loop: after a heal it is the closed, dead pool.
//!
//! # 2. Your own error enum
//!
//! [`DbError`](crate::DbError) is a ready-made handler error. An app that
//! has its own enum keeps an [`ErrorMark`](crate::ErrorMark) in its
//! database variant: taken from the `&sqlx::Error` where the error is
//! converted, attached to the response in `IntoResponse` (a response part
//! with the `axum` feature, or [`ErrorMark::attach`](crate::ErrorMark::attach)).
//! The [`DbLivenessLayer`](crate::DbLivenessLayer) finds it there.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod errors {
//! use axum::http::StatusCode;
//! use axum::response::{IntoResponse, Response};
//! use tower_db_liveness::ErrorMark;
//!
//! pub enum AppError {
//!     NotFound,
//!     Conflict,
//!     Db(ErrorMark), // was: Db(sqlx::Error), or Db
//! }
//!
//! impl From<sqlx::Error> for AppError {
//!     fn from(err: sqlx::Error) -> Self {
//!         match &err {
//!             sqlx::Error::RowNotFound => AppError::NotFound,
//!             sqlx::Error::Database(db) if db.is_unique_violation() => AppError::Conflict,
//!             _ => AppError::Db(ErrorMark::from(&err)),
//!         }
//!     }
//! }
//!
//! impl IntoResponse for AppError {
//!     fn into_response(self) -> Response {
//!         match self {
//!             AppError::NotFound => StatusCode::NOT_FOUND.into_response(),
//!             AppError::Conflict => StatusCode::CONFLICT.into_response(),
//!             // 503 for fatal and transient errors (retry soon), 500 otherwise.
//!             AppError::Db(mark) => (mark.status(), mark, "database error").into_response(),
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! Only errors that carry a mark (or a `DbError`) reach the policy: a
//! database variant without one is a dead database the layer never hears
//! of. `RowNotFound` and constraint violations are
//! [`Other`](crate::ErrorClass::Other) and never heal anything, so mapping
//! them to 404 and 409 without a mark loses nothing.
//!
//! # 3. Migrations, at start-up and on every reopen
//!
//! A reopen must leave the database as your start-up does. Hand the
//! migrator to the builder (feature `migrate`): it runs on the first pool
//! and on every reopened pool, before the pool is verified; a migration
//! error is a `sqlx::Error::Migrate`.
//!
//! ```no_run
//! # #[cfg(feature = "migrate")]
//! # mod migrations {
//! use sqlx::migrate::Migrator;
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::LivePool;
//!
//! static MIGRATOR: Migrator = sqlx::migrate!("examples/adopt/migrations"); // your `sqlx::migrate!()`
//!
//! async fn open() -> Result<LivePool, sqlx::Error> {
//!     let options = SqliteConnectOptions::new()
//!         .filename("/var/lib/app/app.db")
//!         .create_if_missing(true);
//!     // was: let pool = SqlitePool::connect_with(options).await?; MIGRATOR.run(&pool).await?;
//!     LivePool::builder(options).migrations(&MIGRATOR).open().await
//! }
//! # }
//! ```
//!
//! It works with [`builder_with_pool`](crate::LivePool::builder_with_pool)
//! too (your reopen, then the migrations). A reopened database is migrated
//! only if it already has the migrator's table (`_sqlx_migrations`): an
//! empty file or another application's database at the path is refused
//! before anything is written to it. After the migrations the policy still
//! verifies it against the one it replaces (every table, the `user_version`
//! and the `application_id`): migrations that add tables or columns are
//! fine; sqlx's migrations touch neither pragma.
//!
//! # 4. Where things go
//!
//! - **The layer** goes outermost of the layers that touch the database
//!   (a session lookup, a per-request transaction): a request held during a
//!   heal is held before any of them runs, and their errors reach it. Layers
//!   that never touch the database (tracing, compression, timeouts) may go
//!   outside it.
//! - **The probes** (`/livez` for the liveness probe, `/readyz` or
//!   `/health` for the readiness probe: see [the two
//!   verdicts](crate::health#two-verdicts)) go outside authentication
//!   (probes carry no credentials) and outside the layer (a probe must not
//!   be held during a heal). In axum a `.layer` wraps only the routes added
//!   before it, so mount them with `route_service` after the database
//!   layers.
//! - **Background tasks** hold a `LivePool` (not a `SqlitePool`) and take a
//!   [`Lease`](crate::Lease) (or `live.pool()`) on every iteration, and
//!   report their errors through it: no layer sees them.
//! - **Middleware that swallows errors** (a session lookup answering 401
//!   for every error) must report them: take `live.lease()` before the
//!   work and call `lease.report(&err)`, or a dead database looks like
//!   "logged out" to the policy too.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod placement {
//! use std::time::Duration;
//!
//! use axum::extract::{Request, State};
//! use axum::http::StatusCode;
//! use axum::middleware::{Next, from_fn_with_state};
//! use axum::response::{IntoResponse, Response};
//! use axum::routing::get;
//! use axum::Router;
//! use tower_db_liveness::{DbLivenessLayer, HealthService, LivePool};
//!
//! async fn require_session(State(live): State<LivePool>, request: Request, next: Next) -> Response {
//!     let token = request
//!         .headers()
//!         .get("authorization")
//!         .and_then(|v| v.to_str().ok())
//!         .unwrap_or_default()
//!         .to_owned();
//!     let lease = live.lease(); // before the work: errors are tagged with its generation
//!     let user: Result<Option<i64>, _> =
//!         sqlx::query_scalar("SELECT user_id FROM sessions WHERE token = ?")
//!             .bind(token)
//!             .fetch_optional(lease.pool())
//!             .await;
//!     match user {
//!         Ok(Some(_)) => next.run(request).await,
//!         Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
//!         Err(err) => {
//!             lease.report(&err).await; // at once unless fatal; then after the heal
//!             StatusCode::UNAUTHORIZED.into_response()
//!         }
//!     }
//! }
//!
//! async fn purge(live: LivePool) {
//!     let mut tick = tokio::time::interval(Duration::from_secs(3600));
//!     loop {
//!         tick.tick().await;
//!         let lease = live.lease(); // the pool in service now, every iteration
//!         if let Err(err) = sqlx::query("DELETE FROM sessions WHERE expires < unixepoch()")
//!             .execute(lease.pool())
//!             .await
//!         {
//!             lease.report(&err).await;
//!         }
//!     }
//! }
//!
//! fn app(live: LivePool) -> Router {
//!     tokio::spawn(purge(live.clone()));
//!     Router::new()
//!         .route("/notes", get(|| async { "notes" }))
//!         .layer(from_fn_with_state(live.clone(), require_session)) // touches the database
//!         .layer(DbLivenessLayer::new(live.clone())) // outermost of those
//!         .route_service("/health", HealthService::new(live.clone())) // no auth, never held
//!         .with_state(live)
//! }
//! # }
//! ```
//!
//! Serve with `.with_graceful_shutdown(live.given_up())`, then
//! `live.close().await` and exit with the give-up's code, as
//! `examples/adopt.rs` does (see "When it exits" in the
//! [crate documentation](crate#when-it-exits)).
//!
//! # 5. Tests: `#[sqlx::test]`
//!
//! Tests build the app around the test's pool with
//! [`LivePool::fixed`](crate::LivePool::fixed): synchronous (helpers stay
//! free of `.await`), no watchdog, no reopen, no exit. `#[sqlx::test]`
//! deletes each test's database file when the test returns, while the
//! server a test spawned may still run; a `LivePool` opened with the full
//! policy would see the file gone, write a rescue file and give up (exiting
//! the test binary). A fixed one logs a fatal error and does nothing else.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod tests {
//! # use axum::Router;
//! # use axum::extract::FromRef;
//! # use sqlx::SqlitePool;
//! use tower_db_liveness::LivePool;
//! # #[derive(Clone, FromRef)]
//! # pub struct AppState { pub live: LivePool }
//! # impl FromRef<AppState> for SqlitePool {
//! #     fn from_ref(state: &AppState) -> Self { state.live.pool() }
//! # }
//! # fn app(state: AppState) -> Router { Router::new().with_state(state) }
//!
//! // Your existing helper, unchanged but for the state it builds:
//! fn test_app(pool: SqlitePool) -> Router {
//!     app(AppState { live: LivePool::fixed(pool) })
//! }
//!
//! #[sqlx::test] // runs ./migrations first, as before
//! async fn lists_notes(pool: SqlitePool) {
//!     let app = test_app(pool);
//!     // serve it on 127.0.0.1:0, or call it with tower::ServiceExt::oneshot
//! #   drop(app);
//! }
//! # }
//! ```
//!
//! `tests/adopt.rs` runs this recipe, and proves the point: it deletes a
//! `#[sqlx::test]` database mid-test, and the next write is answered 503
//! while nothing heals or exits.
