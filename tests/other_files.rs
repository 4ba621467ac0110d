//! Issue 18.2: CORRUPT (11), NOTADB (26) and IOERR (10) from another file
//! than the pool's own database (an ATTACHed upload, a backup target) are
//! not fatal for the pool: nothing is reopened and nothing exits, however
//! often they come within the recurrence window. The pool's own damage
//! still is (tests/health.rs: a corrupt page, a file overwritten).
#![cfg(feature = "sqlite")]

mod common;

use std::sync::atomic::Ordering;

use common::{TestDb, TestResult, create_table, insert, open_live};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{ErrorClass, Outcome, PoolStatus, classify};

/// A real database of several pages whose page 2 is then overwritten.
async fn corrupt_file(
    db: &TestDb,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let path = db.root.path().join("upload-corrupt.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete),
    )
    .await?;
    create_table(&pool).await?;
    for i in 0..200 {
        insert(&pool, &format!("upload row {i:0>100}")).await?;
    }
    pool.close().await;
    let mut bytes = std::fs::read(&path)?;
    let page = 4096;
    for b in &mut bytes[page..2 * page] {
        *b = 0xA5;
    }
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_attached_files_and_backup_targets_are_not_the_pools() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    insert(&live.pool(), "ours").await?;

    let text = db.root.path().join("upload.txt");
    std::fs::write(&text, "name,email\nalice,alice@example.com\n".repeat(200))?;
    let corrupt = corrupt_file(&db).await?;
    let cases: [(&str, Vec<String>, i32); 3] = [
        (
            "ATTACH of a text file",
            vec![
                format!("ATTACH DATABASE '{}' AS upload", text.display()),
                "SELECT count(*) FROM upload.sqlite_schema".to_owned(),
            ],
            26,
        ),
        (
            "ATTACH of a corrupt database",
            vec![
                format!("ATTACH DATABASE '{}' AS upload", corrupt.display()),
                "SELECT count(*), max(body) FROM upload.notes".to_owned(),
            ],
            11,
        ),
        (
            // A target that cannot be written like a file: a real I/O error.
            "a backup to a failing target",
            vec!["VACUUM INTO '/proc/self/attr/current'".to_owned()],
            10,
        ),
    ];
    for (what, statements, primary) in &cases {
        for round in 0..3 {
            let lease = live.lease();
            let mut conn = lease.pool().acquire().await?;
            let mut failed = None;
            for statement in statements {
                if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut *conn)
                    .await
                {
                    failed = Some(err);
                    break;
                }
            }
            let _ = sqlx::query("DETACH DATABASE upload")
                .execute(&mut *conn)
                .await;
            drop(conn);
            let err = failed.ok_or_else(|| format!("{what}: no error"))?;
            let code: i32 = match &err {
                sqlx::Error::Database(db) => db.code().and_then(|c| c.parse().ok()).unwrap_or(0),
                _ => 0,
            };
            assert_eq!(code & 0xff, *primary, "{what}: {err}");
            assert_eq!(classify(&err), ErrorClass::Fatal, "{what}: {err}");
            let outcome = common::within(what, lease.report(&err)).await?;
            assert!(
                matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
                "{what}, round {round}: {outcome:?}"
            );
        }
    }
    assert_eq!(reopens.load(Ordering::SeqCst), 0, "reopens");
    assert_eq!(exits.count_now(), 0, "exits");
    assert_eq!(live.generation(), 0);
    assert!(matches!(
        live.status(),
        PoolStatus::Live { generation: 0, .. }
    ));
    assert_eq!(common::count(&live.pool()).await?, 1);
    Ok(())
}

/// The same codes from the pool's own file are still fatal: a page of the
/// database overwritten in place (same inode) is confirmed by the read of
/// the main database, and the policy reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_own_corruption_is_still_fatal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, _exits) = open_live(&db, |b| b).await?;
    for i in 0..200 {
        insert(&live.pool(), &format!("row {i:0>100}")).await?;
    }
    let mut bytes = std::fs::read(&db.path)?;
    for b in &mut bytes[4096..8192] {
        *b = 0xA5;
    }
    std::fs::write(&db.path, bytes)?;
    let lease = live.lease();
    let err = sqlx::query("SELECT count(*), max(body) FROM notes")
        .execute(lease.pool())
        .await
        .err()
        .ok_or("the read of a corrupt page succeeded")?;
    assert_eq!(classify(&err), ErrorClass::Fatal, "{err}");
    let outcome = common::within("the verdict", lease.report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Healed(_) | Outcome::GaveUp(_)),
        "{outcome:?}"
    );
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    Ok(())
}
