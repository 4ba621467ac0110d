//! [`LivePool`]: the swappable pool and the reopen-once-or-exit policy.

mod builder;
mod erased;
mod generation;
mod policy;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Pool, Sqlite};
use tokio::sync::{oneshot, watch};

pub(crate) use builder::Config;
pub use builder::LivePoolBuilder;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) use builder::Source;
pub(crate) use erased::{AnyLive, WeakAnyLive};
pub use generation::Generation;
pub use policy::Inner;
pub(crate) use policy::panic_text;

use crate::backend::sqlite::FileFault;
use crate::backend::{Backend, Triage};
use crate::classify::{Code, ErrorClass, classify};

/// Spawns a backend's background checks, which end when the receiver resolves.
pub(crate) type SpawnChecks<DB> = fn(&Arc<Inner<DB>>, oneshot::Receiver<()>);
/// `now + after`, for any `after` a user may configure (`Duration::MAX`
/// for "wait for ever" included): a deadline past what `Instant` holds is
/// one no wait reaches.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type ReopenFn<DB> =
    Arc<dyn Fn() -> BoxFuture<Result<Pool<DB>, sqlx::Error>> + Send + Sync>;
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
pub struct LivePool<DB: Backend = Sqlite> {
    inner: Arc<Inner<DB>>,
}

impl<DB: Backend> Clone for LivePool<DB> {
    fn clone(&self) -> Self {
        LivePool {
            inner: Arc::clone(&self.inner),
        }
    }
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
            GiveUpReason::TooManyHeals { heals: 0, .. } => {
                f.write_str("heals are off (restart_to_heal): a restart reopens the database")
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
    /// The Postgres server behind a pool meant for writes does not take
    /// them: a demoted primary (a hot standby now) or a primary turned
    /// read-only. Found from a write's SQLSTATE `25006` (or `0A000`) once a
    /// check confirmed it, or by the writability check itself. MySQL: the
    /// pool's server does not take writes and the endpoint leads to another
    /// server that does (a pool pinned to a demoted primary that stayed up);
    /// the message names both `@@server_id`s.
    NotWritable {
        /// The SQLSTATE of the error that led to the check, if one did
        /// (Postgres only: MySQL's read-only errors are told apart by their
        /// number, which the message holds).
        sqlstate: Option<String>,
        /// What was found (`pg_is_in_recovery()`, `transaction_read_only`).
        message: String,
    },
}

impl Fault {
    /// SQLite's extended result code, for a fault that came from an error
    /// that had one.
    pub fn code(&self) -> Option<i32> {
        match self {
            Fault::Error { code, .. } => *code,
            Fault::File(_) | Fault::NotWritable { .. } => None,
        }
    }

    /// The Postgres SQLSTATE, for a fault that came from an error that had one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Fault::NotWritable { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn from_error(err: &dyn fmt::Display, code: Code) -> Self {
        Fault::Error {
            code: code.sqlite(),
            message: err.to_string(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Error { message, .. } | Fault::NotWritable { message, .. } => {
                f.write_str(message)
            }
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
    /// A heal of `generation` is waiting for a server that takes writes
    /// (Postgres, MySQL: the failover has not produced a reachable writable
    /// primary yet). Nothing is served meanwhile, so `/health` answers
    /// `fail`; the policy gives up at the reopen timeout (MySQL: none by
    /// default).
    AwaitingPrimary {
        /// The generation being replaced.
        generation: u64,
        /// What made it fatal.
        fault: Fault,
        /// Attempts so far that found no writable server.
        attempts: u32,
        /// What the last attempt found.
        last: String,
    },
    /// The database in service answers reads but does not take writes, for
    /// a reason a restart would not change: a Postgres primary made
    /// read-only in place (`default_transaction_read_only`, a read-only
    /// database or role), a MySQL server with `read_only` (or
    /// `innodb_read_only`) whose endpoint still leads to it, a SQLite file or directory that cannot be written
    /// (a wrong owner, a read-only mount). Degraded, not dead: the pool is
    /// kept, reads are served, writes get 503 with `Retry-After`, readiness
    /// says `read_only` (a 200 `warn`: routing reads away would make the
    /// outage bigger), and nothing is healed or exited however long it
    /// lasts. [`Live`](PoolStatus::Live) again once the database takes
    /// writes.
    ReadOnly {
        /// The generation in service.
        generation: u64,
        /// What was found, in words (no file path, no server message).
        reason: String,
    },
    /// The policy gave up; the exit action has run or is about to.
    GaveUp(GaveUp),
}

/// Follows a [`LivePool`]'s [`PoolStatus`]; from [`LivePool::subscribe`].
///
/// Statuses are handed out as owned copies: a borrowed one held across an
/// `.await` would stall the policy, which publishes from its own task.
#[derive(Debug, Clone)]
pub struct StatusWatch(pub(crate) watch::Receiver<PoolStatus>);

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
pub struct Lease<DB: Backend = Sqlite> {
    live: LivePool<DB>,
    generation: u64,
    pool: Pool<DB>,
}

impl<DB: Backend> Clone for Lease<DB> {
    fn clone(&self) -> Self {
        Lease {
            live: self.live.clone(),
            generation: self.generation,
            pool: self.pool.clone(),
        }
    }
}

impl<DB: Backend> Lease<DB> {
    /// The leased pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The generation of the leased pool.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Feeds an error from the leased pool to the policy; see
    /// [`LivePool::report_at`]. Decided when called: dropping the future
    /// does not undo the report.
    pub fn report(&self, err: &sqlx::Error) -> impl Future<Output = Outcome> + Send + 'static {
        self.live.report_at(self.generation, err)
    }
}

impl<DB: Backend> fmt::Debug for Lease<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> LivePool<DB> {
    /// Starts the policy around `first`; `checks` (the backend's background
    /// checks) is spawned with a receiver that resolves when the last handle
    /// is dropped.
    pub(crate) fn start(
        first: Generation<DB>,
        backend: DB::State,
        config: Config,
        checks: Option<SpawnChecks<DB>>,
    ) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel();
        let inner = Arc::new(Inner::new(
            first,
            backend,
            config,
            checks.is_some().then_some(stop_tx),
        ));
        if let Some(spawn) = checks {
            spawn(&inner, stop_rx);
        }
        LivePool { inner }
    }

