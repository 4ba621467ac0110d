//! # PostgreSQL: the same guarantees on an HA cluster (feature `postgres`)
//!
//! When a service outgrows one machine it moves to a replicated PostgreSQL
//! (Patroni, CloudNativePG, RDS/Aurora, pg_auto_failover), and the SQLite
//! failure shape comes back, harder: after a failover the pool's connections
//! stay on the demoted primary, now a read-only hot standby. `SELECT 1` and
//! sqlx's ping pass (the ping is a protocol `Sync`; no SQL runs), every write
//! fails with SQLSTATE `25006`, `/health` stays green, and sqlx replaces the
//! connections only at `max_lifetime` (30 min). Measured on sqlx 0.9 and
//! PostgreSQL 15 (a primary, a streaming standby and a TCP proxy standing in
//! for the Service): after the Service moved, a default pool still failed
//! about 78 % of its writes for the next 60 s, and a pool of 2 failed all of
//! them, for ever.
//!
//! `LivePool<Postgres>` keeps the shape users know — [`LivePool`],
//! [`DbLivenessLayer`], [`HealthService`], the gRPC bridge, the metrics, the
//! give-up — and never stays on a server that does not take writes.
//!
//! ```no_run
//! # #[cfg(all(feature = "postgres", feature = "axum"))]
//! # mod example {
//! use axum::{Router, extract::State, routing::post};
//! use tower_db_liveness::{DbError, DbLivenessLayer, HealthService, LivePool};
//!
//! async fn add(State(live): State<LivePool<sqlx::Postgres>>, body: String) -> Result<(), DbError> {
//!     sqlx::query("INSERT INTO notes (body) VALUES ($1)")
//!         .bind(body)
//!         .execute(&live.pool())
//!         .await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The primary's endpoint: the Service, VIP or PgBouncer in front of the cluster.
//! let live = LivePool::postgres("postgres://app@db-rw:5432/app".parse()?)
//!     .open() // waits (up to the reopen timeout) for a server that takes writes
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/notes", post(add))
//!     .route_service("/health", HealthService::new(live.clone()))
//!     .layer(DbLivenessLayer::new(live.clone()))
//!     .with_state(live.clone());
//! # let _ = app;
//! # Ok(())
//! # }
//! # }
//! # fn main() {}
//! ```
//!
//! # What it does
//!
//! - **Every new connection is checked once** (`after_connect`): `SELECT
//!   pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'`,
//!   one round trip that needs no privilege. `pg_is_in_recovery()` alone
//!   misses a primary made read-only (`default_transaction_read_only`);
//!   `transaction_read_only` catches both. A connection to a server that does
//!   not take writes is refused, and the refusal is a fatal finding. Nothing
//!   runs per request or per checkout.
//! - **A write's `25006`** (or `0A000`, a `BEGIN READ WRITE` during
//!   recovery) is checked with the same query before anything is done: an
//!   application's own `READ ONLY` transaction gets `25006` too, on a
//!   primary that takes writes, and is not a fault.
//! - **When no write fails**: a background check (every second, jittered;
//!   [`check_interval`](crate::LivePoolBuilder::check_interval)) runs the
//!   query on an idle connection, never opening one; and the health probe
//!   runs it on the pool in service. A server that does not take writes is a
//!   fatal finding and `/health` is `fail`, never `pass`.
//! - **The heal**: the pinned pool is closed at once (its writers get
//!   `PoolClosed`, a 503, instead of `25006`), then the crate waits for a
//!   writable primary with **single direct connections** (not through a
//!   pool: sqlx retries a refused connection inside its own unjittered loop)
//!   and jittered exponential back-off capped at 0.8 s, so a primary is found
//!   within about a second of becoming reachable and a fleet does not reach
//!   it in one burst. Then a new checked pool is built, verified and
//!   swapped in; the layer holds requests meanwhile (bounded, as for
//!   SQLite). No writable primary within the
//!   [reopen timeout](crate::LivePoolBuilder::reopen_timeout) (default
//!   60 s) gives up: the exit action runs, gracefully where configured.
//! - **`open()`** waits the same way: a pool built while the Service still
//!   points at the demoted node (a restart during the failover) is not
//!   pinned there.
//! - **A replica pool** ([`Expect::Any`](crate::Expect::Any)) connects to
//!   whatever answers and never treats read-only as fatal.
//!
//! While the heal waits for a writable primary, [`PoolStatus::AwaitingPrimary`](crate::PoolStatus::AwaitingPrimary)
//! is published and `/health` answers `fail`: nothing can be written, and
//! the wait can last the whole reopen timeout.
//!
//! Measured (real primary, standby and proxy, 3 writers at ~200 writes/s,
//! the realistic switchover: old primary stopped fast, standby promoted, old
//! primary restarted as a standby, proxy still at it for 8 s, then moved):
//! the pool never holds a connection to the demoted node and no write
//! reaches it; every acknowledged write
//! is on the new primary; the first clean second comes 0.45 s (median of 3;
//! max 0.68 s) after the proxy moves, where a plain pool fails every write
//! for ever and a `before_acquire` check reconnects ~180 times a second to
//! the demoted node. Requests failed during the whole recovery under load:
//! 74 with the heal, 2,216 with a crash-restart loop, 4,680 doing nothing.
//! The check costs +0.47 ms per new connection (most of it what any first
//! query on a new backend pays) and nothing per request: served throughput
//! with the layer is 0.998× without it. See BENCHMARKS.md.
//!
//! # Classification
//!
//! By SQLSTATE, and only for a `PgDatabaseError`; the message is never read.
//!
//! | class | SQLSTATE | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](crate::ErrorClass::Fatal) (for a pool meant for writes, once the check confirms the server does not take writes) | `25006` read_only_sql_transaction; `0A000` (during recovery) | `WorkerCrashed` |
//! | [`Transient`](crate::ErrorClass::Transient) | `57P01` admin shutdown (also a fast stop, `pg_terminate_backend`), `57P02`, `57P03` starting up / shutting down; `53300` too many connections, `53000`, `53100`, `53200`, `53400`; `40001` serialization failure, `40P01` deadlock; `55P03` lock timeout; `57014` statement timeout / cancel; class `08` connection exceptions | `Io` (a reset or closed socket: sqlx opens a new connection), `PoolTimedOut`, `PoolClosed` |
//! | [`Other`](crate::ErrorClass::Other) | everything else: constraints (`23505`, …), syntax, `25006`/`0A000` confirmed on a server that takes writes, or on a pool with `Expect::Any` | everything else |
//!
//! `pg_terminate_backend` and restarts are transient: sqlx's release ping
//! fails on the dead connection and it is replaced (measured: 0 of 1119
//! writes failed under load). `53300` and `57P03` reach the application only
//! as `PoolTimedOut`: sqlx retries them inside `acquire`.
//!
//! # Bound your own queries
//!
//! A query in flight on a black-holed connection (the node's network gone,
//! sockets open) hangs with no limit: measured, it returned 35 s later when
//! bytes flowed again; sqlx sets no TCP keepalive and `acquire_timeout`
//! bounds only the acquire. The crate's own queries are bounded, and its
//! probe answers `warn`, then `fail` from the third probe in a row that
//! does not answer, without healing (nothing proves the server dead). For
//! your handlers:
//!
//! - a server-side `statement_timeout`, set per connection in the connect
//!   options (`PgConnectOptions::options([("statement_timeout", "5s")])`),
//!   bounds a slow query, not a lost network;
//! - a tower timeout (`tower_http::timeout::TimeoutLayer`, or
//!   `tokio::time::timeout` around the query) bounds both.
//!
//! The pool's `after_connect` is the crate's check: put per-connection
//! settings in the connect options rather than in your own `after_connect`.
//!
//! A request already inside sqlx's `acquire` when the heal starts is in
//! sqlx's own retry loop, which `Pool::close` does not stop and which
//! retries a refused connection until `acquire_timeout`. So once a
//! generation is being replaced its check hands the next connection out
//! with its session ended (`pg_terminate_backend(pg_backend_pid())`): the
//! request's statement fails at once on the closed connection (a transient
//! error, a 503) instead of waiting up to 30 s, and no read is answered by
//! a standby and no write committed on a server that does not take writes.
//!
//! # Running it on an HA cluster
//!
//! Point the pool at the **primary's endpoint**, never at a node, and give
//! the failover time to move that endpoint: the reopen timeout is how long
//! the crate waits for a writable primary before it exits (and lets the
//! supervisor restart the process, which then waits in `open()` the same
//! way).
//!
//! - **Patroni**: the endpoint is whatever follows the leader key — HAProxy
//!   with the `/primary` REST check, vip-manager's VIP, or a Kubernetes
//!   Service selecting `role=master`/`primary`. A failover takes about
//!   `ttl` (30 s) + `loop_wait` (10 s) when the primary dies, seconds for a
//!   switchover: keep the default 60 s or raise it to `ttl + loop_wait + 20 s`.
//! - **CloudNativePG**: connect to the `<cluster>-rw` Service. A switchover
//!   demotes the old primary before the Service's endpoints move, which is
//!   exactly the pinning shape; a failover moves the endpoints within
//!   seconds. The default timeout is enough; never use `-r`/`-ro` for writes
//!   (use `Expect::Any` for those pools).
//! - **RDS / Aurora**: connect to the cluster (writer) endpoint, a DNS name
//!   whose record moves in a failover (30–120 s on Multi-AZ; Aurora usually
//!   under 30 s). sqlx resolves the name on every new connection, so the
//!   heal's attempts follow the record once its 5 s TTL expires; set the
//!   reopen timeout to 120 s on Multi-AZ instances.
//! - **pg_auto_failover** and multi-host URLs: sqlx has no
//!   `target_session_attrs=read-write` and no multi-host URL; put a VIP,
//!   HAProxy or PgBouncer that follows the primary in front. The crate's
//!   check is what `target_session_attrs=read-write` would have done, per
//!   connection.
//!
//! # With PgBouncer in between
//!
//! The crate talks to PgBouncer, not to PostgreSQL: every check runs on
//! whichever server connection PgBouncer picks. What it can see: PgBouncer
//! still sending queries to the demoted node (the check answers
//! `pg_is_in_recovery() = true` through it, the pool heals and waits until
//! PgBouncer is repointed — by its config and `RELOAD`, or by the
//! orchestrator). What it cannot see: PgBouncer's own server connections
//! (they are PgBouncer's to recycle: set `server_check_query` and a short
//! `server_lifetime`, or repoint with `RECONNECT`), and, in transaction
//! pooling, which server a later transaction lands on: a PgBouncer whose
//! server connections mix nodes shows up as `25006`s, each checked, and as
//! the background check's findings. PgBouncer's own errors (`08P01`, `no more
//! connections allowed`) are transient.
//!
//! [`LivePool`]: crate::LivePool
//! [`DbLivenessLayer`]: crate::DbLivenessLayer
//! [`HealthService`]: crate::HealthService
