//! [`LivePool`]: the swappable `SqlitePool` and the reopen-once-or-exit policy.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{oneshot, watch};

use crate::classify::{ErrorClass, classify, result_code};
use crate::identity::{DbFile, FileFault};
use crate::rescue::{self, RescueConfig};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type ReopenFn = Arc<dyn Fn() -> BoxFuture<Result<SqlitePool, sqlx::Error>> + Send + Sync>;
type GiveUpFn = Arc<dyn Fn(&GaveUp) + Send + Sync>;
/// Work that must be done after a give-up is published and before the exit
/// action runs (the gRPC bridge's NOT_SERVING).
pub(crate) type GiveUpHook = Box<dyn Fn(&GaveUp) -> BoxFuture<()> + Send + Sync>;

/// How long the give-up hooks together may delay the exit action.
const GIVE_UP_HOOKS_LIMIT: Duration = Duration::from_secs(2);

/// A cheaply cloneable handle to the application's current `SqlitePool`.
///
/// Handlers call [`pool`](LivePool::pool) on every request instead of holding a
/// `SqlitePool` of their own, so a pool reopened by the policy reaches every
/// handler on its next request. Errors are fed back with
/// [`report`](LivePool::report) (the tower layer does this
/// for you).
///
/// ```no_run
/// use sqlx::sqlite::SqliteConnectOptions;
/// use tower_db_liveness::{LivePool, Outcome};
///
/// # async fn run() -> Result<(), sqlx::Error> {
/// let options = SqliteConnectOptions::new()
///     .filename("/var/lib/app/app.db")
///     .create_if_missing(true);
/// let live = LivePool::connect(options).await?;
///
/// let lease = live.lease(); // the pool in service now, and its generation
/// if let Err(err) = sqlx::query("INSERT INTO notes(body) VALUES ('hi')")
///     .execute(lease.pool())
///     .await
/// {
///     match lease.report(&err).await {
///         Outcome::Healed(healed) => println!("reopened as generation {}", healed.generation),
///         other => println!("{other:?}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LivePool {
    inner: Arc<Inner>,
}

/// What the policy did with a reported error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// The error was not fatal: nothing to do.
    Ignored(ErrorClass),
    /// The error came from a generation that has already been replaced.
    Stale {
        /// The generation the failed request used.
        reported: u64,
        /// The generation in service now.
        current: u64,
    },
    /// The pool was reopened, verified and swapped in.
    Healed(Healed),
    /// The policy gave up and ran the exit action.
    GaveUp(GaveUp),
}

/// A successful reopen.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Healed {
    /// The generation now in service.
    pub generation: u64,
    /// What made the old generation fatal.
    pub fault: Fault,
    /// Where the old handle's data was saved, if a rescue ran.
    pub rescue: Option<PathBuf>,
}

/// The policy's last resort: the process is expected to exit and restart.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GaveUp {
    /// Why the policy gave up.
    pub reason: GiveUpReason,
    /// What made the generation fatal in the first place.
    pub fault: Fault,
    /// The exit code handed to the exit action.
    pub exit_code: i32,
    /// Where the old handle's data was saved, if a rescue ran.
    pub rescue: Option<PathBuf>,
}

/// Why the policy gave up instead of healing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// Opening the new pool failed (the directory is gone, say).
    ReopenFailed(String),
    /// The new pool opened but failed verification (page read or file identity).
    VerifyFailed(String),
    /// A fatal error came back on a pool swapped in less than the recurrence
    /// window ago.
    Recurred {
        /// How long the fresh generation lived.
        after: Duration,
    },
    /// More heals than allowed within the heal window.
    TooManyHeals {
        /// Heals already made within the window.
        heals: usize,
        /// The window.
        within: Duration,
    },
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::ReopenFailed(err) => write!(f, "reopen failed: {err}"),
            GiveUpReason::VerifyFailed(err) => {
                write!(f, "verification of the new pool failed: {err}")
            }
            GiveUpReason::Recurred { after } => {
                write!(f, "fatal error recurred {after:?} after the last heal")
            }
            GiveUpReason::TooManyHeals { heals, within } => {
                write!(f, "{heals} heals within {within:?} already")
            }
        }
    }
}

