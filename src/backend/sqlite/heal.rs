//! SQLite's heal: drain the dead pool, rescue and seal its file, set stale
//! companions aside, reattach the same file and verify it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Sqlite, SqliteConnection};

use super::generation::{FS_BOUND, Schema, open_files};
use super::identity::{DbFile, FileFault};
use super::rescue;
use crate::blocking;
use crate::shared::{
    BoxFuture, ErrorClass, Fault, Generation, GiveUpReason, Outcome, Policy, PoolStatus,
    RescueConfig, class, panic_text,
};

/// How long the read of the main database that confirms a fatal-class
/// error may take.
const CONFIRM_BOUND: Duration = Duration::from_secs(10);

/// The longest pause between two rescue attempts.
const RESCUE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a seal attempt ended.
enum Seal {
    /// The sentinel holds the write lock and nothing was committed since
    /// the last rescue: no write can be acknowledged on this file again.
    Sealed,
    /// A write was committed after the rescue started: rescue again.
    Changed,
    /// A write transaction is still open on the dead file.
    Busy,
}

impl dyn Policy<Sqlite> {
    /// A CANTOPEN (14) names no file: it may be another file (`ATTACH`,
    /// `VACUUM INTO` to a bad path) or a descriptor shortage. It is fatal only
    /// when the database's own file is affected, which the file identity
    /// tells; otherwise it is transient.
    pub(crate) async fn cantopen(self: Arc<Self>, generation: u64, fault: Fault) -> Outcome {
        let current = self.current();
        let Some(file) = current.file.clone() else {
            return Outcome::Ignored(ErrorClass::Transient);
        };
        let checked = blocking::run(FS_BOUND, move || (file.check(), out_of_descriptors())).await;
        match checked {
            Ok((Err(file_fault), _)) => self.fatal(generation, Fault::File(file_fault)).await,
            Ok((Ok(()), true)) => {
                tracing::warn!(
                    class = "transient", code = fault.code(), %fault, action = "none",
                    "out of file descriptors: a new database connection could not be opened"
                );
                Outcome::Ignored(ErrorClass::Transient)
            }
            Ok((Ok(()), false)) => {
                tracing::warn!(
                    class = "transient", code = fault.code(), %fault, action = "none",
                    "CANTOPEN while the database file is intact: another file, or a descriptor shortage"
                );
                Outcome::Ignored(ErrorClass::Transient)
            }
            Err(stuck) => {
                tracing::warn!(code = fault.code(), %fault, error = %stuck, "CANTOPEN: the file identity could not be checked; not fatal");
                Outcome::Ignored(ErrorClass::Transient)
            }
        }
    }

    /// A fatal-class error that another file can produce (IOERR, CORRUPT,
    /// NOTADB): decided off the request path by the file identity and a
    /// read of the main database. Errors that come while a check runs wait
    /// for its verdict instead of starting another.
    pub(crate) fn confirm(self: Arc<Self>, generation: u64, fault: Fault) -> BoxFuture<Outcome> {
        let policy = Arc::clone(&self);
        self.state()
            .checks
            .join_or_start(generation, move || async move {
                policy.confirm_now(generation, fault).await
            })
    }

