//! Nothing acknowledged is lost, and no wrong database is served: the faults
//! next to the ones `file_faults` covers (a restore that leaves the old
//! `-wal` behind, a deleted `-wal` alone, a repointed symlink, a write that
//! commits after the drain, a reopen that would create a database), each
//! with real files, real pools and the real fault.
#![cfg(feature = "sqlite")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Exits, TestDb, TestResult, bodies_in_file, count_in_file, create_table, insert, open_live, warm,
};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode};
use tower_db_liveness::{
    Fault, FileFault, GiveUpReason, LivePool, LivePoolBuilder, Outcome, PoolStatus,
};

const WAIT: Duration = Duration::from_secs(30);

/// Files in `dir` whose name starts with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

async fn check_now(live: &LivePool) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    tokio::time::timeout(WAIT, live.check_file())
        .await?
        .ok_or_else(|| "the file check found nothing".into())
}

/// The default reopen (the same options), no watchdog, an injected exit.
fn default_builder(options: SqliteConnectOptions) -> (LivePoolBuilder, Exits) {
    Exits::install(
        LivePool::builder(options)
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None)
            .drain_timeout(Duration::from_millis(200)),
    )
}

/// Issue 9.1: the operator renames a backup over `app.db` while rows are
/// still in `app.db-wal`. The heal must not replay the old log into the
/// restore, neither when it reopens nor after the process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_by_rename_keeps_exactly_the_backup() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, reopens, _exits) = open_live(&db, |b| b).await?;
    for i in 0..40 {
        insert(&live.pool(), &format!("live {i}")).await?;
    }
    warm(&live.pool()).await?;
    assert!(
        common::companion(&db.path, "-wal").exists(),
        "rows are in the -wal"
    );

    let restore = db.backup("backup.db", 7).await?;
    std::fs::rename(&restore, &db.path)?;

    let Outcome::Healed(healed) = check_now(&live).await? else {
        return Err(format!("expected a heal, got {:?}", live.status()).into());
    };
    assert_eq!(healed.fault, Fault::File(FileFault::Replaced));
    assert_eq!(reopens.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Served: exactly the backup.
    assert_eq!(common::count(&live.pool()).await?, 7);
    // The old log was set aside, never deleted.
    let aside = files_starting(&db.dir, "app.db-wal.stale-")?;
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(std::fs::metadata(&aside[0])?.len() > 0);
    // Every acknowledged row of the old database is in the rescue.
    let rescue = healed.rescue.ok_or("no rescue")?;
    assert_eq!(count_in_file(&rescue).await?, 40);

    // After the process is gone: every connection closed, the file opened
    // afresh, as a restarted process would.
    live.close().await;
    drop(live);
    assert_eq!(count_in_file(&db.path).await?, 7);
    Ok(())
}

/// Issue 9.2: `create_if_missing(true)` in the app's options (needed on
/// first run) must not let a reopen create an empty database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_never_creates_the_database() -> TestResult {
    for journal in [SqliteJournalMode::Wal, SqliteJournalMode::Delete] {
        let db = TestDb::new(journal)?;
        let (builder, mut exits) = default_builder(db.options());
        let live = builder.open().await?;
        create_table(&live.pool()).await?;
        for i in 0..10 {
            insert(&live.pool(), &format!("row {i}")).await?;
        }
        warm(&live.pool()).await?;
        std::fs::remove_file(&db.path)?;

        let Outcome::GaveUp(gave_up) = check_now(&live).await? else {
            return Err(format!("{journal:?}: expected a give-up, got {:?}", live.status()).into());
        };
        assert!(
            matches!(&gave_up.reason, GiveUpReason::ReopenFailed(why) if why.contains("never creates")),
            "{journal:?}: {:?}",
            gave_up.reason
        );
        assert!(
            !db.path.exists(),
            "{journal:?}: a database was created at the path"
        );
        assert_eq!(
            count_in_file(&gave_up.rescue.ok_or("no rescue")?).await?,
            10
        );
        assert!(exits.next().await.is_some(), "the exit action ran");
    }
    Ok(())
}

