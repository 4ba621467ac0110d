//! # MySQL and MariaDB: the same guarantees through a switchover (feature `mysql`)
//!
//! A MySQL or MariaDB switchover (an orchestrator's, MaxScale's, Aurora's
//! "writer becomes a reader") leaves the old primary **up** and only turns
//! its `read_only` on. No connection breaks, so a plain pool never opens a
//! new one: every pooled connection stays on the demoted node, sqlx's ping
//! (`COM_PING`, also `test_before_acquire`) passes, every write fails with
//! `1290 (HY000)`, and repointing the endpoint changes nothing until
//! `max_lifetime` (30 min) retires the connections. Measured on MariaDB
//! 10.11 and sqlx 0.9: 10,285 writes failed in the 40 s after the endpoint
//! moved, 0 succeeded, with a pool of 10 as with a pool of 2.
//!
//! `LivePool<MySql>` keeps the shape of the other backends — [`LivePool`],
//! [`DbLivenessLayer`], [`HealthService`] (both verdicts), the gRPC bridge,
//! the metrics, the give-up — and follows the endpoint to the new primary
//! with no failing write needed.
//!
//! ```no_run
//! # #[cfg(all(feature = "mysql", feature = "axum"))]
//! # mod example {
//! use axum::{Router, extract::State, routing::post};
//! use tower_db_liveness::{DbError, DbLivenessLayer, HealthService, LivePool};
//!
//! async fn add(State(live): State<LivePool<sqlx::MySql>>, body: String) -> Result<(), DbError> {
//!     sqlx::query("INSERT INTO notes (body) VALUES (?)")
//!         .bind(body)
//!         .execute(&live.pool())
//!         .await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The primary's endpoint: the VIP, the Aurora cluster (writer) endpoint.
//! let live = LivePool::mysql("mysql://app:secret@db-rw:3306/app".parse()?)
//!     .open() // waits for a server that takes writes
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/notes", post(add))
//!     .route_service("/readyz", HealthService::new(live.clone()))
//!     .layer(DbLivenessLayer::new(live.clone()))
//!     .with_state(live.clone());
//! # let _ = app;
//! # Ok(())
//! # }
//! # }
//! # fn main() {}
//! ```
//!
//! # What is checked, where
//!
//! One query, `SELECT @@global.read_only, @@innodb_read_only, @@server_id`,
//! one round trip (about the cost of `SELECT 1`), sent with the text
//! protocol (no prepared statement):
//!
//! - **every new connection, once** (`after_connect`). Nothing runs per
//!   request or per checkout;
//! - **a write's 1290, 1792, 1836 or 1036**, before anything is done: an
//!   application's own `READ ONLY` transaction gets 1792 on a primary that
//!   takes writes, and that is not a fault;
//! - **the background check**: every second, jittered, on an idle connection
//!   of the pool (never opening one)
//!   ([`check_interval`](crate::LivePoolBuilder::check_interval));
//! - **the health probe**, on the pool in service.
//!
//! When the pool's server does not take writes, the same query runs on **one
//! fresh direct connection through the endpoint** (bounded, one at a time),
//! and `@@server_id` decides:
//!
//! | the endpoint leads to | what it is | what happens |
//! |---|---|---|
//! | the pool's own server | **read-only in place** (a primary made read-only, or a switchover whose endpoint has not moved yet: they look the same) | degraded, [`PoolStatus::ReadOnly`](crate::PoolStatus::ReadOnly): the pool is kept, reads are served, writes answer 503 + `Retry-After`, readiness `warn` with `"state":"read_only"` (never `pass`), liveness `warn`; no heal however long it lasts; `Live` again once it takes writes |
//! | another server that takes writes | **pinned to a demoted primary** | fatal for the generation: the pool is closed (its writers get `PoolClosed`, a 503), the heal waits for a writable primary with single direct connections and jittered back-off (capped at 0.8 s) and swaps in a new checked pool |
//! | another server that does not take writes | the endpoint moved to a replica | degraded, as in place, until one takes writes |
//! | nowhere (no answer) | unknown | nothing changes; checked again |
//!
//! While read-only the background check runs every 0.5–1 s, so the first
//! write after the endpoint moves succeeds about a second later at most
//! (measured: see below). A new connection that finds the endpoint leading
//! to another server that takes writes while the pool is read-only decides
//! at once.
//!
//! **The wait for a primary has no deadline by default**: the old primary
//! stays up, and a restarted process would wait the same way.
//! [`reopen_timeout`](crate::LivePoolBuilder::reopen_timeout) sets one (the
//! process then gives up and exits). While waiting,
//! [`PoolStatus::AwaitingPrimary`](crate::PoolStatus::AwaitingPrimary) is
//! published: readiness `fail`, liveness `warn`. `open()` waits the same
//! way, so a process started during a switchover is not pinned either.
//!
//! Measured (tests/my_failover.rs, tests/layer_axum_my.rs: a MariaDB 10.11
//! primary and GTID replica behind a TCP proxy, the old primary left up and
//! read-only, the proxy on it for 8 s, then moved; 3 writers at ~250
//! writes/s; 2 shared cores; 7 runs each): readiness never `pass` while
//! pinned (`warn`, `read_only`); from the move to the first acknowledged
//! write 0.26 s median (0.08–0.44 s) with a pool of 10, 0.46 s median
//! (0.03–1.66 s) with a pool of 2, and through `examples/axum` to the first
//! 201 0.08–0.78 s; 0 writes started after the new pool was swapped in
//! failed; every acknowledged write is on the new primary, none on the
//! demoted node; nothing exited. With no request at all, the background
//! check found the read-only server 1.0–1.9 s after the switchover and healed
//! 0.6–1.0 s after the move.
//!
//! # Classification
//!
//! By `MySqlDatabaseError::number()`, and only for a `MySqlDatabaseError`:
//! the read-only error's SQLSTATE is the generic `HY000`. The message is read
//! for one number only: 1290 is "the server runs with an option that
//! prevents this statement", and only `--read-only` (MySQL also
//! `--super-read-only`) means "not writable" (MariaDB's
//! `--max-user-connections` case is other).
//!
//! | class | error number | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](crate::ErrorClass::Fatal), once the check confirms the server does not take writes (otherwise other) | 1290 with `--read-only`; 1792 write in a READ ONLY transaction; 1836 `ER_READ_ONLY_MODE`; 1036 table read only (`--innodb-read-only`, an Aurora reader) | `WorkerCrashed` |
//! | [`Transient`](crate::ErrorClass::Transient) | 1040 too many connections, 1203 and 1226 user connection limits; 1205 lock wait timeout (the statement is rolled back, the transaction stays open), 1213 deadlock (the transaction is rolled back); 1317 query interrupted (`KILL QUERY`), 1969 `max_statement_time` | every `Io` (a killed connection, a shutdown, a restart: MariaDB sends no 1927 or 1053, the socket just closes), `PoolTimedOut`, `PoolClosed` |
//! | [`Other`](crate::ErrorClass::Other) | everything else: 1062, 1452, 1048 (constraints), 1064, 1146, 1045, 1044, 1290 with another option, the above confirmed on a server that takes writes | everything else |
//!
//! sqlx-mysql retries no database error while connecting: 1040, 1203 and
//! 1226 come out of `pool.acquire()` at once (Postgres's 53300 becomes
//! `PoolTimedOut` instead). Nothing in sqlx retires a connection for a
//! database error.
//!
//! # Privileges
//!
//! None. `@@global.read_only`, `@@innodb_read_only` and `@@server_id` are
//! readable by any user, on MySQL, MariaDB and Aurora MySQL; a session may
//! always `KILL CONNECTION_ID()` itself (how a connection of a replaced
//! generation is handed out ended: the request fails at once with a 503
//! instead of waiting in sqlx's connect loop). The query deliberately avoids
//! `@@super_read_only`, `@@transaction_read_only` and `@@server_uuid`:
//! MariaDB has none of them (error 1193).
//!
//! An account with `READ_ONLY ADMIN` (MariaDB) or `SUPER` /
//! `CONNECTION_ADMIN` (MySQL without `super_read_only`) can still write on a
//! read-only server: the check says it does not take writes anyway. Run the
//! application as an ordinary user.
//!
//! # MariaDB, MySQL, Aurora MySQL
//!
//! - **MariaDB** (10.11 measured): replication pairs switched by an
//!   orchestrator or MaxScale's `switchover`: the old primary stays up with
//!   `read_only=ON`, the shape above. Give every server its own
//!   `server_id` (replication needs that anyway): two servers with one id
//!   look like one server, which is read as "in place" (degraded, never a
//!   wrong heal).
//! - **MySQL 8** (from its documentation, not measured here):
//!   `super_read_only=ON` forces `read_only=ON`, so the same query covers
//!   it; its 1290 names `--super-read-only`, which is matched too.
//! - **Aurora MySQL** (from its documentation, not measured here): connect
//!   to the **cluster (writer) endpoint**, a DNS name that moves in a
//!   failover; sqlx resolves it on every new connection, so the direct check
//!   follows the record once its TTL (5 s) expires. A reader has
//!   `innodb_read_only=ON`: a pool left on a writer turned reader stays
//!   degraded until the endpoint leads to the new writer, then heals. If
//!   your instances share a `server_id`, the move is read as "in place"
//!   (degraded, never healed): check `SELECT @@server_id` on each.
//! - **Proxies** (ProxySQL, MaxScale `readwritesplit`) may send the check's
//!   `SELECT` to a replica: the check then describes the replica, not the
//!   writer. Point the pool at a listener that routes everything to the
//!   primary (MaxScale `readconnroute` with `router_options=master`, a
//!   ProxySQL hostgroup of writers), or straight at the VIP.
//!
//! Bound your own queries as for Postgres: sqlx sets no TCP keepalive, and a
//! black-holed connection hangs a query with no limit. Use
//! `max_statement_time` (MariaDB) / `max_execution_time` (MySQL) for slow
//! queries and a tower timeout for a lost network. The pool's
//! `after_connect` is the crate's check: put per-connection settings in the
//! connect options (`MySqlConnectOptions::pipes_as_concat`, `timezone`, ...)
//! rather than in your own `after_connect`.
//!
//! [`LivePool`]: crate::LivePool
//! [`DbLivenessLayer`]: crate::DbLivenessLayer
//! [`HealthService`]: crate::HealthService