    async fn confirm_now(self: &Arc<Self>, generation: u64, fault: Fault) -> Outcome {
        let current = self.current();
        if current.number != generation {
            // Stale or gave up: the policy says which.
            return Arc::clone(self).fatal(generation, fault).await;
        }
        if let Some(file) = current.file.clone() {
            match blocking::run(FS_BOUND, move || file.check()).await {
                Ok(Err(file_fault)) => {
                    return Arc::clone(self)
                        .fatal(generation, Fault::File(file_fault))
                        .await;
                }
                Ok(Ok(())) => {}
                Err(stuck) => {
                    tracing::warn!(code = fault.code(), %fault, error = %stuck, "the file identity could not be checked after a fatal-class error; reading the database");
                }
            }
        }
        match tokio::time::timeout(CONFIRM_BOUND, read_main(&current.pool)).await {
            Ok(Ok(None)) => {
                tracing::warn!(
                    class = "other", code = fault.code(), %fault, action = "none",
                    "fatal-class error while the database's own file reads clean: another file (ATTACH, backup, VACUUM INTO)"
                );
                Outcome::Ignored(ErrorClass::Other)
            }
            Ok(Ok(Some(problem))) => {
                tracing::error!(code = fault.code(), %fault, %problem, "the main database fails its check");
                Arc::clone(self).fatal(generation, fault).await
            }
            Ok(Err(err)) if class::read::<Sqlite>(&err).0 == ErrorClass::Fatal => {
                tracing::error!(code = fault.code(), %fault, error = %err, "a read of the main database fails too");
                Arc::clone(self).fatal(generation, fault).await
            }
            Ok(Err(err)) => {
                tracing::warn!(code = fault.code(), %fault, error = %err, "fatal-class error; the main database could not be checked now, not fatal");
                Outcome::Ignored(ErrorClass::Transient)
            }
            Err(_) => {
                tracing::warn!(code = fault.code(), %fault, "fatal-class error; the check of the main database did not finish within {CONFIRM_BOUND:?}, not fatal");
                Outcome::Ignored(ErrorClass::Transient)
            }
        }
    }

    /// Everything between a fatal finding and a verified new generation:
    /// stop the dead pool, rescue and seal its file, set stale companions
    /// aside, check the budget, reopen and verify.
    pub(crate) async fn replace(
        &self,
        old: &Arc<Generation<Sqlite>>,
        fault: &Fault,
    ) -> (Result<Generation<Sqlite>, GiveUpReason>, Option<PathBuf>) {
        let (result, rescue, file_fault) = self.replace_inner(old, fault).await;
        let result = match (result, &rescue, file_fault, &old.file) {
            (
                Err(reason),
                Some(saved),
                Some(
                    gone @ (FileFault::Deleted
                    | FileFault::Moved
                    | FileFault::CompanionDeleted
                    | FileFault::CompanionReplaced),
                ),
                Some(file),
            ) => Err(leave_marker(file.configured(), saved, gone, reason).await),
            (result, ..) => result,
        };
        (result, rescue)
    }

    async fn replace_inner(
        &self,
        old: &Arc<Generation<Sqlite>>,
        fault: &Fault,
    ) -> (
        Result<Generation<Sqlite>, GiveUpReason>,
        Option<PathBuf>,
        Option<FileFault>,
    ) {
        // Read while the sentinel is free: a seal that goes on in the
        // background keeps it until the last straggler has committed.
        let schema = old.schema_now().await;
        let mut file_fault = match fault {
            Fault::File(file) => Some(*file),
            Fault::Error { .. } | Fault::NotWritable { .. } => match old.file.clone() {
                Some(file) => blocking::run(FS_BOUND, move || file.check().err())
                    .await
                    .unwrap_or(None),
                None => None,
            },
        };
        // The old pool is dead: stop it from acknowledging more writes into a
        // file nobody will read again. `close` refuses new acquires at once.
        let draining = old.pool.close();
        let mut rescue = None;
        if file_fault.is_some() && self.config().rescue.enabled {
            // Let writes already in flight finish first, so the rescue's
            // snapshot holds every write the old pool acknowledged.
            if tokio::time::timeout(self.config().drain_timeout, draining)
                .await
                .is_err()
            {
                tracing::warn!(
                    generation = old.number,
                    "connections still checked out after {:?}; the generation is sealed before it is let go",
                    self.config().drain_timeout
                );
            }
            rescue = self.rescue_and_seal(old, fault, file_fault).await;
            // What is true now: a -wal seen gone first may have been the
            // start of an `rm -rf` of the whole directory.
            if let Some(file) = old.file.clone()
                && let Ok(Err(now)) = blocking::run(FS_BOUND, move || file.check()).await
                && !now.is_companion()
            {
                file_fault = Some(now);
            }
        } else {
            drop(draining);
        }

        match file_fault {
            Some(companion) if companion.is_companion() => {
                return (
                    Err(GiveUpReason::ReopenFailed(format!(
                        "the {} file the pool had open is gone from its path: \
                         restart the process so that one connection set reattaches the database",
                        if companion == FileFault::CompanionDeleted {
                            "-wal or -shm"
                        } else {
                            "replaced -wal or -shm"
                        }
                    ))),
                    rescue,
                    file_fault,
                );
            }
            // The file at the path is not the one the companions belong to
            // (or there is none): a restore, or a restart's new file, must
            // never be opened with them.
            Some(FileFault::Replaced | FileFault::Deleted | FileFault::Moved) => {
                if let Some(file) = old.file.clone()
                    && let Err(why) = set_stale_companions_aside(file).await
                {
                    // Opening the file at the path now would replay them.
                    return (Err(GiveUpReason::ReopenFailed(why)), rescue, file_fault);
                }
            }
            _ => {}
        }
        if self.is_closed() {
            // Closed meanwhile: rescued and sealed is all that is owed.
            return (
                Err(GiveUpReason::ReopenFailed("the LivePool was closed".into())),
                rescue,
                file_fault,
            );
        }
        if let Some(reason) = self.budget_exceeded(old, true) {
            return (Err(reason), rescue, file_fault);
        }
        (self.reopen(old, &schema).await, rescue, file_fault)
    }

