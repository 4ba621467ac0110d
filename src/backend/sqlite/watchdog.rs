//! The background task that notices a deleted, moved or replaced database
//! file when no query fails.
//!
//! It polls the file identity every interval; with the `fs-watch` feature a
//! filesystem watch on the database's directory wakes it at once on an unlink
//! or rename, and polling stays as the fallback. It holds only a weak
//! reference and stops as soon as the last [`LivePool`](crate::LivePool)
//! handle is dropped.
//!
//! The `stat` (and, for a vanished file, the scan of `/proc/self/fd`) runs on
//! the crate's filesystem threads, never on a runtime worker, and the tick
//! stops waiting after 1 s. A check that did not answer (a hung network or
//! FUSE mount) is logged, and from the third in a row logged as an error,
//! but never reopens the pool: a hung mount is not a proven dead file. The
//! health probe runs its own check, finds it stuck too and reports `fail`.
//! No strong reference to the pool is held while a check is pending.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

use crate::blocking;
use sqlx::Sqlite;

use crate::shared::{Fault, Policy, PolicyRef};

/// How long a tick waits for the file identity check. A `stat` that takes
/// longer is a hung mount, not a slow disk.
const CHECK_BOUND: Duration = Duration::from_secs(1);
/// Stuck checks in a row before the watchdog logs an error.
const STUCK_CHECKS: u32 = 3;

pub(crate) fn spawn(inner: &PolicyRef<Sqlite>, stop: oneshot::Receiver<()>) {
    let Some(interval) = inner.config().watchdog_interval else {
        return;
    };
    #[cfg(feature = "fs-watch")]
    let fs_watch = inner.config().fs_watch;
    #[cfg(not(feature = "fs-watch"))]
    let fs_watch = false;
    tokio::spawn(run(Arc::downgrade(inner), interval, fs_watch, stop));
}

async fn run(
    inner: Weak<dyn Policy<Sqlite>>,
    interval: Duration,
    fs_watch: bool,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut events = DirEvents::new(fs_watch);
    // Checks in a row that did not answer within CHECK_BOUND.
    let mut stuck: u32 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
            _ = events.changed() => {}
        }
        // No strong reference is held while a check may hang: the pool
        // must be free to drop meanwhile.
        let (number, file) = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.gave_up() || inner.is_closed() {
                return;
            }
            let current = inner.current();
            (current.number, current.file.clone())
        };
        let dir = file
            .as_ref()
            .and_then(|f| f.path().parent())
            .map(Path::to_path_buf);
        // The names in that directory whose removal or rename matters: the
        // database, its -wal and -shm, and the configured name (a symlink).
        let names = file.as_ref().map(watched_names).unwrap_or_default();
        tokio::select! {
            _ = &mut stop => return,
            () = events.watch(dir, names) => {}
        }
        let Some(file) = file else { continue };
        tracing::trace!(
            generation = number,
            "watchdog: checking the database file's identity"
        );
        let read_only = inner.upgrade().is_some_and(|i| i.is_read_only(number));
        let checked = tokio::select! {
            _ = &mut stop => return,
            // While read-only in place, also whether writes are possible again.
            checked = blocking::run(CHECK_BOUND, move || {
                file.check().map(|()| read_only && file.writable())
            }) => checked,
        };
        let fault = match checked {
            Ok(Ok(writable_again)) => {
                if stuck >= STUCK_CHECKS {
                    tracing::info!(
                        generation = number,
                        "watchdog: the database file's identity check answers again"
                    );
                }
                stuck = 0;
                if writable_again && let Some(inner) = inner.upgrade() {
                    inner.clear_read_only(number);
                }
                continue;
            }
            Ok(Err(fault)) => {
                stuck = 0;
                fault
            }
            // A hung mount is not a proven dead file: no reopen. The health
            // probe's own check is stuck too and reports it.
            Err(err) => {
                stuck = stuck.saturating_add(1);
                match stuck.cmp(&STUCK_CHECKS) {
                    std::cmp::Ordering::Less => {
                        tracing::warn!(generation = number, error = %err, "watchdog: the database file's identity check is stuck (a hung mount?)")
                    }
                    std::cmp::Ordering::Equal => {
                        tracing::error!(generation = number, error = %err, checks = stuck, "watchdog: the database file's identity check stays stuck; not reopening, /health reports it")
                    }
                    std::cmp::Ordering::Greater => tracing::debug!(
                        generation = number,
                        checks = stuck,
                        "watchdog: the database file's identity check is still stuck"
                    ),
                }
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        tracing::error!(generation = number, %fault, "watchdog: the database file is not the one the pool has open");
        inner.fatal(number, Fault::File(fault)).await;
    }
}

