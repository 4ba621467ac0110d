//! The policy's settings, as the builder sets them and the backends read
//! them, and the small helpers both sides use.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::GaveUp;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// How a backend opens the pool again (the user's own reopen, or the
/// default one with the first pool's options).
#[cfg(feature = "sqlite")]
pub(crate) type ReopenFn<DB> =
    Arc<dyn Fn() -> BoxFuture<Result<sqlx::Pool<DB>, sqlx::Error>> + Send + Sync>;
pub(crate) type GiveUpFn = Arc<dyn Fn(&GaveUp) + Send + Sync>;

#[derive(Clone)]
/// The policy's settings (nominally public for [`Policy::config`](super::Policy::config);
/// unreachable from outside the crate).
// Some settings are SQLite's alone.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub struct Config {
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
    /// [`LivePool::fixed`](crate::LivePool::fixed): fatal errors are logged, never healed or exited.
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

/// Where and how long a rescue may run.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) struct RescueConfig {
    pub(crate) enabled: bool,
    /// Tried first when set.
    pub(crate) dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
    /// Opted in: after a rescue is saved, keep only the newest this many
    /// rescues of this database in its rescue directory (at least 1, and
    /// never one a restore marker names). `None`: keep every one.
    pub(crate) keep: Option<usize>,
}

impl Default for RescueConfig {
    fn default() -> Self {
        RescueConfig {
            enabled: true,
            dir: None,
            timeout: Duration::from_secs(30),
            keep: None,
        }
    }
}

/// `now + after`, for any `after` a user may configure (`Duration::MAX`
/// for "wait for ever" included): a deadline past what `Instant` holds is
/// one no wait reaches.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// What a reopen that did not return says: its panic's text, or that it
/// was cancelled.
#[cfg(feature = "sqlite")]
pub(crate) fn panic_text(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return "the reopen was cancelled".to_owned();
    }
    let payload = join.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("the reopen panicked: {text}")
}
