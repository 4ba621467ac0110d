//! [`LivePoolBuilder`]: how a [`LivePool`] is opened, reopened and given up.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Database, Pool, Sqlite, SqlitePool};

use super::{GaveUp, GiveUpFn, LivePool, ReopenFn};
use crate::backend::Backend;
use crate::backend::sqlite::rescue::RescueConfig;
use crate::backend::sqlite::{self, SqliteState, configured_path, open_files};

/// Builds a [`LivePool`]: see [`LivePool::builder`] and
/// [`LivePool::builder_with_pool`] for SQLite, `LivePool::postgres` for
/// Postgres (feature `postgres`) and `LivePool::mysql` for MySQL (feature
/// `mysql`).
#[must_use]
pub struct LivePoolBuilder<DB: Backend = Sqlite> {
    pub(crate) source: Source<DB>,
    pub(crate) config: Config,
    /// What only this backend's builder sets.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    // SQLite has none
    pub(crate) settings: DB::Settings,
    #[cfg(feature = "migrate")]
    migrator: Option<&'static sqlx::migrate::Migrator>,
}

/// The connect options of a backend.
pub(crate) type ConnectOptions<DB> = <<DB as Database>::Connection as Connection>::Options;

pub(crate) enum Source<DB: Backend> {
    Options {
        connect: Box<ConnectOptions<DB>>,
        pool: Box<PoolOptions<DB>>,
    },
    Pool {
        pool: Pool<DB>,
        reopen: ReopenFn<DB>,
    },
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) recurrence_window: Duration,
    pub(crate) max_heals: usize,
    pub(crate) heal_window: Duration,
    pub(crate) exit_code: i32,
    /// `None`: exit the process (after the shutdown grace).
    pub(crate) on_give_up: Option<GiveUpFn>,
    pub(crate) reopen_timeout: Duration,
    pub(crate) reopen_creates: bool,
    pub(crate) close_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) watchdog_interval: Option<Duration>,
    #[cfg(feature = "fs-watch")]
    pub(crate) fs_watch: bool,
    pub(crate) rescue: RescueConfig,
    /// How long the filesystem calls of `open` (the file identity, the
    /// pending-rescue check) may take before the open fails: generous, so a
    /// slow mount starts and only a hung one fails.
    pub(crate) startup_timeout: Duration,
    /// [`LivePool::fixed`]: fatal errors are logged, never healed or exited.
    pub(crate) fixed: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            recurrence_window: Duration::from_secs(30),
            max_heals: 3,
            heal_window: Duration::from_secs(600),
            exit_code: 1,
            on_give_up: None,
            reopen_timeout: Duration::from_secs(10),
            reopen_creates: false,
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::ZERO,
            watchdog_interval: Some(Duration::from_secs(1)),
            #[cfg(feature = "fs-watch")]
            fs_watch: true,
            rescue: RescueConfig::default(),
            startup_timeout: Duration::from_secs(60),
            fixed: false,
        }
    }
}

impl<DB: Backend> LivePoolBuilder<DB> {
    /// Starts from `connect` with sqlx's default pool options and the
    /// default policy.
    pub(crate) fn from_options(connect: ConnectOptions<DB>, settings: DB::Settings) -> Self {
        LivePoolBuilder {
            source: Source::Options {
                connect: Box::new(connect),
                pool: Box::new(PoolOptions::new()),
            },
            config: Config::default(),
            settings,
            #[cfg(feature = "migrate")]
            migrator: None,
        }
    }

    /// Pool options for the initial pool and for every default reopen.
    ///
    /// Only used with [`LivePool::builder`]: with
    /// [`LivePool::builder_with_pool`] your reopen builds the pool.
    pub fn pool_options(mut self, options: PoolOptions<DB>) -> Self {
        if let Source::Options { pool, .. } = &mut self.source {
            **pool = options;
        }
        self
    }

    /// A fatal error on a generation younger than this gives up instead of
    /// reopening again. Default: 30 s.
    pub fn recurrence_window(mut self, window: Duration) -> Self {
        self.config.recurrence_window = window;
        self
    }

    /// At most `heals` reopens within `within`; the next fatal error gives up.
    /// Default: 3 within 10 minutes.
    pub fn max_heals(mut self, heals: usize, within: Duration) -> Self {
        self.config.max_heals = heals;
        self.config.heal_window = within;
        self
    }

    /// Never reopens in the process: every fatal fault ends in a give-up,
    /// and the restart by your supervisor opens the database again. The
    /// rescue still runs first (a database file deleted, moved or replaced
    /// under the process is saved from the dead handle, and a deleted one
    /// leaves the marker that makes the next start refuse until it is
    /// restored). The same as `max_heals(0, ..)`.
    ///
    /// For an app that keeps clones of its pool for the process's life (in
    /// store structs, repositories, a spawned task) instead of taking
    /// [`LivePool::pool`] per request or iteration: a heal swaps the pool
    /// inside the `LivePool`, but those clones stay on the closed one and
    /// would answer `PoolClosed` until the process exits. See the guide's
    /// "Your app keeps the pool in long-lived structs".
    pub fn restart_to_heal(mut self) -> Self {
        self.config.max_heals = 0;
        self
    }

    /// The exit code used when the policy gives up. Default: 1, so that
    /// `Restart=on-failure` and Kubernetes restart the process.
    pub fn exit_code(mut self, code: i32) -> Self {
        self.config.exit_code = code;
        self
    }

    /// Replaces the exit action (default: `std::process::exit(exit_code)`).
    ///
    /// Use it to start a graceful shutdown, or in tests. It runs once, on
    /// the task that gave up, after the give-up has been logged and
    /// published to every waiter.
    pub fn on_give_up<F>(mut self, action: F) -> Self
    where
        F: Fn(&GaveUp) + Send + Sync + 'static,
    {
        self.config.on_give_up = Some(Arc::new(action));
        self
    }

    /// How long the default exit action waits after a give-up before it
    /// exits, so a graceful shutdown driven by [`LivePool::given_up`] can
    /// drain the requests in flight. Default: 0 (exit at once).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// How long a reopen (connect and verification) may take before the
    /// policy gives up. Default: 10 s for SQLite; for Postgres and MySQL no
    /// deadline (the wait for a primary lasts until one answers: a
    /// restarted process would wait the same way; a timeout set here is
    /// stretched by 0–25 % per process on Postgres, so a fleet does not give
    /// up in the same second).
    pub fn reopen_timeout(mut self, timeout: Duration) -> Self {
        self.config.reopen_timeout = timeout;
        self
    }

    /// After a heal, how long the replaced pool's connections still checked
    /// out are waited for before a warning is logged (they are waited for
    /// in the background for as long as they stay out). Default: 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
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
    /// Rescues go into the crate's private `<file>.rescues/` directory
    /// (mode 0700) made under the first place that qualifies: this one;
    /// then, for a deleted or moved file, the nearest existing directory
    /// above the database's directory before the database's directory
    /// itself (an `rm -rf` of it completes); for other faults the
    /// database's directory first. A place qualifies only when nobody but
    /// root and the service's user can change any directory on the way
    /// (sticky ones such as `/tmp` excepted). When none can be trusted or
    /// written, the system's temporary directory is the last resort.
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
            LivePool::report_leftovers(path, rescue_dir.as_deref(), bound).await;
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
    /// [`Outcome::Ignored`](super::Outcome::Ignored)`(ErrorClass::Fatal)`:
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
