//! The reopen-once-or-exit policy on real faults.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestDb, TestResult, count, fail_write_after, insert, open_live, warm};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{ErrorClass, GiveUpReason, LivePool, Outcome, classify};

/// Unlinks the file under a DELETE-journal pool whose connections are all
/// open on it, and returns the 1032 a write on an old connection gets.
///
/// A reopen never creates a database unless allowed: the tests that need a
/// heal after an unlink open with `reopen_creates(true)` and a reopen that
/// builds the schema (see `common::counting_reopen`).
async fn unlink_and_fail_write(
    db: &TestDb,
    live: &LivePool,
) -> Result<sqlx::Error, Box<dyn std::error::Error + Send + Sync>> {
    fail_write_after(&live.pool(), || db.unlink_files()).await
}

#[tokio::test]
async fn heals_after_unlink_and_serves_the_new_pool() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b.reopen_creates(true)).await?;
    insert(&live.pool(), "before").await?;
    warm(&live.pool()).await?;

    let err = unlink_and_fail_write(&db, &live).await?;
    assert_eq!(classify(&err), ErrorClass::Fatal, "{err}");

    let outcome = common::within("the outcome", live.report_at(0, &err)).await?;
    let Outcome::Healed(healed) = outcome else {
        return Err(format!("expected a heal, got {outcome:?}").into());
    };
    assert_eq!(healed.generation, 1);
    assert_eq!(live.generation(), 1);
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    assert!(!live.is_healing());

    // The new pool writes to the file now at the path.
    insert(&live.pool(), "after heal").await?;
    assert_eq!(count(&live.pool()).await?, 1);
    assert_eq!(common::count_in_file(&db.path).await?, 1);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

#[tokio::test]
async fn gives_up_when_the_reopen_fails() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    // Even a reopen allowed to create the file fails: its directory is gone.
    let (live, reopens, mut exits) =
        open_live(&db, |b| b.reopen_creates(true).exit_code(3)).await?;
    let err = fail_write_after(&live.pool(), || db.rm_rf_dir()).await?;

    let outcome = common::within("the outcome", live.report_at(0, &err)).await?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert!(
        matches!(&gave_up.reason, GiveUpReason::ReopenFailed(msg) if msg.contains("14")),
        "{:?}",
        gave_up.reason
    );
    assert_eq!(gave_up.exit_code, 3);
    let exit = exits.next().await.ok_or("exit action never ran")?;
    assert_eq!(exit.exit_code, 3);
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    assert!(live.has_given_up());

    // Terminal: later fatal reports do not reopen and do not exit again.
    let again = common::within("the outcome", live.report_at(0, &err)).await?;
    assert!(matches!(again, Outcome::GaveUp(_)), "{again:?}");
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reports_make_one_reopen() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, _exits) = open_live(&db, |b| b.reopen_creates(true)).await?;
    let err = std::sync::Arc::new(unlink_and_fail_write(&db, &live).await?);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (live, err) = (live.clone(), err.clone());
        tasks.spawn(async move { live.report_at(0, &err).await });
    }
    let mut healed = 0;
    let mut stale = 0;
    while let Some(outcome) = common::within("the reports' outcomes", tasks.join_next()).await? {
        match outcome? {
            Outcome::Healed(h) => {
                assert_eq!(h.generation, 1);
                healed += 1;
            }
            // A report scheduled after the heal finished sees a replaced pool.
            Outcome::Stale {
                reported: 0,
                current: 1,
            } => stale += 1,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(healed + stale, 1000);
    assert!(healed >= 1);
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    assert_eq!(live.generation(), 1);
    Ok(())
}

#[tokio::test]
async fn a_report_from_a_replaced_pool_is_stale() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, _exits) = open_live(&db, |b| b.reopen_creates(true)).await?;
    let err = unlink_and_fail_write(&db, &live).await?;
    assert!(matches!(
        common::within("the outcome", live.report_at(0, &err)).await?,
        Outcome::Healed(_)
    ));

    // A request that started on generation 0 fails late with the same error.
    let late = common::within("the outcome", live.report_at(0, &err)).await?;
    assert!(
        matches!(
            late,
            Outcome::Stale {
                reported: 0,
                current: 1
            }
        ),
        "{late:?}"
    );
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_fault_recurring_on_the_fresh_pool_gives_up() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| {
        b.reopen_creates(true)
            .recurrence_window(Duration::from_secs(3600))
    })
    .await?;
    let err = unlink_and_fail_write(&db, &live).await?;
    assert!(matches!(
        common::within("the outcome", live.report_at(0, &err)).await?,
        Outcome::Healed(_)
    ));

    // The same fault again, this time on the fresh generation.
    let err = unlink_and_fail_write(&db, &live).await?;
    let outcome = common::within("the outcome", live.report_at(1, &err)).await?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert!(
        matches!(gave_up.reason, GiveUpReason::Recurred { .. }),
        "{:?}",
        gave_up.reason
    );
    assert!(exits.next().await.is_some());
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn heals_are_budgeted() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| {
        b.reopen_creates(true)
            .recurrence_window(Duration::ZERO)
            .max_heals(2, Duration::from_secs(3600))
    })
    .await?;
    for generation in 0..2 {
        let err = unlink_and_fail_write(&db, &live).await?;
        let outcome = common::within("the outcome", live.report_at(generation, &err)).await?;
        assert!(matches!(outcome, Outcome::Healed(_)), "{outcome:?}");
    }
    let err = unlink_and_fail_write(&db, &live).await?;
    let outcome = common::within("the outcome", live.report_at(2, &err)).await?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert_eq!(
        gave_up.reason,
        GiveUpReason::TooManyHeals {
            heals: 2,
            within: Duration::from_secs(3600)
        }
    );
    assert!(exits.next().await.is_some());
    assert_eq!(reopens.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn transient_errors_never_reopen() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, _exits) = open_live(&db, |b| b).await?;

    // A second pool holds the write lock; ours gives up waiting at once.
    let holder = sqlx::SqlitePool::connect_with(db.options()).await?;
    let mut lock = holder.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await?;
    let impatient =
        sqlx::SqlitePool::connect_with(db.options().busy_timeout(Duration::ZERO)).await?;
    let err = insert(&impatient, "blocked")
        .await
        .err()
        .ok_or("write under a held lock succeeded")?;

    for _ in 0..10 {
        let outcome = common::within("the outcome", live.lease().report(&err)).await?;
        assert!(
            matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
            "{outcome:?}"
        );
    }
    let timed_out = common::within(
        "the outcome",
        live.lease().report(&sqlx::Error::PoolTimedOut),
    )
    .await?;
    assert!(matches!(timed_out, Outcome::Ignored(ErrorClass::Transient)));
    assert_eq!(reopens.load(Ordering::SeqCst), 0);
    assert_eq!(live.generation(), 0);

    sqlx::query("ROLLBACK").execute(&mut *lock).await?;
    insert(&live.pool(), "after the lock").await?;
    Ok(())
}

