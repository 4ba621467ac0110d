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
//! - [`HealthService`] answers `/health` from a probe that reads the database
//!   and checks its file, within a timeout, and is itself a detector; with the
//!   `tonic` feature it also drives gRPC health checking, with `systemd` the
//!   systemd watchdog. See [`health`] for Kubernetes and systemd set-ups;
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
//!
//! # What happens to your data
//!
//! Measured with real files and real sqlx pools (both journal modes unless
//! the row says otherwise). The crate never deletes, truncates or recreates a
//! database file itself; a reopen uses your options exactly as given.
//!
//! | fault | what SQLite does | what this crate does |
//! |---|---|---|
//! | directory deleted (`rm -rf`) | WAL: writes are acknowledged into the unlinked file, no error at all. DELETE: writes fail with 1032, reads succeed. New connections fail with 14. | The watchdog sees the file gone, the rescue copies every row the old handle can see (WAL-only commits and writes acknowledged after the deletion included) next to the nearest existing ancestor, the reopen fails with 14 and the policy exits. |
//! | file unlinked (`rm app.db`) | as above | Rescue next to the file, then reopen: with `create_if_missing(true)` onto a new, empty file (your reopen creates the schema), otherwise exit. |
//! | file or directory renamed | as above; the old file keeps its rows | Rescue, then reopen at the path (a new file) or exit if the directory is gone. |
//! | file replaced by another database | old connections keep using the old inode | Rescue the old inode, then heal onto the file now at the path. |
//! | page corruption | 11 CORRUPT on access; some reads may still succeed | Reopen once; if the corruption is in the file, the fault recurs and the policy exits. |
//! | garbage file / bad header | 26 NOTADB | Reopen fails verification, the policy exits. |
//! | lock held elsewhere, disk full | 5 / 517 BUSY, 13 FULL | Nothing: transient, the request fails with the error. |
//!
//! When a heal starts, the dead pool is closed at once (new acquires fail
//! with `PoolClosed` instead of acknowledging writes into a file nobody will
//! read again), and the rescue waits up to
//! [`drain_timeout`](LivePoolBuilder::drain_timeout) for connections already
//! checked out to come back, so its snapshot holds every write the old pool
//! acknowledged. The tests count them: 70 of 70 rows in WAL mode (20 of them
//! acknowledged after the deletion), 50 of 50 in DELETE mode, for every fault.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod classify;
mod error;
pub mod health;
mod identity;
mod layer;
mod live_pool;
mod rescue;
#[cfg(feature = "systemd")]
#[cfg_attr(docsrs, doc(cfg(feature = "systemd")))]
pub mod systemd;
mod watchdog;

pub use classify::{ErrorClass, classify, classify_chain};
#[cfg(feature = "tonic")]
pub use error::status_from_sqlx;
pub use error::{DbError, mark_response};
pub use health::HealthService;
pub use identity::FileFault;
pub use layer::{
    BoxedErrors, DbLiveness, DbLivenessLayer, ErrorSources, FindError, ResponseFuture,
};
pub use live_pool::{
    Fault, GaveUp, GiveUpReason, Healed, LivePool, LivePoolBuilder, Outcome, PoolStatus,
    StatusWatch,
};
