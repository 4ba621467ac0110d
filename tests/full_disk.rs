//! A full disk under the real `examples/axum` binary: every note answered
//! 201 is in the database file, and every failure is a 503 (FULL, 13, is
//! transient). The disk is a real, small tmpfs (or, where mounting tmpfs is
//! not permitted, a loop-mounted ext2 image); the test fails, never skips,
//! when neither can be mounted.
//!
//! Before the fix the example wrote with `INSERT … RETURNING id` and
//! `fetch_one`: sqlx stops stepping after the returned row, the commit's
//! failure at reset is dropped, and an id comes back for a row that was
//! never stored.
#![cfg(feature = "sqlite")]

mod common;
mod example_support;
mod layer_support;

use std::collections::BTreeMap;
use std::path::Path;

use common::{SmallDisk, TestResult};
use example_support::{BoxError, Example};
use layer_support::Http;
use sqlx::sqlite::SqliteConnectOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_note_answered_201_is_stored_when_the_disk_fills() -> TestResult {
    for journal in ["wal", "delete"] {
        fill_the_disk(journal).await?;
    }
    Ok(())
}

async fn fill_the_disk(journal: &str) -> TestResult {
    let disk = SmallDisk::mount(256)?;
    let db = disk.path().join("notes.db");
    // Rescues (none expected: a full disk is not a file fault) stay off the small disk.
    let rescue_dir = tempfile::tempdir()?;
    let db_arg = db.display().to_string();
    let rescue_arg = rescue_dir.path().display().to_string();
    let mut example = Example::start(&[
        "--db",
        &db_arg,
        "--journal",
        journal,
        "--rescue-dir",
        &rescue_arg,
    ])
    .await?;
    let http = Http::new(example.addr);

    let mut acknowledged = BTreeMap::new();
    let mut failures = 0;
    // 256 KiB holds a few hundred of these; stop once the disk has refused
    // a run of writes.
    for i in 0..2000 {
        let body = format!("note {i} {}", "x".repeat(900));
        let reply = http.post("/notes", body.clone()).await?;
        match reply.status.as_u16() {
            201 => {
                let value: serde_json::Value = serde_json::from_str(&reply.body)?;
                let id = value["id"]
                    .as_i64()
                    .ok_or_else(|| format!("no id: {reply:?}"))?;
                acknowledged.insert(id, body);
            }
            503 => {
                assert_eq!(reply.headers["retry-after"], "1", "{reply:?}");
                failures += 1;
                if failures == 20 {
                    break;
                }
            }
            _ => {
                return Err(
                    format!("{journal}: unexpected answer {reply:?}\n{}", example.log()).into(),
                );
            }
        }
    }
    // FULL is transient: no heal, no give-up.
    let log = example.log();
    assert!(!log.contains("reopening the pool"), "{journal}:\n{log}");

    example.kill().await?;
    let stored = read_notes(&db).await?;
    let lost: Vec<i64> = acknowledged
        .iter()
        .filter(|(id, body)| stored.get(id) != Some(body))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        lost.is_empty(),
        "{journal}: {} of {} notes answered 201 are not in the file (ids {:?}...)",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(failures, 20, "{journal}: the disk never filled up");
    assert!(!acknowledged.is_empty(), "{journal}: no write succeeded");
    drop(disk);
    Ok(())
}

/// Every note in the file, by id, read with a fresh connection.
async fn read_notes(path: &Path) -> Result<BTreeMap<i64, String>, BoxError> {
    let options = SqliteConnectOptions::new().filename(path);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(rows.into_iter().collect())
}
