//! Helpers the MySQL tests share: a cluster per test, blocking cluster
//! operations off the runtime, the give-ups in place of the exit, bounded
//! waits on the policy's status, `/health` through `oneshot`, writers that
//! record what was acknowledged.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::MySql;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_db_liveness::{GaveUp, HealthService, LivePool, PoolStatus};

use crate::my_cluster::Cluster;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Failure bound for anything that must happen; never a measurement.
pub const BOUND: Duration = Duration::from_secs(60);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn cluster() -> Arc<Cluster> {
    init_logs();
    Arc::new(Cluster::start().expect("start a MariaDB primary + replica (see tests/my_cluster)"))
}

pub async fn admin<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    op: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || op(&cluster))
        .await
        .expect("the cluster operation panicked")
}

pub fn exits() -> (
    impl Fn(&GaveUp) + Send + Sync + 'static,
    mpsc::UnboundedReceiver<GaveUp>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (move |gave_up: &GaveUp| drop(tx.send(gave_up.clone())), rx)
}

pub async fn wait_for_status(
    live: &LivePool<MySql>,
    what: &str,
    f: impl FnMut(&PoolStatus) -> bool,
) -> PoolStatus {
    let mut status = live.subscribe();
    tokio::time::timeout(BOUND, status.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}; now {:?}", live.status()))
        .expect("the LivePool is gone")
}

pub async fn get_health(
    health: &HealthService,
) -> Result<(u16, serde_json::Value), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let response = health
        .clone()
        .oneshot(http::Request::get("/health").body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body)?))
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
