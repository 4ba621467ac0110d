//! The layer in axum 0.8: the notes example (`examples/axum.rs`) served with
//! `axum::serve` on 127.0.0.1 and called with a real HTTP client.
//!
//! Path: a handler returns `DbError`; its `IntoResponse` records the error in
//! the response's extensions, where the layer finds it (axum's service error
//! is `Infallible`, so this is the only way an error can reach the layer).

mod common;
mod example_support;
mod layer_support;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{TestDb, TestResult, count_in_file, warm};
use example_support::{Example, RawRequest, refused};
use layer_support::{Http, WriteLock, last_heal, open, passed, within};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{DbLivenessLayer, GiveUpReason};

async fn serve(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The field repro: the file is unlinked under a DELETE-journal service; the
/// first write fails with 1032, the layer reports it, the pool is reopened
/// and the next write lands in the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_file_heals_and_the_next_write_succeeds() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(example::app(server.live.clone())).await?);

    let first = http.post("/notes", "before").await?;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body, r#"{"id":1}"#);
    warm(&server.live.pool()).await?;

    db.replace_file().await?; // a restore: the same application's database
    let failed = http.post("/notes", "lost").await?;
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(failed.headers["retry-after"], "1");
    assert_eq!(failed.body, "database temporarily unavailable\n");

    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
    // Nothing but the layer reports in this test (no watchdog, no probe).
    let heal = last_heal(&server.live).ok_or("no heal was published")?;
    assert_eq!(heal.fault.code(), Some(1032), "{:?}", heal.fault);

    let next = http.post("/notes", "after").await?;
    assert_eq!(next.status, 201, "{next:?}");
    assert_eq!(next.body, r#"{"id":1}"#, "a new, empty file");
    let list = http.get("/notes").await?;
    assert_eq!(list.body, r#"[{"body":"after","id":1}]"#);
    assert_eq!(count_in_file(&db.path).await?, 1);
    assert_eq!(server.exits.count_now(), 0);
    Ok(())
}

/// The directory is deleted: the reopen fails (14) and the policy gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_directory_gives_up() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(example::app(server.live.clone())).await?);
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
    // A reopen never creates the database: with no file at the path it is not even tried.
    assert_eq!(server.reopens(), 0);
    Ok(())
}

/// A write lock held by another pool: 503 with Retry-After, no reopen, and
/// the next write succeeds once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    // A short busy timeout so the locked write fails soon (it is not a
    // synchronisation: the lock is held until released below).
    let options = db.options().busy_timeout(Duration::from_millis(50));
    let server = open(options, example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(example::app(server.live.clone())).await?);
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
    assert_eq!(server.live.generation(), 0);
    assert_eq!(server.reopens(), 0);
    Ok(())
}

/// Requests that arrive while the heal is in flight are held, and served by
/// the new pool once it is in. The reopen is real but waits for the test's
/// signal, so the heal is observably in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_heal_are_held_and_served_by_the_new_pool() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), example::open_pool, true, |b| b).await?;
    let (passed, mut arrivals) = passed();
    let app = example::routes()
        // Generous: the gate below decides when the heal ends.
        .layer(DbLivenessLayer::new(server.live.clone()).hold_timeout(Duration::from_secs(60)))
        .layer(passed)
        .with_state(server.live.clone());
    let http = std::sync::Arc::new(Http::new(serve(app).await?));
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&server.live.pool()).await?;

    db.replace_file().await?; // a restore: the same application's database
    let failed = http.post("/notes", "lost").await?;
    assert_eq!(failed.status, 503, "{failed:?}");
    // The heal was started before that response left the layer.
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
    // All three are past the layer's `call` and the heal is still in flight:
    // had they not been held, they would have run on the dead pool (1032).
    assert!(server.live.is_healing());
    assert_eq!(server.live.generation(), 0);

    server.gate.notify_one();
    while let Some(reply) = within("a held request", held.join_next()).await? {
        let reply = reply??;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
    assert_eq!(count_in_file(&db.path).await?, 3);
    Ok(())
}

