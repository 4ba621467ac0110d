//! What a storm of unrelated filesystem events in the database's directory
//! costs the process: 100,000 create+unlink pairs of other files, with the
//! `fs-watch` watch on and off (the difference is the watch's cost: its
//! thread reading and filtering the events, and any identity checks they
//! wake). Process CPU time from `/proc/self/stat` (utime + stime), three
//! runs each; prints one line per run and the median. Linux only.
//!
//! `cargo bench --bench fs_watch_storm --features fs-watch`

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::LivePool;

const EVENTS: usize = 100_000;

/// utime + stime of the whole process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn storm(dir: &Path) {
    for i in 0..EVENTS / 2 {
        let path = dir.join(format!("upload-{i}.tmp"));
        let _ = std::fs::write(&path, b"x");
        let _ = std::fs::remove_file(&path);
    }
}

async fn run(fs_watch: bool) -> Result<f64, Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("data");
    std::fs::create_dir(&dir)?;
    let options = SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete);
    let live = LivePool::builder(options)
        .watchdog_interval(Some(Duration::from_secs(3600)))
        .fs_watch(fs_watch)
        .open()
        .await?;
    // Let the watchdog's first round arm the watch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds();
    let started = Instant::now();
    let storm_dir = dir.clone();
    tokio::task::spawn_blocking(move || storm(&storm_dir)).await?;
    // Let the watch drain what is queued.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_seconds() - before;
    eprintln!(
        "fs_watch={fs_watch}: {} events (create+unlink pairs: {}) in {:?}, process CPU {cpu:.2} s",
        EVENTS,
        EVENTS / 2,
        started.elapsed()
    );
    live.close().await;
    Ok(cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut off = Vec::new();
        let mut on = Vec::new();
        for _ in 0..3 {
            off.push(run(false).await?);
            on.push(run(true).await?);
        }
        let (off, on) = (median(off), median(on));
        eprintln!(
            "median process CPU per {EVENTS} events: watch off {off:.2} s, on {on:.2} s, the watch's cost {:.2} s",
            on - off
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
