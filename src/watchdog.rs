//! The background task that notices a deleted, moved or replaced database
//! file when no query fails.
//!
//! It polls the file identity every interval; with the `fs-watch` feature a
//! filesystem watch on the database's directory wakes it at once on an unlink
//! or rename, and polling stays as the fallback. It holds only a weak
//! reference and stops as soon as the last [`LivePool`](crate::LivePool)
//! handle is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

use crate::live_pool::{Fault, Inner};

pub(crate) fn spawn(inner: &Arc<Inner>, stop: oneshot::Receiver<()>) {
    let Some(interval) = inner.config.watchdog_interval else {
        return;
    };
    #[cfg(feature = "fs-watch")]
    let fs_watch = inner.config.fs_watch;
    #[cfg(not(feature = "fs-watch"))]
    let fs_watch = false;
    tokio::spawn(run(Arc::downgrade(inner), interval, fs_watch, stop));
}

async fn run(
    inner: Weak<Inner>,
    interval: Duration,
    fs_watch: bool,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut events = DirEvents::new(fs_watch);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
            _ = events.changed() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.gave_up() {
            return;
        }
        let current = inner.current();
        events.watch(current.file.as_ref().map(|f| f.path()));
        let Some(fault) = current.file.as_ref().and_then(|f| f.check().err()) else {
            continue;
        };
        tracing::error!(generation = current.number, %fault, "watchdog: the database file is not the one the pool has open");
        inner.fatal(current.number, Fault::File(fault)).await;
    }
}

#[cfg(feature = "fs-watch")]
use fs_events::DirEvents;

#[cfg(feature = "fs-watch")]
mod fs_events {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use notify::event::{EventKind, ModifyKind};
    use notify::{RecommendedWatcher, RecursiveMode, Watcher};
    use tokio::sync::Notify;

    /// A filesystem watch on the database's directory that wakes the
    /// watchdog on removals and renames (never on ordinary writes).
    pub(super) struct DirEvents {
        enabled: bool,
        wake: Arc<Notify>,
        watching: Option<(PathBuf, RecommendedWatcher)>,
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

        /// (Re)arms the watch on `db`'s directory when it changed.
        pub(super) fn watch(&mut self, db: Option<&Path>) {
            let dir = db.and_then(Path::parent);
            if !self.enabled || self.watching.as_ref().map(|(d, _)| d.as_path()) == dir {
                return;
            }
            self.watching = None;
            let Some(dir) = dir else { return };
            let wake = Arc::clone(&self.wake);
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    let relevant = match event {
                        Ok(event) => matches!(
                            event.kind,
                            EventKind::Remove(_)
                                | EventKind::Modify(ModifyKind::Name(_))
                                | EventKind::Create(_)
                        ),
                        // A broken watch: let the poll look right away.
                        Err(_) => true,
                    };
                    if relevant {
                        wake.notify_one();
                    }
                });
            match watcher.and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w)) {
                Ok(watcher) => self.watching = Some((dir.to_path_buf(), watcher)),
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "filesystem watch unavailable; polling only")
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

    fn watch(&mut self, _db: Option<&std::path::Path>) {}
}
