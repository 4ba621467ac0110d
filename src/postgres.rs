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
//! give-up — and never stays on a server in recovery. A primary that
//! refuses writes in place is degraded, not dead: reads are served, writes
//! get 503, and nothing is healed or exited (see below).
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
//!     .open() // waits for a primary (no deadline by default)
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
//! - **Only the server's state counts**, read by one query that needs no
//!   privilege and costs about a `SELECT 1`: `SELECT pg_is_in_recovery(),
//!   (SELECT reset_val FROM pg_settings WHERE name =
//!   'default_transaction_read_only') = 'on'`. `pg_is_in_recovery()` finds a
//!   standby (a demoted primary); the `reset_val` is what a fresh session
//!   would get (`ALTER SYSTEM` + reload, which existing sessions see too, or
//!   the database's or the role's setting). A session's own settings never
//!   count: a handler's `SET SESSION CHARACTERISTICS AS TRANSACTION READ
//!   ONLY` left on a pooled connection makes its own writes fail, not the
//!   pool heal. The crate's own queries (this check, the probe, the
//!   confirmation, ending a session) use the simple query protocol: no
//!   named prepared statement, so they survive `DISCARD ALL`, `DEALLOCATE
//!   ALL` and PgBouncer in transaction mode.
//! - **Every new connection is checked once** (`after_connect`). One to a
//!   server in recovery is refused, and the refusal is a fatal finding. One
//!   to a primary read-only in place is accepted (reads must work) and marks
//!   the pool read-only. Nothing runs per request or per checkout.
//! - **A write's `25006`** (or `0A000`, a `BEGIN READ WRITE` during
//!   recovery) is confirmed with the same query before anything is done:
//!   an application's own `READ ONLY` transaction gets `25006` too, on a
//!   primary that takes writes, and is not a fault. One confirmation runs
//!   per generation at a time and every report joins it (300 reports from a
//!   busy pool of 4, measured: 1 connection opened); a pool already marked
//!   read-only confirms nothing.
//! - **When no write fails**: a background check (every second, jittered;
//!   [`check_interval`](crate::LivePoolBuilder::check_interval)) runs the
//!   query on an idle connection, never opening one except while the pool
//!   is marked read-only (then one direct connection per check, twice as
//!   often, so the state clears within about a second of the server taking
//!   writes again, busy pool or not); and the health probe runs it on the
//!   pool in service. A server in recovery is a fatal finding and `/health`
//!   is `fail`, never `pass`.
//! - **The heal** (a server in recovery only): the pinned pool is closed at
//!   once (its writers get `PoolClosed`, a 503, instead of `25006`), then
//!   the crate waits for a primary with **single direct connections** (not
//!   through a pool: sqlx retries a refused connection inside its own
//!   unjittered loop) and jittered exponential back-off: 25 ms doubling to
//!   a cap of 0.5 s, each pause drawn from `[cap/2, cap]`, so the first
//!   attempt after the endpoint moves comes within half a second (measured:
//!   0.40–0.55 s in three runs, healed 0.01–0.04 s later) and a fleet does not reach the
//!   new primary in one burst; a `53300` (too many connections) raises the
//!   cap to 5 s while it lasts. Then a new checked pool is built, verified
//!   and swapped in; the layer holds requests meanwhile (bounded, as for
//!   SQLite).
//! - **No deadline by default.** The wait lasts until a primary answers: a
//!   restart would wait the same way in `open()`, and a fleet that exits
//!   together reconnects together. Meanwhile [`PoolStatus::AwaitingPrimary`](crate::PoolStatus::AwaitingPrimary)
//!   is published and `/health` answers `fail` (nothing can be written). A
//!   [reopen timeout](crate::LivePoolBuilder::reopen_timeout) you set is
//!   stretched by 0–25 %, drawn per process, so a fleet never gives up in
//!   the same second; at it the exit action runs, gracefully where
//!   configured.
//! - **`open()`** waits the same way, with no deadline by default: a pool
//!   built while the Service still points at the demoted node (a restart
//!   during the failover) is not pinned there. Bind your health routes
//!   before you await it, or give the container a Kubernetes
//!   `startupProbe`, so the orchestrator does not kill a process that is
//!   waiting for its primary.
//! - **A replica pool** ([`Expect::Any`](crate::Expect::Any)) connects to
//!   whatever answers and never treats read-only as fatal.
//!
//! # A primary read-only in place: degraded, not dead
//!
//! `ALTER SYSTEM SET default_transaction_read_only = on` and a reload, or a
//! read-only database or role: the server is a primary
//! (`pg_is_in_recovery()` is false), answers reads and refuses writes with
//! `25006`. No heal and no restart changes that, so nothing is healed or
//! exited however long it lasts. The pool is kept and
//! [`PoolStatus::ReadOnly`](crate::PoolStatus::ReadOnly) is published: reads
//! are served, a write's `25006` is reported as
//! [`Transient`](crate::ErrorClass::Transient) (the layer answers 503 with
//! `Retry-After`), the probe passes (readiness reports the state; routing
//! reads away would make the outage bigger), and the status is
//! [`Live`](crate::PoolStatus::Live) again once the server takes writes.
//! `open()` and the heal accept such a primary and start degraded.
//! `default_transaction_read_only` is a default, not a fence: a transaction
//! that says `READ WRITE` still writes (on the primary; nothing is lost).
//!
//! # Classification
//!
//! By SQLSTATE, and only for a `PgDatabaseError`; the message is never read.
//!
//! | class | SQLSTATE | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](crate::ErrorClass::Fatal) (for a pool meant for writes, once the check confirms the server is in recovery) | `25006` read_only_sql_transaction; `0A000` (during recovery) | `WorkerCrashed` |
//! | [`Transient`](crate::ErrorClass::Transient) | `57P01` admin shutdown (also a fast stop, `pg_terminate_backend`), `57P02`, `57P03` starting up / shutting down; `57P05` idle_session_timeout, `25P03` idle_in_transaction_session_timeout; `53300` too many connections, `53000`, `53100`, `53200`, `53400`; `40001` serialization failure, `40P01` deadlock; `55P03` lock timeout; `57014` statement timeout / cancel; class `08` connection exceptions; `25006`/`0A000` confirmed on a primary read-only in place | `Io` (a reset or closed socket: sqlx opens a new connection), `PoolTimedOut`, `PoolClosed` |
//! | [`Other`](crate::ErrorClass::Other) | everything else: constraints (`23505`, …), syntax, `25006`/`0A000` confirmed on a server that takes writes, or on a pool with `Expect::Any` | everything else |
//!
//! `pg_terminate_backend`, restarts and a server ending idle sessions are
//! transient: sqlx's ping on checkout or release fails on the dead
//! connection and it is replaced (measured: 0 of 1119 writes failed under
//! load). The probe takes an idle connection without sqlx's ping, so when
//! the server had ended that session it asks once more on a connection
//! the pool checks (with `ALTER ROLE app SET idle_session_timeout = '1s'`:
//! `pass` every time). `53300` and `57P03` reach the application only as
//! `PoolTimedOut`: sqlx retries them inside `acquire`.
//!
//! # Size the pools for the server
//!
//! Every instance's pool can open `max_connections` of the pool:
//! **instances × pool size must fit in the server's slots**
//! (`max_connections` minus `superuser_reserved_connections`, minus what
//! other clients use), with room for the crate's own direct connections
//! (one per instance while it waits for a primary or confirms a `25006` on
//! a busy pool). Past that, the server answers `53300`, sqlx retries it
//! inside `acquire` (unjittered, never surfacing it), and a writer stalls
//! for the pool's `acquire_timeout` (30 s by default) before it gets
//! `PoolTimedOut`. The crate's wait for a primary backs off further on
//! `53300`, but it cannot give your handlers slots the server does not
//! have.
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
//! Point the pool at the **primary's endpoint**, never at a node. By
//! default the crate waits for that endpoint to lead to a primary for as
//! long as it takes (a restart would wait the same way in `open()`); set a
//! [reopen timeout](crate::LivePoolBuilder::reopen_timeout) only if you
//! want the process to exit after it. The figures below are how long each
//! platform takes, for that choice and for your alerts.
//!
//! - **Patroni**: the endpoint is whatever follows the leader key — HAProxy
//!   with the `/primary` REST check, vip-manager's VIP, or a Kubernetes
//!   Service selecting `role=master`/`primary`. A failover takes about
//!   `ttl` (30 s) + `loop_wait` (10 s) when the primary dies, seconds for a
//!   switchover; a timeout you set should be at least `ttl + loop_wait + 20 s`.
//! - **CloudNativePG**: connect to the `<cluster>-rw` Service. A switchover
//!   demotes the old primary before the Service's endpoints move, which is
//!   exactly the pinning shape; a failover moves the endpoints within
//!   seconds. Never use `-r`/`-ro` for writes
//!   (use `Expect::Any` for those pools).
//! - **RDS / Aurora**: connect to the cluster (writer) endpoint, a DNS name
//!   whose record moves in a failover (30–120 s on Multi-AZ; Aurora usually
//!   under 30 s). sqlx resolves the name on every new connection, so the
//!   heal's attempts follow the record once its 5 s TTL expires; a timeout
//!   you set should be at least 120 s on Multi-AZ instances.
//! - **pg_auto_failover** and multi-host URLs: sqlx has no
//!   `target_session_attrs=read-write` and no multi-host URL; put a VIP,
//!   HAProxy or PgBouncer that follows the primary in front. The crate's
//!   check is what `target_session_attrs=read-write` would have done, per
//!   connection.
//!
//! # With PgBouncer in between
//!
//! The crate talks to PgBouncer, not to PostgreSQL: every check runs on
//! whichever server connection PgBouncer picks, and its own queries use the
//! simple query protocol, so they work in session and in transaction mode
//! (tested against PgBouncer 1.18 in both: the probe, the check, the
//! confirmation, a read-only primary, `DEALLOCATE ALL` / `DISCARD ALL`).
//!
//! What it can see: the state of the server behind PgBouncer — a demoted
//! node PgBouncer still sends queries to (`pg_is_in_recovery()` is true
//! through it: the pool heals and waits until PgBouncer is repointed, by
//! its config and `RELOAD` or by the orchestrator), a primary read-only in
//! place, a server that does not answer. What it cannot see: PgBouncer's
//! own server connections (they are PgBouncer's to recycle: set
//! `server_check_query` and a short `server_lifetime`, or repoint with
//! `RECONNECT`), and, in transaction pooling, which server a later
//! transaction lands on: a PgBouncer whose server connections mix nodes
//! shows up as `25006`s, each confirmed, and as the background check's
//! findings. PgBouncer's own errors (`08P01`, `no more connections
//! allowed`) are transient.
//!
//! **Transaction mode and your own queries.** sqlx prepares every
//! parameterized query as a named statement; PgBouncer before 1.21 does not
//! track those, and a transaction-mode client's next statement may run on
//! another server connection. Measured through PgBouncer 1.18, four writers,
//! 800 `INSERT … VALUES ($1)`: with
//! `PgConnectOptions::statement_cache_capacity(0)` alone, 370–420 failed (three runs)
//! (`42P05` prepared statement already exists, `26000` does not exist): a
//! capacity of 0 turns off the cache, not the names. With
//! `.persistent(false)` on the query (an unnamed statement) as well, 0
//! failed. So for PgBouncer < 1.21 in transaction mode set both
//! `statement_cache_capacity(0)` and `.persistent(false)` on every query
//! with parameters (or use session mode); on PgBouncer 1.21 or newer set
//! `max_prepared_statements` in PgBouncer instead.
//!
//! [`LivePool`]: crate::LivePool
//! [`DbLivenessLayer`]: crate::DbLivenessLayer
//! [`HealthService`]: crate::HealthService