/// What made a generation fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// A fatal database error reported by a caller, the layer or the probe.
    Error {
        /// SQLite's extended result code, when the error had one.
        code: Option<i32>,
        /// The error's text.
        message: String,
    },
    /// The database file is no longer the one the pool opened.
    File(FileFault),
}

impl Fault {
    /// SQLite's extended result code, for a fault that came from an error
    /// that had one.
    pub fn code(&self) -> Option<i32> {
        match self {
            Fault::Error { code, .. } => *code,
            Fault::File(_) => None,
        }
    }

    pub(crate) fn from_error(err: &dyn fmt::Display, code: Option<i32>) -> Self {
        Fault::Error {
            code,
            message: err.to_string(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Error { message, .. } => f.write_str(message),
            Fault::File(file) => fmt::Display::fmt(file, f),
        }
    }
}

/// What the policy is doing now, as published by [`LivePool::subscribe`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PoolStatus {
    /// A verified pool is in service.
    Live {
        /// The generation in service.
        generation: u64,
        /// The heal that put it there (`None` for the first pool).
        last_heal: Option<Healed>,
    },
    /// A heal of `generation` is in flight.
    Healing {
        /// The generation being replaced.
        generation: u64,
        /// What made it fatal.
        fault: Fault,
    },
    /// The policy gave up; the exit action has run or is about to.
    GaveUp(GaveUp),
}

/// Follows a [`LivePool`]'s [`PoolStatus`]; from [`LivePool::subscribe`].
///
/// Statuses are handed out as owned copies: a borrowed one held across an
/// `.await` would stall the policy, which publishes from its own task.
#[derive(Debug, Clone)]
pub struct StatusWatch(watch::Receiver<PoolStatus>);

impl StatusWatch {
    /// The latest status, which also counts as seen by
    /// [`changed`](Self::changed).
    pub fn latest(&mut self) -> PoolStatus {
        self.0.borrow_and_update().clone()
    }

    /// Waits for a status not yet seen and returns it; `None` once the
    /// `LivePool` is gone.
    pub async fn changed(&mut self) -> Option<PoolStatus> {
        self.0.changed().await.ok()?;
        Some(self.latest())
    }

    /// Waits until the status satisfies `f` (now or later) and returns it;
    /// `None` if the `LivePool` is gone first.
    pub async fn wait_for(&mut self, f: impl FnMut(&PoolStatus) -> bool) -> Option<PoolStatus> {
        self.0.wait_for(f).await.ok().map(|status| status.clone())
    }
}

/// The pool in service when the lease was taken, and its generation; from
/// [`LivePool::lease`].
///
/// Errors reported through it are tagged with that generation, so an error
/// from a pool that was replaced meanwhile is [`Outcome::Stale`] and never
/// reopens again.
#[derive(Clone)]
pub struct Lease {
    live: LivePool,
    generation: u64,
    pool: SqlitePool,
}

impl Lease {
    /// The leased pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The generation of the leased pool.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Feeds an error from the leased pool to the policy; see
    /// [`LivePool::report_at`].
    pub async fn report(&self, err: &sqlx::Error) -> Outcome {
        self.live.report_at(self.generation, err).await
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Builds a [`LivePool`]; see [`LivePool::builder`] and [`LivePool::builder_with_pool`].
#[must_use]
pub struct LivePoolBuilder {
    source: Source,
    config: Config,
}

enum Source {
    Options {
        connect: Box<SqliteConnectOptions>,
        pool: Box<SqlitePoolOptions>,
    },
    Pool {
        pool: SqlitePool,
        reopen: ReopenFn,
    },
}

#[derive(Clone)]
pub(crate) struct Config {
    recurrence_window: Duration,
    max_heals: usize,
    heal_window: Duration,
    exit_code: i32,
    /// `None`: exit the process (after the shutdown grace).
    on_give_up: Option<GiveUpFn>,
    reopen_timeout: Duration,
    close_timeout: Duration,
    drain_timeout: Duration,
    shutdown_grace: Duration,
    pub(crate) watchdog_interval: Option<Duration>,
    #[cfg(feature = "fs-watch")]
    pub(crate) fs_watch: bool,
    rescue: RescueConfig,
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
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::ZERO,
            watchdog_interval: Some(Duration::from_secs(1)),
            #[cfg(feature = "fs-watch")]
            fs_watch: true,
            rescue: RescueConfig::default(),
        }
    }
}

