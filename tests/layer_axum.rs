//! The layer in axum 0.8: the notes example (`examples/axum.rs`) served with
//! `axum::serve` on 127.0.0.1 and called with a real HTTP client.
//!
//! Path: a handler returns `DbError`; its `IntoResponse` records the error in
//! the response's extensions, where the layer finds it (axum's service error
//! is `Infallible`, so this is the only way an error can reach the layer).

mod common;
mod layer_support;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{TestDb, TestResult, count_in_file, warm};
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

    db.unlink_files()?;
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
        matches!(&gave_up.reason, GiveUpReason::ReopenFailed(msg) if msg.contains("14")),
        "{:?}",
        gave_up.reason
    );
    assert!(server.live.has_given_up());
    assert_eq!(server.reopens(), 1);
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

    db.unlink_files()?;
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

/// The example binary itself: once its directory is deleted and a write is
/// sent, it exits with status 1 (the default exit action).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_exits_with_status_1_when_its_directory_is_deleted() -> TestResult {
    use tokio::io::AsyncBufReadExt;

    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let stderr = std::fs::File::create(db.root.path().join("stderr.log"))?;
    let mut child = tokio::process::Command::new(example_binary()?)
        .args(["--db", &db.path.display().to_string()])
        .args(["--addr", "127.0.0.1:0", "--journal", "delete"])
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next_line()
            .await?
            .ok_or("the example ended before it was listening")?;
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse()?;
        }
    };

    let http = Http::new(addr);
    let created = http.post("/notes", "before").await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(http.get("/health").await?.status, 200);

    db.rm_rf_dir()?;
    // The write fails (1032) and the reopen cannot work (14), so the process
    // exits; the response may or may not make it out first. (The example's
    // watchdog may notice the deletion first: same outcome.)
    let _ = http.post("/notes", "after").await;

    let status = within("the example's exit", child.wait()).await??;
    let log = std::fs::read_to_string(db.root.path().join("stderr.log"))?;
    assert_eq!(status.code(), Some(1), "stderr:\n{log}");
    assert!(
        log.contains("exiting so the supervisor restarts"),
        "stderr:\n{log}"
    );
    Ok(())
}

/// `target/<profile>/examples/axum`. `cargo test` builds the examples, but
/// not when only this test target is selected, so it is (re)built here with
/// this test's features: a no-op when it is fresh, and never a stale binary.
fn example_binary() -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let mut features = vec!["axum"];
    for (on, feature) in [
        (cfg!(feature = "fs-watch"), "fs-watch"),
        (cfg!(feature = "tonic"), "tonic"),
        (cfg!(feature = "systemd"), "systemd"),
    ] {
        if on {
            features.push(feature);
        }
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/layer_axum-<hash>
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or("unexpected test binary location")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("unexpected test binary location")?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--example",
            "axum",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--features")
        .arg(features.join(","))
        .status()?;
    if !build.success() {
        return Err(format!("building the axum example failed: {build}").into());
    }
    let binary = profile_dir
        .join("examples")
        .join(format!("axum{}", std::env::consts::EXE_SUFFIX));
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!("{} is missing after the build", binary.display()).into())
    }
}
