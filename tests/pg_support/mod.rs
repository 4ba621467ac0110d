//! Helpers the Postgres tests share: a cluster per test, blocking cluster
//! operations off the runtime, the give-ups in place of the exit, bounded
//! waits on the policy's status, `/health` through `oneshot`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, Postgres};
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_db_liveness::{GaveUp, HealthService, LivePool, PoolStatus};

use crate::pg_cluster::{Cluster, Node};

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
    Arc::new(Cluster::start().expect("start a PostgreSQL primary + standby (see tests/pg_cluster)"))
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
    live: &LivePool<Postgres>,
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

pub async fn create_table(live: &LivePool<Postgres>) -> sqlx::Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v text NOT NULL)")
        .execute(&live.pool())
        .await
        .map(drop)
}

/// Asks the node directly (not through the pool or the proxy) whether it
/// takes writes from the app role: the ground truth for a test's claim.
pub async fn takes_writes(cluster: &Cluster, node: Node) -> sqlx::Result<bool> {
    let mut conn = PgConnection::connect(&cluster.direct_url(node)).await?;
    let (rec, ro): (bool, bool) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(!rec && !ro)
}
