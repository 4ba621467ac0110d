//! The `fs-watch` filesystem watch wakes the watchdog: with polling
//! effectively off (one poll an hour), only the watch can notice a deleted
//! database file in time.
#![cfg(all(feature = "fs-watch", feature = "sqlite"))]

mod common;

use std::time::Duration;

use common::{TestDb, TestResult, open_live, warm};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::PoolStatus;

/// Whether this process has an inotify watch on the inode `ino`, from
/// `/proc/self/fdinfo` (Linux). The watch is armed by the watchdog's first
/// round; the fault must come after it, or that first round's poll would
/// find it without any watch.
#[cfg(target_os = "linux")]
fn inotify_watches(ino: u64) -> std::io::Result<bool> {
    let wanted = format!("ino:{ino:x} ");
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        // Descriptors come and go under other tests: skip what vanished.
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if info
            .lines()
            .any(|l| l.starts_with("inotify") && l.contains(&wanted))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_wakes_the_watchdog() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, _reopens, _exits) = open_live(&db, |b| {
        b.watchdog_interval(Some(Duration::from_secs(3600)))
            .fs_watch(true)
    })
    .await?;
    warm(&live.pool()).await?;

    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::metadata(&db.dir)?.ino();
        // No signal tells when the watch is armed: look for it, bounded.
        tokio::time::timeout(Duration::from_secs(20), async {
            while !inotify_watches(dir)? {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|_| "the watchdog armed no watch on the database's directory within 20 s")??;
    }
    let mut status = live.subscribe();
    assert!(matches!(
        status.latest(),
        PoolStatus::Live { generation: 0, .. }
    ));

    db.unlink_files()?;
    // Healing, healed or gave up (a reopen may refuse to create a new
    // file): any of them means the watchdog woke. The next poll is an hour
    // away.
    let left = tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| !matches!(s, PoolStatus::Live { generation: 0, .. })),
    )
    .await
    .map_err(|_| "the watch did not wake the watchdog within 20 s")?;
    println!("{left:?}");
    assert!(left.is_some(), "the LivePool is gone");
    Ok(())
}

/// Counts the watchdog's identity checks (its trace event per check).
mod checks {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::{Context, SubscriberExt};

    pub static CHECKS: AtomicUsize = AtomicUsize::new(0);
    const MESSAGE: &str = "watchdog: checking the database file's identity";

    struct Count;

    struct Message(bool);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" && format!("{value:?}") == MESSAGE {
                self.0 = true;
            }
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            let mut message = Message(false);
            event.record(&mut message);
            if message.0 {
                CHECKS.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    pub fn install() {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let subscriber = tracing_subscriber::registry().with(Count);
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
    }

    pub fn now() -> usize {
        CHECKS.load(Ordering::SeqCst)
    }
}

/// Issue 18.7: anyone who can write the database's directory can create
/// and delete files in it. 10,000 create+unlink pairs of unrelated files
/// must not each wake an identity check: the watch drops events about
/// other names. A last event on one of the database's own names (a `-shm`
/// created and removed beside a DELETE-journal database, harmless) marks
/// the end of the storm: once its check has run, every event before it has
/// been seen.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_unrelated_events_costs_no_identity_checks() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    checks::install();
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, _reopens, _exits) = open_live(&db, |b| {
        b.watchdog_interval(Some(Duration::from_secs(3600)))
            .fs_watch(true)
    })
    .await?;
    warm(&live.pool()).await?;
    let dir = std::fs::metadata(&db.dir)?.ino();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !inotify_watches(dir)? {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| "no watch armed within 20 s")??;
    // The watchdog's first round (its first tick) is done once a check ran.
    common::within("the first check", async {
        while checks::now() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let before = checks::now();

    for i in 0..10_000 {
        let path = db.dir.join(format!("upload-{i}.tmp"));
        std::fs::write(&path, b"x")?;
        std::fs::remove_file(&path)?;
    }
    let marker = common::companion(&db.path, "-shm");
    std::fs::write(&marker, b"")?;
    std::fs::remove_file(&marker)?;
    common::within("the check woken by the last event", async {
        while checks::now() == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let during = checks::now() - before;
    eprintln!(
        "identity checks during 10,000 unrelated create+unlink pairs and one own event: {during}"
    );
    // The own name's create and remove: at most one check each.
    assert!(
        during <= 2,
        "{during} identity checks for a storm of unrelated events"
    );
    assert!(matches!(
        live.status(),
        PoolStatus::Live { generation: 0, .. }
    ));
    Ok(())
}