impl LivePoolBuilder {
    /// Pool options for the initial pool and for every default reopen.
    ///
    /// Only used with [`LivePool::builder`]: with
    /// [`LivePool::builder_with_pool`] your reopen builds the pool.
    pub fn pool_options(mut self, options: SqlitePoolOptions) -> Self {
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

    /// How long a reopen (connect and verification) may take. Default: 10 s.
    pub fn reopen_timeout(mut self, timeout: Duration) -> Self {
        self.config.reopen_timeout = timeout;
        self
    }

    /// How long the replaced pool is given to close in the background.
    /// Default: 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Before a rescue, how long writes already in flight on the dead pool
    /// may take to finish (the pool refuses new ones at once). Default: 1 s.
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

    /// The directory for rescue files. Default: the nearest existing
    /// ancestor directory of the database file.
    pub fn rescue_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.rescue.dir = Some(dir.into());
        self
    }

    /// How long a rescue may take. Default: 30 s.
    pub fn rescue_timeout(mut self, timeout: Duration) -> Self {
        self.config.rescue.timeout = timeout;
        self
    }

    /// Opens (or adopts) the pool, verifies it and starts the watchdog.
    ///
    /// Must be called within a Tokio runtime.
    pub async fn open(self) -> Result<LivePool, sqlx::Error> {
        let (pool, reopen) = match self.source {
            Source::Options { connect, pool } => {
                let first = pool.as_ref().clone().connect_with(*connect.clone()).await?;
                let reopen: ReopenFn = Arc::new(move || {
                    let (pool, connect) = (pool.as_ref().clone(), connect.as_ref().clone());
                    Box::pin(async move { pool.connect_with(connect).await })
                });
                (first, reopen)
            }
            Source::Pool { pool, reopen } => (pool, reopen),
        };
        let first = Generation::open(pool, 0, None).await?;
        Ok(LivePool::start(first, reopen, self.config))
    }
}

/// One opened pool and what was recorded about it.
pub(crate) struct Generation {
    pub(crate) number: u64,
    pub(crate) pool: SqlitePool,
    /// `None` for in-memory and temporary databases.
    pub(crate) file: Option<DbFile>,
    /// A connection kept aside from the pool, opened before any fault: the
    /// only kind that still reaches a deleted file (for the rescue).
    sentinel: tokio::sync::Mutex<Option<SqliteConnection>>,
    /// When a heal swapped this generation in (`None` for the first).
    healed_at: Option<Instant>,
}

impl Generation {
    /// Verifies `pool` and records its file. On error the pool is closed in
    /// the background.
    async fn open(
        pool: SqlitePool,
        number: u64,
        healed_at: Option<Instant>,
    ) -> Result<Self, sqlx::Error> {
        match Self::verify(&pool).await {
            Ok((file, sentinel)) => Ok(Generation {
                number,
                pool,
                file,
                sentinel: tokio::sync::Mutex::new(sentinel),
                healed_at,
            }),
            Err(err) => {
                tokio::spawn(async move { pool.close().await });
                Err(err)
            }
        }
    }

    async fn verify(
        pool: &SqlitePool,
    ) -> Result<(Option<DbFile>, Option<SqliteConnection>), sqlx::Error> {
        // `SELECT 1` succeeds on a dead handle; reading the schema reads page 1.
        read_page(pool).await?;
        let mut sentinel = SqliteConnection::connect_with(&pool.connect_options()).await?;
        read_page(&mut sentinel).await?;
        let path: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(&mut sentinel)
                .await?
                .unwrap_or_default();
        if path.is_empty() {
            // In-memory or temporary: no file to watch, nothing to rescue.
            sentinel.close().await?;
            return Ok((None, None));
        }
        let file = DbFile::at(PathBuf::from(path))?;
        Ok((Some(file), Some(sentinel)))
    }
}