    /// Rescues what the dead handle sees, retrying until a rescue is saved,
    /// then seals the generation: the sentinel takes the write lock once no
    /// write has been committed since the last rescue, so every write ever
    /// acknowledged on this file is in a rescue. When a write transaction
    /// stays open past the drain timeout, the sealing goes on in the
    /// background and rescues again after that transaction commits.
    async fn rescue_and_seal(
        &self,
        old: &Arc<Generation<Sqlite>>,
        fault: &Fault,
        file_fault: Option<FileFault>,
    ) -> Option<PathBuf> {
        let file = old.file.as_ref()?;
        let db_mode = {
            let file = file.clone();
            blocking::run(FS_BOUND, move || file.open_mode())
                .await
                .ok()
                .flatten()
        };
        let mut sentinel = old.sentinel.lock().await;
        let conn = sentinel.as_mut()?;
        // The sentinel waits on locks itself, in short steps.
        let _ = sqlx::query("PRAGMA busy_timeout = 50")
            .execute(&mut *conn)
            .await;
        let rescue = self.config().rescue.clone();
        let ctx = SealContext {
            file,
            config: &rescue,
            generation: old.number,
            fault,
            file_fault,
            db_mode,
        };
        let before = data_version(conn).await;
        let mut latest = rescue_with_retries(conn, &ctx, Some(self)).await;
        let deadline = crate::shared::deadline_after(self.config().drain_timeout);
        let Err(before) = seal_loop(conn, &ctx, before, Some(deadline), &mut latest).await else {
            return Some(latest);
        };
        drop(sentinel);
        tracing::warn!(
            generation = old.number,
            "a write transaction is still open on the dead database; sealing it in the background"
        );
        let (old, fault) = (Arc::clone(old), fault.clone());
        let task = tokio::spawn(async move {
            let mut sentinel = old.sentinel.lock().await;
            let (Some(conn), Some(file)) = (sentinel.as_mut(), old.file.as_ref()) else {
                return;
            };
            let ctx = SealContext {
                file,
                config: &rescue,
                generation: old.number,
                fault: &fault,
                file_fault,
                db_mode,
            };
            let mut newest = PathBuf::new();
            let _ = seal_loop(conn, &ctx, before, None, &mut newest).await;
        });
        self.retire(task);
        Some(latest)
    }

