//! [`LivePoolBuilder`]: how a [`LivePool`](crate::LivePool) is opened, reopened and given up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{Connection, Database};

use crate::shared::{Backend, Config, GaveUp};

sqlite_by_default! {
/// Builds a [`LivePool`](crate::LivePool): see [`LivePool::builder`](crate::LivePool::builder) and
/// [`LivePool::builder_with_pool`](crate::LivePool::builder_with_pool) for SQLite, `LivePool::postgres` for
/// Postgres (feature `postgres`) and `LivePool::mysql` for MySQL (feature
/// `mysql`).
#[must_use]
pub struct LivePoolBuilder<DB: Backend> {
    pub(crate) source: Source<DB>,
    pub(crate) config: Config,
    /// What only this backend's builder sets.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    // SQLite has none
    pub(crate) settings: DB::Settings,
    #[cfg(feature = "migrate")]
    pub(crate) migrator: Option<&'static sqlx::migrate::Migrator>,
}
}

impl<DB: Backend> Source<DB> {
    /// The connect and pool options, unless the application handed over a
    /// pool of its own.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn into_options(self) -> Option<(ConnectOptions<DB>, PoolOptions<DB>)> {
        match self {
            Source::Options { connect, pool } => Some((*connect, *pool)),
            #[cfg(feature = "sqlite")]
            Source::Pool { .. } => None,
        }
    }
}

/// The connect options of a backend.
pub(crate) type ConnectOptions<DB> = <<DB as Database>::Connection as Connection>::Options;

pub(crate) enum Source<DB: Backend> {
    Options {
        connect: Box<ConnectOptions<DB>>,
        pool: Box<PoolOptions<DB>>,
    },
    /// A pool the application opened, and its reopen (SQLite).
    #[cfg(feature = "sqlite")]
    Pool {
        pool: sqlx::Pool<DB>,
        reopen: crate::shared::ReopenFn<DB>,
    },
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
    /// Only used with [`LivePool::builder`](crate::LivePool::builder): with
    /// [`LivePool::builder_with_pool`](crate::LivePool::builder_with_pool) your reopen builds the pool.
    pub fn pool_options(mut self, options: PoolOptions<DB>) -> Self {
        match &mut self.source {
            Source::Options { pool, .. } => **pool = options,
            #[cfg(feature = "sqlite")]
            Source::Pool { .. } => {}
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
    /// [`LivePool::pool`](crate::LivePool::pool) per request or iteration: a heal swaps the pool
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
    /// exits, so a graceful shutdown driven by [`LivePool::given_up`](crate::LivePool::given_up) can
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
