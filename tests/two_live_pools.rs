//! two LivePools on one database file in one process (a writer and
//! a reader pool, as SQLite apps often have), and the `/proc/self/fd` check
//! that refuses a pool when "this process has the path open on another file".
//!
//! Found by a review of this change; each test failed before its fix.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{Exits, TestDb, TestResult, insert, within};
use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{LivePool, Outcome};

async fn open(db: &TestDb) -> Result<(LivePool, Exits), Box<dyn std::error::Error + Send + Sync>> {
    let (builder, exits) = Exits::install(
        LivePool::builder(db.options())
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None)
            .drain_timeout(Duration::from_millis(200))
            .rescue_dir(db.root.path()),
    );
    Ok((builder.open().await?, exits))
}

/// A writer LivePool healed onto a restore while a request on its replaced
/// pool still holds a connection (the straggler).
async fn healed_with_a_straggler(
    db: &TestDb,
) -> Result<(LivePool, Exits, PoolConnection<Sqlite>), Box<dyn std::error::Error + Send + Sync>> {
    let (writer, exits) = open(db).await?;
    common::create_table(&writer.pool()).await?;
    insert(&writer.pool(), "x").await?;
    let straggler = writer.pool().acquire().await?;
    db.replace_file().await?;
    let healed = within("writer heal", writer.check_file()).await?;
    assert!(matches!(healed, Some(Outcome::Healed(_))), "{healed:?}");
    Ok((writer, exits, straggler))
}

/// A restore by rename: both pools heal onto it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_and_a_reader_pool_both_heal_onto_a_restore() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (writer, _w) = open(&db).await?;
    common::create_table(&writer.pool()).await?;
    let (reader, _r) = open(&db).await?;
    insert(&writer.pool(), "x").await?;
    db.replace_file().await?;
    let w = within("writer", writer.check_file()).await?;
    let r = within("reader", reader.check_file()).await?;
    assert!(matches!(w, Some(Outcome::Healed(_))), "writer: {w:?}");
    assert!(matches!(r, Some(Outcome::Healed(_))), "reader: {r:?}");
    writer.close().await;
    reader.close().await;
    Ok(())
}

/// After a restore healed by the writer, a request on the writer's replaced
/// pool is still running (a straggler). A second LivePool opened now (a
/// reader pool, a per-tenant pool opened lazily, a test's pool) on the same,
/// healthy, restored file must open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_livepool_opens_while_another_ones_replaced_pool_drains() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (writer, _w, straggler) = healed_with_a_straggler(&db).await?;

    let second = open(&db).await;
    drop(straggler);
    writer.close().await;
    let (reader, _r) = second.map_err(|err| {
        format!("a second LivePool on the healthy restored file failed to open: {err}")
    })?;
    reader.close().await;
    Ok(())
}

/// The same, with the second LivePool wrapping a pool the application
/// opened itself (`builder_with_pool`): what was open before that pool is
/// unknown, so the replaced generations of every LivePool in the process
/// are remembered and their descriptors are no finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wrapped_pool_opens_while_another_ones_replaced_pool_drains() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (writer, _w, straggler) = healed_with_a_straggler(&db).await?;

    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    let (_calls, reopen) = common::counting_reopen(db.options());
    let second = LivePool::builder_with_pool(pool, reopen)
        .watchdog_interval(None)
        .open()
        .await;
    drop(straggler);
    writer.close().await;
    let reader = second.map_err(|err| {
        format!("a second LivePool on the healthy restored file failed to open: {err}")
    })?;
    reader.close().await;
    Ok(())
}