    /// Reattaches the database that was open: never creates one (unless
    /// allowed), and verifies that the new pool opened the same path and
    /// the same application's schema.
    async fn reopen(
        &self,
        old: &Generation<Sqlite>,
        schema: &Schema,
    ) -> Result<Generation<Sqlite>, GiveUpReason> {
        let configured = old.file.as_ref().map(|f| f.configured().to_path_buf());
        let attempt = async {
            let expected = match &configured {
                Some(path) => Some(self.expected_file(path).await?),
                None => None,
            };
            if let Some(file) = &old.file {
                super::identity::retire(file);
            }
            // What was open before the new pool: its own descriptors are the others.
            let before = open_files(self.config().reopen_timeout).await;
            let reopen = Arc::clone(&self.state().reopen);
            // The user's reopen runs on a task of its own: a panic in it is a
            // failed reopen, not a heal in flight for ever.
            let pool = tokio::spawn(async move { reopen().await })
                .await
                .map_err(|join| GiveUpReason::ReopenFailed(panic_text(join)))?
                .map_err(|err| GiveUpReason::ReopenFailed(err.to_string()))?;
            let new = super::generation::open(
                pool,
                old.number + 1,
                configured.clone(),
                before,
                Some(Instant::now()),
                self.config().reopen_timeout,
            )
            .await
            .map_err(|err| GiveUpReason::VerifyFailed(err.to_string()))?;
            if let (Some(expected), Some(file)) = (&expected, &new.file)
                && file.path() != expected
            {
                let why = format!(
                    "the reopened pool opened {} instead of {}",
                    file.path().display(),
                    expected.display()
                );
                discard(new);
                return Err(GiveUpReason::VerifyFailed(why));
            }
            if let Err(why) = new.schema.reattaches(schema) {
                discard(new);
                return Err(GiveUpReason::VerifyFailed(format!(
                    "the reopened database is not the one that was open ({why})"
                )));
            }
            Ok(new)
        };
        tokio::time::timeout(self.config().reopen_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(GiveUpReason::ReopenFailed(format!(
                    "no verified pool within {:?}",
                    self.config().reopen_timeout
                )))
            })
    }

    /// The file a reopen must land on: what the configured path leads to
    /// now. A missing file is an error unless reopens may create it.
    async fn expected_file(&self, configured: &std::path::Path) -> Result<PathBuf, GiveUpReason> {
        let path = configured.to_path_buf();
        let creates = self.config().reopen_creates;
        let found = blocking::run(FS_BOUND, move || match std::fs::canonicalize(&path) {
            Ok(resolved) => Ok(resolved),
            Err(err) if creates && err.kind() == std::io::ErrorKind::NotFound => {
                // To be created by the reopen: where it will be, if its
                // directory exists (if not, the reopen fails on its own).
                Ok(
                    match (path.parent().map(std::fs::canonicalize), path.file_name()) {
                        (Some(Ok(dir)), Some(name)) => dir.join(name),
                        _ => path,
                    },
                )
            }
            Err(err) => Err(err),
        })
        .await
        .map_err(|stuck| GiveUpReason::ReopenFailed(stuck.to_string()))?;
        found.map_err(|err| {
            GiveUpReason::ReopenFailed(format!(
                "no database file at {} ({err}): a reopen reattaches the database that was open and never creates one",
                configured.display()
            ))
        })
    }

    /// `Pool::close` waits for checked-out connections, so it never runs on
    /// a request path. The sentinel goes last: it keeps the dead file
    /// reachable, and sealed, until every straggler is back.
    pub(crate) fn close_in_background(&self, old: Arc<Generation<Sqlite>>) {
        let limit = self.config().close_timeout;
        let task = tokio::spawn(async move {
            let close = old.pool.close();
            tokio::pin!(close);
            if tokio::time::timeout(limit, &mut close).await.is_err() {
                tracing::warn!(
                    generation = old.number,
                    "replaced pool still has connections checked out after {limit:?}; waiting for them"
                );
                close.await;
            }
            if let Some(conn) = old.sentinel.lock().await.take() {
                let _ = tokio::time::timeout(limit, conn.close()).await;
            }
        });
        // Not waited for by `close`: the file is sealed already, and a
        // straggler may hold its connection for as long as it likes.
        drop(task);
    }
}

