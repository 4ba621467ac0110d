//! The layer in tonic 0.14: the `notes.Notes` service of
//! `examples/tonic.rs` served by tonic's server on 127.0.0.1 and called over
//! a real `Channel`.
//!
//! Path: handlers return `status_from_sqlx(err)`; tonic turns the status into
//! the response and puts it in the response's extensions, where the layer
//! finds the `sqlx::Error` as the status's `source()`. (tonic's service error
//! is `Infallible`.)

mod common;
mod layer_support;

#[allow(dead_code)]
#[path = "../examples/tonic.rs"]
mod example;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestDb, TestResult, count_in_file, warm};
use example::{NotesClient, NotesServer};
use layer_support::{WriteLock, last_heal, open, passed, within};
use sqlx::sqlite::SqliteJournalMode;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tower_db_liveness::{DbLivenessLayer, GiveUpReason, LivePool};

async fn bind() -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves the example as its `main` does.
async fn serve(live: LivePool) -> Result<NotesClient, Box<dyn std::error::Error + Send + Sync>> {
    let (listener, addr) = bind().await?;
    tokio::spawn(example::serve(listener, live));
    client(addr).await
}

async fn client(addr: SocketAddr) -> Result<NotesClient, Box<dyn std::error::Error + Send + Sync>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(NotesClient::new(channel))
}

/// The field repro: the file is unlinked under a DELETE-journal service; the
/// first write fails with 1032 (`Unavailable`), the layer finds it in the
/// status, the pool is reopened and the next write lands in the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_file_heals_and_the_next_write_succeeds() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let mut notes = serve(server.live.clone()).await?;
    assert_eq!(notes.add("before").await?, 1);
    warm(&server.live.pool()).await?;

    db.replace_file().await?; // a restore: the same application's database
    let status = notes.add("lost").await.err().ok_or("the write succeeded")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "database temporarily unavailable");

    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
    let heal = last_heal(&server.live).ok_or("no heal was published")?;
    assert_eq!(heal.fault.code(), Some(1032), "{:?}", heal.fault);

    assert_eq!(notes.add("after").await?, 1, "a new, empty file");
    let list = notes.list().await?;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].body, "after");
    assert_eq!(count_in_file(&db.path).await?, 1);
    assert_eq!(server.exits.count_now(), 0);
    Ok(())
}

/// The directory is deleted: the reopen fails (14) and the policy gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_directory_gives_up() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), example::open_pool, false, |b| b).await?;
    let mut notes = serve(server.live.clone()).await?;
    notes.add("before").await?;
    warm(&server.live.pool()).await?;

    db.rm_rf_dir()?;
    let status = notes.add("lost").await.err().ok_or("the write succeeded")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

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

/// A write lock held by another pool: `Unavailable`, no reopen, and the next
/// write succeeds once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_is_transient() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let options = db.options().busy_timeout(Duration::from_millis(50));
    let server = open(options, example::open_pool, false, |b| b).await?;
    let mut notes = serve(server.live.clone()).await?;
    notes.add("before").await?;

    let lock = WriteLock::take(db.options()).await?;
    let status = notes
        .add("locked")
        .await
        .err()
        .ok_or("the write succeeded")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(server.live.generation(), 0);
    assert!(!server.live.is_healing());
    assert_eq!(server.reopens(), 0);

    lock.release().await?;
    assert_eq!(notes.add("after").await?, 2, "the same file");
    assert_eq!(server.reopens(), 0);
    Ok(())
}

/// Calls made while the heal is in flight are held, and served by the new
/// pool. The reopen is real but waits for the test's signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_heal_are_held_and_served_by_the_new_pool() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), example::open_pool, true, |b| b).await?;
    let (passed, mut arrivals) = passed();
    let (listener, addr) = bind().await?;
    let router = Server::builder()
        .layer(passed)
        .layer(DbLivenessLayer::new(server.live.clone()).hold_timeout(Duration::from_secs(60)))
        .add_service(NotesServer::new(server.live.clone()));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    let mut notes = client(addr).await?;
    notes.add("before").await?;
    warm(&server.live.pool()).await?;

    db.replace_file().await?; // a restore: the same application's database
    let status = notes.add("lost").await.err().ok_or("the write succeeded")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(server.live.is_healing());
    while arrivals.try_recv().is_ok() {}

    let mut held = tokio::task::JoinSet::new();
    for i in 0..3 {
        let mut notes = notes.clone();
        held.spawn(async move { notes.add(&format!("held {i}")).await });
    }
    for _ in 0..3 {
        within("a call reaching the layer", arrivals.recv())
            .await?
            .ok_or("a call never reached the layer")?;
    }
    assert!(server.live.is_healing());

    server.gate.notify_one();
    while let Some(reply) = within("a held call", held.join_next()).await? {
        reply??;
    }
    assert_eq!(server.live.generation(), 1);
    assert_eq!(count_in_file(&db.path).await?, 3);
    Ok(())
}

/// A status that is not built from a database error passes through
/// untouched, and nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_that_is_not_a_database_error_passes_through() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let server = open(db.options(), example::open_pool, false, |b| b).await?;
    let mut notes = serve(server.live.clone()).await?;

    let status = notes
        .add("  ")
        .await
        .err()
        .ok_or("the empty note was accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "empty note");
    assert_eq!(server.live.generation(), 0);
    assert!(!server.live.is_healing());
    assert_eq!(server.reopens(), 0);
    Ok(())
}
