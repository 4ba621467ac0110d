//! The hot path on Postgres: what the crate costs a served request, and what
//! its connection gate costs a new connection. A real PostgreSQL primary
//! (`tests/pg_cluster`, connected to directly: no proxy in the path), client
//! and server on 127.0.0.1.
//!
//! **Served throughput** (`pg_served/*`). Three axum servers side by side,
//! each answering `GET /note` with one query (`SELECT body FROM notes
//! WHERE id = $1`, one row) through a pool of 10 connections:
//!
//! - `plain`: a `PgPool` (`PgPoolOptions::new().max_connections(10)`), no
//!   crate at all;
//! - `live_without_layer`: `LivePool::postgres(..)` with the same pool
//!   options (the handler takes `live.pool()` per request), no layer;
//! - `live_with_layer`: the same `LivePool`'s server with `DbLivenessLayer`
//!   and `/health` (`HealthService`), as an application ships it.
//!
//! The load is the one of `benches/served.rs`: batches of 256 requests, 32
//! in flight, hyper-util client with keep-alive, every answer checked.
//! Criterion runs the three one after the other; an interleaved pass then
//! rotates them (ABC, BCA, CAB, ...) over a fixed number of batches and
//! prints the rates and the ratios on stdout.
//!
//! **Connection open** (`pg_connect/*`). A pool of `max_connections(1)`:
//! `acquire()` on an empty pool opens a connection, `close()` on it ends it,
//! so each iteration is exactly one connection opened and closed:
//!
//! - `plain`: `PgPoolOptions::new().max_connections(1)`;
//! - `gated`: `LivePool::postgres(..)` with the same pool options
//!   (background check off), whose pool runs the crate's writability check
//!   in `after_connect` on every new connection.
//!
//! The interleaved pass rotates batches of 50 connections over the two
//! pools and three direct connections without a pool (`PgConnection`: bare,
//! with `SELECT 1`, with the crate's writability query), so the check's cost
//! can be told apart from what any first query on a new backend costs, and
//! prints the median and mean per connection; then the writability query
//! alone, on an open connection with the statement cached.

#[path = "../tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pg_cluster::Cluster;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::runtime::Runtime;
use tower_db_liveness::{DbError, DbLivenessLayer, HealthService, LivePool};

const IN_FLIGHT: usize = 32;
const PER_TASK: usize = 8;
const BATCH: usize = IN_FLIGHT * PER_TASK;
const POOL_SIZE: u32 = 10;
const NOTE_ID: i64 = 7;
/// The interleaved served pass: rounds of `AB_BATCHES` batches per variant.
const AB_ROUNDS: usize = 21;
const AB_BATCHES: usize = 8;
/// The interleaved connection pass: rounds of `CONNECT_BATCH` connections each way.
const CONNECT_ROUNDS: usize = 20;
const CONNECT_BATCH: usize = 50;
/// The crate's check (`src/backend/postgres/writable.rs`), sent as it is
/// (simple query protocol).
const WRITABLE_QUERY: &str = "SELECT pg_is_in_recovery(), \
     (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on'";

#[derive(Clone)]
struct Load {
    uri: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    expected: Bytes,
}

