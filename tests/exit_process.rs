//! The policy's last resort, for real: a child process whose reopen fails
//! exits with status 1 through the default exit action.

mod common;

use std::process::Command;

use common::{TestDb, TestResult, create_table, fail_write_after};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::LivePool;

const CHILD: &str = "TOWER_DB_LIVENESS_EXIT_CHILD";

/// Runs only inside the child started by `gives_up_with_exit_status_1`.
#[tokio::test]
async fn child_gives_up() -> TestResult {
    if std::env::var_os(CHILD).is_none() {
        return Ok(());
    }
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

#[test]
fn gives_up_with_exit_status_1() -> TestResult {
    let output = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_gives_up",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "child stdout: {}\nchild stderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
