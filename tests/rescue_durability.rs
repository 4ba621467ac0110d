//! Issue 18, what a restart finds after a fault, tried by an adversarial
//! review with real files, real mounts and a real second user:
//!
//! * the process stopped while its rescue could only go to the temporary
//!   directory: the restart still refuses (the marker names the copy);
//! * the data directory is a volume of its own (a tmpfs mounted there, as a
//!   container's volume is): the rescue stays on the volume, not on the
//!   directory above it (a container's writable layer, gone with it);
//! * the service's own rescue directory loosened by an operator (`chmod
//!   g+w`): the restart refuses and says why, instead of missing the marker
//!   and starting empty.
#![cfg(all(target_os = "linux", feature = "sqlite"))]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{SmallDisk, TestDb, TestResult, insert, open_live, within};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{LivePool, PoolStatus};

const NOBODY: u32 = 65534;

/// What a restart of an app with `create_if_missing(true)` does at `path`:
/// `Err` with the refusal, or `Ok` with the number of tables it served.
async fn restart(path: &Path) -> Result<i64, String> {
    LivePool::check_pending_rescue(path, None, Duration::from_secs(5))
        .await
        .map_err(|err| err.to_string())?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let live = LivePool::builder(options)
        .watchdog_interval(None)
        .open()
        .await
        .map_err(|err| err.to_string())?;
    let tables = sqlx::query_scalar("SELECT count(*) FROM sqlite_schema")
        .fetch_one(&live.pool())
        .await
        .map_err(|err| err.to_string())?;
    live.close().await;
    Ok(tables)
}

/// Twelve notes, the files unlinked, the give-up: where the rescue went.
async fn rescue_after_unlink(
    db: &TestDb,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let (live, _reopens, mut exits) = open_live(db, |b| b).await?;
    for i in 0..12 {
        insert(&live.pool(), &format!("note {i}")).await?;
    }
    db.unlink_files()?;
    let _ = live.check_file().await;
    let gave_up = within("the give-up", exits.next())
        .await?
        .ok_or("no give-up")?;
    live.close().await;
    Ok(gave_up.rescue.ok_or("no rescue")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_refuses_while_only_a_temporary_copy_exists() -> TestResult {
    // A Kubernetes fsGroup volume: the data directory group-writable, under
    // a directory of another user: no place near the database is trusted.
    // (Not under the temporary directory: a rescue there would last as
    // long as the database.)
    let root = common::outside_temporary_dir()?;
    let volume = root.path().join("volume");
    let dir = volume.join("data");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775))?;
    std::os::unix::fs::chown(&volume, Some(NOBODY), Some(NOBODY))?;
    let path = dir.join("app.db");
    let db = TestDb {
        root,
        dir,
        path: path.clone(),
        journal: SqliteJournalMode::Wal,
    };
    let (live, _reopens, _exits) = open_live(&db, |b| {
        b.rescue_timeout(Duration::from_secs(1))
            .reopen_timeout(Duration::from_secs(1))
    })
    .await?;
    for i in 0..12 {
        insert(&live.pool(), &format!("note {i}")).await?;
    }
    let mut status = live.subscribe();
    db.unlink_files()?;
    let check = tokio::spawn({
        let live = live.clone();
        async move { live.check_file().await }
    });
    let pending = within(
        "a rescue pending with a temporary copy",
        status.wait_for(|s| {
            matches!(
                s,
                PoolStatus::RescueFailing {
                    temporary_copy: Some(_),
                    ..
                }
            )
        }),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    let PoolStatus::RescueFailing {
        temporary_copy: Some(copy),
        ..
    } = pending
    else {
        return Err(format!("{pending:?}").into());
    };
    // Stopped before any durable place took the rescue (a SIGTERM's close,
    // which gives up waiting; a SIGKILL would leave the same files).
    live.close().await;
    drop(live);
    check.abort();

    let restarted = restart(&path).await;
    let refusal = restarted.expect_err("the restart must not open the path");
    assert!(
        refusal.contains(&copy.display().to_string()),
        "the refusal names the temporary copy: {refusal}"
    );
    assert!(!path.exists(), "nothing was created at the path");
    if let Some(private) = copy.parent() {
        std::fs::remove_dir_all(private)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_mounted_at_the_data_directory_keeps_its_rescue() -> TestResult {
    let disk = SmallDisk::mount(16 * 1024)?;
    let db = TestDb {
        root: tempfile::tempdir()?,
        dir: disk.path().to_path_buf(),
        path: disk.path().join("app.db"),
        journal: SqliteJournalMode::Wal,
    };
    let rescue = rescue_after_unlink(&db).await?;
    assert_eq!(
        std::fs::metadata(&rescue)?.dev(),
        std::fs::metadata(disk.path())?.dev(),
        "the rescue {} is on the database's volume, not on the directory above it",
        rescue.display()
    );
    assert_eq!(common::count_in_file(&rescue).await?, 12);
    let refusal = restart(&db.path).await.expect_err("the restart refuses");
    assert!(refusal.contains(&rescue.display().to_string()), "{refusal}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loosened_rescue_directory_refuses_the_restart() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let rescue = rescue_after_unlink(&db).await?;
    let private = rescue.parent().ok_or("the rescue has no directory")?;
    // An operator's `chmod -R g+w` of the data tree.
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o770))?;

    let refusal = restart(&db.path).await.expect_err("the restart refuses");
    assert!(
        refusal.contains("can be written by other users")
            && refusal.contains(&private.display().to_string()),
        "{refusal}"
    );
    assert!(!db.path.exists(), "nothing was created at the path");
    Ok(())
}
