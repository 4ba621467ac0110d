//! The failure from the field, healed in one process.
//!
//! Opens a `LivePool` on a SQLite file in a temporary directory (DELETE
//! journal), writes, unlinks the file under the running pool (as an operator's
//! `rm` would), watches the next write fail with SQLITE_READONLY_DBMOVED, and
//! lets the policy rescue the old data, reopen and swap in a fresh pool.
//!
//! Run: `cargo run --example demo`

use std::time::Instant;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tower_db_liveness::{LivePool, Outcome, classify};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_db_liveness=warn".into()),
        )
        .init();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notes.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete);
    let live = LivePool::builder(options)
        .pool_options(SqlitePoolOptions::new().max_connections(1))
        // This demo drives the heal from a failing write; the watchdog
        // (on by default) would catch the unlink on its own.
        .watchdog_interval(None)
        .open()
        .await?;

    let create = "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)";
    sqlx::query(create).execute(&live.pool()).await?;
    for i in 0..3 {
        sqlx::query("INSERT INTO notes(body) VALUES (?)")
            .bind(format!("note {i}"))
            .execute(&live.pool())
            .await?;
    }
    println!("generation 0: 3 notes written to {}", path.display());

    std::fs::remove_file(&path)?;
    println!("fault: {} unlinked under the running pool", path.display());

    let err = match sqlx::query("INSERT INTO notes(body) VALUES ('lost?')")
        .execute(&live.pool())
        .await
    {
        Ok(_) => return Err("the write on the unlinked file succeeded".into()),
        Err(err) => err,
    };
    println!("write failed: {err} -> classified {}", classify(&err));

    let started = Instant::now();
    match live.report(&err).await {
        Outcome::Healed(healed) => {
            println!(
                "healed in {:.1?}: generation {}, rescue file {}",
                started.elapsed(),
                healed.generation,
                healed
                    .rescue
                    .as_ref()
                    .map_or("none".to_owned(), |p| p.display().to_string())
            );
        }
        other => return Err(format!("expected a heal, got {other:?}").into()),
    }

    sqlx::query(create).execute(&live.pool()).await?;
    sqlx::query("INSERT INTO notes(body) VALUES ('after the heal')")
        .execute(&live.pool())
        .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&live.pool())
        .await?;
    println!(
        "generation {}: write succeeded, {rows} note(s) in the new file",
        live.generation()
    );
    Ok(())
}
