//! The layer's cost on the success path, beside a bare service and
//! tower-http's `CatchPanicLayer` (a layer of the same shape), in one harness.
//!
//! Each iteration is one `ready().await` + `call(request).await`.
//! `success_path/*`: a handler that answers at once, so the figures are the
//! layers' own overhead. `sqlite_read/*`: a handler that reads a real SQLite
//! file through the `LivePool`, what a database route costs.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_db_liveness::{DbLivenessLayer, LivePool};
use tower_http::catch_panic::CatchPanicLayer;

type Request = http::Request<Full<Bytes>>;

async fn ok(_req: Request) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn run<S>(rt: &Runtime, mut svc: S, iters: u64) -> Duration
where
    S: Service<Request, Error = Infallible>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let svc = svc.ready().await.expect("ready");
            let response = svc.call(http::Request::new(Full::default())).await;
            std::hint::black_box(response.is_ok());
        }
        start.elapsed()
    })
}

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let live = rt
        .block_on(LivePool::connect(
            SqliteConnectOptions::new()
                .filename(dir.path().join("bench.db"))
                .create_if_missing(true),
        ))
        .expect("live pool");

    let mut group = c.benchmark_group("success_path");
    group.bench_function("bare_service_fn", |b| {
        b.iter_custom(|iters| run(&rt, service_fn(ok), iters))
    });
    group.bench_function("db_liveness_layer", |b| {
        let svc = DbLivenessLayer::new(live.clone()).layer(service_fn(ok));
        b.iter_custom(|iters| run(&rt, svc.clone(), iters))
    });
    group.bench_function("catch_panic_layer", |b| {
        let svc = CatchPanicLayer::new().layer(service_fn(ok));
        b.iter_custom(|iters| run(&rt, svc, iters))
    });
    group.finish();

    // The same comparison with a handler that does real work: one read of a
    // real SQLite file through the pool.
    sqlx_block(&rt, &live);
    let reads = |live: LivePool| {
        service_fn(move |_req: Request| {
            let live = live.clone();
            async move {
                let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
                    .fetch_one(&live.pool())
                    .await
                    .unwrap_or(-1);
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                    rows.to_string(),
                ))))
            }
        })
    };
    let mut group = c.benchmark_group("sqlite_read");
    group.bench_function("bare_service_fn", |b| {
        let svc = reads(live.clone());
        b.iter_custom(|iters| run(&rt, svc.clone(), iters))
    });
    group.bench_function("db_liveness_layer", |b| {
        let svc = DbLivenessLayer::new(live.clone()).layer(reads(live.clone()));
        b.iter_custom(|iters| run(&rt, svc.clone(), iters))
    });
    group.bench_function("catch_panic_layer", |b| {
        let svc = CatchPanicLayer::new().layer(reads(live.clone()));
        b.iter_custom(|iters| run(&rt, svc.clone(), iters))
    });
    group.finish();
}

fn sqlx_block(rt: &Runtime, live: &LivePool) {
    rt.block_on(async {
        sqlx::query("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
            .execute(&live.pool())
            .await
            .expect("table");
        for i in 0..100 {
            sqlx::query("INSERT INTO notes(body) VALUES (?)")
                .bind(format!("note {i}"))
                .execute(&live.pool())
                .await
                .expect("insert");
        }
    });
}

criterion_group!(benches, success_path);
criterion_main!(benches);
