//! SQLite: a pool on a file that can be deleted, moved or replaced under it.
//!
//! How it fails: an open handle keeps the unlinked inode; with the directory
//! deleted a WAL pool reports no error at all (writes vanish into the
//! unlinked file) and a DELETE-journal pool fails writes with 1032; a
//! damaged file answers IOERR/CORRUPT/NOTADB, codes an attached file or a
//! `VACUUM INTO` elsewhere also produce ([`classify`]).
//!
//! How it is checked: the file identity (device, inode, birth time) of the
//! database and its `-wal`/`-shm`, compared with what the path leads to
//! now by the watchdog ([`watchdog`], polling or a filesystem watch) and the
//! probe ([`probe`]); a fatal-class error counts only once the identity or
//! a read of the main database confirms it.
//!
//! How it is replaced ([`heal`]): the dead pool drained, its data rescued
//! with `VACUUM INTO` on a connection opened before the fault into a
//! private directory ([`rescue`]) and sealed, stale companions set aside,
//! the same file reattached and verified (schema, identity); when the file
//! is gone, a restore marker ([`marker`]) makes the next start refuse
//! rather than create an empty database.

pub(crate) mod classify;
mod generation;
mod heal;
pub(crate) mod identity;
mod marker;
mod probe;
pub(crate) mod rescue;
mod watchdog;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use sqlx::Sqlite;

pub(crate) use generation::{
    FS_BOUND, SqliteGeneration, configured_path, open, open_files, unverified,
};
pub use identity::FileFault;

use super::SingleCheck;
use crate::blocking;
use crate::shared::{
    Backend, Code, ErrorClass, Fault, Finding, Generation, GiveUpReason, PolicyRef, ReopenFn,
    Sealed, Triage,
};

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
    pub(crate) checks: SingleCheck,
}

impl SqliteState {
    pub(crate) fn new(reopen: ReopenFn<Sqlite>) -> Self {
        SqliteState {
            reopen,
            checks: SingleCheck::default(),
        }
    }
}

impl Backend for Sqlite {}

impl Sealed for Sqlite {
    type Extra = SqliteGeneration;
    type State = SqliteState;
    type Settings = ();
    const NAME: &'static str = "sqlite";
    const CHECK_KEY: &'static str = "sqlite:responseTime";

    fn code(db: &dyn sqlx::error::DatabaseError) -> Code {
        classify::code(db)
    }

    fn class(code: Code) -> ErrorClass {
        classify::class(code)
    }

    fn triage(
        inner: &PolicyRef<Self>,
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
            Some(code)
                if code != READONLY_DBMOVED && OTHER_FILE_POSSIBLE.contains(&(code & 0xff)) =>
            {
                Triage::Wait(Arc::clone(inner).confirm(generation, fault))
            }
            // READONLY_DBMOVED (1032) is about the pool's own file; a crashed
            // worker is the pool's own connection.
            _ => Triage::Fatal(fault),
        }
    }

    fn transient(inner: &PolicyRef<Self>, generation: u64, code: Code) {
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
        inner: &PolicyRef<Self>,
        old: &Arc<Generation<Self>>,
        fault: &Fault,
    ) -> impl Future<Output = (Result<Generation<Self>, GiveUpReason>, Option<PathBuf>)> + Send
    {
        inner.replace(old, fault)
    }

    fn retire(inner: &PolicyRef<Self>, old: Arc<Generation<Self>>) {
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
        policy: &PolicyRef<Self>,
        bound: Duration,
        stuck: &AtomicU32,
    ) -> impl Future<Output = (u64, Finding)> + Send {
        probe::probe(policy, bound, stuck)
    }
}

/// Spawns the file watchdog of a SQLite `LivePool`.
pub(crate) fn spawn_watchdog(inner: &PolicyRef<Sqlite>, stop: tokio::sync::oneshot::Receiver<()>) {
    watchdog::spawn(inner, stop);
}

