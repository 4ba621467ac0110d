//! Issue 9.2: a relative database path followed by a `chdir`. Neither the
//! pool's new connections nor a reopen may follow the relative path into
//! the new working directory (where `create_if_missing` would create an
//! empty database). One test in this binary: it changes the process's
//! working directory.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{Exits, TestResult, count, create_table, insert, warm};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{LivePool, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_path_is_reattached_after_a_chdir() -> TestResult {
    let started_in = std::env::current_dir()?;
    let first = tempfile::tempdir()?;
    let second = tempfile::tempdir()?;
    std::env::set_current_dir(first.path())?;

    let options = SqliteConnectOptions::new()
        .filename("app.db")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete);
    let (builder, _exits) = Exits::install(
        LivePool::builder(options)
            .watchdog_interval(None)
            .drain_timeout(Duration::from_millis(100)),
    );
    let live = builder.open().await?;
    create_table(&live.pool()).await?;
    insert(&live.pool(), "first").await?;
    warm(&live.pool()).await?;

    std::env::set_current_dir(second.path())?;
    let result = after_the_chdir(&live, first.path(), second.path()).await;
    std::env::set_current_dir(started_in)?;
    result
}

async fn after_the_chdir(
    live: &LivePool,
    first: &std::path::Path,
    second: &std::path::Path,
) -> TestResult {
    // A burst of requests: the pool opens new connections (found by the
    // review of this change: they used to follow the relative path).
    let pool = live.pool();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await?);
    }
    for (i, conn) in held.iter_mut().enumerate() {
        sqlx::query("INSERT INTO notes(body) VALUES (?)")
            .bind(format!("burst {i}"))
            .execute(&mut **conn)
            .await?;
    }
    drop(held);
    assert!(
        !second.join("app.db").exists(),
        "the pool created a database in the new directory"
    );
    assert_eq!(count(&live.pool()).await?, 5);

    // A restore of the database in the first directory: the same schema,
    // three rows.
    let backup = first.join("backup.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&backup)
            .create_if_missing(true),
    )
    .await?;
    create_table(&pool).await?;
    for i in 0..3 {
        insert(&pool, &format!("restored {i}")).await?;
    }
    pool.close().await;
    std::fs::rename(&backup, first.join("app.db"))?;

    let outcome = tokio::time::timeout(Duration::from_secs(30), live.check_file())
        .await?
        .ok_or("the file check found nothing")?;
    let Outcome::Healed(_) = outcome else {
        return Err(format!("expected a heal, got {outcome:?}").into());
    };
    assert_eq!(count(&live.pool()).await?, 3, "the restore is served");
    assert!(
        !second.join("app.db").exists(),
        "the reopen followed the relative path into the new directory"
    );
    Ok(())
}
