//! The SQLite-only part of [`LivePool`]'s API: the constructors, the
//! builder's SQLite settings and `open`, restoring a rescue after a
//! give-up, and checking the file on demand. The work is the backend's.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Sqlite, SqlitePool};

use super::builder::Source;
use super::{LivePool, LivePoolBuilder};
use crate::backend::sqlite::{self, SqliteState, configured_path, open_files};
use crate::shared::{Config, Fault, Outcome, ReopenFn};

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
        let current = self.inner.current();
        let fault = sqlite::file_fault(&current).await?;
        Some(self.inner.fatal(current.number, Fault::File(fault)).await)
    }
}

impl LivePoolBuilder<Sqlite> {
    /// Let a reopen create the database file when none is at the path.
    /// Default: off.
    ///
    /// Off, a reopen only reattaches the database that was open: a file
    /// deleted or moved under the process makes the policy rescue and exit
    /// instead of healing onto a new, empty database that would answer
    /// every request with "no such table" behind a green `/health`. Turn it
    /// on only if your reopen (see [`LivePool::builder_with_pool`]) builds
    /// the whole schema: the reopened database must still have every table,
    /// the `user_version` and the `application_id` of the one it replaces,
    /// or the policy gives up.
    pub fn reopen_creates(mut self, on: bool) -> Self {
        self.config.reopen_creates = on;
        self
    }

    /// Before a rescue, how long writes already in flight on the dead pool
    /// may take to finish (the pool refuses new ones at once), and how long
    /// the heal waits to seal the dead generation before it goes on and
    /// seals it in the background. Default: 1 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// How often the watchdog compares the database file's identity with the
    /// path; `None` turns the watchdog off. Default: every second.
    pub fn watchdog_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.watchdog_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Also watch the database's directory for unlinks and renames, so the
    /// watchdog reacts at once instead of at its next poll. Default: on.
    #[cfg(feature = "fs-watch")]
    pub fn fs_watch(mut self, on: bool) -> Self {
        self.config.fs_watch = on;
        self
    }

    /// Whether to rescue the old handle's data with `VACUUM INTO` when the
    /// database file was deleted, moved or replaced. Default: on.
    pub fn rescue(mut self, on: bool) -> Self {
        self.config.rescue.enabled = on;
        self
    }

