//! The systemd watchdog against a real notify socket.
//!
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` are process-wide, so the scenario
//! runs in a child process of this test binary that gets them from the
//! start, and binds the notify socket itself, as systemd would have.
#![cfg(all(feature = "systemd", feature = "sqlite"))]

mod common;
mod health_support;

use std::process::Stdio;
use std::time::Duration;

use common::{TestDb, TestResult, warm};
use health_support::open_gated;
use sqlx::sqlite::SqliteJournalMode;
use tokio::net::UnixDatagram;
use tokio::process::Command;
use tower_db_liveness::{HealthService, PoolStatus, systemd};

const CHILD: &str = "TOWER_DB_LIVENESS_SYSTEMD_CHILD";

/// The next datagram systemd would have received (within 30 s, else a
/// named failure).
async fn next(socket: &UnixDatagram) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .map_err(|_| "no notify datagram within 30 s")??;
    let message = String::from_utf8(buf[..n].to_vec())?;
    println!("notify: {message:?}");
    Ok(message)
}

/// Reads datagrams until one carries `status` in its `STATUS=` line, for at
/// most 30 s (the pings alone would keep a plain loop going forever).
async fn until_status(
    socket: &UnixDatagram,
    status: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let wanted = format!("STATUS=database {status}");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let message = next(socket).await?;
            if message.contains(&wanted) {
                return Ok(message);
            }
        }
    })
    .await
    .map_err(|_| format!("no {wanted:?} within 30 s"))?
}

/// The child half of `feeds_systemd_until_the_policy_gives_up`, which
/// runs it (ignored, so it never counts as a passing test on its own). It
/// ends when its stdin closes: the parent holds the other end, so the child
/// dies with the parent, however the parent ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child half of feeds_systemd_until_the_policy_gives_up, which runs it"]
async fn child_under_a_systemd_watchdog() -> TestResult {
    std::env::var_os(CHILD).ok_or("run by its parent test only")?;
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        eprintln!("the parent is gone: exiting");
        std::process::exit(2);
    });
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

    // The file goes: the probe that finds it fails readiness, and still
    // feeds: the heal it starts is the crate's job, a restart would not help.
    db.replace_file().await?; // a restore: the same application's database
    let found = until_status(&socket, "fail").await?;
    assert_eq!(
        found,
        "STATUS=database fail: database file replaced\nWATCHDOG=1\n"
    );
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
    until_status(&socket, "fail").await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| matches!(s, PoolStatus::GaveUp(_))),
    )
    .await
    .map_err(|_| "no give-up within 30 s")?
    .ok_or("the LivePool is gone")?;
    assert!(exits.next().await.is_some());
    // The exit action was injected, so the process lives on: the liveness
    // verdict fails, and systemd must hear no WATCHDOG=1 any more, for ten
    // ping periods (the one time window here is systemd's own).
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

#[tokio::test]
async fn feeds_systemd_until_the_policy_gives_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
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
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // Held open until the child is done: its end of the pipe.
    let _stdin = child.stdin.take().ok_or("no stdin")?;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| "the child did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child stdout: {}\nchild stderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
