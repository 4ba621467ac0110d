//! The Postgres-only part of [`LivePool`]'s API: its builder. The work is
//! the backend's.

use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::PgConnectOptions;

use super::{LivePool, LivePoolBuilder};
use crate::backend::postgres::{self, Expect, PgSettings};

impl LivePool<Postgres> {
    /// Starts building a `LivePool` for Postgres that connects with
    /// `options` (through your primary's endpoint: the Service, VIP or
    /// PgBouncer in front of the cluster).
    ///
    /// ```no_run
    /// use tower_db_liveness::LivePool;
    ///
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let live = LivePool::postgres("postgres://app@db.internal:5432/app".parse()?)
    ///     .open()
    ///     .await?;
    /// let pool: sqlx::PgPool = live.pool();
    /// # Ok(())
    /// # }
    /// ```
    pub fn postgres(options: PgConnectOptions) -> LivePoolBuilder<Postgres> {
        let mut builder = LivePoolBuilder::from_options(options, PgSettings::default());
        // No deadline for a primary: a restart would wait the same way, and
        // a fleet that exits together reconnects together.
        builder.config.reopen_timeout = Duration::MAX;
        // Nothing on the filesystem to watch or rescue.
        builder.config.watchdog_interval = None;
        builder
    }
}

impl LivePoolBuilder<Postgres> {
    /// What the pool expects of its server. Default: [`Expect::Writable`].
    pub fn expect(mut self, expect: Expect) -> Self {
        self.settings.expect = expect;
        self
    }

    /// How often the background check asks an idle connection whether its
    /// server still takes writes (jittered between half and twice the
    /// interval); `None` turns it off. Default: every second.
    pub fn check_interval(mut self, interval: Option<Duration>) -> Self {
        self.settings.check_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Waits for a primary (for [`Expect::Writable`]: a server not in
    /// recovery; one read-only in place opens degraded,
    /// [`PoolStatus::ReadOnly`](crate::PoolStatus::ReadOnly)), up to the
    /// [reopen timeout](LivePoolBuilder::reopen_timeout) (none by default:
    /// bind your health routes first, or give the container a Kubernetes
    /// `startupProbe`), opens the pool, verifies it and starts the
    /// background check.
    ///
    /// The pool's `after_connect` is the crate's check; put per-connection
    /// settings in the connect options instead
    /// (`PgConnectOptions::options([("statement_timeout", "5s")])`).
    pub async fn open(self) -> Result<LivePool<Postgres>, sqlx::Error> {
        let Some((connect, pool)) = self.source.into_options() else {
            return Err(sqlx::Error::Configuration(
                "a Postgres LivePool is built from connect options".into(),
            ));
        };
        let (first, state, read_only) =
            postgres::open_first(connect, pool, self.settings, self.config.reopen_timeout).await?;
        let live = LivePool::start(first, state, self.config, Some(postgres::spawn_checks));
        postgres::attach(&live.policy(), read_only);
        Ok(live)
    }
}