/// A handler error that is not a database error passes through untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_that_is_not_a_database_error_passes_through() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let server = open(db.options(), example::open_pool, false, |b| b).await?;
    let http = Http::new(serve(example::app(server.live.clone())).await?);

    let rejected = http.post("/notes", "  ").await?;
    assert_eq!(rejected.status, 400, "{rejected:?}");
    assert_eq!(rejected.body, "empty note\n");
    assert!(rejected.headers.get("retry-after").is_none());
    assert_eq!(server.live.generation(), 0);
    assert!(!server.live.is_healing());
    assert_eq!(server.reopens(), 0);
    assert_eq!(http.get("/health").await?.status, 200);
    Ok(())
}

/// The example binary itself, its watchdog off so the layer is the only
/// detector: once its directory is deleted, a write fails with 1032 (503),
/// the layer reports it, the reopen fails (14) and the process exits with
/// status 1. The give-up names the write's 1032: the layer caused the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_exits_with_status_1_when_its_directory_is_deleted() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let db_path = db.path.display().to_string();
    let rescue_dir = db.root.path().display().to_string();
    let mut example = Example::start(&[
        "--db",
        &db_path,
        "--journal",
        "delete",
        "--rescue-dir",
        &rescue_dir,
        "--watchdog-ms",
        "0",
    ])
    .await?;
    let http = Http::new(example.addr);
    let created = http.post("/notes", "before").await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(http.get("/health").await?.status, 200);

    db.rm_rf_dir()?;
    // With the graceful shutdown the answer gets out before the exit.
    let failed = http.post("/notes", "after").await?;
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(failed.headers["retry-after"], "1");
    assert_eq!(failed.body, "database temporarily unavailable\n");

    let status = example.wait().await?;
    let log = example.log();
    assert_eq!(status.code(), Some(1), "stderr:\n{log}");
    let gave_up = log
        .lines()
        .find(|line| line.contains("exiting so the supervisor restarts"))
        .ok_or_else(|| format!("no give-up in stderr:\n{log}"))?;
    // The fault is the write's error, as the layer reported it (the watchdog
    // is off; nothing else touched the database after the deletion).
    assert!(gave_up.contains("code=1032"), "{gave_up}");
    assert!(
        gave_up.contains("no database file at"),
        "the reopen failed: {gave_up}"
    );
    Ok(())
}

/// Graceful shutdown on a give-up: a request that is in the server when the
/// policy gives up is answered, new connections are refused, and the
/// process exits with status 1 once the answer is out (before the grace
/// period's own exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_the_give_up_is_answered_before_the_exit() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let db_path = db.path.display().to_string();
    let rescue_dir = db.root.path().display().to_string();
    let mut example = Example::start(&[
        "--db",
        &db_path,
        "--rescue-dir",
        &rescue_dir,
        "--grace-secs",
        "60",
    ])
    .await?;
    let http = Http::new(example.addr);
    assert_eq!(http.post("/notes", "before").await?.status, 201);

    // In the server: the handler is reading the body (100 Continue), and
    // the body is only sent after the give-up.
    let in_flight = RawRequest::post_started(example.addr, "/notes", "in flight").await?;

    // The watchdog sees the directory gone; the reopen fails; the policy
    // gives up.
    db.rm_rf_dir()?;
    let gave_up = example.logged("exiting so the supervisor restarts").await?;
    assert!(gave_up.contains("no database file at"), "{gave_up}");

    refused(example.addr).await?;
    let response = in_flight.finish().await?;
    // Answered, not cut: the pool is closed, so 503 with Retry-After, and
    // never a 201 for a database that is gone.
    assert!(
        response.starts_with("HTTP/1.1 503"),
        "{response:?}\nstderr:\n{}",
        example.log()
    );
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response:?}"
    );

    let status = example.wait().await?;
    let log = example.log();
    assert_eq!(status.code(), Some(1), "stderr:\n{log}");
    assert!(
        !log.contains("shutdown grace"),
        "the drain finished first:\n{log}"
    );
    Ok(())
}