/// Issue 9.2: a reopen that lands on another application's database (or an
/// empty one) is refused by the schema check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_schema_is_not_reattached() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (builder, mut exits) = default_builder(db.options());
    let live = builder.open().await?;
    create_table(&live.pool()).await?;
    insert(&live.pool(), "ours").await?;
    warm(&live.pool()).await?;

    let other = db.root.path().join("other-app.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&other)
            .create_if_missing(true),
    )
    .await?;
    sqlx::query("CREATE TABLE invoices(id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await?;
    pool.close().await;
    std::fs::rename(&other, &db.path)?;

    let Outcome::GaveUp(gave_up) = check_now(&live).await? else {
        return Err(format!("expected a give-up, got {:?}", live.status()).into());
    };
    assert!(
        matches!(&gave_up.reason, GiveUpReason::VerifyFailed(why) if why.contains("notes")),
        "{:?}",
        gave_up.reason
    );
    assert!(exits.next().await.is_some());
    Ok(())
}

/// Issue 9.2, opted in: with `reopen_creates(true)` and a reopen that builds
/// the schema, a deleted file heals onto a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_creates_heals_when_the_reopen_builds_the_schema() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, _exits) = open_live(&db, |b| b.reopen_creates(true)).await?;
    insert(&live.pool(), "before").await?;
    warm(&live.pool()).await?;
    std::fs::remove_file(&db.path)?;
    let Outcome::Healed(healed) = check_now(&live).await? else {
        return Err(format!("expected a heal, got {:?}", live.status()).into());
    };
    assert_eq!(reopens.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(count_in_file(&healed.rescue.ok_or("no rescue")?).await?, 1);
    insert(&live.pool(), "after").await?;
    assert_eq!(count_in_file(&db.path).await?, 1);
    Ok(())
}

/// Issue 9.5: `rm app.db-wal` alone. Writes keep being acknowledged into the
/// unlinked log; the identity check covers the companions, the rescue keeps
/// every row, and the policy exits (a restart reattaches cleanly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_only_the_wal_or_the_shm_is_a_file_fault() -> TestResult {
    for suffix in ["-wal", "-shm"] {
        let db = TestDb::new(SqliteJournalMode::Wal)?;
        let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
        for i in 0..30 {
            insert(&live.pool(), &format!("before {i}")).await?;
        }
        warm(&live.pool()).await?;
        std::fs::remove_file(common::companion(&db.path, suffix))?;
        // Still acknowledged: nothing reports the fault.
        for i in 0..5 {
            insert(&live.pool(), &format!("after {i}")).await?;
        }

        let Outcome::GaveUp(gave_up) = check_now(&live).await? else {
            return Err(format!("{suffix}: expected a give-up, got {:?}", live.status()).into());
        };
        assert_eq!(
            gave_up.fault,
            Fault::File(FileFault::CompanionDeleted),
            "{suffix}"
        );
        assert_eq!(
            reopens.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{suffix}"
        );
        let rescue = gave_up.rescue.ok_or("no rescue")?;
        assert_eq!(count_in_file(&rescue).await?, 35, "{suffix}");
        assert!(
            exits.next().await.is_some(),
            "{suffix}: the exit action ran"
        );
    }
    Ok(())
}

/// Issue 9.6: `current.db -> blue.db`, repointed atomically to `green.db`
/// (a blue/green deploy). SQLite resolved the link at open; the crate
/// checks the configured path too, rescues blue and heals onto green.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repointed_symlink_is_a_replace() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let blue = db.backup("blue.db", 3).await?;
    let green = db.backup("green.db", 5).await?;
    let current = db.dir.join("current.db");
    std::os::unix::fs::symlink(&blue, &current)?;

    let options = SqliteConnectOptions::new()
        .filename(&current)
        .journal_mode(SqliteJournalMode::Wal);
    let (builder, _exits) = default_builder(options);
    let live = builder.open().await?;
    insert(&live.pool(), "blue live").await?;
    warm(&live.pool()).await?;

    let next = db.dir.join("current.db.next");
    std::os::unix::fs::symlink(&green, &next)?;
    std::fs::rename(&next, &current)?;

    let Outcome::Healed(healed) = check_now(&live).await? else {
        return Err(format!("expected a heal, got {:?}", live.status()).into());
    };
    assert_eq!(healed.fault, Fault::File(FileFault::Replaced));
    let served: Vec<String> = sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(&live.pool())
        .await?;
    assert_eq!(served.len(), 5);
    assert!(
        served.iter().all(|b| b.starts_with("green.db")),
        "{served:?}"
    );
    let rescued = bodies_in_file(&healed.rescue.ok_or("no rescue")?).await?;
    assert_eq!(
        rescued.len(),
        4,
        "blue's 3 rows and the one written live: {rescued:?}"
    );
    Ok(())
}

