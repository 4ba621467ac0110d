//! A pool opened with `create_if_missing(true)` (the usual start-up) must
//! never create an empty database at the path later: after the file is
//! deleted, a connection the pool opens (every idle one busy) would
//! otherwise create a new, empty file there, which turns the deletion into
//! a "replaced" fault with no restore marker, and the restart serves the
//! empty database. Found by a review; failed before the fix (the new
//! connection created the file).
#![cfg(feature = "sqlite")]

mod common;

use common::{Exits, TestDb, TestResult, create_table};
use sqlx::sqlite::{SqliteJournalMode, SqlitePoolOptions};
use tower_db_liveness::LivePool;

async fn check(live: &LivePool, db: &TestDb) -> TestResult {
    // Every connection the pool has is busy, so the next one is new.
    let pool = live.pool();
    let mut held = Vec::new();
    while held.len() < pool.size() as usize {
        held.push(pool.acquire().await?);
    }
    db.unlink_files()?;
    let opened = pool.acquire().await;
    assert!(
        !db.path.exists(),
        "a connection opened after the deletion created {} ({:?})",
        db.path.display(),
        opened.as_ref().map(|_| "a connection")
    );
    assert!(
        opened.is_err(),
        "a connection to a deleted database was opened"
    );
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_after_a_deletion_creates_nothing() -> TestResult {
    for journal in [SqliteJournalMode::Wal, SqliteJournalMode::Delete] {
        let db = TestDb::new(journal)?;
        let (builder, _exits) = Exits::install(
            LivePool::builder(db.options()) // create_if_missing(true)
                .pool_options(SqlitePoolOptions::new().max_connections(4))
                .watchdog_interval(None),
        );
        let live = builder.open().await?;
        create_table(&live.pool()).await?;
        check(&live, &db).await?;
    }
    Ok(())
}

/// The same for a pool the application opened itself and handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_pool_creates_nothing_after_a_deletion() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(db.options())
        .await?;
    create_table(&pool).await?;
    let (builder, _exits) = Exits::install(LivePool::from_pool(pool).watchdog_interval(None));
    let live = builder.open().await?;
    check(&live, &db).await
}
