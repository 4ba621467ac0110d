//! The dead handle that no query reports: every file fault, in WAL and
//! DELETE journal modes, detected by the watchdog alone, rescued, then healed
//! or given up as documented. A reopen reattaches the database that was
//! open and never creates one, so a deleted or moved file ends in a give-up
//! (after the rescue); only a file replaced by the same application's
//! database (a restore) heals.
#![cfg(feature = "sqlite")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Exits, TestDb, TestResult, count_in_file, insert, open_live, warm};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{Fault, FileFault, GiveUpReason, LivePool, PoolStatus, StatusWatch};

const BEFORE: i64 = 50;
const AFTER: i64 = 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    RmRfDir,
    UnlinkFiles,
    RenameFile,
    RenameDir,
    ReplaceFile,
}

/// How the watchdog learns of the fault.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Watch {
    Polling,
    #[cfg_attr(not(feature = "fs-watch"), allow(dead_code))]
    FsEvents,
}

#[derive(Debug, PartialEq)]
enum Expected {
    Healed,
    GaveUp,
}

struct Report {
    acknowledged: i64,
    rescued: i64,
}

async fn apply(db: &TestDb, kind: Kind) -> TestResult {
    match kind {
        Kind::RmRfDir => db.rm_rf_dir()?,
        Kind::UnlinkFiles => db.unlink_files()?,
        Kind::RenameFile => db.rename_file()?,
        Kind::RenameDir => db.rename_dir()?,
        Kind::ReplaceFile => db.replace_file().await?,
    }
    Ok(())
}

fn expected_fault(kind: Kind) -> FileFault {
    match kind {
        Kind::RmRfDir | Kind::UnlinkFiles => FileFault::Deleted,
        Kind::RenameFile | Kind::RenameDir => FileFault::Moved,
        Kind::ReplaceFile => FileFault::Replaced,
    }
}

/// Waits on the policy's own signal for the first status that is not
/// "generation 0 live".
async fn next_change(status: &mut StatusWatch) -> TestResult {
    common::within(
        "a status other than live generation 0",
        status.wait_for(|s| !matches!(s, PoolStatus::Live { generation: 0, .. })),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    Ok(())
}

async fn scenario(
    journal: SqliteJournalMode,
    kind: Kind,
    expected: Expected,
    watch: Watch,
) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let db = TestDb::new(journal)?;
    let (live, reopens, mut exits) = open_live(&db, |b| {
        // With the filesystem watch, the poll is an hour away: the fault
        // must be seen through the watch, or the test times out.
        let poll = match watch {
            Watch::Polling => Duration::from_millis(100),
            Watch::FsEvents => Duration::from_secs(3600),
        };
        let b = b.watchdog_interval(Some(poll));
        #[cfg(feature = "fs-watch")]
        let b = b.fs_watch(watch == Watch::FsEvents);
        b
    })
    .await?;
    let mut status = live.subscribe();
    let old_pool = live.pool();
    for i in 0..BEFORE {
        insert(&old_pool, &format!("before {i}")).await?;
    }
    warm(&old_pool).await?;
    // A connection opened before the fault, as a request in flight holds one.
    let mut held = old_pool.acquire().await?;

    let fault_at = Instant::now();
    apply(&db, kind).await?;

    // WAL: writes keep being acknowledged into the lost file, even while the
    // policy is already healing: the heal waits for this connection to come
    // back before the rescue, so every one of them must be rescued.
    let mut acknowledged = BEFORE;
    if journal == SqliteJournalMode::Wal {
        for i in 0..AFTER {
            sqlx::query("INSERT INTO notes(body) VALUES (?)")
                .bind(format!("after {i}"))
                .execute(&mut *held)
                .await?;
            acknowledged += 1;
        }
    }
    drop(held);

    next_change(&mut status).await?;
    let detection = fault_at.elapsed();
    let final_status = common::within(
        "the end of the heal",
        status.wait_for(|s| {
            !matches!(
                s,
                PoolStatus::Healing { .. } | PoolStatus::RescueFailing { .. }
            )
        }),
    )
    .await?
    .ok_or("the LivePool is gone")?;

    let (fault, rescue) = match (&final_status, &expected) {
        (
            PoolStatus::Live {
                generation: 1,
                last_heal: Some(healed),
            },
            Expected::Healed,
        ) => {
            assert_eq!(reopens.load(std::sync::atomic::Ordering::SeqCst), 1);
            // The new pool serves the file now at the path.
            insert(&live.pool(), "on the new file").await?;
            let rows_at_path = count_in_file(&db.path).await?;
            assert_eq!(rows_at_path, 1, "the new file holds only the new row");
            (healed.fault.clone(), healed.rescue.clone())
        }
        (PoolStatus::GaveUp(gave_up), Expected::GaveUp) => {
            assert!(
                matches!(gave_up.reason, GiveUpReason::ReopenFailed(_)),
                "{:?}",
                gave_up.reason
            );
            let exit = exits.next().await.ok_or("the exit action did not run")?;
            assert_eq!(exit.exit_code, 1);
            // Nothing was created at the path: no empty database for a
            // restarted process to open.
            if matches!(kind, Kind::UnlinkFiles | Kind::RenameFile) {
                assert!(
                    !db.path.exists(),
                    "{kind:?}/{journal:?}: a database was created at the path"
                );
            }
            (gave_up.fault.clone(), gave_up.rescue.clone())
        }
        (other, expected) => {
            return Err(
                format!("{kind:?}/{journal:?}: expected {expected:?}, got {other:?}").into(),
            );
        }
    };
    assert_eq!(
        fault,
        Fault::File(expected_fault(kind)),
        "{kind:?}/{journal:?}"
    );

    let rescue = rescue.ok_or("no rescue file")?;
    assert_rescue_location(&db, kind, &rescue)?;
    if kind == Kind::ReplaceFile {
        // The restored file was opened without the old file's -wal: it holds
        // only what the restore put there and the one row written since.
        assert_eq!(
            count_in_file(&db.path).await?,
            1,
            "{journal:?}: the restore was overwritten"
        );
    }
    let rescued = count_in_file(&rescue).await?;
    assert_eq!(
        rescued, acknowledged,
        "{kind:?}/{journal:?}: rescued {rescued} of {acknowledged} acknowledged rows"
    );
    eprintln!(
        "{kind:?}/{journal:?}/{watch:?}: acknowledged {acknowledged}, rescued {rescued}, outcome {expected:?}, detection {detection:?}"
    );
    Ok(Report {
        acknowledged,
        rescued,
    })
}