/// The file names in the database's directory whose removal, rename or
/// creation the filesystem watch wakes the watchdog for.
fn watched_names(file: &super::identity::DbFile) -> Vec<std::ffi::OsString> {
    let mut names = Vec::new();
    if let Some(name) = file.path().file_name() {
        for suffix in ["", "-wal", "-shm"] {
            let mut with = name.to_owned();
            with.push(suffix);
            names.push(with);
        }
    }
    if file.configured().parent() == file.path().parent()
        && let Some(name) = file.configured().file_name()
        && !names.iter().any(|n| n == name)
    {
        names.push(name.to_owned());
    }
    names
}

#[cfg(feature = "fs-watch")]
use fs_events::DirEvents;

#[cfg(feature = "fs-watch")]
mod fs_events {
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::sync::Arc;

    use notify::event::{EventKind, ModifyKind};
    use notify::{RecommendedWatcher, RecursiveMode, Watcher};
    use tokio::sync::Notify;

    use crate::blocking;

    /// A filesystem watch on the database's directory that wakes the
    /// watchdog on removals and renames (never on ordinary writes) of the
    /// database's own names, or of the directory itself. Events about other
    /// files in the directory (a busy upload folder, a `-journal` on every
    /// DELETE-mode write, anyone creating and deleting files) are dropped in
    /// the watch's thread, and the wake-ups that pass are coalesced (one
    /// pending wake-up at most): a storm costs the watch thread's filtering,
    /// not identity checks.
    pub(super) struct DirEvents {
        enabled: bool,
        wake: Arc<Notify>,
        watching: Option<(PathBuf, Vec<OsString>, RecommendedWatcher)>,
    }

    impl DirEvents {
        pub(super) fn new(enabled: bool) -> Self {
            DirEvents {
                enabled,
                wake: Arc::new(Notify::new()),
                watching: None,
            }
        }

        pub(super) async fn changed(&self) {
            if self.watching.is_some() {
                self.wake.notified().await
            } else {
                std::future::pending().await
            }
        }

        /// (Re)arms the watch on `dir` for `names` when they changed. Adding
        /// a watch resolves the path, which can hang like a `stat`: it runs
        /// on the filesystem threads, with a bound.
        pub(super) async fn watch(&mut self, dir: Option<PathBuf>, names: Vec<OsString>) {
            if !self.enabled
                || self
                    .watching
                    .as_ref()
                    .is_some_and(|(d, n, _)| Some(d) == dir.as_ref() && *n == names)
                || (self.watching.is_none() && dir.is_none())
            {
                return;
            }
            self.watching = None;
            let Some(dir) = dir else { return };
            let wake = Arc::clone(&self.wake);
            let watched = dir.clone();
            let (filter_dir, filter_names) = (dir.clone(), names.clone());
            let armed = blocking::run(super::CHECK_BOUND, move || {
                let watcher =
                    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                        let relevant = match event {
                            Ok(event) => {
                                event.need_rescan()
                                    || (matches!(
                                        event.kind,
                                        EventKind::Remove(_)
                                            | EventKind::Modify(ModifyKind::Name(_))
                                            | EventKind::Create(_)
                                    ) && event.paths.iter().any(|path| {
                                        *path == filter_dir
                                            || (path.parent() == Some(filter_dir.as_path())
                                                && path.file_name().is_some_and(|n| {
                                                    filter_names.iter().any(|w| w == n)
                                                }))
                                    }))
                            }
                            // A broken watch: let the poll look right away.
                            Err(_) => true,
                        };
                        if relevant {
                            wake.notify_one();
                        }
                    });
                watcher.and_then(|mut w| w.watch(&watched, RecursiveMode::NonRecursive).map(|()| w))
            })
            .await;
            match armed {
                Ok(Ok(watcher)) => self.watching = Some((dir, names, watcher)),
                Ok(Err(err)) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "filesystem watch unavailable; polling only")
                }
                // Tried again on the next tick.
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "filesystem watch could not be set up; polling only")
                }
            }
        }
    }
}

#[cfg(not(feature = "fs-watch"))]
struct DirEvents;

#[cfg(not(feature = "fs-watch"))]
impl DirEvents {
    fn new(_enabled: bool) -> Self {
        DirEvents
    }

    async fn changed(&self) {
        std::future::pending().await
    }

    async fn watch(&mut self, _dir: Option<std::path::PathBuf>, _names: Vec<std::ffi::OsString>) {}
}
