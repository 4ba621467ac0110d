//! [`LivePool`]: the swappable pool and the reopen-once-or-exit policy.

mod builder;
mod erased;
#[cfg(feature = "mysql")]
mod mysql;
mod policy;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use sqlx::Pool;
use tokio::sync::{oneshot, watch};

pub use builder::LivePoolBuilder;
pub(crate) use erased::{AnyLive, WeakAnyLive};
pub(crate) use policy::Inner;

use crate::classify::{Code, ErrorClass, classify};
use crate::shared::{
    Backend, BoxFuture, Config, GaveUp, Generation, Outcome, PolicyRef, PoolStatus, Triage,
};

/// Spawns a backend's background checks, which end when the receiver resolves.
pub(crate) type SpawnChecks<DB> = fn(&PolicyRef<DB>, oneshot::Receiver<()>);
/// Work that must be done after a give-up is published and before the exit
/// action runs (the gRPC bridge's NOT_SERVING).
pub(crate) type GiveUpHook = Box<dyn Fn(&GaveUp) -> BoxFuture<()> + Send + Sync>;

sqlite_by_default! {
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
pub struct LivePool<DB: Backend> {
    inner: Arc<Inner<DB>>,
}
}

impl<DB: Backend> Clone for LivePool<DB> {
    fn clone(&self) -> Self {
        LivePool {
            inner: Arc::clone(&self.inner),
        }
    }
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

sqlite_by_default! {
/// The pool in service when the lease was taken, and its generation; from
/// [`LivePool::lease`].
///
/// Errors reported through it are tagged with that generation, so an error
/// from a pool that was replaced meanwhile is [`Outcome::Stale`] and never
/// reopens again.
pub struct Lease<DB: Backend> {
    live: LivePool<DB>,
    generation: u64,
    pool: Pool<DB>,
}
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
            spawn(&(Arc::clone(&inner) as PolicyRef<DB>), stop_rx);
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
                DB::transient(&self.policy(), generation, code);
            }
            Pending::Ignored(class)
        } else {
            match DB::triage(&self.policy(), generation, code, err) {
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

    /// The same pool behind a type-erased handle, for the layer and the
    /// health service.
    pub(crate) fn erase(&self) -> AnyLive {
        AnyLive::new(Arc::clone(&self.inner))
    }

    /// The policy as its backend sees it.
    pub(crate) fn policy(&self) -> PolicyRef<DB> {
        Arc::clone(&self.inner) as PolicyRef<DB>
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
            .field("backend", &<DB as crate::shared::Sealed>::NAME)
            .field("generation", &self.generation())
            .field("healing", &self.is_healing())
            .field("gave_up", &self.has_given_up())
            .finish()
    }
}
