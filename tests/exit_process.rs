//! The policy's last resort, for real: a child process whose reopen fails
//! exits with status 1 through the default exit action.
#![cfg(feature = "sqlite")]

mod common;

use tokio::process::Command;

use common::{TestDb, TestResult, create_table, fail_write_after};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::LivePool;

const CHILD: &str = "TOWER_DB_LIVENESS_EXIT_CHILD";

/// The child half of `gives_up_with_exit_status_1`, which runs it (ignored,
/// so it never counts as a passing test on its own).
#[tokio::test]
#[ignore = "child half of gives_up_with_exit_status_1, which runs it"]
async fn child_gives_up() -> TestResult {
    std::env::var_os(CHILD).ok_or("run by its parent test only")?;
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let live = LivePool::builder(db.options())
        .watchdog_interval(None)
        .open()
        .await?;
    create_table(&live.pool()).await?;
    let err = fail_write_after(&live.pool(), || db.rm_rf_dir()).await?;
    // The reopen fails with 14 (the directory is gone): the default exit
    // action ends this process here.
    live.lease().report(&err).await;
    Err("the policy returned instead of exiting".into())
}

#[tokio::test]
async fn gives_up_with_exit_status_1() -> TestResult {
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "child_gives_up",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .kill_on_drop(true)
        .output();
    // Bounded: a child that never exits is a named failure (and is killed).
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), child)
        .await
        .map_err(|_| "the child did not exit within 60 s")??;
    assert_eq!(
        output.status.code(),
        Some(1),
        "child stdout: {}\nchild stderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
