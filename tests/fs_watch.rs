//! The `fs-watch` filesystem watch wakes the watchdog: with polling
//! effectively off (one poll an hour), only the watch can notice a deleted
//! database file in time.
#![cfg(feature = "fs-watch")]

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
