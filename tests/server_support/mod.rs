//! What the tests against real database servers (Postgres, MySQL) share,
//! whatever the backend: logs, blocking cluster operations off the runtime,
//! the give-ups in place of the exit, bounded waits on the policy's status,
//! `/health` through `oneshot`. Included by `tests/pg_support` and
//! `tests/my_support`, which add their cluster and their SQL.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_db_liveness::{Backend, GaveUp, HealthService, LivePool, PoolStatus};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Failure bound for anything that must happen; never a measurement.
pub const BOUND: Duration = Duration::from_secs(60);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Runs a blocking cluster operation off the runtime.
pub async fn admin<C: Send + Sync + 'static, T: Send + 'static>(
    cluster: &Arc<C>,
    op: impl FnOnce(&C) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || op(&cluster))
        .await
        .expect("the cluster operation panicked")
}

/// An exit action that records the give-up instead of exiting.
pub fn exits() -> (
    impl Fn(&GaveUp) + Send + Sync + 'static,
    mpsc::UnboundedReceiver<GaveUp>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (move |gave_up: &GaveUp| drop(tx.send(gave_up.clone())), rx)
}

pub async fn wait_for_status<DB: Backend>(
    live: &LivePool<DB>,
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
