//! Keep a SQLite-backed tower service honest about its database.
//!
//! A service kept an open SQLite handle while an operator deleted the
//! database's directory: every write failed, `/health` stayed green, and the
//! database routes returned 500 for an hour where a restart would have healed
//! it in seconds. This crate makes that failure shape impossible:
//!
//! - [`classify`] sorts a `sqlx::Error` into [`ErrorClass::Fatal`] (dead handle,
//!   corruption, moved or deleted file), [`ErrorClass::Transient`] (locks,
//!   a full disk, an exhausted or closed pool) or [`ErrorClass::Other`];
//! - [`LivePool`] holds the current `SqlitePool` behind an `ArcSwap`. On a fatal
//!   error it reopens the pool **once**, verifies it and swaps it in; when
//!   that fails, or the fault comes back on the fresh pool, it logs and
//!   **exits** so systemd, Kubernetes or launchd restarts the process;
//! - a watchdog compares the database file's identity with its path, because
//!   a WAL pool whose file was deleted reports no error at all, and a rescue
//!   saves what the dead handle still sees with `VACUUM INTO` before the
//!   pool is replaced;
//! - [`HealthService`] answers the supervisor's two questions: **liveness**
//!   (`/livez`: would a restart help and lose nothing? only after a give-up)
//!   and **readiness** (`/readyz`, `/health`: would a request routed here
//!   fail now?, from a probe that reads the database and checks its file,
//!   within a timeout, and is itself a detector); with the `tonic` feature
//!   it also drives gRPC health checking, with `systemd` the systemd
//!   watchdog. See [`health`] for the state table and the Kubernetes and
//!   systemd set-ups;
//! - [`DbLivenessLayer`] is how a service uses it: in any tower stack it
//!   reports the database errors of responses and service errors to the
//!   `LivePool` and holds requests while a reopen is in flight. Handlers
//!   return [`DbError`] (axum), keep an [`ErrorMark`] in their own error
//!   type, call [`mark_response`] (any `http::Response`)
//!   or build their `tonic::Status` with `status_from_sqlx` (tonic), so the
//!   `sqlx::Error` survives the framework's error-to-response conversion.
//!
//! On PostgreSQL (feature `postgres`) the same shape keeps a pool off a
//! demoted primary after a failover: see the [Postgres guide](postgres). On
//! MySQL and MariaDB (feature `mysql`), where a switchover leaves the old
//! primary up and read-only, it tells read-only in place from a pool pinned
//! to a demoted primary: see the [MySQL guide](mysql).
//!
//! Adding it to an app that already exists (handlers on
//! `State<SqlitePool>`, its own error enum, `sqlx::migrate!`,
//! `#[sqlx::test]` tests)? Read the [guide]: no handler or test helper
//! changes.
//!
//! # Quickstart: axum
//!
//! Handlers take the pool from the [`LivePool`] on every request and return
//! [`DbError`] (feature `axum`); the layer does the rest. Write with
//! `execute`, not `fetch_one` on `INSERT … RETURNING`: sqlx stops after the
//! returned row and drops a commit that fails afterwards (a full disk).
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod quickstart {
//! use axum::{Router, extract::State, http::StatusCode, routing::post};
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::{Check, DbError, DbLivenessLayer, HealthService, LivePool};
//!
//! async fn add_note(State(live): State<LivePool>, body: String) -> Result<StatusCode, DbError> {
//!     sqlx::query("INSERT INTO notes(body) VALUES (?)")
//!         .bind(body)
//!         .execute(&live.pool()) // the current pool: after a reopen, the new one
//!         .await?;
//!     Ok(StatusCode::CREATED)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let options = SqliteConnectOptions::new()
//!         .filename("/var/lib/app/app.db")
//!         .create_if_missing(true);
//!     let live = LivePool::connect(options).await?; // starts the watchdog too
//!
//!     let app = Router::new()
//!         .route("/notes", post(add_note))
//!         .layer(DbLivenessLayer::new(live.clone()))
//!         .route_service("/livez", HealthService::new(live.clone()).check(Check::Liveness))
//!         .route_service("/readyz", HealthService::new(live.clone()))
//!         .with_state(live);
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! # Quickstart: hyper (or any tower stack)
//!
//! Without a framework's error conversion in the way, the service's own
//! `Err` carries the `sqlx::Error`; boxed errors are searched with
//! [`BoxedErrors`]. Handlers that build their responses themselves call
//! [`mark_response`] instead.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use hyper_util::service::TowerToHyperService;
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower::{ServiceBuilder, service_fn};
//! use tower_db_liveness::{BoxedErrors, DbLivenessLayer, LivePool};
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//!
//! async fn count(live: LivePool) -> Result<http::Response<Full<Bytes>>, BoxError> {
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
//!         .fetch_one(&live.pool())
//!         .await?; // boxed: the layer finds the sqlx::Error in the box
//!     Ok(http::Response::new(Full::new(Bytes::from(n.to_string()))))
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), BoxError> {
//! let live = LivePool::connect(SqliteConnectOptions::new().filename("app.db")).await?;
//! let handler_live = live.clone();
//! let service = ServiceBuilder::new()
//!     .layer(DbLivenessLayer::new(live).find_errors::<BoxedErrors>())
//!     .service(service_fn(move |_request: http::Request<hyper::body::Incoming>| {
//!         count(handler_live.clone())
//!     }));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let service = TowerToHyperService::new(service.clone());
//!     tokio::spawn(async move {
//!         let builder = auto::Builder::new(TokioExecutor::new());
//!         let _ = builder.serve_connection(TokioIo::new(stream), service).await;
//!     });
//! }
//! # }
//! ```
//!
//! # Quickstart: tonic
//!
//! Build the handler's `Status` with `status_from_sqlx` (feature `tonic`),
//! which keeps the `sqlx::Error` as its source; tonic puts the status in the
//! response's extensions, where the layer finds it. The
//! [`GrpcHealthBridge`](health::grpc::GrpcHealthBridge) keeps gRPC health
//! checking in step with the database.
//!
//! ```no_run
//! # #[cfg(feature = "tonic")]
//! # mod quickstart {
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::health::grpc::GrpcHealthBridge;
//! use tower_db_liveness::{DbLivenessLayer, HealthService, LivePool, status_from_sqlx};
//!
//! // In a handler of your service:
//! async fn add(live: &LivePool, body: &str) -> Result<i64, tonic::Status> {
//!     // `execute`: `fetch_one` on `INSERT … RETURNING` can drop a failed commit.
//!     let done = sqlx::query("INSERT INTO notes(body) VALUES (?)")
//!         .bind(body)
//!         .execute(&live.pool())
//!         .await
//!         .map_err(status_from_sqlx)?; // UNAVAILABLE or INTERNAL, source kept
//!     Ok(done.last_insert_rowid())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let live = LivePool::connect(SqliteConnectOptions::new().filename("app.db")).await?;
//!     let (reporter, health_server) = tonic_health::server::health_reporter();
//!     // Services `liveness` and `readiness`, for Kubernetes' `grpc:` probes.
//!     GrpcHealthBridge::new(&HealthService::new(live.clone()), reporter).spawn();
//!
//!     tonic::transport::Server::builder()
//!         .layer(DbLivenessLayer::new(live.clone()))
//!         .add_service(health_server) // and your own services
//!         .serve("0.0.0.0:50051".parse()?)
//!         .await?;
//!     Ok(())
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! Without a layer, take a [`Lease`] before the work (`live.lease()`: the
//! pool in service and its generation), run the work on `lease.pool()` and
//! hand its errors to `lease.report(&err)`, and the policy does the same: an
//! error is always tagged with the generation that produced it, so a late
//! error from a replaced pool never reopens (or exits) again.
//!
//! # Feature flags
//!
//! | feature | what it adds | extra dependencies |
//! |---|---|---|
//! | *(none)* | classification, `LivePool` and its policy, watchdog (polling), rescue, `DbLivenessLayer`, `HealthService`, `mark_response` | — |
//! | `axum` | `IntoResponse` for [`DbError`], [`ErrorMark`] as a response part (axum 0.8) | `axum-core` |
//! | `tonic` | `status_from_sqlx`, the layer reads `tonic::Status`, [`health::grpc`] bridge (tonic 0.14) | `tonic`, `tonic-health` |
//! | `migrate` | [`LivePoolBuilder::migrations`]: run a `sqlx::migrate!()` migrator at open and on every reopen | `sqlx/migrate` |
//! | `systemd` | `systemd::spawn_watchdog`: `WATCHDOG=1` while the probe does not fail | `sd-notify` |
//! | `fs-watch` | the watchdog also watches the database's directory (inotify, kqueue, FSEvents) and reacts at once | `notify` |
//! | `metrics` | records the policy's decisions through the [`metrics`](https://docs.rs/metrics) facade: see [Metrics](#metrics) | `metrics` 0.24 |
//! | `postgres` | `LivePool<Postgres>` ([`LivePool::postgres`]): never pinned to a demoted primary or a read-only node; see the [Postgres guide](postgres) | `sqlx/postgres` |
//! | `mysql` | `LivePool<MySql>` ([`LivePool::mysql`]): never pinned to a demoted primary that stayed up; read-only in place is degraded, not healed; see the [MySQL guide](mysql) | `sqlx/mysql` |
//!
//! # Metrics
//!
//! With the `metrics` feature the crate records into whatever recorder the
//! application installed (`metrics-exporter-prometheus`, a StatsD or an
//! OpenTelemetry bridge); without a recorder, or without the feature,
//! nothing is recorded. A request that succeeds records nothing: the
//! success path stays free of allocations and locks whatever the recorder.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `db_liveness_errors_total` | counter | `class`: `fatal`, `transient`, `other` | database errors reported to the policy (by the layer, a [`Lease`], [`LivePool::report_at`], the probe's fatal reads), as [`classify`] sorts them; a CANTOPEN counts as `fatal` even when the file turns out intact |
//! | `db_liveness_heals_total` | counter | `fault`: `error`, `deleted`, `moved`, `replaced`, `companion_deleted`, `companion_replaced` | pools reopened, verified and swapped in, by what made the old one fatal |
//! | `db_liveness_give_ups_total` | counter | `reason`: `reopen_failed`, `verify_failed`, `recurred`, `too_many_heals` | give-ups; the process exits next |
//! | `db_liveness_heal_seconds` | histogram | `outcome`: `healed`, `gave_up` | from a fatal finding to the swap or the give-up, rescue included |
//! | `db_liveness_rescues_total` | counter | `result`: `saved`, `failed` | `VACUUM INTO` rescues of a dead file's data; a failed one is retried |
//! | `db_liveness_rescue_bytes` | gauge | | size of the last rescue file saved. No row count: counting the rows would read the whole file again, on the heal's path |
//! | `db_liveness_held_requests_total` | counter | | requests the layer held while a heal was in flight |
//! | `db_liveness_hold_seconds` | histogram | | how long each held request was held (up to the hold timeout) |
//! | `db_liveness_probe_total` | counter | `status`: `pass`, `warn`, `fail` | health answers: HTTP, the gRPC bridge, the systemd watchdog |
//! | `db_liveness_probe_seconds` | histogram | | how long each probe of the database took (answers that join a probe in flight share it) |
//! | `db_liveness_generation` | gauge | | the generation in service: 0 at start, one more per heal |
//!
//! The names are global: with several `LivePool`s in one process their
//! counts add up, and the generation is the last one set. A give-up is
//! recorded before the exit, but a pull exporter rarely gets to scrape it;
//! alert on the restart too, or push (StatsD, OTLP).
//!
//! Two Prometheus alerts:
//!
//! ```yaml
//! groups:
//!   - name: db-liveness
//!     rules:
//!       - alert: DatabaseHealed          # a heal happened: look at the rescue
//!         expr: increase(db_liveness_heals_total[5m]) > 0
//!         labels: { severity: warning }
//!         annotations:
//!           summary: "{{ $labels.instance }} reopened its database ({{ $labels.fault }})"
//!       - alert: DatabaseNotReady        # readiness (/readyz, /health) answered fail
//!         expr: increase(db_liveness_probe_total{status="fail"}[2m]) > 0
//!         labels: { severity: critical }
//!       - alert: DatabaseGaveUp          # or the process restarted
//!         expr: increase(db_liveness_give_ups_total[10m]) > 0 or changes(process_start_time_seconds[10m]) > 0
//!         labels: { severity: critical }
//! ```
//!
//! The exporter needs no server of its own: `metrics-exporter-prometheus`
//! (`default-features = false`) renders into the application's router.
//! `examples/axum.rs` does this with `--features axum,metrics` (and runs the
//! exporter's upkeep every 5 s):
//!
//! ```no_run
//! # #[cfg(feature = "metrics")]
//! # mod example {
//! use axum::{Router, routing::get};
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::{HealthService, LivePool};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The recorder first, then the pool: its generation 0 is recorded.
//! let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! let live = LivePool::connect(SqliteConnectOptions::new().filename("app.db")).await?;
//! let app: Router = Router::new()
//!     .route_service("/health", HealthService::new(live.clone()))
//!     .route("/metrics", get(move || std::future::ready(metrics.render())));
//! # let _ = app;
//! # Ok(())
//! # }
//! # }
//! # fn main() {}
//! ```
//!
//! # Classification
//!
//! Decided on SQLite's numeric extended result code (what sqlx reports as
//! [`DatabaseError::code`](sqlx::error::DatabaseError::code)), and only for
//! an error that is SQLite's (`sqlx::sqlite::SqliteError`): another driver's
//! database error (a Postgres SQLSTATE such as `22026`) is
//! [`Other`](ErrorClass::Other) whatever its code. The message text is never
//! read: it can carry user input, and codes 8, 1032 and 1544 share one
//! message, as do 5 and 517.
//!
//! | class | SQLite result codes | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](ErrorClass::Fatal) | IOERR (10) and its extended codes except 2826 and 3850; CORRUPT (11) family; NOTADB (26); CANTOPEN (14) family; READONLY_DBMOVED (1032) | `WorkerCrashed` |
//! | [`Transient`](ErrorClass::Transient) | BUSY (5) family; LOCKED (6) family; IOERR_BLOCKED (2826); IOERR_LOCK (3850); FULL (13) | `PoolTimedOut`; `PoolClosed` (a heal closed the pool the request reached) |
//! | [`Other`](ErrorClass::Other) | everything else: constraints, SQLITE_ERROR, READONLY (8) and its other sub-codes; any other driver's database error | everything else |
//!
//! With the `postgres` feature, a `PgDatabaseError` is classified by its
//! SQLSTATE, and `Io` (a dead socket, which sqlx replaces) is transient; the
//! table is in the [Postgres guide](postgres#classification). With the
//! `mysql` feature, a `MySqlDatabaseError` is classified by its error number
//! (its SQLSTATE is the generic `HY000` for the read-only error); the table
//! is in the [MySQL guide](mysql#classification).
//!
//! # What happens to your data
//!
//! Measured with real files and real sqlx pools (both journal modes unless
//! the row says otherwise). The crate never deletes, truncates or recreates a
//! database file itself. A reopen **reattaches the database that was open**:
//! the absolute path recorded at start-up, without creating it (unless
//! [`reopen_creates`](LivePoolBuilder::reopen_creates)), verified to be the
//! same file and the same application's schema (every table of the old
//! generation, the same `user_version` and `application_id`) before it is
//! swapped in.
//!
//! | fault | what SQLite does | what this crate does |
//! |---|---|---|
//! | directory deleted (`rm -rf`) | WAL: writes are acknowledged into the unlinked file, no error at all. DELETE: writes fail with 1032, reads succeed. New connections fail with 14. | The watchdog sees the file gone, the rescue copies every row the old handle can see (WAL-only commits and writes acknowledged after the deletion included) into the crate's private `<file>.<hash of the path>.rescues/` directory above the removed one (so the `rm -rf` completes), nothing can be reattached, the policy exits, and the next start refuses to open the path until the rescue is restored. |
//! | file unlinked or renamed, directory renamed | as above; a renamed file keeps its rows | Rescue, then exit: nothing is created at the path. |
//! | a backup renamed over the file (a restore) | old connections keep using the old inode; a new connection would open the restore with the old `-wal` and replay it | Rescue the old inode, rename its `-wal`/`-shm` aside (`<name>-wal.stale-<stamp>-<random>`, never deleted), heal onto the restore, which keeps exactly its rows. |
//! | `-wal` or `-shm` deleted alone | WAL: writes acknowledged into the unlinked log, lost at the next restart | The identity check covers the companions: rescue, exit. |
//! | the configured symlink repointed (blue/green) | SQLite resolved the link at open and keeps the old target | Rescue the old target, heal onto the new one. |
//! | a file of another schema at the path | | Rescue, verification fails, exit. |
//! | page corruption | 11 CORRUPT on access; some reads may still succeed | Reopen once; if the corruption is in the file, the fault recurs and the policy exits. |
//! | garbage file / bad header | 26 NOTADB | Reopen fails verification, the policy exits. |
//! | lock held elsewhere, disk full | 5 / 517 BUSY, 13 FULL | Nothing: transient, the request fails with the error. |
//!
//! When a heal starts, the dead pool is closed at once (new acquires fail
//! with `PoolClosed`), writes in flight get
//! [`drain_timeout`](LivePoolBuilder::drain_timeout) to finish, and the
//! rescue runs on a connection opened before the fault. A rescue that fails
//! (a full disk, or a copy that could only go to the temporary directory,
//! which a restart may lose) is retried with back-off while the dead handle is kept open
//! and readiness answers `fail` ([`PoolStatus::RescueFailing`]; liveness
//! stays 200: a restart would lose the data): nothing is
//! healed or exited until a rescue is saved. Then the dead file is
//! **sealed**: the rescue connection takes the write lock once
//! `PRAGMA data_version` shows no commit since the rescue started (rescuing
//! again otherwise), so no write can be acknowledged on it afterwards. A
//! transaction still open then is waited for in the background and rescued
//! again after it commits; [`LivePool::close`] waits for that before the
//! process exits. The tests count every row: 70 of 70 in WAL mode (20 of
//! them acknowledged after the deletion), 50 of 50 in DELETE mode.
//!
//! # When it exits
//!
//! Only when the database is dead and cannot be reattached: the reopen fails
//! (no file, no directory, another file or schema, the reopen fails or
//! panics), the fault recurs within the recurrence window or the heal budget
//! is spent, or a `-wal`/`-shm` the pool had open is gone. Never for locks, a
//! full disk, an exhausted or closed pool, CANTOPEN while the database file
//! is intact (a descriptor shortage, `ATTACH` to a bad path), another sqlx
//! driver's errors, a hung filesystem, or a failure from a pool already
//! replaced. The exit is `std::process::exit(1)` unless you replace it
//! ([`on_give_up`](LivePoolBuilder::on_give_up)); a panic in your action
//! still exits. To leave gracefully, serve with
//! `.with_graceful_shutdown(live.given_up())` and set
//! [`shutdown_grace`](LivePoolBuilder::shutdown_grace): requests in flight
//! complete, new connections are refused, and the process exits with the
//! give-up's code when your `main` calls `std::process::exit` after
//! [`LivePool::close`], at the latest when the grace period is over.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

/// Declares a struct over a [`Backend`] whose parameter defaults to SQLite
/// when the `sqlite` feature is on, and has no default otherwise (so that
/// enabling a feature never changes what a type means).
#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!(
    "tower-db-liveness needs a database: enable at least one of the features `sqlite` (a default \
     feature), `postgres` or `mysql`"
);

macro_rules! sqlite_by_default {
    ($(#[$meta:meta])* $vis:vis struct $name:ident<DB: Backend> { $($body:tt)* }) => {
        #[cfg(feature = "sqlite")]
        $(#[$meta])* $vis struct $name<DB: Backend = sqlx::Sqlite> { $($body)* }
        #[cfg(not(feature = "sqlite"))]
        $(#[$meta])* $vis struct $name<DB: Backend> { $($body)* }
    };
}

mod backend;
#[cfg(feature = "sqlite")]
mod blocking;
mod classify;
mod error;
pub mod guide;
pub mod health;
mod layer;
mod live_pool;
mod metrics;
pub mod mysql;
pub mod postgres;
mod shared;
#[cfg(feature = "systemd")]
#[cfg_attr(docsrs, doc(cfg(feature = "systemd")))]
pub mod systemd;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use backend::postgres::Expect;
pub use classify::{ErrorClass, classify, classify_chain};
#[cfg(feature = "tonic")]
pub use error::status_from_sqlx;
pub use error::{DbError, ErrorMark, mark_response};
pub use health::{Check, HealthService};
pub use layer::{
    BoxedErrors, DbLiveness, DbLivenessLayer, ErrorSources, FindError, ResponseFuture,
};
pub use live_pool::{Lease, LivePool, LivePoolBuilder, StatusWatch};
pub use shared::{Backend, Fault, FileFault, GaveUp, GiveUpReason, Healed, Outcome, PoolStatus};