/// Reads the schema table, which needs page 1 of the file.
pub(crate) async fn read_page<'c, E>(executor: E) -> Result<(), sqlx::Error>
where
    E: sqlx::SqliteExecutor<'c>,
{
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sqlite_schema")
        .fetch_one(executor)
        .await
        .map(drop)
}

const HEALING: u64 = 0b01;
const GAVE_UP: u64 = 0b10;
const FLAG_BITS: u32 = 2;

pub(crate) struct Inner {
    current: ArcSwap<Generation>,
    /// `generation << 2 | GAVE_UP | HEALING`: one load answers the hot path.
    state: AtomicU64,
    policy: Mutex<Policy>,
    status: watch::Sender<PoolStatus>,
    reopen: ReopenFn,
    pub(crate) config: Config,
    give_up_hooks: Mutex<Vec<GiveUpHook>>,
    /// Dropped with the last handle, which stops the watchdog at once.
    _stop_watchdog: Option<oneshot::Sender<()>>,
}

struct Policy {
    phase: Phase,
    heals: VecDeque<Instant>,
}

/// What [`Inner::begin_fatal`] decided.
enum Joined {
    /// Nothing to wait for.
    Done(Outcome),
    /// A heal is in flight (just started or joined); its outcome arrives here.
    Heal(watch::Receiver<Option<Outcome>>),
}

impl Policy {
    /// Forgets heals older than `window` and counts the rest.
    fn heals_within(&mut self, window: Duration) -> usize {
        while self.heals.front().is_some_and(|t| t.elapsed() > window) {
            self.heals.pop_front();
        }
        self.heals.len()
    }
}

enum Phase {
    Live,
    Healing {
        done: watch::Receiver<Option<Outcome>>,
    },
    GaveUp(GaveUp),
}

