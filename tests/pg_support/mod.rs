//! Helpers the Postgres tests share: a cluster per test, blocking cluster
//! operations off the runtime, the give-ups in place of the exit, bounded
//! waits on the policy's status, `/health` through `oneshot`.
#![allow(dead_code)]

#[path = "../server_support/mod.rs"]
mod shared;
pub use shared::*;

use std::sync::Arc;

use sqlx::{Connection, PgConnection, Postgres};
use tower_db_liveness::LivePool;

use crate::pg_cluster::{Cluster, Node};

pub fn cluster() -> Arc<Cluster> {
    init_logs();
    Arc::new(Cluster::start().expect("start a PostgreSQL primary + standby (see tests/pg_cluster)"))
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