impl Load {
    fn new(addr: SocketAddr, expected: Bytes) -> Self {
        Load {
            uri: format!("http://{addr}/note").parse().expect("uri"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            expected,
        }
    }

    async fn get(&self) -> Bytes {
        let request = http::Request::get(self.uri.clone())
            .body(Full::default())
            .expect("a valid request");
        let response = self.client.request(request).await.expect("request");
        assert_eq!(response.status(), 200);
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    /// 256 requests, 32 in flight.
    async fn batch(&self) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let load = self.clone();
            tasks.spawn(async move {
                for _ in 0..PER_TASK {
                    let body = load.get().await;
                    assert_eq!(body, load.expected);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a load task panicked");
        }
    }

    async fn batches(&self, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.batch().await;
        }
        start.elapsed()
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn note(pool: &PgPool) -> Result<String, DbError> {
    Ok(sqlx::query_scalar("SELECT body FROM notes WHERE id = $1")
        .bind(NOTE_ID)
        .fetch_one(pool)
        .await?)
}

async fn plain_note(State(pool): State<PgPool>) -> Result<String, DbError> {
    note(&pool).await
}

async fn live_note(State(live): State<LivePool<Postgres>>) -> Result<String, DbError> {
    note(&live.pool()).await
}

/// Opens `n` connections at once and returns them to the pool.
async fn warm(pool: &PgPool, n: u32) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await.expect("acquire"));
    }
}

struct Served {
    names: [&'static str; 3],
    loads: [Load; 3],
}

async fn servers(options: &PgConnectOptions) -> Served {
    let plain = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with(options.clone())
        .await
        .expect("plain pool");
    sqlx::query("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
        .execute(&plain)
        .await
        .expect("create");
    for id in 1..=10i64 {
        sqlx::query("INSERT INTO notes (id, body) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("note number {id}"))
            .execute(&plain)
            .await
            .expect("insert");
    }
    let live = LivePool::postgres(options.clone())
        .pool_options(PgPoolOptions::new().max_connections(POOL_SIZE))
        .open()
        .await
        .expect("live pool");
    warm(&plain, POOL_SIZE).await;
    warm(&live.pool(), POOL_SIZE).await;

    let plain_addr = serve(
        Router::new()
            .route("/note", get(plain_note))
            .with_state(plain),
    )
    .await;
    let without_addr = serve(
        Router::new()
            .route("/note", get(live_note))
            .with_state(live.clone()),
    )
    .await;
    let with_addr = serve(
        Router::new()
            .route("/note", get(live_note))
            .layer(DbLivenessLayer::new(live.clone()))
            .route_service("/health", HealthService::new(live.clone()))
            .with_state(live),
    )
    .await;
    let expected = Bytes::from(format!("note number {NOTE_ID}"));
    let loads = [plain_addr, without_addr, with_addr].map(|addr| Load::new(addr, expected.clone()));
    // Open each client's 32 keep-alive connections.
    for load in &loads {
        load.batches(4).await;
    }
    Served {
        names: ["plain", "live_without_layer", "live_with_layer"],
        loads,
    }
}

/// One connection opened (by `acquire` on an empty pool) and closed.
async fn open_close(pool: &PgPool) -> Duration {
    let start = Instant::now();
    let conn = pool.acquire().await.expect("acquire");
    conn.close().await.expect("close");
    start.elapsed()
}

/// The plain pool, and the `LivePool` whose (gated) pool is measured.
async fn connect_pools(options: &PgConnectOptions) -> (PgPool, LivePool<Postgres>) {
    let plain = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.clone());
    let live = LivePool::postgres(options.clone())
        .pool_options(PgPoolOptions::new().max_connections(1))
        .check_interval(None)
        .open()
        .await
        .expect("live pool");
    let gated = live.pool();
    // The LivePool verified its first connection and kept it idle: end it,
    // so every acquire below opens one.
    gated
        .acquire()
        .await
        .expect("acquire")
        .close()
        .await
        .expect("close");
    (plain, live)
}

/// A connection opened directly (`PgConnection::connect_with`), optionally
/// one query on it, then closed.
async fn direct(options: &PgConnectOptions, query: Option<&'static str>) -> Duration {
    let start = Instant::now();
    let mut conn = PgConnection::connect_with(options).await.expect("connect");
    if let Some(query) = query {
        sqlx::raw_sql(query)
            .fetch_one(&mut conn)
            .await
            .expect("query");
    }
    conn.close().await.expect("close");
    start.elapsed()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn mean(values: &[Duration]) -> Duration {
    values.iter().sum::<Duration>() / values.len() as u32
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let cluster =
        Cluster::start().expect("start a PostgreSQL primary + standby (tests/pg_cluster)");
    let options: PgConnectOptions = cluster.direct_url(cluster.primary()).parse().expect("url");
    let served = rt.block_on(servers(&options));
    let (plain_pool, live) = rt.block_on(connect_pools(&options));
    // No fault here: the LivePool keeps this one pool.
    let gated_pool = live.pool();

    let mut group = c.benchmark_group("pg_served");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, load) in served.names.iter().zip(&served.loads) {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| rt.block_on(load.batches(iters as usize)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("pg_connect");
    for (name, pool) in [("plain", &plain_pool), ("gated", &gated_pool)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += open_close(pool).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();

    // Interleaved served pass.
    let mut totals = [Duration::ZERO; 3];
    rt.block_on(async {
        for round in 0..AB_ROUNDS {
            for i in 0..3 {
                let v = (round + i) % 3;
                totals[v] += served.loads[v].batches(AB_BATCHES).await;
            }
        }
    });
    let requests = (AB_ROUNDS * AB_BATCHES * BATCH) as f64;
    let rates = totals.map(|t| requests / t.as_secs_f64());
    println!(
        "pg_served/interleaved: {requests} requests each; plain PgPool {:.0} req/s, \
         LivePool without layer {:.0} req/s, LivePool with layer {:.0} req/s; \
         with layer / without layer {:.3}, with layer / plain {:.3}",
        rates[0],
        rates[1],
        rates[2],
        rates[2] / rates[1],
        rates[2] / rates[0],
    );

    // Interleaved connection pass: the two pools, and direct connections
    // (no pool) bare, with `SELECT 1`, and with the writability query, to
    // tell the check's own cost from that of any first query on a new
    // backend.
    let kinds = [
        "pool, plain",
        "pool, gated",
        "direct, bare",
        "direct + SELECT 1",
        "direct + writability query",
    ];
    let times = rt.block_on(async {
        let mut times: [Vec<Duration>; 5] = Default::default();
        for round in 0..CONNECT_ROUNDS {
            for i in 0..kinds.len() {
                let kind = (round + i) % kinds.len();
                for _ in 0..CONNECT_BATCH {
                    let took = match kind {
                        0 => open_close(&plain_pool).await,
                        1 => open_close(&gated_pool).await,
                        2 => direct(&options, None).await,
                        3 => direct(&options, Some("SELECT 1")).await,
                        _ => direct(&options, Some(WRITABLE_QUERY)).await,
                    };
                    times[kind].push(took);
                }
            }
        }
        times
    });
    let query_alone = rt.block_on(async {
        let mut conn = PgConnection::connect_with(&options).await.expect("connect");
        let mut query_times = Vec::new();
        for i in 0..(CONNECT_ROUNDS * CONNECT_BATCH + 100) {
            let start = Instant::now();
            sqlx::raw_sql(WRITABLE_QUERY)
                .fetch_one(&mut conn)
                .await
                .expect("query");
            // The first 100 warm the connection.
            if i >= 100 {
                query_times.push(start.elapsed());
            }
        }
        conn.close().await.expect("close");
        median(query_times)
    });
    let base = median(times[0].clone()).as_secs_f64();
    println!(
        "pg_connect/interleaved: {} connections each, open + close, median / mean (vs the plain pool's median):",
        times[0].len()
    );
    for (kind, samples) in kinds.iter().zip(&times) {
        let med = median(samples.clone()).as_secs_f64();
        println!(
            "  {kind:<28} {:>6.0} µs / {:>6.0} µs ({:+.0} µs, {:.3}x)",
            med * 1e6,
            mean(samples).as_secs_f64() * 1e6,
            (med - base) * 1e6,
            med / base,
        );
    }
    println!(
        "  the writability query alone on an open connection (statement cached): median {:.0} µs",
        query_alone.as_secs_f64() * 1e6
    );
    drop(live);
    drop(rt);
    drop(cluster);
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