    /// The directory tried first for rescue files. Default: none.
    ///
    /// Rescues go into the crate's private directory (mode 0700;
    /// `<file>.rescues/` in the database's own directory,
    /// `<file>.<hash of the path>.rescues/` anywhere else, so databases of
    /// one name never mix; `<that name>.<random>` when another user took the
    /// name) made under the first place that qualifies: this one;
    /// then, for a deleted or moved file, the nearest existing directory
    /// above the database's directory before the database's directory
    /// itself (an `rm -rf` of it completes); for other faults the
    /// database's directory first. A place qualifies only when nobody but
    /// root and the service's user can change any directory on the way
    /// (sticky ones such as `/tmp` excepted). When none can be trusted or
    /// written, the system's temporary directory is the last resort, and a
    /// copy there does not count as saved (a restart may lose it) unless
    /// the database lives there too: the dead handle is kept
    /// ([`PoolStatus::RescueFailing`](crate::PoolStatus) with its
    /// `temporary_copy`, readiness `fail`) and a durable place retried. This
    /// directory counts as durable wherever it is, the temporary directory
    /// included: set it on a persistent volume where the data directory is
    /// group-writable (a Kubernetes `fsGroup` volume).
    pub fn rescue_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.rescue.dir = Some(dir.into());
        self
    }

    /// How long the filesystem calls of [`open`](Self::open) may take (the
    /// file identity, the check for a rescue waiting to be restored):
    /// `open` waits on a slow mount and fails, saying so, only when the
    /// mount does not answer within this. Default: 60 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.config.startup_timeout = timeout;
        self
    }

    /// Opt in to a retention of rescue files: after each rescue is saved,
    /// only the newest `keep` rescues of this database stay in its rescue
    /// directory (at least 1, whatever `keep` says; a rescue a restore
    /// marker names is never removed). Default: off, every rescue is kept
    /// until you delete it.
    pub fn keep_rescues(mut self, keep: usize) -> Self {
        self.config.rescue.keep = Some(keep.max(1));
        self
    }

    /// How long a rescue may take. Default: 30 s.
    pub fn rescue_timeout(mut self, timeout: Duration) -> Self {
        self.config.rescue.timeout = timeout;
        self
    }

    /// Runs `migrator` on the first pool before it is verified, and on
    /// every reopened pool before it is verified: the one-liner for an
    /// application that runs `sqlx::migrate!()` at start-up (feature
    /// `migrate`).
    ///
    /// ```no_run
    /// use sqlx::migrate::Migrator;
    /// use sqlx::sqlite::SqliteConnectOptions;
    /// use tower_db_liveness::LivePool;
    ///
    /// static MIGRATOR: Migrator = sqlx::migrate!("examples/adopt/migrations");
    ///
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let options = SqliteConnectOptions::new().filename("app.db").create_if_missing(true);
    /// let live = LivePool::builder(options).migrations(&MIGRATOR).open().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A migration error is a `sqlx::Error::Migrate`: from `open`, or, on a
    /// reopen, a failed reopen (the policy gives up). A reopened database
    /// without the migrator's table (an empty file, another application's
    /// database) is refused before it is migrated. After the migrations it
    /// is still verified against the one it replaces (every table, the
    /// `user_version` and `application_id`): migrations that add tables or
    /// columns pass, a migration that drops a table makes the policy give up.
    #[cfg(feature = "migrate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "migrate")))]
    pub fn migrations(mut self, migrator: &'static sqlx::migrate::Migrator) -> Self {
        self.migrator = Some(migrator);
        self
    }

    /// Opens (or adopts) the pool, verifies it and starts the watchdog.
    ///
    /// Must be called within a Tokio runtime. Fails with
    /// [`sqlx::Error::Configuration`] for `locking_mode(Exclusive)`.
    ///
    /// Refuses to open a path whose database was lost under a process that
    /// gave up, until its rescue is restored (see
    /// [`LivePool::check_pending_rescue`]), whatever `create_if_missing`
    /// says.
    pub async fn open(self) -> Result<LivePool, sqlx::Error> {
        let creates = self.config.reopen_creates;
        let bound = self.config.startup_timeout;
        let rescue_dir = self.config.rescue.dir.clone();
        let (pool, configured, reopen, before) = match self.source {
            Source::Options { connect, pool } => {
                let configured = configured_path(&connect);
                // Every connection, the first pool's included, opens the
                // absolute path: a later chdir must not move the database.
                let mut connect = *connect;
                if let Some(path) = &configured {
                    // Before anything can create a file at the path.
                    LivePool::check_pending_rescue(path, rescue_dir.as_deref(), bound).await?;
                    connect = connect.filename(path);
                }
                // What was open before the pool: its own descriptors are the others.
                let before = open_files(bound).await;
                let first = pool.as_ref().clone().connect_with(connect.clone()).await?;
                if configured.is_some() {
                    // The file exists now. A connection the pool opens later
                    // (all busy, one recycled) must never create an empty
                    // file at the path after the database was deleted: it
                    // fails instead (CANTOPEN), which the policy checks.
                    first.set_connect_options(connect.clone().create_if_missing(false));
                }
                // A reopen reattaches the file that was opened and, unless
                // allowed, never creates it.
                let reopen_options = connect.create_if_missing(creates);
                let reopen: ReopenFn<Sqlite> = Arc::new(move || {
                    let (pool, connect) = (pool.as_ref().clone(), reopen_options.clone());
                    Box::pin(async move { pool.connect_with(connect).await })
                });
                (first, configured, reopen, before)
            }
            Source::Pool { pool, reopen } => {
                let options = pool.connect_options();
                if options.get_filename().is_relative() && configured_path(&options).is_some() {
                    tracing::warn!(
                        path = %options.get_filename().display(),
                        "the pool's database path is relative: after a chdir, its new \
                         connections open another file; give SqliteConnectOptions an absolute path"
                    );
                }
                let configured = configured_path(&options);
                if let Some(path) = &configured {
                    LivePool::check_pending_rescue(path, rescue_dir.as_deref(), bound).await?;
                    // As above: the pool's later connections open the
                    // absolute path and never create an empty file at it.
                    let options = (*options).clone().filename(path).create_if_missing(false);
                    pool.set_connect_options(options);
                }
                // Opened before it was handed over: every descriptor on
                // another file than the one at the path is a finding.
                (pool, configured, reopen, Default::default())
            }
        };
        #[cfg(feature = "migrate")]
        let reopen = match self.migrator {
            Some(migrator) => {
                migrator.run(&pool).await?;
                with_migrations(reopen, migrator)
            }
            None => reopen,
        };
        if let Some(path) = &configured {
            sqlite::report_leftovers(path, rescue_dir.as_deref(), bound).await;
        }
        let first = sqlite::open(pool, 0, configured, before, None, bound).await?;
        Ok(LivePool::start(
            first,
            SqliteState::new(reopen),
            self.config,
            Some(sqlite::spawn_watchdog),
        ))
    }
}