/// A restored file (or the one a restarted process creates) must never be
/// opened with the write-ahead log of the file it replaced: SQLite would
/// replay the old frames into it. Sets the old file's `-wal`/`-shm` aside;
/// the error says what the operator must do when that fails.
async fn set_stale_companions_aside(file: DbFile) -> Result<(), String> {
    let path = file.path().display().to_string();
    let failed = |err: &dyn std::fmt::Display| {
        tracing::error!(error = %err, "could not set the old database's -wal/-shm aside");
        format!(
            "the old database's -wal/-shm could not be set aside ({err}): \
             move {path}-wal and {path}-shm away before the database is opened again"
        )
    };
    match blocking::run(FS_BOUND, move || file.move_aside_stale_companions()).await {
        Ok(Ok(moved)) => {
            for aside in moved {
                tracing::warn!(moved_to = %aside.display(), "the old database's -wal/-shm were set aside, so the file at the path is opened without them");
            }
            Ok(())
        }
        Ok(Err(err)) => Err(failed(&err)),
        Err(stuck) => Err(failed(&stuck)),
    }
}

/// After a give-up that rescued a database no longer at its path: leaves
/// the marker that makes the next start refuse to open an empty database
/// there, and says so in the reason.
/// Writes the restore marker for the database at `configured` next to
/// `rescue`, unless a file is at the path again (a restore already: nothing
/// to refuse). `None`: not needed.
async fn write_marker(
    configured: &std::path::Path,
    rescue: &std::path::Path,
    gone: FileFault,
) -> Result<std::io::Result<Option<PathBuf>>, blocking::Stuck> {
    let (db, saved) = (configured.to_path_buf(), rescue.to_path_buf());
    blocking::run(FS_BOUND, move || {
        // Followed: a dangling symlink at the path is no database, and a
        // restart would create an empty one at its target.
        // A lost -wal leaves the main file short of the rows only the log
        // held: a restart on it must wait for the rescue too.
        if !gone.is_companion() && std::fs::metadata(&db).is_ok() {
            return Ok(None);
        }
        super::marker::write(&db, &saved, gone).map(Some)
    })
    .await
}

async fn leave_marker(
    configured: &std::path::Path,
    rescue: &std::path::Path,
    gone: FileFault,
    reason: GiveUpReason,
) -> GiveUpReason {
    let written = write_marker(configured, rescue, gone).await;
    let db = configured.display();
    let rescue = rescue.display();
    let how = match written {
        Ok(Ok(Some(marker))) => {
            let how = format!(
                "its data is saved in {rescue}; the next start refuses to open {db} until it is restored \
                 (mv '{rescue}' '{db}', or LivePool::restore_rescue) or {} is removed to start empty",
                marker.display()
            );
            tracing::error!(database = %db, rescue = %rescue, marker = %marker.display(), "{how}");
            how
        }
        Ok(Ok(None)) => return reason,
        Ok(Err(err)) => {
            tracing::error!(database = %db, rescue = %rescue, error = %err, "the restore marker could not be written");
            format!(
                "its data is saved in {rescue}; restore it (mv '{rescue}' '{db}') before the next start, \
                 which would otherwise open an empty database"
            )
        }
        Err(stuck) => {
            tracing::error!(database = %db, rescue = %rescue, error = %stuck, "the restore marker could not be written");
            format!(
                "its data is saved in {rescue}; restore it (mv '{rescue}' '{db}') before the next start"
            )
        }
    };
    match reason {
        GiveUpReason::ReopenFailed(why) => GiveUpReason::ReopenFailed(format!("{why}; {how}")),
        GiveUpReason::VerifyFailed(why) => GiveUpReason::VerifyFailed(format!("{why}; {how}")),
        other => other,
    }
}

