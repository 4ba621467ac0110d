//! Adopting in an existing app: an axum 0.8 + sqlx 0.9 + SQLite service
//! with handlers on `State<SqlitePool>`, `sqlx::migrate!` at start-up, its
//! own error enum and `#[sqlx::test]` tests takes the crate without
//! rewriting a handler or a test helper.
//!
//! `examples/adopt.rs` is such an app (a derived state, its own pool
//! function shared with a CLI, an error enum with a boxed, nested error
//! type, a session middleware that answers 401 for every failure, a
//! background task, its own shutdown signal), with every line that exists
//! only because of the crate marked `// liveness`: 29 lines of production
//! code added or changed (9 of them replace a line of the plain app), plus
//! one `#[rustfmt::skip]` that only keeps the marks in place; no test of the
//! app changes. `tests/adopt.rs` holds its tests, including real faults.
//! The steps:
//!
//! 1. [Keep `State<SqlitePool>`](#1-keep-statesqlitepool-in-every-handler),
//!    or, [when the pool lives in long-lived structs](#when-the-pool-lives-in-long-lived-structs),
//!    heal by restarting
//! 2. [Your own error types](#2-your-own-error-types)
//! 3. [Your pool function, migrations, pool settings](#3-your-pool-function-migrations-pool-settings)
//! 4. [Where things go](#4-where-things-go): the layer, the probes,
//!    background tasks, middleware that swallows errors, shutdown
//! 5. [Tests: `#[sqlx::test]`](#5-tests-sqlxtest)
//! 6. [Starting again after a give-up](#6-starting-again-after-a-give-up)
//!
//! [The appendix](#appendix-measured-on-a-real-app) has the figures of the
//! walk-through applied to a real open-source app.
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
//! ## When the pool lives in long-lived structs
//!
//! Some apps hand a clone of the pool to structs that live as long as the
//! process (stores, repositories, a spawned task) and never ask for it
//! again. A heal cannot reach those clones: it swaps the pool inside the
//! `LivePool`, and every clone taken before stays on the closed pool,
//! answering `PoolClosed` until the process exits. Rather than rewrite the
//! structs, heal by restarting:
//! [`restart_to_heal`](crate::LivePoolBuilder::restart_to_heal) makes every
//! fatal fault a give-up. What comes before the give-up is unchanged: a
//! database file deleted, moved or replaced under the process is rescued
//! from the dead handle, a deleted one leaves the marker that makes the
//! next start refuse until the rescue is restored, and then the process
//! exits (code 1) for its supervisor to start it again on the file at the
//! path.
//!
//! ```no_run
//! # mod stores {
//! use sqlx::SqlitePool;
//! use tower_db_liveness::LivePool;
//!
//! pub struct NoteStore {
//!     db: SqlitePool, // kept for the process's life, unchanged
//! }
//! # async fn create_db_pool(url: &str) -> Result<SqlitePool, sqlx::Error> { SqlitePool::connect(url).await }
//!
//! async fn stores(url: &str) -> Result<(NoteStore, LivePool), sqlx::Error> {
//!     let db = create_db_pool(url).await?; // yours, unchanged
//!     let live = LivePool::from_pool(db.clone()).restart_to_heal().open().await?; // added
//!     Ok((NoteStore { db }, live)) // was: Ok(NoteStore { db })
//! }
//! # }
//! ```
//!
//! The rest of the walk-through applies as it is: the layer and the probes
//! take that `LivePool`, error responses carry marks, and
//! `check_pending_rescue` goes before a pool function that creates the
//! file. What it costs: a fault the default policy heals in the process (a
//! backup restored by renaming it over the file, say) costs a restart, and
//! the requests in flight when the process exits are cut off unless the
//! shutdown is driven by [`shutdown_on`](crate::LivePool::shutdown_on) with
//! a [`shutdown_grace`](crate::LivePoolBuilder::shutdown_grace) (the
//! default exit is at once).
//!
//! # 2. Your own error types
//!
//! [`DbError`](crate::DbError) is a ready-made handler error. An app with
//! its own error types keeps them: one line in the `IntoResponse` of its
//! top-level error finds the database error however deep it is nested
//! ([`ErrorMark::find`](crate::ErrorMark::find) walks the `source()`
//! chain, through boxes and the app's own wrapper types), and one more puts
//! the mark on the response, where the [`DbLivenessLayer`](crate::DbLivenessLayer)
//! finds it. A fatal or transient error leaves the layer as 503 with
//! `Retry-After`, whatever status the app chose.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod errors {
//! use axum::http::StatusCode;
//! use axum::response::{IntoResponse, Response};
//! use tower_db_liveness::ErrorMark;
//!
//! #[derive(Debug)]
//! pub enum AppError {
//!     NotFound,
//!     Db(sqlx::Error),                 // unchanged
//!     Auth(Box<dyn std::error::Error + Send + Sync>), // AuthError::Database(sqlx::Error) inside
//! }
//! # impl std::fmt::Display for AppError {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("app error") }
//! # }
//! impl std::error::Error for AppError {
//!     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
//!         match self {
//!             AppError::Db(err) => Some(err),
//!             AppError::Auth(err) => Some(err.as_ref()),
//!             AppError::NotFound => None,
//!         }
//!     }
//! }
//!
//! impl IntoResponse for AppError {
//!     fn into_response(self) -> Response {
//!         let mark = ErrorMark::find(&self); // added
//!         let response = match self {
//!             AppError::NotFound => StatusCode::NOT_FOUND.into_response(),
//!             AppError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
//!             AppError::Auth(_) => StatusCode::BAD_REQUEST.into_response(),
//!         };
//!         (mark, response).into_response() // was: response
//!     }
//! }
//! # }
//! ```
//!
//! Each wrapper must return its inner error from `source()`: `thiserror`'s
//! `#[from]` and `#[source]` do, but not on a variant marked
//! `#[error(transparent)]`, whose `source()` is the *inner* error's source:
//! the `sqlx::Error` itself is skipped, and with it `PoolClosed` and
//! `PoolTimedOut` (a database error's own `SqliteError` is still found).
//! Give the database variant a message of its own instead
//! (`#[error("database error")] Db(#[from] sqlx::Error)`), and check a
//! hand-written `Error` impl. A
//! wrapper that is not a `std::error::Error` (a boxed trait object of the
//! app's own trait) needs a method that hands over what it wraps, and
//! `ErrorMark::find(inner)` on that. To find every type that wraps a
//! `sqlx::Error`, and check that each is reachable:
//!
//! ```text
//! grep -rn --include='*.rs' -E 'sqlx::Error|sqlx::error::Error|#\[from\] *sqlx' src/
//! ```
//!
//! Only errors that carry a mark (or a `DbError`) reach the policy: a
//! database error the chain does not reach is a dead database the layer
//! never hears of. `RowNotFound` and constraint violations are
//! [`Other`](crate::ErrorClass::Other): they keep the app's status (404,
//! 409) and never heal anything. An app that prefers to take the mark
//! where it converts the error keeps an [`ErrorMark`](crate::ErrorMark)
//! (`ErrorMark::from(&err)`) in its variant instead.
//!
//! # 3. Your pool function, migrations, pool settings
//!
//! Keep the function that opens your pool (it seeds, audits or maps errors,
//! and a CLI uses it too) and hand what it returns to
//! [`LivePool::from_pool`](crate::LivePool::from_pool): it takes the
//! pool's connect and pool options itself. A reopen opens the same
//! absolute path with those options and is swapped in only once it is the
//! same file with the same schema; it never creates the file (whatever
//! `create_if_missing` says) and does not run the rest of your function.
//! A reopen must leave the database as your start-up does: hand the
//! migrator to the builder (feature `migrate`); it runs on the first pool
//! and on every reopened pool, before the pool is verified; a migration
//! error is a `sqlx::Error::Migrate`.
//!
//! ```no_run
//! # #[cfg(feature = "migrate")]
//! # mod migrations {
//! use sqlx::migrate::Migrator;
//! use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
//! use sqlx::SqlitePool;
//! use tower_db_liveness::LivePool;
//!
//! static MIGRATOR: Migrator = sqlx::migrate!("examples/adopt/migrations"); // your `sqlx::migrate!()`
//!
//! // Yours, unchanged: also used by the CLI.
//! async fn open_pool() -> Result<SqlitePool, sqlx::Error> {
//!     let options = SqliteConnectOptions::new()
//!         .filename("/var/lib/app/app.db")
//!         .create_if_missing(true);
//!     let pool = SqlitePoolOptions::new()
//!         .idle_timeout(None) // recommended: see below
//!         .max_lifetime(None)
//!         .connect_with(options)
//!         .await?;
//!     MIGRATOR.run(&pool).await?;
//!     Ok(pool)
//! }
//!
//! async fn open() -> Result<LivePool, sqlx::Error> {
//!     // After a give-up that lost the database: refuse before `open_pool`
//!     // creates an empty one (see "Starting again after a give-up").
//!     let bound = std::time::Duration::from_secs(60);
//!     LivePool::check_pending_rescue("/var/lib/app/app.db", None, bound).await?;
//!     LivePool::from_pool(open_pool().await?).migrations(&MIGRATOR).open().await
//! }
//! # }
//! ```
//!
//! Recommended pool settings: `idle_timeout(None)` and `max_lifetime(None)`
//! (sqlx's defaults recycle connections after 10 and 30 minutes). A
//! connection opened between a restore by rename and its detection pairs
//! the restored file with the old write-ahead log; with no recycling, that
//! only happens when every connection is busy. See the known limit in
//! the README's "What happens to your data".
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
//!   for every error) keeps its state, its signature and its unit tests,
//!   and marks the response it makes of a database error: one line. The
//!   layer reports the error with the request's generation and, for a
//!   fatal or transient one, answers 503 with `Retry-After` instead of the
//!   401, so no client is logged out during a heal.
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
//! use sqlx::SqlitePool;
//! use tower_db_liveness::{Check, DbLivenessLayer, ErrorMark, HealthService, LivePool};
//!
//! // Unchanged but for one line.
//! async fn require_session(State(pool): State<SqlitePool>, request: Request, next: Next) -> Response {
//!     let token = request
//!         .headers()
//!         .get("authorization")
//!         .and_then(|v| v.to_str().ok())
//!         .unwrap_or_default()
//!         .to_owned();
//!     let user: Result<Option<i64>, _> =
//!         sqlx::query_scalar("SELECT user_id FROM sessions WHERE token = ?")
//!             .bind(token)
//!             .fetch_optional(&pool)
//!             .await;
//!     match user {
//!         Ok(Some(_)) => next.run(request).await,
//!         Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
//!         // was: StatusCode::UNAUTHORIZED.into_response()
//!         Err(err) => (StatusCode::UNAUTHORIZED, ErrorMark::from(&err)).into_response(),
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
//! #[derive(Clone, axum::extract::FromRef)]
//! struct AppState { live: LivePool }
//! impl axum::extract::FromRef<AppState> for SqlitePool {
//!     fn from_ref(state: &AppState) -> Self { state.live.pool() }
//! }
//!
//! fn app(state: AppState) -> Router {
//!     tokio::spawn(purge(state.live.clone()));
//!     let health = HealthService::new(state.live.clone());
//!     Router::new()
//!         .route("/notes", get(|| async { "notes" }))
//!         .layer(from_fn_with_state(state.clone(), require_session)) // touches the database
//!         .layer(DbLivenessLayer::new(state.live.clone())) // outermost of those
//!         .route_service("/livez", health.clone().check(Check::Liveness)) // no auth, never held
//!         .route_service("/readyz", health)
//!         .with_state(state)
//! }
//! # }
//! ```
//!
//! - **Shutdown**: keep your own signal and add the give-up to it with
//!   [`LivePool::shutdown_on`](crate::LivePool::shutdown_on):
//!   `.with_graceful_shutdown(live.shutdown_on(shutdown_signal()))`, then
//!   `live.close().await` and exit with the give-up's code, as
//!   `examples/adopt.rs` does (see "When it exits" in the
//!   [crate documentation](crate#when-it-exits)). A server with a handle
//!   instead of a shutdown future (`axum-server`, TLS included) drives the
//!   handle from it:
//!
//! ```text
//! let handle = axum_server::Handle::new();
//! tokio::spawn({
//!     let (live, handle) = (live.clone(), handle.clone());
//!     async move {
//!         live.shutdown_on(shutdown_signal()).await;
//!         handle.graceful_shutdown(Some(Duration::from_secs(10)));
//!     }
//! });
//! axum_server::bind_rustls(addr, tls).handle(handle).serve(app.into_make_service()).await?;
//! ```
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
//!
//! # 6. Starting again after a give-up
//!
//! The policy gives up only when the database cannot be reattached: its
//! file was deleted, moved or replaced by another application's database,
//! or the fault came back on the fresh pool. Before it exits it saves what
//! the dead handle still sees into a rescue file in a private directory
//! (`<file>.rescues/` next to the database, `<file>.<hash>.rescues/`
//! elsewhere, mode 0700; the give-up's reason and
//! [`GaveUp::rescue`](crate::GaveUp) say where), and, when the database is
//! no longer at its path, a marker next to the rescue. The supervisor then
//! starts the app again with the same configuration:
//!
//! - the next `open()` of that path refuses to start, whatever
//!   `create_if_missing` says, with an error that names the rescue, the
//!   `mv` that restores it and the `rm` of the marker that starts empty on
//!   purpose. An app that opens its own pool first (its pool function with
//!   `create_if_missing(true)`) calls
//!   [`LivePool::check_pending_rescue`](crate::LivePool::check_pending_rescue)
//!   before it, as `examples/adopt.rs` does, so not even an empty file is
//!   created at the path;
//! - restore with the service stopped: `mv` the rescue into place, or
//!   [`LivePool::restore_rescue`](crate::LivePool::restore_rescue), which
//!   verifies it, sets whatever is at the path aside and keeps the rescue;
//!   the next start serves it. The README's runbook has the details.
//!
//! Keep the rescue files until the data is safe: the crate never deletes
//! them unless you opt in to a retention that keeps the newest.
//!
//! # Appendix: measured on a real app
//!
//! The walk-through applied to
//! [RustiCal](https://github.com/lennart-k/rustical), a CalDAV/CardDAV
//! server (AGPL-3.0; ten workspace crates; axum 0.8, sqlx 0.9 with bundled
//! SQLite, tower-sessions, thiserror), at commit
//! `dc60f647f61501728ae0dad6143bcf0e1fe611bf` (v0.15.0): not ours, not
//! written for this.
//!
//! Its shapes: its own pool function (`create_db_pool`: the URL parsed, WAL,
//! `create_if_missing(true)`, migrations) shared with a CLI (`principals`)
//! and its tests; errors nested three deep (`sqlx::Error` in the SQLite
//! store's error, `#[error(transparent)]`, converted into
//! `rustical_store::Error::Other(anyhow::Error)`, transparent, inside the
//! CalDAV and CardDAV errors, each with its own `IntoResponse`); an
//! authentication middleware that swallows store errors
//! (`if let Ok(Some(user)) = …`, after which the handler answers 401);
//! background tasks (trash cleanup, DAV push); its own shutdown signal on
//! two listeners (TCP, Unix socket); 169 tests, some of which run the whole
//! server (`cmd_serve`) on `:memory:` and on temporary files. What it does
//! not have: handlers on `State<SqlitePool>` (four store structs keep a
//! clone of the pool for the process's life, 46 uses of `self.db`, so it
//! takes [`restart_to_heal`](#when-the-pool-lives-in-long-lived-structs)),
//! and `#[sqlx::test]`.
//!
//! | | lines |
//! |---|---|
//! | production code | +32 / −8 in 6 files: 32 added or changed, 8 of them replace a line |
//! | test glue | 0: no test or test helper changed |
//! | manifests | +6 in 5 `Cargo.toml` (and +35 in `Cargo.lock`, generated) |
//!
//! Counted after `cargo fmt`, which splits the builder chain into five
//! lines. Where the 32 go:
//!
//! - 6: the `LivePool` opened from the pool the app's function returns
//!   (`from_pool`, `restart_to_heal`, `shutdown_grace` of 10 s, a comment);
//! - 4: handing it from the function that builds the stores to `cmd_serve`
//!   (one more tuple element; 2 of the 4 replace the destructuring lines,
//!   one of them in the CLI);
//! - 5: the layer, `/livez` and `/readyz` on the router `make_app` returns
//!   (outside it, so `make_app` and the tests that call it are unchanged);
//! - 7: shutdown: `live.shutdown_on(shutdown_signal())` for both listeners
//!   (2 replaced), then `close` and exit with the give-up's code;
//! - 3: `check_pending_rescue` in the app's pool function, before its
//!   `create_if_missing(true)` can create an empty file at the path;
//! - 6: the mark in the three `IntoResponse` impls that render a store
//!   error (a `use`, and the response tuple it replaces);
//! - 1: the `use` in `lib.rs`.
//!
//! Its tests (`cargo test --workspace`, with the one test that needs the
//! internet skipped): 169 passed before, 169 passed after, the same in each
//! of the 22 test binaries.
//!
//! A fault run through the built binary (a real file, `curl`, `sqlite3`):
//!
//! - a CalDAV write (`MKCALENDAR`) while another process held the write
//!   lock (`sqlite3`, `BEGIN EXCLUSIVE`, 8 s): after sqlx's 5 s busy
//!   timeout, 503 with `Retry-After: 1` where the app answers 500: the mark
//!   found `database is locked` through the three nested types;
//! - `rm -rf` of the database's directory while `/readyz` was polled every
//!   20 ms: 200 until the fault, then one 503 (`"state":"unavailable"`,
//!   `database file deleted`); 8 ms after the watchdog saw it, the rescue
//!   (the principal and both calendars written before) was in
//!   `db.sqlite3.rescues/` beside the directory, with the marker, and the
//!   process exited with code 1;
//! - the same `rm -rf` with a write in flight (held on another process's
//!   lock): the request still got its answer (503 with `Retry-After`)
//!   before the process exited with code 1, once the drain and the close
//!   were done, within the 10 s grace;
//! - the restart with the same configuration refused (exit code 1, naming
//!   the rescue, the `mv` and the `rm`) and created nothing at the path;
//!   after the `mv`, the next start served both calendars.
//!
//! What it still misses, and what would close it:
//!
//! - The authentication middleware's swallowed errors are not reported.
//!   Since this measurement the layer answers 503 with `Retry-After` for
//!   any error status to a request whose pool was found dead while it ran
//!   (a heal or a give-up since it started), marked or not, so the
//!   middleware's 401 during a heal or before an exit needs no line (the
//!   crate's test: `tests/layer_rewrite.rs`, not re-measured on this app).
//!   A transient error (a lock held too long) still ends in its 401, and a
//!   client may ask for the password again. Marking it by
//!   hand turns its three `if let Ok(Some(..))` into matches with an early
//!   return, about 12 more lines. A request-scoped reporter that the layer
//!   installs as a task-local, reported to by one line in the app's own
//!   `From<sqlx::Error>` conversion, would cover the middleware and every
//!   error type at once: the 6 lines of marks and 3 of the manifest lines
//!   would become 1 line in the one crate that converts.
//! - `#[error(transparent)]` and `anyhow` on the way skip the `sqlx::Error`
//!   itself, so `PoolTimedOut` and `PoolClosed` carry no mark (a
//!   `SqliteError` does). The grep of step 2 finds only the first wrapper
//!   (the store's error); the other two were found by following its `From`
//!   impls.
//! - A store error in an OIDC login is turned into a string by the app
//!   (`OidcError::UserInfo(String)`), out of reach of any mark.
//! - The exit after the drain (4 lines) would be 1 with a `LivePool` method
//!   that closes the pool and exits with the give-up's code if it gave up.
//! - A fault the default policy heals in the process (a backup restored by
//!   renaming it over the file) costs this app a restart.
