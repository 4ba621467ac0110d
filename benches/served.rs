//! Served throughput of the notes example (`examples/axum.rs`) with and
//! without `DbLivenessLayer`, under the same load on 127.0.0.1.
//!
//! Both servers run side by side, `axum::serve` on their own ports, over the
//! same `LivePool` (a WAL file with 10 notes, the example's watchdog and
//! rescue on):
//!
//! - `served/with_layer`: `example::app(live)`, the example as it ships;
//! - `served/without_layer`: the same routes and `/health` without the layer.
//!
//! The load is `GET /notes` from a hyper-util client with keep-alive: each
//! iteration is a batch of 256 requests, 32 in flight at a time (32 tasks of
//! 8 requests each); every answer is checked (200, the 10 notes). Client and
//! server share one runtime, so the figures are for the whole loop on this
//! machine, not the server alone.
//!
//! Criterion runs the two one after the other; to cancel drift between
//! them, an extra pass alternates them (A B, B A, ...) over a fixed number
//! of batches and prints both rates and the ratio on stderr.

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::runtime::Runtime;
use tower_db_liveness::{HealthService, LivePool};

const IN_FLIGHT: usize = 32;
const PER_TASK: usize = 8;
const BATCH: usize = IN_FLIGHT * PER_TASK;
const NOTES: usize = 10;
/// The interleaved pass: rounds of `AB_BATCHES` batches per variant.
const AB_ROUNDS: usize = 20;
const AB_BATCHES: usize = 10;

#[derive(Clone)]
struct Load {
    uri: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The length of the 10-note answer, checked on every response.
    expected_len: usize,
}

impl Load {
    fn new(addr: SocketAddr, expected_len: usize) -> Self {
        Load {
            uri: format!("http://{addr}/notes").parse().expect("uri"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            expected_len,
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
                    assert_eq!(body.len(), load.expected_len);
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

/// The example's pool and policy on a WAL file with 10 notes.
async fn open(path: &std::path::Path) -> LivePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = example::open_pool(options.clone()).await.expect("open");
    let live = LivePool::builder_with_pool(pool, move || example::open_pool(options.clone()))
        .watchdog_interval(Some(Duration::from_secs(1)))
        .rescue(true)
        .open()
        .await
        .expect("live pool");
    for i in 0..NOTES {
        sqlx::query("INSERT INTO notes(body) VALUES (?)")
            .bind(format!("note number {i}"))
            .execute(&live.pool())
            .await
            .expect("insert");
    }
    live
}

fn served(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (with, without) = rt.block_on(async {
        let live = open(&dir.path().join("notes.db")).await;
        let with = serve(example::app(live.clone())).await;
        let without = serve(
            example::routes()
                .route_service("/health", HealthService::new(live.clone()))
                .with_state(live.clone()),
        )
        .await;
        // The same answer from both; its length is checked from here on.
        let probe = Load::new(with, 0).get().await;
        let notes: serde_json::Value = serde_json::from_slice(&probe).expect("json");
        assert_eq!(notes.as_array().map(Vec::len), Some(NOTES));
        assert_eq!(Load::new(without, 0).get().await, probe);
        let (with, without) = (
            Load::new(with, probe.len()),
            Load::new(without, probe.len()),
        );
        // Open the 32 keep-alive connections of each client.
        with.batches(4).await;
        without.batches(4).await;
        (with, without)
    });

    let mut group = c.benchmark_group("served");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, load) in [("without_layer", &without), ("with_layer", &with)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(load.batches(iters as usize)))
        });
    }
    group.finish();

    let (mut t_with, mut t_without) = (Duration::ZERO, Duration::ZERO);
    rt.block_on(async {
        for round in 0..AB_ROUNDS {
            if round % 2 == 0 {
                t_without += without.batches(AB_BATCHES).await;
                t_with += with.batches(AB_BATCHES).await;
            } else {
                t_with += with.batches(AB_BATCHES).await;
                t_without += without.batches(AB_BATCHES).await;
            }
        }
    });
    let requests = (AB_ROUNDS * AB_BATCHES * BATCH) as f64;
    let (rate_with, rate_without) = (
        requests / t_with.as_secs_f64(),
        requests / t_without.as_secs_f64(),
    );
    eprintln!(
        "served/interleaved: {requests} requests each; without layer {rate_without:.0} req/s, \
         with layer {rate_with:.0} req/s, ratio with/without {:.3}",
        rate_with / rate_without
    );
}

criterion_group!(benches, served);
criterion_main!(benches);
