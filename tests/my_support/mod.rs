//! Helpers the MySQL tests share: a cluster per test, blocking cluster
//! operations off the runtime, the give-ups in place of the exit, bounded
//! waits on the policy's status, `/health` through `oneshot`, writers that
//! record what was acknowledged.
#![allow(dead_code)]

#[path = "../server_support/mod.rs"]
mod shared;
pub use shared::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::MySql;
use tower_db_liveness::LivePool;

use crate::my_cluster::Cluster;

pub fn cluster() -> Arc<Cluster> {
    init_logs();
    Arc::new(Cluster::start().expect("start a MariaDB primary + replica (see tests/my_cluster)"))
}

pub async fn create_table(live: &LivePool<MySql>) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64) NOT NULL)",
    )
    .execute(&live.pool())
    .await
    .map(drop)
}

/// One write through the `LivePool`, reported to the policy as the layer
/// would: the inserted id, or the error.
pub async fn write(live: &LivePool<MySql>, v: &str) -> Result<i64, sqlx::Error> {
    let lease = live.lease();
    match sqlx::query("INSERT INTO t (v) VALUES (?)")
        .bind(v)
        .execute(lease.pool())
        .await
    {
        Ok(done) => Ok(done.last_insert_id() as i64),
        Err(err) => {
            drop(lease.report(&err));
            Err(err)
        }
    }
}

/// What a writer saw: each write's time (since `start`), and its id or error.
#[derive(Default)]
pub struct Log {
    pub ok: Vec<(Duration, i64)>,
    pub failed: Vec<(Duration, String)>,
}

/// `n` writers looping until `stop`, ~10 ms apart each.
pub fn writers(
    live: &LivePool<MySql>,
    n: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Log>> {
    (0..n)
        .map(|w| {
            let live = live.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut log = Log::default();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let at = start.elapsed();
                    match write(&live, &format!("w{w}-{i}")).await {
                        Ok(id) => log.ok.push((at, id)),
                        Err(err) => log.failed.push((at, err.to_string())),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                log
            })
        })
        .collect()
}

pub async fn join(handles: Vec<tokio::task::JoinHandle<Log>>) -> Log {
    let mut all = Log::default();
    for h in handles {
        let log = h.await.expect("a writer panicked");
        all.ok.extend(log.ok);
        all.failed.extend(log.failed);
    }
    all
}
