//! Issue 9.3 on a real full filesystem: a rescue that fails because the
//! disk is full keeps the dead handle (the only copy of the data) open and
//! `/health` red, never heals or exits meanwhile, and completes with every
//! acknowledged row once space is freed.
//!
//! The disk is a real, small tmpfs (or, where mounting tmpfs is not
//! permitted, a loop-mounted ext2 image); the test fails, never skips, when
//! neither can be mounted. The database's directory and the rescue
//! directory are both on it, so every place a rescue can go (the rescue
//! directory, the database's directory, the nearest existing ancestor: the
//! mount's root once the directory is deleted) is on the full filesystem.
#![cfg(feature = "sqlite")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    Exits, SmallDisk, TestDb, TestResult, bodies_in_file, create_table, fill, insert, warm,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{
    Check, Fault, FileFault, GiveUpReason, HealthService, LivePool, Outcome, PoolStatus,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(30);

fn body(i: usize) -> String {
    format!("row {i:04} {}", "x".repeat(600))
}

fn entries(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// One GET of `/health` through `ServiceExt::oneshot`: status and body.
async fn health_get(live: &LivePool) -> Result<(http::StatusCode, serde_json::Value), BoxError> {
    check_get(HealthService::new(live.clone())).await
}

/// One GET of `health` through `ServiceExt::oneshot`: status and body.
async fn check_get(
    health: HealthService,
) -> Result<(http::StatusCode, serde_json::Value), BoxError> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let request = http::Request::get("/health").body(())?;
    let response = tokio::time::timeout(WAIT, health.oneshot(request)).await??;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    eprintln!("/health: {status} {}", String::from_utf8_lossy(&bytes));
    Ok((status, serde_json::from_slice(&bytes)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_on_a_full_disk_holds_the_dead_handle_until_space_is_freed() -> TestResult {
    // The only test in this binary: the recorder is the process's.
    #[cfg(feature = "metrics")]
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let disk = SmallDisk::mount(2048)?;
    let data = disk.path().join("data");
    let rescue_dir = disk.path().join("rescue");
    std::fs::create_dir(&data)?;
    std::fs::create_dir(&rescue_dir)?;
    let path = data.join("app.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(1000));
    let (builder, mut exits) = Exits::install(
        LivePool::builder(options)
            .pool_options(TestDb::pool_options())
            .watchdog_interval(None)
            .drain_timeout(Duration::from_millis(200))
            .rescue_dir(&rescue_dir),
    );
    let live = builder.open().await?;
    create_table(&live.pool()).await?;

    // 300 rows checkpointed into the main file (committed 30 to a
    // transaction, so the -wal stays small on the small disk), 20 more,
    // one commit each, only in the -wal.
    let mut acknowledged = Vec::new();
    for batch in 0..10 {
        let mut tx = live.pool().begin().await?;
        for i in batch * 30..(batch + 1) * 30 {
            sqlx::query("INSERT INTO notes(body) VALUES (?)")
                .bind(body(i))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        acknowledged.extend((batch * 30..(batch + 1) * 30).map(body));
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&live.pool())
        .await?;
    for i in 300..320 {
        insert(&live.pool(), &body(i)).await?;
        acknowledged.push(body(i));
    }
    warm(&live.pool()).await?;
    let db_size = std::fs::metadata(&path)?.len();
    let wal_size = std::fs::metadata(common::companion(&path, "-wal"))?.len();
    eprintln!("database {db_size} B, -wal {wal_size} B");

    // A connection acquired before the deletion keeps acknowledging writes
    // into the unlinked file (WAL mode: no error at all).
    let mut before = live.pool().acquire().await?;
    sqlx::query("SELECT count(*) FROM notes")
        .execute(&mut *before)
        .await?;
    std::fs::remove_dir_all(&data)?;
    for i in 320..330 {
        sqlx::query("INSERT INTO notes(body) VALUES (?)")
            .bind(body(i))
            .execute(&mut *before)
            .await?;
        acknowledged.push(body(i));
    }
    drop(before);

    // The unlinked database's blocks are still counted; the filler takes
    // every block left.
    let filler = disk.path().join("filler");
    let filled = fill(&filler)?;
    eprintln!("filler holds {filled} B; the disk is full");

    let mut status = live.subscribe();
    let check = tokio::spawn({
        let live = live.clone();
        async move { live.check_file().await }
    });

    // The rescue fails, and is retried: a second failed attempt, and no
    // give-up in between.
    let failing = tokio::time::timeout(
        WAIT,
        status.wait_for(|s| {
            matches!(s, PoolStatus::RescueFailing { attempts, .. } if *attempts >= 2)
                || matches!(s, PoolStatus::GaveUp(_))
        }),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    eprintln!("status while the disk is full: {failing:?}");
    let PoolStatus::RescueFailing {
        generation,
        fault,
        attempts,
        code,
        temporary_copy,
    } = failing
    else {
        return Err(format!("expected a failing rescue, got {failing:?}").into());
    };
    assert_eq!(generation, 0);
    assert_eq!(fault, Fault::File(FileFault::Deleted));
    assert!(attempts >= 2, "{attempts}");
    assert_eq!(code, Some(13), "SQLITE_FULL from VACUUM INTO");
    assert_eq!(temporary_copy, None, "no place was untrusted");
    // Each failed attempt is counted for the operator's dashboard.
    #[cfg(feature = "metrics")]
    {
        let text = recorder.render();
        let failed = text
            .lines()
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(name, _)| *name == "db_liveness_rescues_total{result=\"failed\"}")
            .and_then(|(_, value)| value.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            failed >= f64::from(attempts),
            "{failed} < {attempts}:\n{text}"
        );
    }

    let (http_status, health) = health_get(&live).await?;
    assert_eq!(http_status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "fail");
    let check_entry = &health["checks"]["sqlite:responseTime"][0];
    assert_eq!(check_entry["status"], "fail");
    let output = check_entry["output"]
        .as_str()
        .ok_or("no output in the health answer")?;
    assert!(
        !output.contains('/') && !output.contains("app.db"),
        "the output holds a path: {output}"
    );

    // Probed the way a kubelet does (every period, here 100 ms, 10 times)
    // while the rescue is pending: liveness never fails (a restart would
    // lose the dead handle, the only copy), readiness always does.
    let health = HealthService::new(live.clone());
    let mut period = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..10 {
        period.tick().await;
        let (live_status, live_body) = check_get(health.clone().check(Check::Liveness)).await?;
        assert_eq!(live_status, http::StatusCode::OK, "{live_body}");
        assert_eq!(live_body["status"], "warn", "{live_body}");
        assert_eq!(live_body["state"], "rescue_pending", "{live_body}");
        let (ready_status, ready_body) = check_get(health.clone()).await?;
        assert_eq!(
            ready_status,
            http::StatusCode::SERVICE_UNAVAILABLE,
            "{ready_body}"
        );
        assert_eq!(ready_body["state"], "rescue_pending", "{ready_body}");
    }

    // Nothing healed, nothing given up, no exit, while no rescue is saved.
    assert_eq!(exits.count_now(), 0, "the exit action ran");
    assert!(!live.has_given_up());
    assert!(live.is_healing());
    assert!(!check.is_finished(), "the heal finished without a rescue");

    // Space is freed: a later attempt saves the rescue, then the policy
    // gives up (the directory is gone, nothing to reattach).
    std::fs::remove_file(&filler)?;
    let outcome = tokio::time::timeout(WAIT, check)
        .await??
        .ok_or("the file check found nothing")?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert!(
        matches!(gave_up.reason, GiveUpReason::ReopenFailed(_)),
        "{:?}",
        gave_up.reason
    );
    assert!(exits.next().await.is_some(), "the exit action ran");
    let rescue = gave_up.rescue.ok_or("no rescue")?;
    let private = common::shared_rescues_dir(&rescue_dir)?;
    assert_eq!(rescue.parent(), Some(private.as_path()), "{rescue:?}");

    // Every acknowledged row, the 10 written after the deletion included.
    let rescued = bodies_in_file(&rescue).await?;
    eprintln!(
        "rescue {} B, {} rows (acknowledged {})",
        std::fs::metadata(&rescue)?.len(),
        rescued.len(),
        acknowledged.len()
    );
    assert_eq!(rescued, acknowledged);
    // The failed attempts left no partial copies behind.
    let rescue_name = rescue
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("no file name")?;
    let in_private = entries(&private)?;
    assert_eq!(in_private.len(), 2, "{in_private:?}");
    assert!(in_private.contains(&rescue_name), "{in_private:?}");
    assert!(
        in_private
            .iter()
            .any(|n| n.starts_with("app.db.restore-needed-")),
        "the restore marker: {in_private:?}"
    );
    let private_name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    assert_eq!(entries(&rescue_dir)?, Vec::from_iter(private_name));
    assert_eq!(entries(disk.path())?, vec!["rescue".to_owned()]);

    live.close().await;
    drop(live);
    drop(disk);
    Ok(())
}
