//! The MySQL-only part of [`LivePool`]'s API: its builder. The work is the
//! backend's.

use std::time::Duration;

use sqlx::MySql;
use sqlx::mysql::MySqlConnectOptions;

use super::{LivePool, LivePoolBuilder};
use crate::backend::mysql::{self, MySqlSettings};

impl LivePool<MySql> {
    /// Starts building a `LivePool` for MySQL or MariaDB that connects with
    /// `options` (through your primary's endpoint: the VIP, the Aurora
    /// cluster endpoint, the proxy in front of the cluster). See
    /// [`crate::mysql`].
    ///
    /// ```no_run
    /// use tower_db_liveness::LivePool;
    ///
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let live = LivePool::mysql("mysql://app@db.internal:3306/app".parse()?)
    ///     .open()
    ///     .await?;
    /// let pool: sqlx::MySqlPool = live.pool();
    /// # Ok(())
    /// # }
    /// ```
    pub fn mysql(options: MySqlConnectOptions) -> LivePoolBuilder<MySql> {
        let mut builder = LivePoolBuilder::from_options(options, MySqlSettings::default());
        // A heal waits for a writable primary for as long as it takes: the
        // old primary stays up read-only, and a restarted process would
        // only wait the same way.
        builder.config.reopen_timeout = Duration::MAX;
        // Nothing on the filesystem to watch or rescue.
        builder.config.watchdog_interval = None;
        builder
    }
}

impl LivePoolBuilder<MySql> {
    /// How often the background check asks an idle connection whether its
    /// server still takes writes (jittered between half and twice the
    /// interval; while read-only, between half and once it, with one direct
    /// connection through the endpoint); `None` turns it off. Default:
    /// every second.
    pub fn check_interval(mut self, interval: Option<Duration>) -> Self {
        self.settings.check_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Waits for a server that takes writes (up to the [reopen
    /// timeout](LivePoolBuilder::reopen_timeout); for MySQL none by
    /// default), opens the pool, verifies it and starts the background
    /// check.
    ///
    /// The pool's `after_connect` is the crate's check; put per-connection
    /// settings in the connect options instead.
    pub async fn open(self) -> Result<LivePool<MySql>, sqlx::Error> {
        let Some((connect, pool)) = self.source.into_options() else {
            return Err(sqlx::Error::Configuration(
                "a MySQL LivePool is built from connect options".into(),
            ));
        };
        let (first, state) =
            mysql::open_first(connect, pool, self.settings, self.config.reopen_timeout).await?;
        let live = LivePool::start(first, state, self.config, Some(mysql::spawn_checks));
        mysql::attach(&live.policy());
        Ok(live)
    }
}
