//! `classify` on errors produced for real by SQLite through sqlx.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{TestDb, TestResult, create_table, insert};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tower_db_liveness::{ErrorClass, classify, classify_chain};

/// The extended result code sqlx reports, for asserting we produced the
/// fault we meant to.
fn code(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
}

fn expect_err<T>(result: sqlx::Result<T>) -> Result<sqlx::Error, String> {
    match result {
        Ok(_) => Err("the operation was expected to fail".to_owned()),
        Err(err) => Ok(err),
    }
}

#[tokio::test]
async fn readonly_dbmoved_1032_is_fatal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let pool = SqlitePool::connect_with(db.options()).await?;
    create_table(&pool).await?;
    let mut old = pool.acquire().await?;
    sqlx::query("SELECT count(*) FROM notes")
        .execute(&mut *old)
        .await?;
    db.rm_rf_dir()?;

    let err = expect_err(
        sqlx::query("INSERT INTO notes(body) VALUES ('x')")
            .execute(&mut *old)
            .await,
    )?;
    assert_eq!(code(&err).as_deref(), Some("1032"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Fatal);
    Ok(())
}

#[tokio::test]
async fn cantopen_14_is_fatal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    db.rm_rf_dir()?;
    let err = expect_err(SqliteConnection::connect_with(&db.options()).await)?;
    assert_eq!(code(&err).as_deref(), Some("14"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Fatal);
    Ok(())
}

#[tokio::test]
async fn notadb_26_is_fatal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    std::fs::write(&db.path, vec![0x5a; 16 * 1024])?;
    let err = expect_err(SqliteConnection::connect_with(&db.options()).await)?;
    assert_eq!(code(&err).as_deref(), Some("26"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Fatal);
    Ok(())
}

#[tokio::test]
async fn corrupt_11_is_fatal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let pool = SqlitePool::connect_with(db.options()).await?;
    create_table(&pool).await?;
    for i in 0..200 {
        insert(&pool, &format!("{i:0>300}")).await?;
    }
    pool.close().await;

    // Page 2 is the root of `notes`: overwrite it with junk.
    let mut bytes = std::fs::read(&db.path)?;
    bytes[4096..8192].fill(0xa5);
    std::fs::write(&db.path, bytes)?;

    let pool = SqlitePool::connect_with(db.options()).await?;
    let err = expect_err(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
            .fetch_one(&pool)
            .await,
    )?;
    assert_eq!(code(&err).as_deref(), Some("11"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Fatal);
    Ok(())
}

#[tokio::test]
async fn busy_5_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let holder = SqlitePool::connect_with(db.options()).await?;
    create_table(&holder).await?;
    let mut lock = holder.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await?;

    let other = SqlitePool::connect_with(db.options().busy_timeout(Duration::ZERO)).await?;
    let err = expect_err(insert(&other, "blocked").await)?;
    assert_eq!(code(&err).as_deref(), Some("5"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Transient);

    sqlx::query("ROLLBACK").execute(&mut *lock).await?;
    Ok(())
}

#[tokio::test]
async fn busy_snapshot_517_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let a = SqlitePool::connect_with(db.options()).await?;
    create_table(&a).await?;
    insert(&a, "first").await?;

    let mut b = SqliteConnection::connect_with(&db.options()).await?;
    sqlx::query("BEGIN").execute(&mut b).await?;
    sqlx::query("SELECT count(*) FROM notes")
        .execute(&mut b)
        .await?;
    insert(&a, "second").await?;
    let err = expect_err(
        sqlx::query("INSERT INTO notes(body) VALUES ('stale snapshot')")
            .execute(&mut b)
            .await,
    )?;
    assert_eq!(code(&err).as_deref(), Some("517"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Transient);
    Ok(())
}

#[tokio::test]
async fn full_13_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let pool = SqlitePool::connect_with(db.options().pragma("max_page_count", "20")).await?;
    create_table(&pool).await?;
    let mut failure = None;
    for i in 0..1000 {
        if let Err(err) = insert(&pool, &format!("{i:0>1000}")).await {
            failure = Some(err);
            break;
        }
    }
    let err = failure.ok_or("the database never filled up")?;
    assert_eq!(code(&err).as_deref(), Some("13"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Transient);
    Ok(())
}