fn assert_rescue_location(db: &TestDb, kind: Kind, rescue: &Path) -> TestResult {
    let expected_dir = match kind {
        // The file or its directory was removed (an `rm -rf` may be under
        // way): outside the database's directory, so the removal completes.
        Kind::RmRfDir | Kind::RenameDir | Kind::UnlinkFiles | Kind::RenameFile => {
            common::shared_rescues_dir(db.root.path())?
        }
        Kind::ReplaceFile => std::fs::canonicalize(&db.dir)?.join("app.db.rescues"),
    };
    assert_eq!(rescue.parent(), Some(expected_dir.as_path()), "{kind:?}");
    let name = rescue
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("rescue file name")?;
    assert!(name.starts_with("app.db.rescued-"), "{name}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(rescue)?.permissions().mode() & 0o777,
            0o600
        );
    }
    Ok(())
}

macro_rules! fault_tests {
    ($($(#[$meta:meta])* $name:ident: $journal:expr, $kind:expr, $expected:expr, $watch:expr;)*) => {$(
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> TestResult {
            let report = scenario($journal, $kind, $expected, $watch).await?;
            assert_eq!(report.rescued, report.acknowledged);
            Ok(())
        }
    )*};
}

// Polling leaves time for writes after the fault (WAL acknowledges them
// into the lost file), so the rescue is shown to keep those too.
fault_tests! {
    wal_rm_rf_dir_rescues_then_gives_up: SqliteJournalMode::Wal, Kind::RmRfDir, Expected::GaveUp, Watch::Polling;
    delete_rm_rf_dir_rescues_then_gives_up: SqliteJournalMode::Delete, Kind::RmRfDir, Expected::GaveUp, Watch::Polling;
    wal_unlink_rescues_then_gives_up: SqliteJournalMode::Wal, Kind::UnlinkFiles, Expected::GaveUp, Watch::Polling;
    delete_unlink_rescues_then_gives_up: SqliteJournalMode::Delete, Kind::UnlinkFiles, Expected::GaveUp, Watch::Polling;
    wal_rename_file_rescues_then_gives_up: SqliteJournalMode::Wal, Kind::RenameFile, Expected::GaveUp, Watch::Polling;
    delete_rename_file_rescues_then_gives_up: SqliteJournalMode::Delete, Kind::RenameFile, Expected::GaveUp, Watch::Polling;
    wal_rename_dir_rescues_then_gives_up: SqliteJournalMode::Wal, Kind::RenameDir, Expected::GaveUp, Watch::Polling;
    delete_rename_dir_rescues_then_gives_up: SqliteJournalMode::Delete, Kind::RenameDir, Expected::GaveUp, Watch::Polling;
    wal_replace_file_rescues_then_heals: SqliteJournalMode::Wal, Kind::ReplaceFile, Expected::Healed, Watch::Polling;
    delete_replace_file_rescues_then_heals: SqliteJournalMode::Delete, Kind::ReplaceFile, Expected::Healed, Watch::Polling;
}

// The filesystem watch sees the unlink or rename itself, before the next poll.
fault_tests! {
    #[cfg(feature = "fs-watch")]
    fs_watch_wal_rm_rf_dir: SqliteJournalMode::Wal, Kind::RmRfDir, Expected::GaveUp, Watch::FsEvents;
    #[cfg(feature = "fs-watch")]
    fs_watch_delete_unlink: SqliteJournalMode::Delete, Kind::UnlinkFiles, Expected::GaveUp, Watch::FsEvents;
    #[cfg(feature = "fs-watch")]
    fs_watch_wal_rename_file: SqliteJournalMode::Wal, Kind::RenameFile, Expected::GaveUp, Watch::FsEvents;
    #[cfg(feature = "fs-watch")]
    fs_watch_delete_rename_dir: SqliteJournalMode::Delete, Kind::RenameDir, Expected::GaveUp, Watch::FsEvents;
}

#[tokio::test]
async fn checkpoint_and_vacuum_do_not_trip_the_identity_check() -> TestResult {
    for journal in [SqliteJournalMode::Wal, SqliteJournalMode::Delete] {
        let db = TestDb::new(journal)?;
        let (live, reopens, _exits) = open_live(&db, |b| b).await?;
        for i in 0..200 {
            insert(&live.pool(), &format!("row {i:0>200}")).await?;
        }
        sqlx::query("DELETE FROM notes WHERE id % 2 = 0")
            .execute(&live.pool())
            .await?;
        if journal == SqliteJournalMode::Wal {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&live.pool())
                .await?;
        }
        sqlx::query("VACUUM").execute(&live.pool()).await?;
        assert!(live.check_file().await.is_none(), "{journal:?}");
        assert_eq!(live.generation(), 0);
        assert_eq!(reopens.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
    Ok(())
}

#[tokio::test]
async fn in_memory_databases_have_no_file_to_watch() -> TestResult {
    let options: SqliteConnectOptions = "sqlite::memory:".parse()?;
    let (builder, mut exits) = Exits::install(
        LivePool::builder(options).watchdog_interval(Some(Duration::from_millis(10))),
    );
    let live = builder.open().await?;
    common::create_table(&live.pool()).await?;
    insert(&live.pool(), "in memory").await?;
    assert!(live.check_file().await.is_none());
    assert_eq!(live.generation(), 0);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

#[tokio::test]
async fn dropping_the_last_handle_ends_the_watchdog() -> TestResult {
    let metrics = tokio::runtime::Handle::current().metrics();
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let baseline = metrics.num_alive_tasks();
    let live = LivePool::builder(db.options())
        .pool_options(TestDb::pool_options())
        .watchdog_interval(Some(Duration::from_secs(3600)))
        .open()
        .await?;
    assert_eq!(metrics.num_alive_tasks(), baseline + 1, "the watchdog runs");
    let clone = live.clone();
    drop(live);
    assert_eq!(metrics.num_alive_tasks(), baseline + 1, "a clone keeps it");
    drop(clone);
    // The watchdog is woken by the drop itself; give it turns until it is gone.
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.num_alive_tasks() > baseline {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    Ok(())
}