/// Issue 9.4: a handler holds a write transaction across a slow call; the
/// directory is deleted; the heal drains (and gives up waiting), rescues
/// and gives up; then the handler's COMMIT returns Ok into the dead file.
/// That acknowledged write must be in a rescue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_committed_after_the_drain_is_rescued() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _reopens, mut exits) =
        open_live(&db, |b| b.drain_timeout(Duration::from_millis(100))).await?;
    for i in 0..20 {
        insert(&live.pool(), &format!("before {i}")).await?;
    }
    warm(&live.pool()).await?;
    let mut straggler = live.pool().acquire().await?;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *straggler)
        .await?;
    sqlx::query("INSERT INTO notes(body) VALUES ('straggler')")
        .execute(&mut *straggler)
        .await?;

    db.rm_rf_dir()?;
    let Outcome::GaveUp(gave_up) = check_now(&live).await? else {
        return Err(format!("expected a give-up, got {:?}", live.status()).into());
    };
    assert!(exits.next().await.is_some());
    let first = gave_up.rescue.ok_or("no rescue")?;
    assert!(
        !bodies_in_file(&first)
            .await?
            .contains(&"straggler".to_owned())
    );

    // The commit is acknowledged after the policy has given up.
    sqlx::query("COMMIT").execute(&mut *straggler).await?;
    drop(straggler);
    // Waits (bounded) for the dead generation to be sealed and rescued.
    tokio::time::timeout(WAIT, live.close()).await?;

    let mut found = false;
    let rescues = common::shared_rescues_dir(db.root.path())?;
    for rescue in files_starting(&rescues, "app.db.rescued-")? {
        found |= bodies_in_file(&rescue)
            .await?
            .contains(&"straggler".to_owned());
    }
    assert!(found, "the straggler's acknowledged commit is in no rescue");
    // The rescue a restart asks to restore is the one that holds it.
    let refusal = match LivePool::check_pending_rescue(&db.path, None, WAIT).await {
        Err(err) => err.to_string(),
        Ok(()) => return Err("no restore is asked for".into()),
    };
    let named = refusal
        .split("rescued to ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .ok_or_else(|| format!("no rescue named: {refusal}"))?;
    assert!(
        bodies_in_file(Path::new(named))
            .await?
            .contains(&"straggler".to_owned()),
        "{refusal}"
    );
    Ok(())
}

/// Issue 9.4, the other half: once sealed, the dead file acknowledges
/// nothing more: a write on a connection opened before the fault fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_dead_file_acknowledges_no_write() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
    insert(&live.pool(), "before").await?;
    warm(&live.pool()).await?;
    let mut late = live.pool().acquire().await?;
    sqlx::query("SELECT count(*) FROM notes")
        .execute(&mut *late)
        .await?;
    db.rm_rf_dir()?;
    let Outcome::GaveUp(gave_up) = check_now(&live).await? else {
        return Err(format!("expected a give-up, got {:?}", live.status()).into());
    };
    assert!(exits.next().await.is_some());
    let write = sqlx::query("INSERT INTO notes(body) VALUES ('after the seal')")
        .execute(&mut *late)
        .await;
    assert!(
        write.is_err(),
        "a write was acknowledged on the sealed dead file"
    );
    assert_eq!(count_in_file(&gave_up.rescue.ok_or("no rescue")?).await?, 1);
    Ok(())
}

/// Issue 10.8: exclusive locking mode would keep the rescue connection out
/// for ever; it is refused at open with a clear error.
#[tokio::test]
async fn exclusive_locking_mode_is_refused_at_open() -> TestResult {
    for journal in [SqliteJournalMode::Wal, SqliteJournalMode::Delete] {
        let db = TestDb::new(journal)?;
        let options = db.options().locking_mode(SqliteLockingMode::Exclusive);
        let opened = LivePool::builder(options)
            .watchdog_interval(None)
            .open()
            .await;
        match opened {
            Err(sqlx::Error::Configuration(why)) => {
                assert!(why.to_string().contains("Exclusive"), "{why}")
            }
            other => {
                return Err(
                    format!("{journal:?}: expected a configuration error, got {other:?}").into(),
                );
            }
        }
    }
    Ok(())
}