/// After a rescue taken once more (a write committed on the dead file after
/// the last one): a restore marker left for this database names it now.
async fn refresh_marker(ctx: &SealContext<'_>, saved: &std::path::Path) {
    let Some(gone @ (FileFault::Deleted | FileFault::Moved)) = ctx.file_fault else {
        return;
    };
    let (db, saved, dir) = (
        ctx.file.configured().to_path_buf(),
        saved.to_path_buf(),
        ctx.config.dir.clone(),
    );
    let refreshed = blocking::run(FS_BOUND, move || -> std::io::Result<Option<PathBuf>> {
        let Some(old) = super::marker::find(&db, dir.as_deref())? else {
            return Ok(None);
        };
        let marker = super::marker::write(&db, &saved, gone)?;
        if old.marker != marker {
            old.retire()?;
        }
        Ok(Some(marker))
    })
    .await;
    match refreshed {
        Ok(Ok(Some(marker))) => {
            tracing::error!(marker = %marker.display(), "the restore marker names the newest rescue now")
        }
        Ok(Ok(None)) => {}
        Ok(Err(err)) => {
            tracing::error!(error = %err, "the restore marker could not be updated to the newest rescue")
        }
        Err(stuck) => {
            tracing::error!(error = %stuck, "the restore marker could not be updated to the newest rescue")
        }
    }
}

/// The retention the user opted into (`LivePoolBuilder::keep_rescues`).
async fn prune_rescues(saved: &std::path::Path, db: &std::path::Path, keep: usize) {
    let (saved, db) = (saved.to_path_buf(), db.to_path_buf());
    match blocking::run(FS_BOUND, move || rescue::prune(&saved, &db, keep)).await {
        Ok(Ok(removed)) => {
            for path in removed {
                tracing::warn!(removed = %path.display(), keep, "an older rescue was removed, as keep_rescues asks");
            }
        }
        Ok(Err(err)) => tracing::warn!(error = %err, "older rescues could not be pruned"),
        Err(stuck) => tracing::warn!(error = %stuck, "older rescues could not be pruned"),
    }
}

/// What a rescue and a seal work on.
struct SealContext<'a> {
    file: &'a DbFile,
    config: &'a RescueConfig,
    generation: u64,
    fault: &'a Fault,
    /// What happened to the file (where the rescue may go depends on it).
    file_fault: Option<FileFault>,
    /// The database's own permission bits (a rescue is never less private).
    db_mode: Option<u32>,
}

