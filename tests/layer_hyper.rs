//! The layer with hyper 1: the `service_fn` of `examples/hyper.rs` served by
//! hyper-util on 127.0.0.1 and called with a real HTTP client.
//!
//! Path: the handler's error type is `Box<dyn Error + Send + Sync>`, which
//! carries the `sqlx::Error`; the layer finds it in the service's `Err`
//! (`BoxedErrors`) and hands the error on unchanged; the example's outer
//! `map_result` turns it into a 503 afterwards.
#![cfg(feature = "sqlite")]

mod common;
mod layer_support;

#[allow(dead_code)]
#[path = "../examples/hyper.rs"]
mod example;

use std::net::SocketAddr;
use std::string::FromUtf8Error;
use std::time::Duration;

use bytes::Bytes;
use common::{TestDb, TestResult, count_in_file, warm};
use http_body_util::Full;
use layer_support::{Http, WriteLock, last_heal, open, passed, within};
use sqlx::sqlite::SqliteJournalMode;
use tower::{ServiceBuilder, ServiceExt};
use tower_db_liveness::{
    BoxedErrors, DbLivenessLayer, ErrorClass, GiveUpReason, LivePool, classify,
};

/// Serves the example's service, as its `main` does.
async fn serve(live: LivePool) -> std::io::Result<SocketAddr> {
    let service = ServiceBuilder::new()
        .map_result(example::error_response)
        .service(example::notes_service(live));
    serve_service(service).await
}

async fn serve_service<S>(service: S) -> std::io::Result<SocketAddr>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Full<Bytes>>,
            Error = example::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(example::serve(listener, service));
    Ok(addr)
}

fn post(body: &'static [u8]) -> Result<http::Request<Full<Bytes>>, http::Error> {
    http::Request::post("/notes").body(Full::new(Bytes::from_static(body)))
}

/// The field repro: the file is unlinked under a DELETE-journal service; the
/// first write fails with 1032, the layer finds it in the `Err`, the pool is
/// reopened and the next write lands in the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_file_heals_and_the_next_write_succeeds() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(server.live.clone()).await?);
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&server.live.pool()).await?;

    db.replace_file().await?; // a restore: the same application's database
    let failed = http.post("/notes", "lost").await?;
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(failed.headers["retry-after"], "1");

    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
    let heal = last_heal(&server.live).ok_or("no heal was published")?;
    assert_eq!(heal.fault.code(), Some(1032), "{:?}", heal.fault);

    let next = http.post("/notes", "after").await?;
    assert_eq!(next.status, 201, "{next:?}");
    assert_eq!(next.body, r#"{"id":1}"#, "a new, empty file");
    assert_eq!(count_in_file(&db.path).await?, 1);
    assert_eq!(server.exits.count_now(), 0);
    Ok(())
}

/// The directory is deleted: the reopen fails (14) and the policy gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_directory_gives_up() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(server.live.clone()).await?);
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&server.live.pool()).await?;

    db.rm_rf_dir()?;
    let failed = http.post("/notes", "lost").await?;
    assert_eq!(failed.status, 503, "{failed:?}");

    let gave_up = within("the give-up", server.exits.next())
        .await?
        .ok_or("the exit action never ran")?;
    assert_eq!(gave_up.fault.code(), Some(1032), "{:?}", gave_up.fault);
    assert!(
        matches!(&gave_up.reason, GiveUpReason::ReopenFailed(msg) if msg.contains("no database file at")),
        "{:?}",
        gave_up.reason
    );
    assert!(server.live.has_given_up());
    Ok(())
}

/// A write lock held by another pool: 503, no reopen, and the next write
/// succeeds once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let options = db.options().busy_timeout(Duration::from_millis(50));
    let server = open(options, example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(server.live.clone()).await?);
    assert_eq!(http.post("/notes", "before").await?.status, 201);

    let lock = WriteLock::take(db.options()).await?;
    let failed = http.post("/notes", "locked").await?;
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(failed.headers["retry-after"], "1");
    assert_eq!(server.live.generation(), 0);
    assert!(!server.live.is_healing());
    assert_eq!(server.reopens(), 0);

    lock.release().await?;
    let next = http.post("/notes", "after").await?;
    assert_eq!(next.status, 201, "{next:?}");
    assert_eq!(next.body, r#"{"id":2}"#, "the same file");
    assert_eq!(server.reopens(), 0);
    Ok(())
}

/// Requests that arrive while the heal is in flight are held, and served by
/// the new pool. The reopen is real but waits for the test's signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_heal_are_held_and_served_by_the_new_pool() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), example::open_pool, true, |b| b).await?;
    let (passed, mut arrivals) = passed();
    let layer = DbLivenessLayer::new(server.live.clone())
        .hold_timeout(Duration::from_secs(60))
        .find_errors::<BoxedErrors>();
    let service = ServiceBuilder::new()
        .map_result(example::error_response)
        .layer(passed)
        .layer(layer)
        .service(example::notes_handler(server.live.clone()));
    let http = std::sync::Arc::new(Http::new(serve_service(service).await?));
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&server.live.pool()).await?;

    db.replace_file().await?; // a restore: the same application's database
    assert_eq!(http.post("/notes", "lost").await?.status, 503);
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
    assert!(server.live.is_healing());

    server.gate.notify_one();
    while let Some(reply) = within("a held request", held.join_next()).await? {
        let reply = reply??;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    assert_eq!(server.live.generation(), 1);
    assert_eq!(count_in_file(&db.path).await?, 3);
    Ok(())
}

/// An error that is not a database error: over the server it becomes the
/// example's 400, and nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_that_is_not_a_database_error_passes_through() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(server.live.clone()).await?);

    let rejected = http.post("/notes", &b"\xff\xfe"[..]).await?;
    assert_eq!(rejected.status, 400, "{rejected:?}");
    assert_eq!(rejected.body, "the body is not UTF-8\n");
    assert_eq!(server.live.generation(), 0);
    assert!(!server.live.is_healing());
    assert_eq!(server.reopens(), 0);
    Ok(())
}

/// The layer hands the service's `Err` back unchanged: the same error value,
/// whether or not it held a database error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_error_comes_back_unchanged() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), example::open_pool, true, |b| b).await?;
    let service = example::notes_service::<Full<Bytes>>(server.live.clone());

    let err = match service.clone().oneshot(post(b"\xff\xfe")?).await {
        Err(err) => err,
        Ok(response) => return Err(format!("expected an error, got {response:?}").into()),
    };
    let utf8 = err
        .downcast_ref::<FromUtf8Error>()
        .ok_or("not the handler's error")?;
    assert_eq!(utf8.as_bytes(), b"\xff\xfe");
    assert!(!server.live.is_healing());

    warm(&server.live.pool()).await?;
    db.replace_file().await?; // a restore: the same application's database
    let err = match service.oneshot(post(b"lost")?).await {
        Err(err) => err,
        Ok(response) => return Err(format!("expected an error, got {response:?}").into()),
    };
    let sqlx_err = err
        .downcast_ref::<sqlx::Error>()
        .ok_or("not the handler's error")?;
    assert_eq!(classify(sqlx_err), ErrorClass::Fatal);
    assert_eq!(
        sqlx_err
            .as_database_error()
            .and_then(|db| db.code())
            .as_deref(),
        Some("1032")
    );
    // Reported on the way: the (gated) heal is in flight already.
    assert!(server.live.is_healing());
    server.gate.notify_one();
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    Ok(())
}
