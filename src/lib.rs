//! Keep a SQLite-backed tower service honest about its database.
//!
//! A service kept an open SQLite handle while an operator deleted the
//! database's directory: every write failed, `/health` stayed green, and the
//! database routes returned 500 for an hour where a restart would have healed
//! it in seconds. This crate makes that failure shape impossible:
//!
//! - [`classify`] sorts a `sqlx::Error` into [`ErrorClass::Fatal`] (dead handle,
//!   corruption, moved or deleted file), [`ErrorClass::Transient`] (locks,
//!   a full disk, an exhausted pool) or [`ErrorClass::Other`];
//! - [`LivePool`] holds the current `SqlitePool` behind an `ArcSwap`. On a fatal
//!   error it reopens the pool **once**, verifies it and swaps it in; when
//!   that fails, or the fault comes back on the fresh pool, it logs and
//!   **exits** so systemd, Kubernetes or launchd restarts the process;
//! - a watchdog compares the database file's identity with its path, because
//!   a WAL pool whose file was deleted reports no error at all, and a rescue
//!   saves what the dead handle still sees with `VACUUM INTO` before the
//!   pool is replaced;
//! - [`DbLivenessLayer`] is how a service uses it: in any tower stack it
//!   reports the database errors of responses and service errors to the
//!   `LivePool` and holds requests while a reopen is in flight. Handlers
//!   return [`DbError`] (axum), call [`mark_response`] (any `http::Response`)
//!   or build their `tonic::Status` with `status_from_sqlx` (tonic), so the
//!   `sqlx::Error` survives the framework's error-to-response conversion.
//!
//! # Example
//!
//! ```no_run
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::LivePool;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), sqlx::Error> {
//! let options = SqliteConnectOptions::new()
//!     .filename("/var/lib/app/app.db")
//!     .create_if_missing(true);
//! let live = LivePool::connect(options).await?;
//!
//! // In a handler: take the current pool, report what failed.
//! let result = sqlx::query("SELECT count(*) FROM sqlite_schema")
//!     .fetch_one(&live.pool())
//!     .await;
//! if let Err(err) = result {
//!     live.report(&err).await;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Classification
//!
//! Decided on SQLite's numeric extended result code (what sqlx reports as
//! [`DatabaseError::code`](sqlx::error::DatabaseError::code)); the message
//! text is read only when an error has no code, because codes 8, 1032 and
//! 1544 share one message, and so do 5 and 517.
//!
//! | class | SQLite result codes | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](ErrorClass::Fatal) | IOERR (10) and its extended codes except 2826 and 3850; CORRUPT (11) family; NOTADB (26); CANTOPEN (14) family; READONLY_DBMOVED (1032) | `WorkerCrashed` |
//! | [`Transient`](ErrorClass::Transient) | BUSY (5) family; LOCKED (6) family; IOERR_BLOCKED (2826); IOERR_LOCK (3850); FULL (13) | `PoolTimedOut` |
//! | [`Other`](ErrorClass::Other) | everything else: constraints, SQLITE_ERROR, READONLY (8) and its other sub-codes | everything else |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod classify;
mod error;
mod identity;
mod layer;
mod live_pool;
mod rescue;
mod watchdog;

pub use classify::{ErrorClass, classify, classify_chain};
#[cfg(feature = "tonic")]
pub use error::status_from_sqlx;
pub use error::{DbError, mark_response};
pub use identity::FileFault;
pub use layer::{
    BoxedErrors, DbLiveness, DbLivenessLayer, ErrorSources, FindError, ResponseFuture,
};
pub use live_pool::{
    Fault, GaveUp, GiveUpReason, Healed, LivePool, LivePoolBuilder, Outcome, PoolStatus,
};
