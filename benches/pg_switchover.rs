//! Switchover recovery on a real PostgreSQL primary + streaming standby
//! behind a TCP proxy (`tests/pg_cluster`), the realistic switchover of
//! `postgres-failure-modes.md` S1: the primary stopped fast, the standby
//! promoted, the old primary restarted as a standby, the proxy (the k8s
//! Service / VIP) left on the demoted node for 8 s, then repointed; 20 s
//! observed after the repoint.
//!
//! Three pools, each under the same writer load (3 tasks, `INSERT`, 10 ms
//! pause between writes), each warmed to 10 connections before the fault:
//!
//! - `crate`: `LivePool::postgres(..)` with its defaults; every write goes
//!   through `live.lease()` and its error to `lease.report(..)`, spawned
//!   and not awaited (the layer reports and answers at once);
//! - `plain`: `PgPoolOptions::new()` (sqlx defaults);
//! - `guard`: sqlx defaults plus a `before_acquire` that retires a
//!   connection unless `SHOW transaction_read_only` is `off`.
//!
//! Measured per run: the time from the repoint to the first clean second
//! (a 1 s window with at least one successful write, no failed write, and
//! no write taking over 1 s), the writes that failed after the repoint and
//! after the clean second began. A fresh cluster for every run; variants
//! interleaved round by round. Prints one line per run and a summary table
//! (median and max over the rounds) on stdout.
//!
//! `PG_SWITCHOVER_ROUNDS` (default 3) sets the rounds,
//! `PG_SWITCHOVER_VARIANTS` (`crate,plain,guard`) the variants; `RUST_LOG`
//! turns on logs (`RUST_LOG=tower_db_liveness=debug`).

#[path = "../tests/pg_cluster/mod.rs"]
mod pg_cluster;
#[path = "support/switchover.rs"]
mod switchover;
#[path = "support/timeline.rs"]
mod timeline;

/// What the shared benchmark needs to know of Postgres.
mod db {
    use sqlx::postgres::PgPoolOptions;
    use tower_db_liveness::{LivePool, LivePoolBuilder};

    pub use crate::pg_cluster::{Cluster, Node};
    pub type Db = sqlx::Postgres;
    pub type Pool = sqlx::PgPool;
    pub type PoolOptions = PgPoolOptions;
    pub type ConnectOptions = sqlx::postgres::PgConnectOptions;

    pub const NAME: &str = "pg_switchover";
    pub const ENV: &str = "PG_SWITCHOVER";
    pub const STARTING: &str = "start a PostgreSQL primary + standby (tests/pg_cluster)";
    pub const NODES: [Node; 2] = [Node::N1, Node::N2];
    pub const LABELS: [&str; 3] = [
        "crate (LivePool<Postgres>)",
        "plain PgPool (sqlx defaults)",
        "PgPool + before_acquire read-only check",
    ];
    pub const CREATE: &str =
        "CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v text NOT NULL)";
    pub const INSERT: &str = "INSERT INTO t (v) VALUES ($1)";

    pub fn live(options: ConnectOptions) -> LivePoolBuilder<Db> {
        LivePool::postgres(options)
    }

    /// A new connection is taken only if its server takes writes.
    pub fn guard_options() -> PoolOptions {
        PgPoolOptions::new().before_acquire(|conn, _meta| {
            Box::pin(async move {
                let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(read_only == "off")
            })
        })
    }
}

fn main() {
    switchover::main();
}
