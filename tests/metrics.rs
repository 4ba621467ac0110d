//! The `metrics` feature under real faults: the numbers an operator's
//! dashboard reads move when the policy acts.
//!
//! 1. The real `examples/axum` binary, scraped on its own `GET /metrics`
//!    (`metrics-exporter-prometheus`): a write lock held by a second pool
//!    (transient error), then a restore by rename, healed by the watchdog
//!    (rescue, heal, generation), and probe answers.
//! 2. In this process, with the Prometheus recorder installed globally (the
//!    only test here that records in-process): requests held during a heal
//!    (the reopen is gated, so the heal is observably in flight), then a
//!    deleted directory (fatal error, rescue, give-up, `/health` failing).

mod common;
mod example_support;
mod layer_support;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{TestDb, TestResult, warm};
use example_support::Example;
use layer_support::{Http, WriteLock, open, passed, within};
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{DbLivenessLayer, GiveUpReason};

async fn serve(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The value of one series (`name` or `name{label="value"}`) in Prometheus
/// text; 0 when it is absent (a counter never incremented is not rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(http: &Http) -> Result<String, layer_support::BoxError> {
    let reply = http.get("/metrics").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    Ok(reply.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_binary_reports_a_lock_and_a_heal_on_its_metrics_endpoint() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let db_path = db.path.display().to_string();
    let rescue_dir = db.root.path().display().to_string();
    // The watchdog (every 100 ms) is the detector of the restore below.
    let mut example = Example::start(&[
        "--db",
        &db_path,
        "--journal",
        "delete",
        "--rescue-dir",
        &rescue_dir,
        "--watchdog-ms",
        "100",
    ])
    .await?;
    let http = Http::new(example.addr);

    let start = scrape(&http).await?;
    assert!(
        start.contains("# TYPE db_liveness_generation gauge"),
        "{start}"
    );
    assert_eq!(value(&start, "db_liveness_generation"), 0.0, "{start}");
    assert_eq!(
        value(&start, "db_liveness_heals_total{fault=\"replaced\"}"),
        0.0
    );
    assert_eq!(
        value(&start, "db_liveness_errors_total{class=\"transient\"}"),
        0.0
    );

    assert_eq!(http.post("/notes", "before").await?.status, 201);
    assert_eq!(http.get("/health").await?.status, 200);

    // A write lock held by another pool: the example's write waits out its
    // busy timeout (sqlx's default, 5 s) and fails with BUSY.
    let lock = WriteLock::take(db.options()).await?;
    let locked = http.post("/notes", "locked").await?;
    assert_eq!(locked.status, 503, "{locked:?}");
    lock.release().await?;
    let after_lock = scrape(&http).await?;
    assert_eq!(
        value(&after_lock, "db_liveness_errors_total{class=\"transient\"}"),
        1.0,
        "{after_lock}"
    );
    assert_eq!(
        value(&after_lock, "db_liveness_heals_total{fault=\"replaced\"}"),
        0.0
    );
    assert_eq!(
        value(&after_lock, "db_liveness_probe_total{status=\"pass\"}"),
        1.0,
        "{after_lock}"
    );
    assert_eq!(value(&after_lock, "db_liveness_probe_seconds_count"), 1.0);

    // A restore by rename: the watchdog finds the file replaced, the old
    // inode is rescued, the pool is reopened onto the restore.
    db.replace_file().await?;
    example
        .logged("database pool reopened and swapped in")
        .await?;
    let healed = scrape(&http).await?;
    assert_eq!(value(&healed, "db_liveness_generation"), 1.0, "{healed}");
    assert_eq!(
        value(&healed, "db_liveness_heals_total{fault=\"replaced\"}"),
        1.0,
        "{healed}"
    );
    assert_eq!(
        value(
            &healed,
            "db_liveness_heal_seconds_count{outcome=\"healed\"}"
        ),
        1.0,
        "{healed}"
    );
    assert!(
        value(&healed, "db_liveness_rescues_total{result=\"saved\"}") >= 1.0,
        "{healed}"
    );
    // The rescue of a one-row database: a few SQLite pages.
    let bytes = value(&healed, "db_liveness_rescue_bytes");
    assert!(bytes >= 4096.0, "rescue size {bytes}:\n{healed}");
    assert_eq!(
        value(
            &healed,
            "db_liveness_give_ups_total{reason=\"reopen_failed\"}"
        ),
        0.0
    );
    // The watchdog found the fault: no fatal error reached the policy.
    assert_eq!(
        value(&healed, "db_liveness_errors_total{class=\"fatal\"}"),
        0.0
    );

    assert_eq!(http.post("/notes", "after").await?.status, 201);
    assert_eq!(http.get("/health").await?.status, 200);
    let end = scrape(&http).await?;
    assert_eq!(
        value(&end, "db_liveness_probe_total{status=\"pass\"}"),
        2.0,
        "{end}"
    );
    assert_eq!(
        value(&end, "db_liveness_probe_total{status=\"fail\"}"),
        0.0,
        "{end}"
    );

    example.terminate().await?;
    let status = example.wait().await?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", example.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_fatal_errors_give_ups_and_failing_probes_are_counted() -> TestResult {
    let metrics = PrometheusBuilder::new().install_recorder()?;

    // A heal held open by a gated reopen, with requests arriving meanwhile.
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), example::open_pool, true, |b| b).await?;
    let (passed, mut arrivals) = passed();
    // One composed layer, so `passed` calls the layer's `call` directly: with
    // two `Router::layer`s an axum `Route` between them defers that call to
    // its first poll, after `passed` has reported.
    let app =
        example::routes()
            .layer(tower::ServiceBuilder::new().layer(passed).layer(
                DbLivenessLayer::new(server.live.clone()).hold_timeout(Duration::from_secs(60)),
            ))
            .with_state(server.live.clone());
    let http = std::sync::Arc::new(Http::new(serve(app).await?));
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&server.live.pool()).await?;
    let start = metrics.render();
    assert_eq!(value(&start, "db_liveness_held_requests_total"), 0.0);

    db.replace_file().await?;
    let failed = http.post("/notes", "lost").await?; // 1032 on the old inode
    assert_eq!(failed.status, 503, "{failed:?}");
    assert!(server.live.is_healing());
    while arrivals.try_recv().is_ok() {}
    let mut held = tokio::task::JoinSet::new();
    for i in 0..3 {
        let http = std::sync::Arc::clone(&http);
        held.spawn(async move { http.post("/notes", format!("held {i}")).await });
    }
    for _ in 0..3 {
        within("a request reaching the layer", arrivals.recv())
            .await?
            .ok_or("a request never reached the layer")?;
    }
    let holding = metrics.render();
    assert_eq!(
        value(&holding, "db_liveness_held_requests_total"),
        3.0,
        "{holding}"
    );
    assert_eq!(value(&holding, "db_liveness_hold_seconds_count"), 0.0);
    server.gate.notify_one();
    while let Some(reply) = within("a held request", held.join_next()).await? {
        let reply = reply??;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let healed = metrics.render();
    assert_eq!(
        value(&healed, "db_liveness_hold_seconds_count"),
        3.0,
        "{healed}"
    );
    assert!(
        value(&healed, "db_liveness_hold_seconds_sum") > 0.0,
        "{healed}"
    );
    assert_eq!(
        value(&healed, "db_liveness_errors_total{class=\"fatal\"}"),
        1.0,
        "{healed}"
    );
    assert_eq!(
        value(&healed, "db_liveness_heals_total{fault=\"error\"}"),
        1.0,
        "{healed}"
    );
    assert_eq!(value(&healed, "db_liveness_generation"), 1.0, "{healed}");
    assert!(value(&healed, "db_liveness_rescues_total{result=\"saved\"}") >= 1.0);
    drop(server);

    // The directory deleted: a fatal write, a rescue, no file to reattach.
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(example::app(server.live.clone())).await?);
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&server.live.pool()).await?;
    let saved_before = value(
        &metrics.render(),
        "db_liveness_rescues_total{result=\"saved\"}",
    );
    db.rm_rf_dir()?;
    assert_eq!(http.post("/notes", "lost").await?.status, 503);
    let gave_up = within("the give-up", server.exits.next())
        .await?
        .ok_or("the exit action never ran")?;
    assert!(
        matches!(gave_up.reason, GiveUpReason::ReopenFailed(_)),
        "{:?}",
        gave_up.reason
    );
    assert_eq!(http.get("/health").await?.status, 503);
    let end = metrics.render();
    assert_eq!(
        value(&end, "db_liveness_give_ups_total{reason=\"reopen_failed\"}"),
        1.0,
        "{end}"
    );
    assert_eq!(
        value(&end, "db_liveness_heal_seconds_count{outcome=\"gave_up\"}"),
        1.0,
        "{end}"
    );
    assert_eq!(
        value(&end, "db_liveness_errors_total{class=\"fatal\"}"),
        2.0
    );
    assert!(
        value(&end, "db_liveness_rescues_total{result=\"saved\"}") >= saved_before + 1.0,
        "{end}"
    );
    assert!(
        value(&end, "db_liveness_probe_total{status=\"fail\"}") >= 1.0,
        "{end}"
    );
    Ok(())
}