#[tokio::test]
async fn constraint_and_sql_errors_are_other() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let pool = SqlitePool::connect_with(db.options()).await?;
    create_table(&pool).await?;
    insert(&pool, "dup").await?;

    let unique = expect_err(insert(&pool, "dup").await)?;
    assert_eq!(code(&unique).as_deref(), Some("2067"), "{unique}");
    assert_eq!(classify(&unique), ErrorClass::Other);

    let missing = expect_err(sqlx::query("SELECT * FROM missing").execute(&pool).await)?;
    assert_eq!(code(&missing).as_deref(), Some("1"), "{missing}");
    assert_eq!(classify(&missing), ErrorClass::Other);
    Ok(())
}

/// A file that cannot be written is degraded, not dead, and not a bug:
/// transient (503 + Retry-After), the pool kept.
#[tokio::test]
async fn readonly_8_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let pool = SqlitePool::connect_with(db.options()).await?;
    create_table(&pool).await?;
    let ro = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&db.path)
            .read_only(true),
    )
    .await?;
    let err = expect_err(insert(&ro, "nope").await)?;
    assert_eq!(code(&err).as_deref(), Some("8"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Transient);
    Ok(())
}

#[tokio::test]
async fn pool_timed_out_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(100))
        .connect_with(db.options())
        .await?;
    let held = pool.acquire().await?;
    let timed_out = expect_err(sqlx::query("SELECT 1").execute(&pool).await)?;
    assert!(
        matches!(timed_out, sqlx::Error::PoolTimedOut),
        "{timed_out:?}"
    );
    assert_eq!(classify(&timed_out), ErrorClass::Transient);
    drop(held);
    Ok(())
}

/// A heal closes the dead pool, so a request that reaches it late gets
/// `PoolClosed`: an availability condition, answered 503 with Retry-After
/// (gRPC: UNAVAILABLE), never a 500.
#[tokio::test]
async fn pool_closed_is_transient_and_answers_503() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let pool = SqlitePool::connect_with(db.options()).await?;
    create_table(&pool).await?;
    pool.close().await;
    let closed = || async { expect_err(insert(&pool, "late").await) };

    let err = closed().await?;
    assert!(matches!(err, sqlx::Error::PoolClosed), "{err:?}");
    assert_eq!(classify(&err), ErrorClass::Transient);
    assert_eq!(classify_chain(&err), Some(ErrorClass::Transient));

    let err = tower_db_liveness::DbError::from(closed().await?);
    assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);

    #[cfg(feature = "axum")]
    {
        use axum::response::IntoResponse;
        let response = tower_db_liveness::DbError::from(closed().await?).into_response();
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(http::header::RETRY_AFTER),
            Some(&http::HeaderValue::from_static("1"))
        );
    }
    #[cfg(feature = "tonic")]
    {
        let status = tower_db_liveness::status_from_sqlx(closed().await?);
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    Ok(())
}

/// The message is never read: a real SQLite error whose text carries
/// "disk I/O error" (from the statement) is classified by its code, 1.
#[tokio::test]
async fn a_message_with_a_fatal_text_is_classified_by_its_code() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let pool = SqlitePool::connect_with(db.options()).await?;
    let err = expect_err(
        sqlx::query(r#"SELECT * FROM "disk I/O error: database is locked""#)
            .execute(&pool)
            .await,
    )?;
    assert_eq!(code(&err).as_deref(), Some("1"), "{err}");
    assert!(err.to_string().contains("disk I/O error"), "{err}");
    assert_eq!(classify(&err), ErrorClass::Other);
    Ok(())
}

/// An application error that wraps a real `sqlx::Error` two levels deep.
#[derive(Debug)]
struct Outer(Middle);
#[derive(Debug)]
struct Middle(sqlx::Error);

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request failed")
    }
}
impl std::fmt::Display for Middle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("storage failed")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
impl std::error::Error for Middle {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn classify_chain_finds_a_wrapped_error() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    db.rm_rf_dir()?;
    let err = expect_err(SqliteConnection::connect_with(&db.options()).await)?;
    let wrapped = Outer(Middle(err));
    assert_eq!(classify_chain(&wrapped), Some(ErrorClass::Fatal));

    // The inner database error alone, without its `sqlx::Error` wrapper.
    let Outer(Middle(sqlx::Error::Database(inner))) = wrapped else {
        return Err("expected a database error".into());
    };
    let boxed: Box<dyn std::error::Error + Send + Sync> = inner.into_error();
    assert_eq!(classify_chain(boxed.as_ref()), Some(ErrorClass::Fatal));

    assert_eq!(
        classify_chain(&std::io::Error::other("not a database")),
        None
    );
    Ok(())
}
