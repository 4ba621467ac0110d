//! [`LivePool`]: the swappable `SqlitePool` and the reopen-once-or-exit policy.

mod builder;
mod generation;
mod policy;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::SqlitePool;
use tokio::sync::{oneshot, watch};

pub use builder::LivePoolBuilder;
pub(crate) use generation::{Generation, read_page};
pub(crate) use policy::Inner;

use crate::blocking;
use crate::classify::{ErrorClass, classify, result_code};
use crate::identity::{DbFile, FileFault};

/// SQLite's primary CANTOPEN result code.
const CANTOPEN: i32 = 14;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type ReopenFn = Arc<dyn Fn() -> BoxFuture<Result<SqlitePool, sqlx::Error>> + Send + Sync>;
type GiveUpFn = Arc<dyn Fn(&GaveUp) + Send + Sync>;
/// Work that must be done after a give-up is published and before the exit
/// action runs (the gRPC bridge's NOT_SERVING).
pub(crate) type GiveUpHook = Box<dyn Fn(&GaveUp) -> BoxFuture<()> + Send + Sync>;

/// A cheaply cloneable handle to the application's current `SqlitePool`.
///
/// Handlers call [`pool`](LivePool::pool) on every request instead of holding a
/// `SqlitePool` of their own, so a pool reopened by the policy reaches every
/// handler on its next request. Errors are fed back through a [`Lease`]
/// taken before the work (the tower layer does this for you), so they are
/// tagged with the generation that produced them.
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
    /// A heal of `generation` is held up: the rescue of the dead file's data
    /// failed (a full disk, say) and is retried with back-off. The dead handle
    /// may hold the only copy of acknowledged writes, so it is kept open, and
    /// nothing is healed or exited, until a rescue is saved.
    RescueFailing {
        /// The generation being replaced.
        generation: u64,
        /// What made it fatal.
        fault: Fault,
        /// Failed rescue attempts so far.
        attempts: u32,
        /// SQLite's result code of the last failure, if any (13: disk full).
        code: Option<i32>,
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

impl LivePool {
    pub(crate) fn start(first: Generation, reopen: ReopenFn, config: builder::Config) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let watchdog = config.watchdog_interval.is_some();
        let inner = Arc::new(Inner::new(
            first,
            reopen,
            config,
            watchdog.then_some(stop_tx),
        ));
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
        self.inner.load_state().1
    }

    /// `true` once the policy has given up; the `LivePool` never reopens again.
    pub fn has_given_up(&self) -> bool {
        self.inner.gave_up()
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
        enum Pending<F> {
            Ignored(ErrorClass),
            Fatal(F),
            Check(tokio::task::JoinHandle<Outcome>),
        }
        crate::metrics::error_seen(class);
        let pending = if !class.is_fatal() {
            tracing::debug!(%class, code, generation, action = "none", error = %err, "database error is not fatal");
            Pending::Ignored(class)
        } else if code.is_some_and(|code| code & 0xff == CANTOPEN) {
            // Decided once the file identity is known, off the request path.
            let fault = Fault::from_error(err, code);
            Pending::Check(tokio::spawn(
                Arc::clone(&self.inner).cantopen(generation, fault),
            ))
        } else {
            Pending::Fatal(self.inner.fatal(generation, Fault::from_error(err, code)))
        };
        async move {
            match pending {
                Pending::Ignored(class) => Outcome::Ignored(class),
                Pending::Fatal(fatal) => fatal.await,
                Pending::Check(check) => check
                    .await
                    .unwrap_or(Outcome::Ignored(ErrorClass::Transient)),
            }
        }
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
        let file = current.file.clone()?;
        let fault = blocking::run(generation::FS_BOUND, move || file.check())
            .await
            .ok()?
            .err()?;
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
        let (generation, healing, _) = self.inner.load_state();
        (generation, healing)
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
        self.inner.recent_heals()
    }

    /// A handle for background tasks that must not keep the pool alive.
    pub(crate) fn downgrade(&self) -> WeakLivePool {
        WeakLivePool(Arc::downgrade(&self.inner))
    }

    /// Runs `hook` after a give-up has been published and before the exit
    /// action, awaited (all hooks together at most 2 s).
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))] // used by the gRPC bridge
    pub(crate) fn before_exit(&self, hook: GiveUpHook) {
        self.inner.push_give_up_hook(hook);
    }

    /// Waits until the heal in flight, if any, has finished.
    pub async fn healed(&self) {
        if let Some(mut done) = self.inner.heal_in_flight() {
            let _ = done.wait_for(Option::is_some).await;
        }
    }

    /// Closes the pool in service (no finding heals it any more) and waits
    /// until every replaced generation is sealed, rescued and closed: call it before the process exits, after
    /// a graceful shutdown has drained the requests in flight, so that a
    /// write committed on a dead file during the drain is in a rescue.
    ///
    /// ```no_run
    /// # async fn run(live: tower_db_liveness::LivePool) {
    /// // axum::serve(listener, app).with_graceful_shutdown(live.given_up()).await?;
    /// live.close().await;
    /// if let Some(gave_up) = live.gave_up() {
    ///     std::process::exit(gave_up.exit_code);
    /// }
    /// # }
    /// ```
    ///
    /// Waits at most the rescue timeout for the background work, and the
    /// close timeout for the pool's connections.
    pub async fn close(&self) {
        // First: closing the last connections deletes the -wal and -shm,
        // which the watchdog must not take for a fault.
        self.inner.mark_closed();
        let config = &self.inner.config;
        // A heal in flight rescues and seals the dead file first (it does
        // not reopen any more): wait for it, bounded.
        let limit = config.rescue.timeout + config.reopen_timeout;
        if tokio::time::timeout(limit, self.healed()).await.is_err() {
            tracing::error!(
                "the heal in flight did not finish within {limit:?} (a rescue failing?); closing anyway: \
                 the dead database's data may not be saved"
            );
        }
        let retiring = self.inner.take_retiring();
        let all = async {
            for task in retiring {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(config.rescue.timeout, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "replaced generations still busy after {:?}; closing anyway",
                config.rescue.timeout
            );
        }
        if self.is_healing() {
            // Still healing after the bound: the heal owns the generation.
            return;
        }
        let current = self.inner.current();
        let closed = async {
            current.pool.close().await;
            if let Some(conn) = current.sentinel.lock().await.take() {
                let _ = sqlx::Connection::close(conn).await;
            }
        };
        if tokio::time::timeout(config.close_timeout, closed)
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still checked out after {:?}; closing anyway",
                config.close_timeout
            );
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