/// SIGTERM: the request in flight is served (201, and stored), new
/// connections are refused, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_0() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let db_path = db.path.display().to_string();
    let mut example = Example::start(&["--db", &db_path]).await?;
    let http = Http::new(example.addr);
    assert_eq!(http.post("/notes", "before").await?.status, 201);

    let in_flight = RawRequest::post_started(example.addr, "/notes", "in flight").await?;
    example.terminate().await?;
    refused(example.addr).await?;
    let response = in_flight.finish().await?;
    assert!(response.starts_with("HTTP/1.1 201"), "{response:?}");
    assert!(response.ends_with(r#"{"id":2}"#), "{response:?}");

    let status = example.wait().await?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", example.log());
    assert_eq!(count_in_file(&db.path).await?, 2);
    Ok(())
}

/// Issue 18.3, the example as a real process: the database is unlinked,
/// the example rescues and exits 1; started again with the same arguments
/// (its own pool has `create_if_missing(true)`), it refuses to start with a
/// message naming the rescue, and creates nothing at the path. Once the
/// rescue is moved back as the message says, it serves every acknowledged
/// note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_never_restarts_on_an_empty_database() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let db_path = db.path.display().to_string();
    let args = ["--db", db_path.as_str(), "--watchdog-ms", "100"];
    let mut example = Example::start(&args).await?;
    let http = Http::new(example.addr);
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let body = format!("note {i}");
        let created = http.post("/notes", body.clone()).await?;
        assert_eq!(created.status, 201, "{created:?}");
        acknowledged.push(body);
    }
    db.unlink_files()?;
    let status = example.wait().await?;
    let log = example.log();
    assert_eq!(status.code(), Some(1), "stderr:\n{log}");
    let rescue_line = log
        .lines()
        .find(|l| l.contains("rescued the dead handle's data"))
        .ok_or_else(|| format!("no rescue in stderr:\n{log}"))?;
    let rescue = rescue_line
        .split("rescue=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no rescue path")?
        .to_owned();
    assert!(
        log.contains("the next start refuses"),
        "the exit says what happens next:\n{log}"
    );

    let (status, stderr) = Example::refused_start(&args).await?;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&rescue),
        "the refusal names {rescue}:\n{stderr}"
    );
    assert!(stderr.contains("mv '"), "{stderr}");
    assert!(
        !db.path.exists(),
        "an empty database was created at the path"
    );

    std::fs::rename(&rescue, &db.path)?;
    let mut example = Example::start(&args).await?;
    // What the fault left (here the retired restore marker) is listed at
    // open, with its size; nothing is deleted.
    let listed = example.logged("files from earlier faults are kept").await?;
    assert!(listed.contains("restore-needed-"), "{listed}");
    assert!(listed.contains("bytes="), "{listed}");
    let http = Http::new(example.addr);
    let listed = http.get("/notes").await?;
    assert_eq!(listed.status, 200);
    for body in &acknowledged {
        assert!(
            listed.body.contains(body.as_str()),
            "{body}: {}",
            listed.body
        );
    }
    example.kill().await?;
    Ok(())
}

/// Issue 18.5: every `statx` of the database's path takes 3 s from the
/// first call (strace's fault injection, only on that path): the example
/// still starts, and its health routes answer.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_starts_on_a_slow_mount() -> TestResult {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        return Err("this test needs strace".into());
    }
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let db_path = db.path.display().to_string();
    let started = std::time::Instant::now();
    let mut example = Example::start_wrapped(
        "strace",
        &[
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-P",
            db_path.as_str(),
            "-e",
            "trace=statx",
            "-e",
            "inject=statx:delay_enter=3s",
        ],
        &["--db", db_path.as_str()],
    )
    .await?;
    eprintln!(
        "listening {:?} after the start, every statx of the path taking 3 s",
        started.elapsed()
    );
    let http = Http::new(example.addr);
    assert_eq!(http.post("/notes", "on a slow mount").await?.status, 201);
    // Liveness: the process is fine. Readiness and /health answer (a check
    // that takes 3 s is reported as not answering within the probe's bound).
    let asked = std::time::Instant::now();
    assert_eq!(http.get("/livez").await?.status, 200);
    eprintln!("/livez: 200 in {:?}", asked.elapsed());
    for route in ["/readyz", "/health"] {
        let asked = std::time::Instant::now();
        let answer = http.get(route).await?;
        eprintln!("{route}: {} in {:?}", answer.status, asked.elapsed());
        assert!(
            [200, 503].contains(&answer.status.as_u16()),
            "{route}: {answer:?}"
        );
    }
    example.kill().await?;
    Ok(())
}