/// `reopen`, then `migrator` on the new pool (closed again if they fail),
/// only if the new pool's database has the migrator's table.
#[cfg(feature = "migrate")]
fn with_migrations(
    reopen: ReopenFn<Sqlite>,
    migrator: &'static sqlx::migrate::Migrator,
) -> ReopenFn<Sqlite> {
    Arc::new(move || {
        let opened = reopen();
        Box::pin(async move {
            let pool = opened.await?;
            // Only this application's database is migrated: the first pool
            // ran the migrator, so the file that was open has its table. A
            // file without it (an empty file, another application's database)
            // is refused before anything is written to it.
            let table = migrator.table_name.as_ref();
            let has_table: bool = sqlx::query_scalar(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?",
            )
            .bind(table)
            .fetch_one(&pool)
            .await?;
            if !has_table {
                pool.close().await;
                return Err(sqlx::Error::Configuration(
                    format!(
                        "the reopened database has no {table} table: it is not this \
                         application's database, so it is neither migrated nor served"
                    )
                    .into(),
                ));
            }
            if let Err(err) = migrator.run(&pool).await {
                pool.close().await;
                return Err(err.into());
            }
            Ok(pool)
        })
    })
}

impl LivePool<Sqlite> {
    /// A `LivePool` around `pool` that never heals, watches or exits: for
    /// tests (`#[sqlx::test]`) and synchronous router builders.
    ///
    /// Needs no runtime and runs no query. It skips everything
    /// [`open`](LivePoolBuilder::open) does: no verification read, no
    /// `locking_mode` check, no file identity recorded, no rescue
    /// connection, no watchdog. The policy logs a fatal error and answers
    /// [`Outcome::Ignored`](crate::Outcome::Ignored)`(ErrorClass::Fatal)`:
    /// no rescue, no reopen, no exit, the generation stays 0. The layer
    /// still finds and reports errors, and [`HealthService`](crate::HealthService)
    /// still reads the database (a failed read is `fail`).
    ///
    /// `#[sqlx::test]` deletes each test's database when the test returns,
    /// while the server it spawned may still be running; with this
    /// constructor nothing notices, rescues or exits.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), sqlx::Error> {
    /// # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// use tower_db_liveness::LivePool;
    ///
    /// let live = LivePool::fixed(pool); // a test's pool, say
    /// assert_eq!(live.generation(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn fixed(pool: SqlitePool) -> Self {
        let config = Config {
            fixed: true,
            watchdog_interval: None,
            ..Config::default()
        };
        // Never called: the policy does not heal a fixed pool.
        let reopen: ReopenFn<Sqlite> = Arc::new(|| {
            Box::pin(async {
                Err(sqlx::Error::Configuration(
                    "a fixed LivePool never reopens".into(),
                ))
            })
        });
        LivePool::start(
            sqlite::unverified(pool),
            SqliteState::new(reopen),
            config,
            None,
        )
    }

    /// Starts building a `LivePool` that connects with `options` and reopens
    /// with the same options.
    pub fn builder(options: SqliteConnectOptions) -> LivePoolBuilder {
        LivePoolBuilder::from_options(options, ())
    }

    /// Starts building a `LivePool` around a pool you opened, with your own
    /// reopen (to run migrations on the new file, for example).
    ///
    /// ```no_run
    /// use sqlx::SqlitePool;
    /// use sqlx::sqlite::SqliteConnectOptions;
    /// use tower_db_liveness::LivePool;
    ///
    /// async fn open(options: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    ///     let pool = SqlitePool::connect_with(options).await?;
    ///     sqlx::query("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
    ///         .execute(&pool)
    ///         .await?;
    ///     Ok(pool)
    /// }
    ///
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let options = SqliteConnectOptions::new().filename("app.db").create_if_missing(true);
    /// let pool = open(options.clone()).await?;
    /// let live = LivePool::builder_with_pool(pool, move || open(options.clone()))
    ///     .open()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder_with_pool<F, Fut>(pool: SqlitePool, reopen: F) -> LivePoolBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<SqlitePool, sqlx::Error>> + Send + 'static,
    {
        LivePoolBuilder {
            source: Source::Pool {
                pool,
                reopen: Arc::new(move || Box::pin(reopen())),
            },
            config: Config::default(),
            settings: (),
            #[cfg(feature = "migrate")]
            migrator: None,
        }
    }

    /// Starts building a `LivePool` around a pool your own code opened (a
    /// pool function shared with a CLI, one that seeds or audits), reopening
    /// with that pool's own connect options and pool options.
    ///
    /// What a reopen does: it opens the absolute path the pool was opened
    /// with (a later `chdir` does not move it), with the same connect options
    /// (journal mode, `busy_timeout`, pragmas, ...) and the same pool options
    /// (sizes, timeouts, `after_connect` and the other hooks), and the
    /// policy swaps it in only once it is verified to be the same file with
    /// the same schema. What it does not do: create the file (whatever
    /// `create_if_missing` your options say: a missing database is never
    /// replaced by an empty one), or run the rest of your pool function
    /// (seeding, auditing); migrations run on every reopen with
    /// [`migrations`](LivePoolBuilder::migrations). For a reopen of your own,
    /// use [`builder_with_pool`](Self::builder_with_pool).
    ///
    /// ```no_run
    /// use sqlx::SqlitePool;
    /// use tower_db_liveness::LivePool;
    ///
    /// # async fn app_pool() -> Result<SqlitePool, sqlx::Error> { SqlitePool::connect("app.db").await }
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool: SqlitePool = app_pool().await?; // the app's own function, unchanged
    /// let live = LivePool::from_pool(pool).open().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_pool(pool: SqlitePool) -> LivePoolBuilder {
        let mut connect = (*pool.connect_options()).clone();
        if let Some(path) = configured_path(&connect) {
            connect = connect.filename(path);
        }
        // A reopen reattaches the database that was open; it never creates one.
        let connect = connect.create_if_missing(false);
        let options = pool.options().clone();
        LivePool::builder_with_pool(pool, move || options.clone().connect_with(connect.clone()))
    }

    /// Connects with `options` and the default policy.
    pub async fn connect(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        Self::builder(options).open().await
    }
}
