//! `LivePool::close()` called while a heal is in flight (a SIGTERM
//! during a heal: the graceful shutdown calls `close()` and then exits).
//!
//! `close()` promises to wait "until every replaced generation is sealed,
//! rescued and closed" and that "no finding heals it any more". While a heal
//! is in flight it returns at once (`if self.is_healing() { return; }`), before
//! the heal has rescued anything, and the heal goes on afterwards: it rescues
//! late, gives up (the exit action runs after close) or swaps a brand-new
//! pool in on a closed `LivePool`.
//!
//! Found by a review of this change; each test failed before its fix.
#![cfg(feature = "sqlite")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Exits, TestDb, TestResult, count_in_file, insert, within};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{LivePool, Outcome, PoolStatus};

fn rescues_in(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(".rescued-") {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}

async fn open(
    db: &TestDb,
    options: SqliteConnectOptions,
) -> Result<(LivePool, Exits), Box<dyn std::error::Error + Send + Sync>> {
    let (builder, exits) = Exits::install(
        LivePool::builder(options)
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None)
            // A connection still checked out keeps the heal in its drain.
            .drain_timeout(Duration::from_secs(3))
            .rescue_dir(db.root.path()),
    );
    let live = builder.open().await?;
    common::create_table(&live.pool()).await?;
    Ok((live, exits))
}

/// Finds the fault on a task of its own (the check waits for the heal) and
/// returns once the heal is in flight.
async fn start_heal(
    live: &LivePool,
) -> Result<tokio::task::JoinHandle<Option<Outcome>>, Box<dyn std::error::Error + Send + Sync>> {
    let checker = live.clone();
    let check = tokio::spawn(async move { checker.check_file().await });
    let mut status = live.subscribe();
    within(
        "the heal starts",
        status.wait_for(|s| !matches!(s, PoolStatus::Live { .. })),
    )
    .await?;
    Ok(check)
}

/// The file is deleted; a request still holds a connection, so the heal
/// drains; SIGTERM arrives and the app calls `close()`, then exits. The
/// acknowledged rows must be in a rescue by the time `close()` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_heal_waits_for_the_rescue() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, mut exits) = open(&db, db.options()).await?;
    for i in 0..30 {
        insert(&live.pool(), &format!("acknowledged {i}")).await?;
    }
    // A request in flight: a connection checked out of the pool.
    let held = live.pool().acquire().await?;

    db.unlink_files()?;
    let check = start_heal(&live).await?;

    // SIGTERM: the graceful shutdown ends, the app closes the LivePool...
    let started = Instant::now();
    within("close()", live.close()).await?;
    let took = started.elapsed();
    // ...and the process exits here. What is on disk now is all there is.
    let rescues = rescues_in(&[
        &common::shared_rescues_dir(db.root.path()).unwrap_or_default(),
        &db.dir.join("app.db.rescues"),
    ]);
    let mut rescued = 0;
    for rescue in &rescues {
        rescued = rescued.max(count_in_file(rescue).await.unwrap_or(0));
    }

    // (Let the heal finish, to see what it does after close.)
    drop(held);
    let _ = within("the heal ends", check).await;
    let gave_up_after_close = exits.count_now();

    assert_eq!(
        rescued,
        30,
        "close() returned after {took:?} while the heal was in flight, with {} rescue file(s) \
         holding {rescued} of the 30 acknowledged rows: an exit right after close() loses them",
        rescues.len()
    );
    assert_eq!(
        gave_up_after_close, 0,
        "the heal went on after close() and ran the exit action"
    );
    Ok(())
}

/// A restore is being healed when the app closes the LivePool: after close()
/// nothing may be reopened ("no finding heals it any more"); the heal must
/// not swap a new, open pool in behind the app's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_heal_leaves_no_new_pool_open() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _exits) = open(&db, db.options()).await?;
    for i in 0..5 {
        insert(&live.pool(), &format!("row {i}")).await?;
    }
    let held = live.pool().acquire().await?;

    db.replace_file().await?;
    let check = start_heal(&live).await?;
    within("close()", live.close()).await?;
    drop(held);
    let outcome = within("the heal ends", check).await?;

    assert!(
        live.pool().is_closed(),
        "after close() the heal swapped in generation {} with an open pool ({outcome:?})",
        live.generation()
    );
    Ok(())
}