/// Rescues with back-off until a rescue is saved: the dead handle may hold
/// the only copy of acknowledged writes, so it is never let go unsaved.
/// Each failure is published, so `/health` answers `fail` meanwhile.
async fn rescue_with_retries(
    conn: &mut SqliteConnection,
    ctx: &SealContext<'_>,
    policy: Option<&dyn Policy<Sqlite>>,
) -> PathBuf {
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    // A copy only in the temporary directory, and the data version it
    // holds: taken again only when a write changed the data since.
    let mut temporary: Option<(PathBuf, Option<i64>)> = None;
    // The restore marker next to that copy, while it is the only one.
    let mut temporary_marker: Option<PathBuf> = None;
    loop {
        // Read before the attempt: a commit after it makes the next one
        // copy again.
        let version = data_version(conn).await;
        let copy_to_temporary = temporary.as_ref().is_none_or(|(_, held)| *held != version);
        match rescue::rescue(
            conn,
            ctx.file.path(),
            ctx.config,
            ctx.file_fault,
            ctx.db_mode,
            copy_to_temporary,
            Some(ctx.file.device()),
        )
        .await
        {
            Ok(path) => {
                if let (Some(stale), Some(gone)) = (temporary_marker.take(), ctx.file_fault) {
                    // The durable marker first, so that a restart finds one
                    // at every moment; then the temporary one is set aside
                    // (a restore of the durable rescue would otherwise meet
                    // it at the next start).
                    let written = write_marker(ctx.file.configured(), &path, gone).await;
                    if matches!(written, Ok(Ok(_))) {
                        let retired = blocking::run(FS_BOUND, move || {
                            super::marker::set_aside(&stale, "superseded")
                        })
                        .await;
                        if !matches!(retired, Ok(Ok(()))) {
                            tracing::warn!(marker = ?retired, "the marker of the temporary copy could not be set aside");
                        }
                    }
                }
                crate::metrics::rescue_saved(&path).await;
                if let Some(keep) = ctx.config.keep {
                    prune_rescues(&path, ctx.file.path(), keep).await;
                }
                tracing::error!(rescue = %path.display(), database = %ctx.file.path().display(), attempts = attempts + 1, "rescued the dead handle's data with VACUUM INTO");
                if let Some((copy, _)) = &temporary {
                    tracing::warn!(rescue = %path.display(), temporary_copy = %copy.display(), "the copy in the temporary directory is superseded by this rescue; it is kept until you remove it");
                }
                if attempts > 0
                    && let Some(policy) = policy
                {
                    policy.publish(PoolStatus::Healing {
                        generation: ctx.generation,
                        fault: ctx.fault.clone(),
                    });
                }
                return path;
            }
            Err(err) => {
                crate::metrics::rescue_failed();
                attempts += 1;
                if let Some(copy) = err.temporary.clone() {
                    tracing::error!(
                        database = %ctx.file.path().display(), temporary_copy = %copy.display(), attempts,
                        "no durable place for the rescue: a copy is saved only in the temporary directory, which a restart \
                         (a new container, a tmpfs /tmp, PrivateTmp) may lose. The dead handle is kept and a durable place retried. \
                         Copy the file somewhere safe now; let the rescue complete by making the database's directory or its parent \
                         belong to this user (or root) and not writable by others, and set LivePoolBuilder::rescue_dir to a \
                         persistent directory of this user for the next start"
                    );
                    // A restart must not start empty: the marker names the
                    // copy (it refuses for as long as the temporary
                    // directory keeps it), until a durable rescue supersedes it.
                    if let Some(gone) = ctx.file_fault {
                        match write_marker(ctx.file.configured(), &copy, gone).await {
                            Ok(Ok(Some(marker))) => temporary_marker = Some(marker),
                            Ok(Ok(None)) => {}
                            failed => {
                                tracing::error!(temporary_copy = %copy.display(), error = ?failed, "the restore marker for the temporary copy could not be written")
                            }
                        }
                    }
                    temporary = Some((copy, version));
                }
                tracing::error!(database = %ctx.file.path().display(), attempts, code = err.code, error = %err, retry_in = ?backoff, "rescue of the dead handle's data failed; the handle is kept open and the rescue retried");
                if let Some(policy) = policy {
                    policy.publish(PoolStatus::RescueFailing {
                        generation: ctx.generation,
                        fault: ctx.fault.clone(),
                        attempts,
                        code: err.code,
                        temporary_copy: temporary.as_ref().map(|(copy, _)| copy.clone()),
                    });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESCUE_BACKOFF_MAX);
            }
        }
    }
}

