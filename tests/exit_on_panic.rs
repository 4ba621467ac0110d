//! Issue 10.6 (and 10.5 through the default exit action): a panic in user
//! code at give-up time must not keep the process alive. Each parent test
//! re-runs this test binary as a real child process that really gives up,
//! and reads the child's real exit status.
//!
//! The child halves are `#[ignore]`d (they never count as passing tests on
//! their own) and fail when the marker variable is missing. A child that
//! survives its give-up waits a bounded time and then returns normally, so
//! it exits 0 ("1 passed"): the parents assert the give-up's own code
//! instead, which only the policy's exit can produce.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{TestDb, TestResult, create_table, fail_write_after, insert, warm};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteJournalMode;
use tokio::process::Command;
use tower_db_liveness::{LivePool, Outcome};

const CHILD: &str = "TOWER_DB_LIVENESS_EXIT_ON_PANIC_CHILD";
/// How long a child that is still alive after its give-up waits before it
/// returns normally. There is no in-process signal for "the process is being
/// ended": the exit, when it comes, ends this wait.
const SURVIVOR_WAIT: Duration = Duration::from_secs(20);

/// Runs the child half `name` of this binary and returns its exit code.
async fn run_child(name: &str) -> Result<Option<i32>, Box<dyn std::error::Error + Send + Sync>> {
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .output();
    // Bounded: a child that never exits is a named failure (and is killed).
    let output = tokio::time::timeout(Duration::from_secs(90), child)
        .await
        .map_err(|_| format!("the child {name} did not exit within 90 s"))??;
    eprintln!(
        "child {name}: status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.status.code())
}

/// The child half of `a_panicking_on_give_up_hook_still_exits`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child half of a_panicking_on_give_up_hook_still_exits, which runs it"]
async fn child_on_give_up_panics() -> TestResult {
    std::env::var_os(CHILD).ok_or("run by its parent test only")?;
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let live = LivePool::builder(db.options())
        .pool_options(TestDb::pool_options())
        .watchdog_interval(None)
        .exit_code(7)
        .on_give_up(|_| panic!("hook panicked"))
        .open()
        .await?;
    create_table(&live.pool()).await?;
    for i in 0..5 {
        insert(&live.pool(), &format!("row {i}")).await?;
    }
    warm(&live.pool()).await?;
    // A real give-up: the directory is gone, so the reopen cannot reattach.
    db.rm_rf_dir()?;
    let outcome = tokio::time::timeout(SURVIVOR_WAIT, live.check_file())
        .await
        .map_err(|_| "the file check did not finish")?;
    eprintln!("child: check_file -> {outcome:?}");
    if !matches!(outcome, Some(Outcome::GaveUp(_))) {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    }
    // The exit action (the panicking hook, then the exit) runs right after
    // the outcome is published; a process still alive after this wait
    // survived its give-up.
    let _ = tokio::time::timeout(SURVIVOR_WAIT, std::future::pending::<()>()).await;
    eprintln!("child: still alive {SURVIVOR_WAIT:?} after the give-up");
    Ok(())
}

/// Issue 10.6: `on_give_up` panics; the process still ends, with the
/// configured exit code (not 0 from surviving, not 101 from a test panic).
#[tokio::test]
async fn a_panicking_on_give_up_hook_still_exits() -> TestResult {
    let code = run_child("child_on_give_up_panics").await?;
    assert_eq!(
        code,
        Some(7),
        "the child's exit status (see its output above)"
    );
    Ok(())
}

/// The child half of `a_panicking_reopen_exits_with_the_give_up_code`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child half of a_panicking_reopen_exits_with_the_give_up_code, which runs it"]
async fn child_reopen_panics() -> TestResult {
    std::env::var_os(CHILD).ok_or("run by its parent test only")?;
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    create_table(&pool).await?;
    let live = LivePool::builder_with_pool(pool, || async {
        panic!("the user's reopen panicked");
        #[allow(unreachable_code)]
        Ok::<SqlitePool, sqlx::Error>(unreachable!())
    })
    .watchdog_interval(None)
    .exit_code(9)
    .open()
    .await?;
    // A real fatal error: 1032 from a write on a connection whose file was
    // moved away; the file is moved back, so the heal goes on to the reopen.
    let lease = live.lease();
    let err = fail_write_after(&live.pool(), || {
        std::fs::rename(&db.path, db.dir.join("moved.db"))
    })
    .await?;
    std::fs::rename(db.dir.join("moved.db"), &db.path)?;
    let outcome = tokio::time::timeout(SURVIVOR_WAIT, lease.report(&err)).await;
    eprintln!("child: report -> {outcome:?}");
    // The default exit action runs right after the outcome is published.
    let _ = tokio::time::timeout(SURVIVOR_WAIT, std::future::pending::<()>()).await;
    eprintln!("child: still alive {SURVIVOR_WAIT:?} after the report");
    Ok(())
}

/// Issue 10.5 in a real process: the user's reopen panics; the policy gives
/// up and the default exit action ends the process with the configured code.
#[tokio::test]
async fn a_panicking_reopen_exits_with_the_give_up_code() -> TestResult {
    let code = run_child("child_reopen_panics").await?;
    assert_eq!(
        code,
        Some(9),
        "the child's exit status (see its output above)"
    );
    Ok(())
}
