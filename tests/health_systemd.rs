//! The systemd watchdog against a real notify socket.
//!
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` are process-wide, so the scenario
//! runs in a child process of this test binary that gets them from the
//! start, and binds the notify socket itself, as systemd would have.
#![cfg(feature = "systemd")]

mod common;
mod health_support;

use std::process::Command;
use std::time::Duration;

use common::{TestDb, TestResult, warm};
use health_support::open_gated;
use sqlx::sqlite::SqliteJournalMode;
use tokio::net::UnixDatagram;
use tower_db_liveness::{HealthService, PoolStatus, systemd};

const CHILD: &str = "TOWER_DB_LIVENESS_SYSTEMD_CHILD";

/// The next datagram systemd would have received.
async fn next(socket: &UnixDatagram) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut buf = vec![0; 4096];
    let n = socket.recv(&mut buf).await?;
    let message = String::from_utf8(buf[..n].to_vec())?;
    println!("notify: {message:?}");
    Ok(message)
}

/// Reads datagrams until one carries `status` in its `STATUS=` line.
async fn until_status(
    socket: &UnixDatagram,
    status: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    loop {
        let message = next(socket).await?;
        if message.contains(&format!("STATUS=database {status}")) {
            return Ok(message);
        }
    }
}

/// Runs only inside the child started by `feeds_systemd_only_while_the_database_lives`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_under_a_systemd_watchdog() -> TestResult {
    if std::env::var_os(CHILD).is_none() {
        return Ok(());
    }
    let socket = UnixDatagram::bind(std::env::var_os("NOTIFY_SOCKET").ok_or("no NOTIFY_SOCKET")?)?;
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, gate, mut exits) = open_gated(&db, |b| b).await?;
    warm(&live.pool()).await?;
    let health = HealthService::new(live.clone());
    let _watchdog = systemd::spawn_watchdog(&health).ok_or("the watchdog did not start")?;

    // Alive: STATUS and WATCHDOG=1, then WATCHDOG=1 on every tick.
    let first = until_status(&socket, "pass").await?;
    assert!(first.contains("WATCHDOG=1\n"), "{first:?}");
    assert_eq!(next(&socket).await?, "WATCHDOG=1\n");

    // The file goes: the probe that finds it fails and does not feed.
    db.unlink_files()?;
    let found = until_status(&socket, "fail").await?;
    assert_eq!(found, "STATUS=database fail: database file deleted\n");
    // The heal it started is in flight (the real reopen held at the gate):
    // warn, fed.
    let healing = until_status(&socket, "warn").await?;
    assert!(healing.contains("WATCHDOG=1\n"), "{healing:?}");
    gate.open.notify_one();
    let healed = until_status(&socket, "pass").await?;
    assert!(healed.contains("WATCHDOG=1\n"), "{healed:?}");

    // Dead for good: the same fault on the fresh pool gives up.
    let mut status = live.subscribe();
    gate.open.notify_one();
    db.rm_rf_dir()?;
    let dead = until_status(&socket, "fail").await?;
    assert!(!dead.contains("WATCHDOG"), "{dead:?}");
    status
        .wait_for(|s| matches!(s, PoolStatus::GaveUp(_)))
        .await
        .ok_or("the LivePool is gone")?;
    assert!(exits.next().await.is_some());
    // The exit action was injected, so the process lives on: systemd must
    // hear nothing more, for ten ping periods.
    let silence = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let message = next(&socket).await?;
            if message.contains("WATCHDOG=1") {
                return Err::<(), Box<dyn std::error::Error + Send + Sync>>(
                    format!("fed after the give-up: {message:?}").into(),
                );
            }
        }
    })
    .await;
    match silence {
        Err(_elapsed) => Ok(()),
        Ok(result) => result,
    }
}

#[test]
fn feeds_systemd_only_while_the_database_lives() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_under_a_systemd_watchdog",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        // WatchdogSec=200ms: fed every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .output()?;
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "child stdout: {}\nchild stderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
