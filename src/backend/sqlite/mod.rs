//! SQLite: the file identity and its watchdog, the rescue of a dead
//! handle's data, the seal, and reattaching the same file.

mod generation;
mod heal;
pub(crate) mod identity;
mod probe;
pub(crate) mod rescue;
mod watchdog;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use sqlx::Sqlite;

pub(crate) use generation::{
    FS_BOUND, SqliteGeneration, configured_path, open, open_files, unverified,
};
pub use identity::FileFault;

use super::Triage;
use super::sealed::Sealed;
use crate::blocking;
use crate::classify::Code;
use crate::health::Finding;
use crate::live_pool::{Fault, Generation, GiveUpReason, Inner, LivePool, Outcome, ReopenFn};

/// SQLite's primary CANTOPEN result code.
const CANTOPEN: i32 = 14;
/// SQLite's primary READONLY result code, and its sub-code for a directory
/// that cannot be written (READONLY_DBMOVED, 1032, is fatal, not degraded).
const READONLY: i32 = 8;
const READONLY_DIRECTORY: i32 = 1544;
const READONLY_DBMOVED: i32 = 1032;
/// Fatal-class primary codes that another file (ATTACH, backup, `VACUUM
/// INTO`) can produce: IOERR, CORRUPT, NOTADB.
const OTHER_FILE_POSSIBLE: [i32; 3] = [10, 11, 26];

/// What SQLite's heals share: how to reopen.
pub struct SqliteState {
    pub(crate) reopen: ReopenFn<Sqlite>,
    /// A check of the database after a fatal-class error is running: the
    /// errors that come meanwhile wait for its verdict instead of starting
    /// more (an endpoint that attaches users' files must not be a way to
    /// keep the database busy with checks).
    pub(crate) confirming: std::sync::Mutex<Option<tokio::sync::watch::Receiver<Option<Outcome>>>>,
}

impl SqliteState {
    pub(crate) fn new(reopen: ReopenFn<Sqlite>) -> Self {
        SqliteState {
            reopen,
            confirming: std::sync::Mutex::new(None),
        }
    }
}

impl Sealed for Sqlite {
    type Extra = SqliteGeneration;
    type State = SqliteState;
    type Settings = ();
    const NAME: &'static str = "sqlite";
    const CHECK_KEY: &'static str = "sqlite:responseTime";

    fn triage(
        inner: &Arc<Inner<Self>>,
        generation: u64,
        code: Code,
        err: &dyn fmt::Display,
    ) -> Triage {
        let fault = Fault::from_error(err, code);
        match code.sqlite() {
            // Decided once the file identity is known, off the request path.
            Some(code) if code & 0xff == CANTOPEN => {
                Triage::Check(tokio::spawn(Arc::clone(inner).cantopen(generation, fault)))
            }
            // Nothing in the code says which file: an ATTACHed database, a
            // backup target or a `VACUUM INTO` elsewhere gives the same codes
            // as the pool's own file. Fatal for the pool only once the file
            // identity or a read of the main database confirms it, off the
            // request path.
            Some(code) if code != READONLY_DBMOVED && OTHER_FILE_POSSIBLE.contains(&(code & 0xff)) => {
                Triage::Check(Arc::clone(inner).confirm(generation, fault))
            }
            // READONLY_DBMOVED (1032) is about the pool's own file; a crashed
            // worker is the pool's own connection.
            _ => Triage::Fatal(fault),
        }
    }

    fn transient(inner: &Arc<Inner<Self>>, generation: u64, code: Code) {
        let Some(code) = code.sqlite() else { return };
        if code & 0xff != READONLY || generation != inner.generation() {
            return;
        }
        let reason = if code == READONLY_DIRECTORY {
            format!("the database's directory cannot be written (SQLite code {code})")
        } else {
            format!("the database cannot be written (SQLite code {code})")
        };
        inner.set_read_only(generation, &reason);
    }

    fn replace(
        inner: &Arc<Inner<Self>>,
        old: &Arc<Generation<Self>>,
        fault: &Fault,
    ) -> impl Future<Output = (Result<Generation<Self>, GiveUpReason>, Option<PathBuf>)> + Send
    {
        inner.replace(old, fault)
    }

    fn retire(inner: &Arc<Inner<Self>>, old: Arc<Generation<Self>>) {
        inner.close_in_background(old);
    }

    fn discard(generation: Generation<Self>) {
        heal::discard(generation);
    }

    async fn close(generation: &Generation<Self>) {
        if let Some(conn) = generation.sentinel.lock().await.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }

    fn probe(
        live: &LivePool<Self>,
        bound: Duration,
        stuck: &AtomicU32,
    ) -> impl Future<Output = (u64, Finding)> + Send
    where
        Self: super::Backend,
    {
        probe::probe(live, bound, stuck)
    }
}

/// Spawns the file watchdog of a SQLite `LivePool` (see
/// [`LivePool::start`]).
pub(crate) fn spawn_watchdog(inner: &Arc<Inner<Sqlite>>, stop: tokio::sync::oneshot::Receiver<()>) {
    watchdog::spawn(inner, stop);
}

impl LivePool<Sqlite> {
    /// Compares the database file the pool opened with what its path leads
    /// to now, and reports a deleted, moved or replaced file to the policy
    /// (the watchdog runs this periodically).
    ///
    /// Returns `None` when the file is in place (or the database has no file).
    /// The check runs off the runtime; a check that does not answer within
    /// 2 s (a hung mount) is not a finding and returns `None`.
    pub async fn check_file(&self) -> Option<Outcome> {
        let current = self.current();
        let file = current.file.clone()?;
        let fault = blocking::run(FS_BOUND, move || file.check())
            .await
            .ok()?
            .err()?;
        Some(self.inner().fatal(current.number, Fault::File(fault)).await)
    }
}
