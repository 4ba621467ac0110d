//! The SQLite-only part of [`LivePool`]'s API: restoring a rescue after a
//! give-up, and checking the file on demand. The work is the backend's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Sqlite;

use super::LivePool;
use crate::backend::sqlite;
use crate::shared::{Fault, Outcome};

impl LivePool<Sqlite> {
    /// Refuses, with an error that names the rescue and how to restore it,
    /// when the database at `db_path` was lost under a process that then
    /// gave up and nobody has restored its rescue yet (or removed the
    /// marker to start empty on purpose). [`open`](crate::LivePoolBuilder::open)
    /// runs this check itself; call it before you open a pool of your own
    /// with `create_if_missing(true)` (for
    /// [`builder_with_pool`](LivePool::builder_with_pool)), so that pool
    /// does not create an empty database at the path first.
    ///
    /// `rescue_dir` is the builder's [`rescue_dir`](crate::LivePoolBuilder::rescue_dir),
    /// if you set one. A filesystem that does not answer within
    /// `bound` is an error (a hung mount).
    pub async fn check_pending_rescue(
        db_path: impl AsRef<Path>,
        rescue_dir: Option<&Path>,
        bound: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlite::check_pending_rescue(db_path.as_ref(), rescue_dir, bound).await
    }

    /// Restores the rescue a give-up left for the database at `db_path`:
    /// verifies it (a complete SQLite file whose `quick_check` is ok), sets
    /// whatever is at the path and its `-wal`/`-shm`/`-journal` aside
    /// (renamed `...replaced-<stamp>` / `...stale-<stamp>`, never
    /// deleted), copies the rescue next to the path and renames it into
    /// place (the rescue file stays where it is, as evidence) and retires the
    /// marker. Run it while no process has the database open. Returns the
    /// rescue that was restored.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// use tower_db_liveness::LivePool;
    /// let restored = LivePool::restore_rescue("/var/lib/app/app.db", None).await?;
    /// println!("restored {}", restored.display());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restore_rescue(
        db_path: impl AsRef<Path>,
        rescue_dir: Option<&Path>,
    ) -> Result<PathBuf, sqlx::Error> {
        sqlite::restore_rescue(db_path.as_ref(), rescue_dir).await
    }

    /// Compares the database file the pool opened with what its path leads
    /// to now, and reports a deleted, moved or replaced file to the policy
    /// (the watchdog runs this periodically).
    ///
    /// Returns `None` when the file is in place (or the database has no file).
    /// The check runs off the runtime; a check that does not answer within
    /// 2 s (a hung mount) is not a finding and returns `None`.
    pub async fn check_file(&self) -> Option<Outcome> {
        let current = self.current();
        let fault = sqlite::file_fault(&current).await?;
        Some(self.report_fault(current.number, Fault::File(fault)).await)
    }
}