    /// The pool currently in service. Call it per request; don't keep it.
    pub fn pool(&self) -> Pool<DB> {
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
    pub fn lease(&self) -> Lease<DB> {
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

    /// Resolves when `signal` does (the application's own shutdown: SIGTERM,
    /// ctrl-c) or when the policy gives up, whichever comes first: one
    /// future for a graceful shutdown that keeps the app's own signal.
    ///
    /// ```no_run
    /// # async fn run(live: tower_db_liveness::LivePool, listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
    /// let ctrl_c = async { let _ = tokio::signal::ctrl_c().await; };
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(live.shutdown_on(ctrl_c))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A server without a shutdown future (`axum-server` with TLS) drives
    /// its handle from it: `tokio::spawn(async move {
    /// live.shutdown_on(signal).await; handle.graceful_shutdown(Some(grace)) })`.
    pub fn shutdown_on<F>(&self, signal: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let given_up = self.given_up();
        async move {
            tokio::select! {
                () = given_up => {}
                () = signal => {}
            }
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
    /// is done. The decision is taken when this is called: a caller that
    /// must not wait for the heal drops the future.
    pub fn report_at(
        &self,
        generation: u64,
        err: &sqlx::Error,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        self.report_classified(generation, classify(err), Code::of(err), err)
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
        code: Code,
        err: &dyn fmt::Display,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        enum Pending<F> {
            Ignored(ErrorClass),
            Fatal(F),
            Check(tokio::task::JoinHandle<Outcome>),
            Wait(BoxFuture<Outcome>),
        }
        crate::metrics::error_seen(class);
        let pending = if !class.is_fatal() {
            tracing::debug!(%class, %code, generation, action = "none", error = %err, "database error is not fatal");
            if class == ErrorClass::Transient {
                DB::transient(&self.inner, generation, code);
            }
            Pending::Ignored(class)
        } else {
            match DB::triage(&self.inner, generation, code, err) {
                Triage::Fatal(fault) => Pending::Fatal(self.inner.fatal(generation, fault)),
                Triage::Check(check) => Pending::Check(check),
                Triage::Wait(wait) => Pending::Wait(wait),
                Triage::Ignored(class) => Pending::Ignored(class),
            }
        };
        async move {
            match pending {
                Pending::Ignored(class) => Outcome::Ignored(class),
                Pending::Fatal(fatal) => fatal.await,
                Pending::Check(check) => check
                    .await
                    .unwrap_or(Outcome::Ignored(ErrorClass::Transient)),
                Pending::Wait(wait) => wait.await,
            }
        }
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

    /// The generation in service, with its pool and what its backend recorded.
    pub(crate) fn current(&self) -> Arc<Generation<DB>> {
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

    /// The same pool behind a type-erased handle, for the layer and the
    /// health service.
    pub(crate) fn erase(&self) -> AnyLive {
        AnyLive::new(Arc::clone(&self.inner))
    }

    /// The policy's shared state (the backends' background checks).
    pub(crate) fn inner(&self) -> &Arc<Inner<DB>> {
        &self.inner
    }

    pub(crate) fn from_inner(inner: Arc<Inner<DB>>) -> Self {
        LivePool { inner }
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
        let limit = config.rescue.timeout.saturating_add(config.reopen_timeout);
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
            DB::close(&current).await;
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

impl<DB: Backend> fmt::Debug for LivePool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LivePool")
            .field("backend", &<DB as crate::backend::sealed::Sealed>::NAME)
            .field("generation", &self.generation())
            .field("healing", &self.is_healing())
            .field("gave_up", &self.has_given_up())
            .finish()
    }
}