/// Issue 10.2: `ATTACH` or `VACUUM INTO` to a bad path gives CANTOPEN (14)
/// naming another file: the database is intact, so it is transient.
#[tokio::test]
async fn cantopen_of_another_file_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    for statement in [
        "ATTACH DATABASE '/nonexistent-dir/x.db' AS x",
        "VACUUM INTO '/nonexistent-dir/backup.db'",
    ] {
        for _ in 0..3 {
            let lease = live.lease();
            let err = sqlx::query(statement)
                .execute(lease.pool())
                .await
                .err()
                .ok_or("the statement succeeded")?;
            assert_eq!(
                tower_db_liveness::classify(&err),
                tower_db_liveness::ErrorClass::Fatal
            );
            let outcome = lease.report(&err).await;
            assert!(
                matches!(
                    outcome,
                    Outcome::Ignored(tower_db_liveness::ErrorClass::Transient)
                ),
                "{statement}: {outcome:?}"
            );
        }
    }
    assert_eq!(live.generation(), 0);
    assert_eq!(reopens.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(exits.count_now(), 0);
    assert!(matches!(
        live.status(),
        PoolStatus::Live { generation: 0, .. }
    ));
    Ok(())
}

/// Issue 10.5: a reopen that panics must not leave the policy healing for
/// ever: it gives up, and the exit action runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reopen_gives_up() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    create_table(&pool).await?;
    let (builder, mut exits) = Exits::install(
        LivePool::builder_with_pool(pool, || async {
            panic!("the user's reopen panicked");
            #[allow(unreachable_code)]
            Ok::<SqlitePool, sqlx::Error>(unreachable!())
        })
        .watchdog_interval(None),
    );
    let live = builder.open().await?;
    // A real fatal error: 1032 from a write on a connection whose file was
    // moved away; the file is moved back so the heal goes on to the reopen.
    let lease = live.lease();
    let err = common::fail_write_after(&live.pool(), || {
        std::fs::rename(&db.path, db.dir.join("moved.db"))
    })
    .await?;
    std::fs::rename(db.dir.join("moved.db"), &db.path)?;
    let outcome = tokio::time::timeout(WAIT, lease.report(&err)).await?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    // The reopen's own panic, caught as a failed reopen: not the heal
    // panicking around it ("the heal panicked").
    assert!(
        matches!(&gave_up.reason, GiveUpReason::ReopenFailed(why)
            if why.contains("the reopen panicked: the user's reopen panicked")),
        "{:?}",
        gave_up.reason
    );
    assert!(exits.next().await.is_some(), "the exit action ran");
    assert!(live.has_given_up() && !live.is_healing());
    Ok(())
}

/// Issue 9.1, one restart later (found by the review of this change): WAL
/// mode, `rm app.db` alone, rescue and give-up. The operator then restores a
/// backup at the path and the supervisor restarts the process: the restart
/// must not open the restore with the dead file's `-wal`, so the crate sets
/// it aside (renamed, never deleted) before it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_leaves_no_stale_wal_for_the_next_process() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
    for i in 0..40 {
        insert(&live.pool(), &format!("live {i}")).await?;
    }
    warm(&live.pool()).await?;
    std::fs::remove_file(&db.path)?;

    let Outcome::GaveUp(gave_up) = check_now(&live).await? else {
        return Err(format!("expected a give-up, got {:?}", live.status()).into());
    };
    assert!(exits.next().await.is_some());
    assert_eq!(
        count_in_file(&gave_up.rescue.ok_or("no rescue")?).await?,
        40
    );
    assert_eq!(files_starting(&db.dir, "app.db-wal.stale-")?.len(), 1);
    tokio::time::timeout(WAIT, live.close()).await?;
    drop(live);

    // The restore, then the restarted process.
    let restore = db.backup("backup.db", 7).await?;
    std::fs::rename(&restore, &db.path)?;
    let restarted = SqlitePool::connect_with(db.options()).await?;
    let rows = common::count(&restarted).await?;
    restarted.close().await;
    assert_eq!(
        rows, 7,
        "the restarted process read the restore through the dead -wal"
    );
    assert_eq!(count_in_file(&db.path).await?, 7);
    Ok(())
}

/// Found by the review of this change: a restore that lands between the
/// app's own pool opening and `LivePool::open` (or during a heal's reopen).
/// The identity is read from the path, but the pool's connections are on
/// the old file: the open is refused instead of watching the wrong file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_while_the_pool_opens_is_refused() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    create_table(&pool).await?;
    insert(&pool, "before the restore").await?;
    let restore = db.backup("backup.db", 2).await?;
    std::fs::rename(&restore, &db.path)?;

    let (_calls, reopen) = common::counting_reopen(db.options());
    let opened = LivePool::builder_with_pool(pool, reopen)
        .watchdog_interval(None)
        .open()
        .await;
    match opened {
        Err(err) => assert!(
            err.to_string()
                .contains("was replaced while the pool was being opened"),
            "{err}"
        ),
        Ok(live) => {
            return Err(format!("opened on the wrong file: {:?}", live.status()).into());
        }
    }
    Ok(())
}