/// Seals the dead generation. `before` is the `data_version` the last rescue
/// covers; a commit that slipped in after it is rescued again. Waits for an
/// open write transaction until `deadline` (`None`: as long as it stays
/// open), and hands back the version the last rescue covers if it is not
/// sealed by then.
async fn seal_loop(
    conn: &mut SqliteConnection,
    ctx: &SealContext<'_>,
    mut before: Option<i64>,
    deadline: Option<Instant>,
    latest: &mut PathBuf,
) -> Result<(), Option<i64>> {
    loop {
        match seal(conn, before).await {
            Seal::Sealed => return Ok(()),
            Seal::Changed => {
                before = data_version(conn).await;
                let saved = rescue_with_retries(conn, ctx, None).await;
                tracing::error!(rescue = %saved.display(), generation = ctx.generation, "rescued again: a write was committed on the dead database after the last rescue");
                // A restore marker left by a give-up names the newest rescue.
                refresh_marker(ctx, &saved).await;
                *latest = saved;
            }
            Seal::Busy if deadline.is_some_and(|d| Instant::now() >= d) => return Err(before),
            Seal::Busy => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `PRAGMA data_version`: changes when another connection commits.
async fn data_version(conn: &mut SqliteConnection) -> Option<i64> {
    let read = sqlx::query_scalar("PRAGMA data_version").fetch_one(&mut *conn);
    tokio::time::timeout(FS_BOUND, read).await.ok()?.ok()
}

/// Takes the write lock on the sentinel and keeps it if nothing was
/// committed since `before` was read.
async fn seal(conn: &mut SqliteConnection, before: Option<i64>) -> Seal {
    // Bounded: on a hung mount the lock attempt itself may not return.
    let begin = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn);
    let Ok(begun) = tokio::time::timeout(FS_BOUND, begin).await else {
        return Seal::Busy;
    };
    match begun {
        Ok(_) => {}
        Err(err) if class::read::<Sqlite>(&err).0 == ErrorClass::Transient => return Seal::Busy,
        // Writes fail on this handle anyway (1032 after a move in DELETE mode).
        Err(_) => return Seal::Sealed,
    }
    // Unreadable versions (`None`) compare equal: there is nothing better to
    // go on, and an endless loop of rescues would be worse.
    let after = data_version(conn).await;
    if after == before {
        // Holding the write lock until the sentinel closes: no write can be
        // acknowledged on the dead file any more.
        return Seal::Sealed;
    }
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    Seal::Changed
}

/// Reads the main database: page 1, then SQLite's `quick_check` of the main
/// schema only (never an attached one), on a connection of its own opened
/// for this: a pool connection may answer from pages it cached before the
/// damage (an in-place change that leaves the header's change counter as it
/// was). Read-only, and never creating a file. `Some` names a problem the
/// check found without an error.
async fn read_main(pool: &sqlx::SqlitePool) -> Result<Option<String>, sqlx::Error> {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .read_only(true)
        .create_if_missing(false);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let checked = async {
        super::generation::read_page(&mut conn).await?;
        sqlx::query_scalar::<_, String>("PRAGMA main.quick_check(1)")
            .fetch_all(&mut conn)
            .await
    }
    .await;
    let _ = conn.close().await;
    let rows = checked?;
    Ok(match rows.first().map(String::as_str) {
        Some("ok") => None,
        Some(problem) => Some(problem.to_owned()),
        None => Some("quick_check returned nothing".to_owned()),
    })
}

/// Closes a pool that failed verification, with its sentinel.
pub(crate) fn discard(generation: Generation<Sqlite>) {
    tokio::spawn(async move {
        generation.pool.close().await;
        if let Some(conn) = generation.extra.sentinel.into_inner() {
            let _ = conn.close().await;
        }
    });
}

/// Whether the process is out of (or nearly out of) file descriptors, where
/// `/proc` tells (Linux). Reading `/proc` needs a descriptor itself, so
/// EMFILE from that read is the answer too.
fn out_of_descriptors() -> bool {
    const EMFILE: i32 = 24;
    let emfile = |err: &std::io::Error| err.raw_os_error() == Some(EMFILE);
    let open = match std::fs::read_dir("/proc/self/fd") {
        Ok(fds) => fds.count() as u64,
        Err(err) => return emfile(&err),
    };
    let limits = match std::fs::read_to_string("/proc/self/limits") {
        Ok(limits) => limits,
        Err(err) => return emfile(&err),
    };
    let limit = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            l.trim_start_matches("Max open files")
                .split_whitespace()
                .next()
        })
        .and_then(|n| n.parse::<u64>().ok());
    limit.is_some_and(|limit| open + 16 >= limit)
}