/// The default reopen opens the file that was open with the same options
/// (journal mode, busy timeout, pragmas), only never creating it: shown on
/// the pool it swaps in after a restore replaced the file.
#[tokio::test]
async fn the_default_reopen_uses_the_same_options() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let options = db
        .options()
        .busy_timeout(Duration::from_millis(1234))
        .foreign_keys(false);
    let (builder, _exits) = common::Exits::install(
        LivePool::builder(options)
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None),
    );
    let live = builder.open().await?;
    common::create_table(&live.pool()).await?;
    warm(&live.pool()).await?;
    db.replace_file().await?; // a DELETE-journal file of the same schema
    let outcome = live.check_file().await;
    assert!(matches!(outcome, Some(Outcome::Healed(_))), "{outcome:?}");

    let mut conn = live.pool().acquire().await?;
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await?;
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(
        journal, "wal",
        "the restored DELETE file was reopened in WAL mode"
    );
    assert_eq!(busy, 1234);
    assert_eq!(foreign_keys, 0);
    Ok(())
}

#[tokio::test]
async fn corruption_in_the_file_recurs_after_the_reopen_and_gives_up() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    for i in 0..200 {
        insert(&live.pool(), &format!("{i:0>300}")).await?;
    }
    // Damage page 2 (the root of `notes`) in place: same inode, so no file fault.
    let mut bytes = std::fs::read(&db.path)?;
    bytes[4096..8192].fill(0xa5);
    std::fs::write(&db.path, bytes)?;
    // Connections that cached the page may still read it; a new pool cannot.
    let fresh = sqlx::SqlitePool::connect_with(db.options()).await?;
    let err = count(&fresh)
        .await
        .err()
        .ok_or("the damaged page was read")?;
    assert_eq!(classify(&err), ErrorClass::Fatal, "{err}");

    // One reopen: the schema page is intact, so the new pool verifies...
    let outcome = common::within("the outcome", live.report_at(0, &err)).await?;
    assert!(matches!(outcome, Outcome::Healed(_)), "{outcome:?}");
    // ...but the damage is in the file, and it comes back on the new pool.
    let again = count(&live.pool())
        .await
        .err()
        .ok_or("the damaged page was read")?;
    let outcome = common::within("the outcome", live.report_at(1, &again)).await?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert!(
        matches!(gave_up.reason, GiveUpReason::Recurred { .. }),
        "{:?}",
        gave_up.reason
    );
    assert!(exits.next().await.is_some());
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    Ok(())
}