/// A graceful shutdown: closing the last connections makes SQLite delete
/// its `-wal` and `-shm`. The closed `LivePool` must not read that as a
/// fault and give up (exit 1 instead of 0 after SIGTERM, as `layer_axum`'s
/// SIGTERM test once found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_live_pool_does_not_take_its_own_clean_up_for_a_fault() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    insert(&live.pool(), "row").await?;
    tokio::time::timeout(WAIT, live.close()).await?;
    assert!(
        !common::companion(&db.path, "-wal").exists(),
        "premise: the last close removed the -wal"
    );
    let outcome = check_now(&live).await?;
    assert!(
        matches!(
            outcome,
            Outcome::Ignored(tower_db_liveness::ErrorClass::Fatal)
        ),
        "{outcome:?}"
    );
    assert!(!live.has_given_up());
    assert_eq!(reopens.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(exits.count_now(), 0);
    assert_eq!(count_in_file(&db.path).await?, 1);
    Ok(())
}

/// Issue 18 (identity): after a heal, the replaced generation's file is on
/// the process-wide list of retired files. Once it is freed, ext4 hands its
/// inode number to the next new file; a file with that number replaced
/// while a pool opens must still be refused: identity is not the inode
/// number alone.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_inode_number_does_not_hide_a_replaced_file() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, _reopens, _exits) = open_live(&db, |b| b).await?;
    insert(&live.pool(), "first").await?;
    warm(&live.pool()).await?;
    let retired_ino = std::fs::metadata(&db.path)?.ino();
    // Prepared before the old file is freed, so they take no freed number.
    let template = db.backup("template.db", 3).await?;
    let restore = db.backup("restore.db", 2).await?;
    let later_restore = db.backup("later-restore.db", 1).await?;

    // A restore by rename: healed, and the old file is retired.
    std::fs::rename(&restore, &db.path)?;
    let Outcome::Healed(_) = check_now(&live).await? else {
        return Err(format!("expected a heal, got {:?}", live.status()).into());
    };
    live.close().await;
    drop(live);
    // The old file is freed once its last descriptor (the sentinel's, in
    // the background) is closed: bounded, nothing signals it.
    common::within("the retired file being closed", async {
        loop {
            let open = std::fs::read_dir("/proc/self/fd")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::metadata(fd.path()).ok())
                .any(|meta| meta.ino() == retired_ino);
            if !open {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    // Rescues and the healed generation's files live elsewhere; new files
    // in the same directory get numbers until the retired one comes back.
    // Kept (not deleted), so each takes the next free number. ext4 skips an
    // inode deleted a few seconds ago (its "recently deleted" check), so
    // the scan goes on, paced, for as long as that takes (bounded): the
    // freed number is the signal, nothing else announces it.
    let mut reused = None;
    let scan = std::time::Instant::now();
    let mut k = 0u32;
    while reused.is_none() && scan.elapsed() < Duration::from_secs(90) {
        let candidate = db.dir.join(format!("candidate-{k}.db"));
        std::fs::copy(&template, &candidate)?;
        if std::fs::metadata(&candidate)?.ino() == retired_ino {
            reused = Some(candidate);
        } else if k >= 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        k += 1;
    }
    let reused = reused.ok_or("the filesystem never reused the freed inode number")?;

    // The app's pool opens the file with the reused number; it is replaced
    // before the LivePool is opened around that pool.
    let options = SqliteConnectOptions::new()
        .filename(&reused)
        .journal_mode(SqliteJournalMode::Delete);
    let pool = TestDb::pool_options().connect_with(options.clone()).await?;
    warm(&pool).await?;
    std::fs::rename(&later_restore, &reused)?;
    let (_calls, reopen) = common::counting_reopen(options);
    let opened = LivePool::builder_with_pool(pool, reopen)
        .watchdog_interval(None)
        .open()
        .await;
    match opened {
        Err(err) => assert!(
            err.to_string()
                .contains("was replaced while the pool was being opened"),
            "{err}"
        ),
        Ok(live) => {
            return Err(format!(
                "opened on the wrong file (inode {retired_ino} reused): {:?}",
                live.status()
            )
            .into());
        }
    }
    Ok(())
}