impl LivePool {
    /// Starts building a `LivePool` that connects with `options` and reopens
    /// with the same options.
    pub fn builder(options: SqliteConnectOptions) -> LivePoolBuilder {
        LivePoolBuilder {
            source: Source::Options {
                connect: Box::new(options),
                pool: Box::new(SqlitePoolOptions::new()),
            },
            config: Config::default(),
        }
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
        }
    }

    /// Connects with `options` and the default policy.
    pub async fn connect(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        Self::builder(options).open().await
    }

    fn start(first: Generation, reopen: ReopenFn, config: Config) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let watchdog = config.watchdog_interval.is_some();
        let inner = Arc::new(Inner {
            current: ArcSwap::from_pointee(first),
            state: AtomicU64::new(0),
            policy: Mutex::new(Policy {
                phase: Phase::Live,
                heals: VecDeque::new(),
            }),
            status: watch::Sender::new(PoolStatus::Live {
                generation: 0,
                last_heal: None,
            }),
            reopen,
            config,
            give_up_hooks: Mutex::new(Vec::new()),
            _stop_watchdog: watchdog.then_some(stop_tx),
        });
        if watchdog {
            crate::watchdog::spawn(&inner, stop_rx);
        }
        LivePool { inner }
    }

    /// The pool currently in service. Call it per request; don't keep it.
    pub fn pool(&self) -> SqlitePool {
        self.inner.current.load().pool.clone()
    }

    /// How many times the pool has been replaced (0 for the first pool).
    pub fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// `true` while a reopen is in flight.
    pub fn is_healing(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & HEALING != 0
    }

    /// `true` once the policy has given up; the `LivePool` never reopens again.
    pub fn has_given_up(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & GAVE_UP != 0
    }

    /// The pool in service now, with its generation: run a piece of work
    /// on [`Lease::pool`] and feed its errors back with [`Lease::report`], so
    /// they are tagged with the generation that produced them.
    pub fn lease(&self) -> Lease {
        let current = self.inner.current.load();
        Lease {
            live: self.clone(),
            generation: current.number,
            pool: current.pool.clone(),
        }
    }

    /// Resolves once the policy has given up (at once if it already has):
    /// the shutdown signal for `axum::serve(..).with_graceful_shutdown(..)`,
    /// hyper's or tonic's graceful shutdown.
    pub fn given_up(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut status = self.inner.status.subscribe();
        async move {
            let _ = status
                .wait_for(|s| matches!(s, PoolStatus::GaveUp(_)))
                .await;
        }
    }

    /// The give-up, once the policy has given up.
    pub fn gave_up(&self) -> Option<GaveUp> {
        match &*self.inner.status.borrow() {
            PoolStatus::GaveUp(gave_up) => Some(gave_up.clone()),
            _ => None,
        }
    }

    /// Feeds an error to the policy, tagged with the generation whose pool
    /// produced it.
    ///
    /// Non-fatal errors return [`Outcome::Ignored`] at once. A fatal error
    /// starts a heal, or joins the one in flight; it resolves when the heal
    /// is done.
    pub async fn report_at(&self, generation: u64, err: &sqlx::Error) -> Outcome {
        self.report_classified(generation, classify(err), result_code(err), err)
            .await
    }

    /// The policy's door for an error that was already classified (by the
    /// layer, from a response extension or an error's `source()` chain).
    ///
    /// The decision is taken **now**, not when the future is first polled: a
    /// fatal error marks the pool as healing and starts (or joins) the heal
    /// before this returns. The layer relies on that: it drops the future and
    /// returns the failed response at once, and the client's retry must find
    /// the heal already in flight, so it is held instead of reaching the dead
    /// pool. The future only waits for the outcome.
    pub(crate) fn report_classified(
        &self,
        generation: u64,
        class: ErrorClass,
        code: Option<i32>,
        err: &dyn fmt::Display,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let fault = if class.is_fatal() {
            Some(Fault::from_error(err, code))
        } else {
            tracing::debug!(%class, code, generation, action = "none", error = %err, "database error is not fatal");
            None
        };
        let fatal = fault.map(|fault| self.inner.fatal(generation, fault));
        async move {
            match fatal {
                Some(fatal) => fatal.await,
                None => Outcome::Ignored(class),
            }
        }
    }

    /// Compares the database file the pool opened with what its path leads
    /// to now, and reports a deleted, moved or replaced file to the policy
    /// (the watchdog runs this periodically).
    ///
    /// Returns `None` when the file is in place (or the database has no file).
    pub async fn check_file(&self) -> Option<Outcome> {
        let current = self.inner.current.load_full();
        let fault = current.file.as_ref()?.check().err()?;
        Some(self.inner.fatal(current.number, Fault::File(fault)).await)
    }

    /// Follows the policy: live, healing, live again (with the heal's
    /// details) or gave up. The give-up is published before the exit action
    /// runs.
    pub fn subscribe(&self) -> StatusWatch {
        StatusWatch(self.inner.status.subscribe())
    }

    /// What the policy is doing now.
    pub fn status(&self) -> PoolStatus {
        self.inner.status.borrow().clone()
    }

    /// The generation and whether a heal is in flight, from one atomic load
    /// (the layer's per-request cost).
    #[inline]
    pub(crate) fn load_state(&self) -> (u64, bool) {
        let state = self.inner.state.load(Ordering::Acquire);
        (state >> FLAG_BITS, state & HEALING != 0)
    }

    /// The generation in service, with its pool, file and sentinel.
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.inner.current()
    }

    /// Feeds a fatal finding (a probe's, say) about `generation` to the
    /// policy. Like [`report_classified`](Self::report_classified), the
    /// decision is taken when this is called; the future only waits for the
    /// outcome, so a caller that must not wait for the heal drops it.
    pub(crate) fn report_fault(
        &self,
        generation: u64,
        fault: Fault,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        self.inner.fatal(generation, fault)
    }

    /// Heals made within the heal window: what [`LivePoolBuilder::max_heals`]
    /// counts.
    pub(crate) fn recent_heals(&self) -> usize {
        self.inner
            .policy()
            .heals_within(self.inner.config.heal_window)
    }

    /// A handle for background tasks that must not keep the pool alive.
    pub(crate) fn downgrade(&self) -> WeakLivePool {
        WeakLivePool(Arc::downgrade(&self.inner))
    }

    /// Runs `hook` after a give-up has been published and before the exit
    /// action, awaited (all hooks together at most 2 s).
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))] // used by the gRPC bridge
    pub(crate) fn before_exit(&self, hook: GiveUpHook) {
        self.inner
            .give_up_hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(hook);
    }

    /// Waits until the heal in flight, if any, has finished.
    pub async fn healed(&self) {
        if let Some(mut done) = self.inner.heal_in_flight() {
            let _ = done.wait_for(Option::is_some).await;
        }
    }
}

