//! Switchover recovery on a real MariaDB primary + GTID replica behind a
//! TCP proxy (`tests/my_cluster`), the MySQL twin of `pg_switchover`: the
//! switchover of `mysql-failure-modes.md` (the primary made read-only, the
//! replica caught up and promoted, the old primary made its replica; it
//! stays up and no connection is broken), the proxy (the k8s Service / VIP) left on the demoted node
//! for 8 s, then repointed; 20 s observed after the repoint.
//!
//! Three pools, each under the same writer load (3 tasks, `INSERT`, 10 ms
//! pause between writes), each warmed to 10 connections before the fault:
//!
//! - `crate`: `LivePool::mysql(..)` with its defaults; every write goes
//!   through `live.lease()` and its error to `lease.report(..)`, spawned
//!   and not awaited (the layer reports and answers at once);
//! - `plain`: `MySqlPoolOptions::new()` (sqlx defaults);
//! - `guard`: sqlx defaults plus a `before_acquire` that retires a
//!   connection unless `@@global.read_only` is 0.
//!
//! Measured per run: the time from the repoint to the first clean second
//! (a 1 s window with at least one successful write, no failed write, and
//! no write taking over 1 s), the writes that failed after the repoint and
//! after the clean second began. A fresh cluster for every run; variants
//! interleaved round by round. Prints one line per run and a summary table
//! (median and max over the rounds) on stdout. (A crash-restart of the
//! application is in `benches/recovery.rs`, which runs servers as
//! processes under a supervisor.)
//!
//! `MY_SWITCHOVER_ROUNDS` (default 3) sets the rounds,
//! `MY_SWITCHOVER_VARIANTS` (`crate,plain,guard`) the variants; `RUST_LOG`
//! turns on logs (`RUST_LOG=tower_db_liveness=debug`).

#[path = "../tests/my_cluster/mod.rs"]
mod my_cluster;
#[path = "support/switchover.rs"]
mod switchover;
#[path = "support/timeline.rs"]
mod timeline;

/// What the shared benchmark needs to know of MySQL.
mod db {
    use sqlx::mysql::MySqlPoolOptions;
    use tower_db_liveness::{LivePool, LivePoolBuilder};

    pub use crate::my_cluster::{Cluster, Node};
    pub type Db = sqlx::MySql;
    pub type Pool = sqlx::MySqlPool;
    pub type PoolOptions = MySqlPoolOptions;
    pub type ConnectOptions = sqlx::mysql::MySqlConnectOptions;

    pub const NAME: &str = "my_switchover";
    pub const ENV: &str = "MY_SWITCHOVER";
    pub const STARTING: &str = "start a MariaDB primary + replica (tests/my_cluster)";
    pub const NODES: [Node; 2] = [Node::M1, Node::M2];
    pub const LABELS: [&str; 3] = [
        "crate (LivePool<MySql>)",
        "plain MySqlPool (sqlx defaults)",
        "MySqlPool + before_acquire read-only check",
    ];
    pub const CREATE: &str =
        "CREATE TABLE IF NOT EXISTS t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v TEXT NOT NULL)";
    pub const INSERT: &str = "INSERT INTO t (v) VALUES (?)";

    pub fn live(options: ConnectOptions) -> LivePoolBuilder<Db> {
        LivePool::mysql(options)
    }

    /// A new connection is taken only if its server takes writes.
    pub fn guard_options() -> PoolOptions {
        MySqlPoolOptions::new().before_acquire(|conn, _meta| {
            Box::pin(async move {
                let read_only: i64 =
                    sqlx::query_scalar("SELECT CAST(@@global.read_only AS SIGNED)")
                        .fetch_one(&mut *conn)
                        .await?;
                Ok(read_only == 0)
            })
        })
    }
}

fn main() {
    switchover::main();
}
