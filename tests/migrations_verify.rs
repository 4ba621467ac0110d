//! `LivePoolBuilder::migrations` runs the migrator on the reopened
//! file *before* it is verified, so the verification ("every table of the
//! old one, the same user_version and application_id") compares against a
//! schema the migrations just built. Any SQLite file at the path (an empty
//! one, another application's) passes and is served.
//!
//! Found by a review of this change; each test failed before its fix.
#![cfg(all(feature = "migrate", feature = "sqlite"))]

mod common;

use std::time::Duration;

use common::{Exits, TestDb, TestResult, insert, within};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{LivePool, Outcome};

static MIGRATOR: Migrator = sqlx::migrate!("examples/adopt/migrations");

/// A migrated LivePool with 20 rows of user data.
async fn open_migrated(
    db: &TestDb,
) -> Result<(LivePool, Exits), Box<dyn std::error::Error + Send + Sync>> {
    let (builder, exits) = Exits::install(
        LivePool::builder(db.options())
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None)
            .drain_timeout(Duration::from_millis(200))
            .rescue_dir(db.root.path())
            .migrations(&MIGRATOR),
    );
    let live = builder.open().await?;
    for i in 0..20 {
        insert(&live.pool(), &format!("user data {i}")).await?;
    }
    Ok((live, exits))
}

/// An empty file (0 bytes, as `touch` or a failed copy leaves) is renamed
/// over the database. Without migrations the reopen is refused ("tables
/// missing"); with them, the empty file is migrated and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_at_the_path_is_not_healed_onto() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _exits) = open_migrated(&db).await?;

    let empty = db.root.path().join("empty.db");
    std::fs::write(&empty, b"")?;
    std::fs::rename(&empty, &db.path)?;

    let outcome = within("check_file", live.check_file()).await?;
    let served: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&live.pool())
        .await
        .ok();
    live.close().await;
    assert!(
        !matches!(outcome, Some(Outcome::Healed(_))),
        "healed onto an empty file made to look like the application's database by the \
         migrations; now serving {served:?} rows instead of 20: {outcome:?}"
    );
    Ok(())
}

/// Another application's database is restored over ours by mistake: the
/// migrations add our tables to it (writing into the wrong file), and it is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_applications_database_is_neither_migrated_nor_served() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _exits) = open_migrated(&db).await?;

    let other = db.root.path().join("billing.db");
    {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&other)
                .create_if_missing(true),
        )
        .await?;
        sqlx::query("CREATE TABLE invoices(id INTEGER PRIMARY KEY, amount INTEGER)")
            .execute(&pool)
            .await?;
        pool.close().await;
    }
    std::fs::rename(&other, &db.path)?;

    let outcome = within("check_file", live.check_file()).await?;
    live.close().await;
    drop(live);
    // Whatever the policy decided, the other application's file must be untouched.
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(&db.path),
    )
    .await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    assert!(
        !matches!(outcome, Some(Outcome::Healed(_))),
        "healed onto another application's database: {outcome:?} (its tables now: {tables:?})"
    );
    assert_eq!(
        tables,
        vec!["invoices".to_owned()],
        "the reopen's migrations wrote into another application's database before verifying it"
    );
    Ok(())
}