/// A [`LivePool`] handle that does not keep the pool alive.
#[derive(Clone)]
pub(crate) struct WeakLivePool(Weak<Inner>);

impl WeakLivePool {
    pub(crate) fn upgrade(&self) -> Option<LivePool> {
        self.0.upgrade().map(|inner| LivePool { inner })
    }
}

impl fmt::Debug for LivePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.inner.current.load();
        f.debug_struct("LivePool")
            .field("generation", &current.number)
            .field("file", &current.file.as_ref().map(DbFile::path))
            .field("healing", &self.is_healing())
            .field("gave_up", &self.has_given_up())
            .finish()
    }
}

impl Inner {
    pub(crate) fn generation(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> FLAG_BITS
    }

    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub(crate) fn gave_up(&self) -> bool {
        self.state.load(Ordering::Acquire) & GAVE_UP != 0
    }

    fn policy(&self) -> MutexGuard<'_, Policy> {
        // Nothing under this lock can panic half-way through an update.
        self.policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn heal_in_flight(&self) -> Option<watch::Receiver<Option<Outcome>>> {
        match &self.policy().phase {
            Phase::Healing { done } => Some(done.clone()),
            _ => None,
        }
    }

    /// The policy's entry point for a fatal finding about `generation`.
    ///
    /// The decision (stale, join, start a heal and mark it in flight) is taken
    /// when this is called, not when the future is first polled: the layer and
    /// the health probe drop the future and must still have started the heal.
    /// The future only waits for the outcome.
    pub(crate) fn fatal(
        self: &Arc<Self>,
        generation: u64,
        fault: Fault,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let joined = self.begin_fatal(generation, fault);
        let inner = Arc::clone(self);
        async move { inner.outcome(generation, joined).await }
    }

    /// The synchronous half of [`fatal`](Self::fatal): decides between
    /// gave-up, stale, joining the heal in flight and starting one (which
    /// sets the healing flag and spawns the heal) before it returns.
    fn begin_fatal(self: &Arc<Self>, generation: u64, fault: Fault) -> Joined {
        let mut policy = self.policy();
        let current = self.generation();
        match &policy.phase {
            Phase::GaveUp(gave_up) => Joined::Done(Outcome::GaveUp(gave_up.clone())),
            _ if generation < current => {
                tracing::debug!(class = "fatal", code = fault.code(), generation, current, %fault, action = "stale", "fatal error from a replaced pool");
                Joined::Done(Outcome::Stale {
                    reported: generation,
                    current,
                })
            }
            Phase::Healing { done } => Joined::Heal(done.clone()),
            Phase::Live => {
                tracing::error!(class = "fatal", code = fault.code(), generation = current, %fault, action = "reopen", "fatal database fault: reopening the pool once");
                let (tx, rx) = watch::channel(None);
                policy.phase = Phase::Healing { done: rx.clone() };
                self.state.fetch_or(HEALING, Ordering::AcqRel);
                self.status.send_replace(PoolStatus::Healing {
                    generation: current,
                    fault: fault.clone(),
                });
                tokio::spawn(Arc::clone(self).heal(fault, tx));
                Joined::Heal(rx)
            }
        }
    }

