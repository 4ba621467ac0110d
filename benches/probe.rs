//! Health probe latency through `HealthService`, on real files.
//!
//! - `probe/healthy_service`: one `GET` through the service
//!   (`ServiceExt::oneshot`) on a healthy WAL database, body collected: the
//!   file identity check (a `stat` off the runtime) and a read of page 1.
//! - `probe/healthy_http`: the same through `axum::serve` on 127.0.0.1 and a
//!   keep-alive hyper client: what a client sees.
//! - `probe/locked_50ms_timeout`: a DELETE-journal database on which another
//!   connection holds `BEGIN EXCLUSIVE` with a write in it. Every answer must
//!   be `warn` / 200 and end at the 50 ms timeout. One probe stays in flight
//!   behind the lock (sqlx's 5 s busy timeout) and each request joins it, so
//!   this is the answer latency a client sees, not the probe's.
//!
//! Besides criterion's mean and median, one extra pass per variant times
//! every request and prints p50 / p99 on stderr.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_db_liveness::{HealthService, LivePool};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)";
const LOCKED_TIMEOUT: Duration = Duration::from_millis(50);

fn options(path: &Path, journal: SqliteJournalMode) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(journal)
}

/// A `LivePool` on a real file with a small table; no watchdog, so nothing
/// but the benchmark touches the database.
async fn open(path: &Path, journal: SqliteJournalMode) -> LivePool {
    let live = LivePool::builder(options(path, journal))
        .watchdog_interval(None)
        .open()
        .await
        .expect("live pool");
    sqlx::query(TABLE)
        .execute(&live.pool())
        .await
        .expect("table");
    for i in 0..10 {
        sqlx::query("INSERT INTO notes(body) VALUES (?)")
            .bind(format!("note {i}"))
            .execute(&live.pool())
            .await
            .expect("insert");
    }
    live
}

fn get() -> http::Request<()> {
    http::Request::get("/health")
        .body(())
        .expect("a valid request")
}

/// One answer from the service: status and body.
async fn ask(health: &HealthService) -> (http::StatusCode, Bytes) {
    let response = health.clone().oneshot(get()).await.expect("infallible");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body");
    (status, body.to_bytes())
}

fn status_of(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("health+json");
    json["status"].as_str().expect("a status").to_owned()
}

struct HttpClient {
    uri: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    fn new(addr: SocketAddr) -> Self {
        HttpClient {
            uri: format!("http://{addr}/health").parse().expect("uri"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn ask(&self) -> (http::StatusCode, Bytes) {
        let request = http::Request::get(self.uri.clone())
            .body(Full::default())
            .expect("a valid request");
        let response = self.client.request(request).await.expect("request");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body");
        (status, body.to_bytes())
    }
}

/// Times `n` answers one by one and prints p50 / p99.
async fn percentiles<F, Fut>(name: &str, n: usize, mut answer: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        answer().await;
        samples.push(start.elapsed());
    }
    samples.sort();
    let at = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    eprintln!(
        "probe/{name}: p50 {:?}, p99 {:?}, max {:?} over {n} requests",
        at(0.50),
        at(0.99),
        samples[n - 1]
    );
}

fn healthy(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let live = rt.block_on(open(&dir.path().join("healthy.db"), SqliteJournalMode::Wal));
    let health = HealthService::new(live.clone());
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route_service("/health", health.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    let http = HttpClient::new(addr);

    let mut group = c.benchmark_group("probe");
    group.bench_function("healthy_service", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (status, body) = ask(&health).await;
                    assert_eq!(status, 200);
                    std::hint::black_box(body);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("healthy_http", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (status, body) = http.ask().await;
                    assert_eq!(status, 200);
                    std::hint::black_box(body);
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    rt.block_on(async {
        // The answers are checked once here, outside the timed loops.
        let (status, body) = ask(&health).await;
        assert_eq!(status, 200);
        assert_eq!(status_of(&body), "pass");
        percentiles("healthy_service", 2_000, || async {
            std::hint::black_box(ask(&health).await);
        })
        .await;
        percentiles("healthy_http", 2_000, || async {
            std::hint::black_box(http.ask().await);
        })
        .await;
    });
}

fn locked(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locked.db");
    let live = rt.block_on(open(&path, SqliteJournalMode::Delete));
    let health = HealthService::new(live.clone()).timeout(LOCKED_TIMEOUT);
    // Another connection takes the exclusive lock and writes under it: a
    // reader of a DELETE-journal file now waits for the busy timeout.
    let mut holder = rt.block_on(async {
        let mut conn: SqliteConnection = options(&path, SqliteJournalMode::Delete)
            .connect()
            .await
            .expect("second connection");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("lock");
        sqlx::query("INSERT INTO notes(body) VALUES ('held')")
            .execute(&mut conn)
            .await
            .expect("write under the lock");
        conn
    });

    let locked_answer = |status: http::StatusCode, body: &[u8]| {
        assert_eq!(status, 200);
        assert_eq!(status_of(body), "warn", "{}", String::from_utf8_lossy(body));
    };
    let mut group = c.benchmark_group("probe");
    group.sample_size(10);
    group.bench_function("locked_50ms_timeout", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (status, body) = ask(&health).await;
                    total += start.elapsed();
                    locked_answer(status, &body);
                }
                total
            })
        })
    });
    group.finish();

    rt.block_on(async {
        percentiles("locked_50ms_timeout", 40, || async {
            let (status, body) = ask(&health).await;
            locked_answer(status, &body);
        })
        .await;
        sqlx::query("ROLLBACK")
            .execute(&mut holder)
            .await
            .expect("release the lock");
        holder.close().await.expect("close");
    });
}

criterion_group!(benches, healthy, locked);
criterion_main!(benches);