/// Refuses, with an error that names the rescue and how to restore it,
/// when a give-up left a rescue for the database at `db_path` that nobody
/// has restored yet; retires a marker whose rescue is back in place.
pub(crate) async fn check_pending_rescue(
    db_path: &Path,
    rescue_dir: Option<&Path>,
    bound: Duration,
) -> Result<(), sqlx::Error> {
    let db = std::path::absolute(db_path).map_err(sqlx::Error::Io)?;
    let dir = rescue_dir.map(Path::to_path_buf);
    let shown = db.display().to_string();
    let checked = blocking::run(bound, move || -> std::io::Result<Option<String>> {
        let Some(pending) = marker::find(&db, dir.as_deref())? else {
            return Ok(None);
        };
        if pending.restored() {
            pending.retire()?;
            tracing::warn!(database = %db.display(), rescue = %pending.rescue.display(), "the rescue was restored at the database's path; the restore marker is retired");
            return Ok(None);
        }
        Ok(Some(pending.refusal()))
    })
    .await
    .map_err(|stuck| {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("checking for a pending rescue of {shown}: {stuck} (a hung mount?)"),
        ))
    })?
    .map_err(sqlx::Error::Io)?;
    match checked {
        None => Ok(()),
        Some(refusal) => {
            tracing::error!("{refusal}");
            Err(sqlx::Error::Configuration(refusal.into()))
        }
    }
}

/// Lists, logs and publishes (metrics `db_liveness_leftover_files` and
/// `_bytes`) what earlier faults left for the database at `db_path`.
pub(crate) async fn report_leftovers(db_path: &Path, rescue_dir: Option<&Path>, bound: Duration) {
    let (db, dir) = (db_path.to_path_buf(), rescue_dir.map(Path::to_path_buf));
    let Ok(found) = blocking::run(bound, move || marker::leftovers(&db, dir.as_deref())).await
    else {
        return;
    };
    crate::metrics::leftovers(found.files.len(), found.bytes());
    if found.files.is_empty() {
        return;
    }
    let list: Vec<String> = found
        .files
        .iter()
        .map(|(path, size)| format!("{} ({size} B)", path.display()))
        .collect();
    tracing::warn!(
        database = %db_path.display(),
        files = found.files.len(),
        bytes = found.bytes(),
        "files from earlier faults are kept (rescues, restore markers, set-aside -wal/-shm); \
         the crate never deletes them: remove them once the database is checked: {}",
        list.join(", ")
    );
}

/// Restores the rescue a give-up left for the database at `db_path` (see
/// `LivePool::restore_rescue`); returns the rescue that was restored.
pub(crate) async fn restore_rescue(
    db_path: &Path,
    rescue_dir: Option<&Path>,
) -> Result<PathBuf, sqlx::Error> {
    let db = std::path::absolute(db_path).map_err(sqlx::Error::Io)?;
    let dir = rescue_dir.map(Path::to_path_buf);
    let found = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || marker::find(&db, dir.as_deref()))
            .await
            .map_err(|err| sqlx::Error::Io(std::io::Error::other(err)))?
            .map_err(sqlx::Error::Io)?
    };
    let Some(pending) = found else {
        return Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no rescue is waiting to be restored at {}", db.display()),
        )));
    };
    // SQLite's own verdict on the rescue, read-only.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&pending.rescue)
        .read_only(true);
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options).await?;
    let verdict: String = sqlx::query_scalar("PRAGMA quick_check(1)")
        .fetch_one(&mut conn)
        .await?;
    let _ = sqlx::Connection::close(conn).await;
    if verdict != "ok" {
        return Err(sqlx::Error::Io(std::io::Error::other(format!(
            "the rescue {} fails its check: {verdict}",
            pending.rescue.display()
        ))));
    }
    let rescue = pending.rescue.clone();
    let set_aside = tokio::task::spawn_blocking(move || marker::put_back(&pending))
        .await
        .map_err(|err| sqlx::Error::Io(std::io::Error::other(err)))?
        .map_err(sqlx::Error::Io)?;
    for aside in set_aside {
        tracing::warn!(moved_to = %aside.display(), "set aside before the restore");
    }
    tracing::warn!(database = %db.display(), rescue = %rescue.display(), "the rescue was restored at the database's path");
    Ok(rescue)
}

/// What happened to the file `generation` opened, if anything: checked off
/// the runtime, `None` when it is in place, has no file, or the check did
/// not answer within 2 s (a hung mount is not a finding).
pub(crate) async fn file_fault(generation: &Generation<Sqlite>) -> Option<FileFault> {
    let file = generation.file.clone()?;
    blocking::run(FS_BOUND, move || file.check())
        .await
        .ok()?
        .err()
}
