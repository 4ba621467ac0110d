//! `LivePoolBuilder::restart_to_heal`: for an app that keeps clones of its
//! pool in long-lived structs, no fault is healed in the process. Every
//! fatal fault still rescues first, then gives up; the restart reopens.
//! Real files, real faults: a restore by rename (which the default policy
//! heals) and an `rm -rf` of the data directory.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::atomic::Ordering;

use common::{TestDb, TestResult, count_in_file, insert, warm};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{GiveUpReason, LivePool, Outcome};

const ROWS: usize = 8;

/// A restore by rename under a running process: the default policy swaps in
/// the restored file; here the live rows are rescued, nothing is reopened,
/// the process gives up, and the restart serves the restored file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_by_rename_is_rescued_and_given_up_not_healed() -> TestResult {
    for journal in [SqliteJournalMode::Wal, SqliteJournalMode::Delete] {
        let db = TestDb::new(journal)?;
        let (live, reopens, mut exits) = common::open_live(&db, |b| b.restart_to_heal()).await?;
        // A clone kept for the process's life, as a store struct keeps it.
        let kept = live.pool();
        let generation = live.generation();
        for i in 0..ROWS {
            insert(&kept, &format!("live {i}")).await?;
        }
        warm(&kept).await?;
        let restore = db.backup("restore.db", 2).await?;
        std::fs::rename(&restore, &db.path)?;

        let outcome = common::within("the file check", live.check_file())
            .await?
            .ok_or("the file check found nothing")?;
        let Outcome::GaveUp(gave_up) = outcome else {
            return Err(format!("{journal:?}: expected a give-up, got {outcome:?}").into());
        };
        assert!(
            gave_up.reason == GiveUpReason::HealsOff,
            "{journal:?}: {:?}",
            gave_up.reason
        );
        assert!(
            gave_up.reason.to_string().contains("restart_to_heal"),
            "{}",
            gave_up.reason
        );
        assert_eq!(reopens.load(Ordering::SeqCst), 0, "{journal:?}: reopened");
        assert_eq!(live.generation(), generation, "{journal:?}: swapped");
        assert!(
            exits.next().await.is_some(),
            "{journal:?}: the exit action ran"
        );
        let rescue = gave_up.rescue.clone().ok_or("no rescue")?;
        let rows = i64::try_from(ROWS)?;
        assert_eq!(count_in_file(&rescue).await?, rows, "{journal:?}");
        // The kept clone never reaches the restored file.
        assert!(insert(&kept, "after").await.is_err(), "{journal:?}");
        common::within("the close", live.close()).await?;

        // The restart opens what is at the path: the restored file.
        let restarted = LivePool::builder(db.options())
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None)
            .open()
            .await?;
        assert_eq!(common::count(&restarted.pool()).await?, 2, "{journal:?}");
        restarted.close().await;
    }
    Ok(())
}

/// `rm -rf` of the data directory: the same rescue and marker as the
/// default policy, so the restart refuses until the rescue is put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rm_rf_is_rescued_and_the_restart_refuses() -> TestResult {
    for journal in [SqliteJournalMode::Wal, SqliteJournalMode::Delete] {
        let db = TestDb::new(journal)?;
        let (live, reopens, mut exits) = common::open_live(&db, |b| b.restart_to_heal()).await?;
        let kept = live.pool();
        for i in 0..ROWS {
            insert(&kept, &format!("live {i}")).await?;
        }
        warm(&kept).await?;
        db.rm_rf_dir()?;

        let outcome = common::within("the file check", live.check_file())
            .await?
            .ok_or("the file check found nothing")?;
        let Outcome::GaveUp(gave_up) = outcome else {
            return Err(format!("{journal:?}: expected a give-up, got {outcome:?}").into());
        };
        assert_eq!(reopens.load(Ordering::SeqCst), 0, "{journal:?}: reopened");
        assert!(
            exits.next().await.is_some(),
            "{journal:?}: the exit action ran"
        );
        let rescue = gave_up.rescue.clone().ok_or("no rescue")?;
        assert_eq!(
            count_in_file(&rescue).await?,
            i64::try_from(ROWS)?,
            "{journal:?}"
        );
        common::within("the close", live.close()).await?;

        // The restart (the app's own `create_if_missing(true)`) refuses,
        // naming the rescue, and creates nothing.
        std::fs::create_dir(&db.dir)?;
        match LivePool::builder(db.options())
            .watchdog_interval(None)
            .open()
            .await
        {
            Err(sqlx::Error::Configuration(err)) => {
                let text = err.to_string();
                assert!(text.contains(&rescue.display().to_string()), "{text}");
            }
            Err(other) => return Err(format!("{journal:?}: {other}").into()),
            Ok(_) => return Err(format!("{journal:?}: a restart opened an empty database").into()),
        }
        assert!(!db.path.exists(), "{journal:?}: a database was created");
    }
    Ok(())
}