    /// The asynchronous half of [`fatal`](Self::fatal): waits for the heal
    /// that was joined, if any.
    async fn outcome(&self, generation: u64, joined: Joined) -> Outcome {
        let mut done = match joined {
            Joined::Done(outcome) => return outcome,
            Joined::Heal(done) => done,
        };
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Outcome::Stale {
                reported: generation,
                current: self.generation(),
            }),
            // The heal task vanished (runtime shutting down): report what is known.
            Err(_) => Outcome::Stale {
                reported: generation,
                current: self.generation(),
            },
        }
    }

    /// Rescue if the file is gone, check the budget, reopen, verify, swap.
    async fn heal(self: Arc<Self>, fault: Fault, done: watch::Sender<Option<Outcome>>) {
        let old = self.current.load_full();
        let file_fault = match &fault {
            Fault::File(file) => Some(*file),
            Fault::Error { .. } => old.file.as_ref().and_then(|f| f.check().err()),
        };
        // The old pool is dead: stop it from acknowledging more writes into a
        // file nobody will read again. `close` refuses new acquires at once.
        let draining = old.pool.close();
        let rescue = match file_fault {
            Some(_) if self.config.rescue.enabled => {
                // Let writes already in flight finish first, so the rescue's
                // snapshot holds every write the old pool acknowledged.
                if tokio::time::timeout(self.config.drain_timeout, draining)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        generation = old.number,
                        "connections still checked out after {:?}; rescuing without them",
                        self.config.drain_timeout
                    );
                }
                self.rescue(&old).await
            }
            _ => {
                drop(draining);
                None
            }
        };

        let outcome = match self.budget_exceeded(&old) {
            Some(reason) => Err(reason),
            None => self.reopen(old.number + 1).await,
        };
        let outcome = match outcome {
            Ok(new) => {
                let generation = new.number;
                {
                    let mut policy = self.policy();
                    policy.heals.push_back(Instant::now());
                    self.current.store(Arc::new(new));
                    policy.phase = Phase::Live;
                    self.state.store(generation << FLAG_BITS, Ordering::Release);
                }
                let healed = Healed {
                    generation,
                    fault,
                    rescue,
                };
                self.status.send_replace(PoolStatus::Live {
                    generation,
                    last_heal: Some(healed.clone()),
                });
                tracing::warn!(class = "fatal", code = healed.fault.code(), generation, fault = %healed.fault, rescue = ?healed.rescue, action = "healed", "database pool reopened and swapped in");
                self.close_in_background(old);
                Outcome::Healed(healed)
            }
            Err(reason) => {
                let gave_up = GaveUp {
                    reason,
                    fault,
                    exit_code: self.config.exit_code,
                    rescue,
                };
                {
                    let mut policy = self.policy();
                    policy.phase = Phase::GaveUp(gave_up.clone());
                    self.state.fetch_or(GAVE_UP, Ordering::AcqRel);
                    self.state.fetch_and(!HEALING, Ordering::AcqRel);
                }
                self.status
                    .send_replace(PoolStatus::GaveUp(gave_up.clone()));
                tracing::error!(
                    class = "fatal",
                    code = gave_up.fault.code(),
                    generation = old.number,
                    fault = %gave_up.fault,
                    reason = %gave_up.reason,
                    rescue = ?gave_up.rescue,
                    exit_code = gave_up.exit_code,
                    action = "exit",
                    "database is dead and cannot be reopened: exiting so the supervisor restarts the process"
                );
                Outcome::GaveUp(gave_up)
            }
        };
        let _ = done.send(Some(outcome.clone()));
        if let Outcome::GaveUp(gave_up) = &outcome {
            self.run_give_up_hooks(gave_up).await;
            self.run_exit_action(gave_up);
        }
    }

    /// Runs the exit action. A panic in a user's action is caught and the
    /// default action (exit) runs instead: a give-up must end the process.
    fn run_exit_action(&self, gave_up: &GaveUp) {
        if let Some(action) = &self.config.on_give_up {
            let run = std::panic::AssertUnwindSafe(|| action(gave_up));
            if std::panic::catch_unwind(run).is_ok() {
                return;
            }
            tracing::error!("the on_give_up action panicked: exiting the process instead");
            std::process::exit(gave_up.exit_code);
        }
        exit_after(self.config.shutdown_grace, gave_up.exit_code);
    }

    async fn run_give_up_hooks(&self, gave_up: &GaveUp) {
        let hooks: Vec<BoxFuture<()>> = self
            .give_up_hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|hook| hook(gave_up))
            .collect();
        if hooks.is_empty() {
            return;
        }
        let all = async {
            for hook in hooks {
                hook.await;
            }
        };
        if tokio::time::timeout(GIVE_UP_HOOKS_LIMIT, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "give-up hooks did not finish within {GIVE_UP_HOOKS_LIMIT:?}; running the exit action"
            );
        }
    }

    fn budget_exceeded(&self, old: &Generation) -> Option<GiveUpReason> {
        if let Some(healed_at) = old.healed_at {
            let after = healed_at.elapsed();
            if after < self.config.recurrence_window {
                return Some(GiveUpReason::Recurred { after });
            }
        }
        let window = self.config.heal_window;
        let heals = self.policy().heals_within(window);
        (heals >= self.config.max_heals).then_some(GiveUpReason::TooManyHeals {
            heals,
            within: window,
        })
    }

    async fn reopen(&self, number: u64) -> Result<Generation, GiveUpReason> {
        let attempt = async {
            let pool = (self.reopen)()
                .await
                .map_err(|err| GiveUpReason::ReopenFailed(err.to_string()))?;
            Generation::open(pool, number, Some(Instant::now()))
                .await
                .map_err(|err| GiveUpReason::VerifyFailed(err.to_string()))
        };
        tokio::time::timeout(self.config.reopen_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(GiveUpReason::ReopenFailed(format!(
                    "no verified pool within {:?}",
                    self.config.reopen_timeout
                )))
            })
    }

    async fn rescue(&self, old: &Generation) -> Option<PathBuf> {
        let file = old.file.as_ref()?;
        let mut sentinel = old.sentinel.lock().await;
        let conn = sentinel.as_mut()?;
        match rescue::rescue(conn, file.path(), &self.config.rescue).await {
            Ok(path) => {
                tracing::error!(rescue = %path.display(), database = %file.path().display(), "rescued the dead handle's data with VACUUM INTO");
                Some(path)
            }
            Err(err) => {
                tracing::error!(database = %file.path().display(), error = %err, "rescue of the dead handle's data failed");
                None
            }
        }
    }

    /// `Pool::close` waits for checked-out connections, so it never runs on a
    /// request path, and is bounded.
    fn close_in_background(&self, old: Arc<Generation>) {
        let limit = self.config.close_timeout;
        tokio::spawn(async move {
            if tokio::time::timeout(limit, old.pool.close()).await.is_err() {
                tracing::warn!(
                    generation = old.number,
                    "replaced pool did not close within {limit:?}"
                );
            }
            // The sentinel goes last: it kept the old file reachable for the rescue.
            if let Some(conn) = old.sentinel.lock().await.take() {
                let _ = tokio::time::timeout(limit, conn.close()).await;
            }
        });
    }
}

/// The default exit action: `exit(code)` after `grace`, on a thread of its
/// own so that neither a wedged runtime nor a slow drain can keep the
/// process alive past the grace period.
fn exit_after(grace: Duration, code: i32) {
    if grace.is_zero() {
        std::process::exit(code);
    }
    let spawned = std::thread::Builder::new()
        .name("db-liveness-exit".into())
        .spawn(move || {
            std::thread::sleep(grace);
            tracing::error!("shutdown grace of {grace:?} is over: exiting");
            std::process::exit(code);
        });
    if spawned.is_err() {
        std::process::exit(code);
    }
}
