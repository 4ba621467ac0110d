//! The layer as a plain tower service (no framework), driven with
//! `ServiceExt::oneshot` / `ready` + `call`, on a real SQLite file with real
//! faults. No feature needed.
#![cfg(feature = "sqlite")]

mod common;
mod layer_support;

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{TestDb, TestResult, create_table, insert, warm};
use layer_support::{elsewhere, open, within};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_db_liveness::{
    DbLivenessLayer, ErrorClass, GiveUpReason, LivePool, PoolStatus, classify, mark_response,
};

async fn open_pool(options: SqliteConnectOptions) -> sqlx::Result<SqlitePool> {
    let pool = TestDb::pool_options().connect_with(options).await?;
    create_table(&pool).await?;
    Ok(pool)
}

/// An application's own error type: implements `Error`, keeps its cause.
#[derive(Debug)]
struct AppError {
    id: u32,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {} failed", self.id)
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// A handler that writes a note and fails with `AppError` carrying the
/// `sqlx::Error`.
fn writer(
    live: LivePool,
) -> impl Service<http::Request<()>, Response = http::Response<()>, Error = AppError, Future: Send> + Clone
{
    service_fn(move |_request: http::Request<()>| {
        let live = live.clone();
        async move {
            insert(&live.pool(), "note").await.map_err(|err| AppError {
                id: 7,
                cause: Box::new(err),
            })?;
            Ok(http::Response::new(()))
        }
    })
}

fn sqlite_code(err: &AppError) -> Option<String> {
    let sqlx_err = err.cause.downcast_ref::<sqlx::Error>()?;
    Some(sqlx_err.as_database_error()?.code()?.into_owned())
}

/// A fatal error in the service's own error type is found through its
/// `source()`, reported (the heal is in flight when the error comes back),
/// and returned as it was.
#[tokio::test]
async fn a_custom_error_is_searched_and_returned_unchanged() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), open_pool, true, |b| b).await?;
    let service = DbLivenessLayer::new(server.live.clone()).layer(writer(server.live.clone()));
    warm(&server.live.pool()).await?;
    db.replace_file().await?; // a restore: the same application's database

    let err = match service.oneshot(http::Request::new(())).await {
        Err(err) => err,
        Ok(_) => return Err("the write on the unlinked file succeeded".into()),
    };
    assert_eq!(err.id, 7);
    assert_eq!(sqlite_code(&err).as_deref(), Some("1032"));
    assert!(
        server.live.is_healing(),
        "reported before the error was returned"
    );

    server.gate.notify_one();
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    Ok(())
}

/// An error without a database error in its chain is returned as it was and
/// reported nowhere.
#[tokio::test]
async fn an_error_without_a_database_error_passes_untouched() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let server = open(db.options(), open_pool, false, |b| b).await?;
    let service = DbLivenessLayer::new(server.live.clone()).layer(service_fn(
        |_request: http::Request<()>| async {
            Err::<http::Response<()>, _>(AppError {
                id: 42,
                cause: Box::new(std::io::Error::other("upstream timed out")),
            })
        },
    ));

    let err = match service.oneshot(http::Request::new(())).await {
        Err(err) => err,
        Ok(_) => return Err("expected the handler's error".into()),
    };
    assert_eq!(err.id, 42);
    assert_eq!(err.cause.to_string(), "upstream timed out");
    assert!(!server.live.is_healing());
    assert_eq!(server.live.generation(), 0);
    assert_eq!(server.reopens(), 0);
    Ok(())
}

/// `mark_response` works for any `http::Response`: the layer reports the
/// recorded error and returns the response untouched.
#[tokio::test]
async fn a_marked_response_is_reported_and_returned_untouched() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), open_pool, true, |b| b).await?;
    let live = server.live.clone();
    let service = DbLivenessLayer::new(server.live.clone()).layer(service_fn(
        move |_request: http::Request<()>| {
            let live = live.clone();
            async move {
                let mut response = http::Response::new("try again");
                if let Err(err) = insert(&live.pool(), "note").await {
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    mark_response(&mut response, &err);
                }
                Ok::<_, Infallible>(response)
            }
        },
    ));
    warm(&server.live.pool()).await?;
    db.replace_file().await?; // a restore: the same application's database

    let response = service.oneshot(http::Request::new(())).await?;
    assert_eq!(response.status(), 503);
    assert_eq!(*response.body(), "try again");
    assert!(server.live.is_healing());
    server.gate.notify_one();
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    Ok(())
}

/// The hold is bounded: with the heal held shut at the gate, a request
/// held by a short bound comes back with the inner service's answer while
/// the heal is still in flight, and a request held by a long bound is still
/// waiting then. The short one ran on the dead pool, which the heal had
/// already closed (so nothing more was acknowledged into it): `PoolClosed`.
#[tokio::test]
async fn the_hold_is_bounded() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), open_pool, true, |b| b).await?;
    start_a_heal(&server.live).await?;

    // Each inner service says whether a heal was in flight when it ran.
    let (ran_tx, mut ran) = mpsc::unbounded_channel();
    let observed = |live: LivePool, ran: mpsc::UnboundedSender<(&'static str, bool)>, name| {
        service_fn(move |_request: http::Request<()>| {
            let (live, ran) = (live.clone(), ran.clone());
            async move {
                let _ = ran.send((name, live.is_healing()));
                insert(&live.pool(), name).await.map_err(|err| AppError {
                    id: 3,
                    cause: Box::new(err),
                })?;
                Ok(http::Response::new(()))
            }
        })
    };
    let long = DbLivenessLayer::new(server.live.clone())
        .hold_timeout(Duration::from_secs(3600))
        .layer(observed(server.live.clone(), ran_tx.clone(), "long"));
    let short = DbLivenessLayer::new(server.live.clone())
        .hold_timeout(Duration::from_millis(50))
        .layer(observed(server.live.clone(), ran_tx, "short"));
    let long = tokio::spawn(long.oneshot(http::Request::new(())));

    // Only the bound can release it: the gate is shut.
    let held: Result<_, AppError> =
        within("the short hold", short.oneshot(http::Request::new(()))).await?;
    let err = held
        .err()
        .ok_or("the held write succeeded on the dead pool")?;
    assert!(
        matches!(
            err.cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolClosed)
        ),
        "{:?}",
        err.cause
    );
    assert_eq!(ran.try_recv()?, ("short", true), "it ran during the heal");
    assert!(ran.try_recv().is_err(), "the long hold let its request go");
    assert!(server.live.is_healing(), "the heal is still held shut");
    assert_eq!(server.live.generation(), 0);

    // The heal finishes: the long-held request runs on the new pool.
    server.gate.notify_one();
    within("the long-held request", long).await???;
    assert_eq!(ran.try_recv()?, ("long", false));
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
    assert_eq!(server.exits.count_now(), 0);
    Ok(())
}

/// Starts a real heal with a real fatal error from another database (see
/// [`elsewhere`]) reported through the layer, and leaves it in flight when
/// the reopen is gated.
async fn start_a_heal(live: &LivePool) -> TestResult {
    let mut dead = elsewhere(1).await?;
    let job = Job::now(dead.conns.pop().ok_or("no connection")?);
    let (started, _) = mpsc::unbounded_channel();
    let service = DbLivenessLayer::new(live.clone()).layer(held_writer(live.clone(), started));
    let err = service.oneshot(http::Request::new(job)).await.err();
    assert_eq!(err.as_ref().and_then(sqlite_code).as_deref(), Some("1032"));
    assert!(live.is_healing(), "reported before the error was returned");
    Ok(())
}

/// A request's work: a write on a connection of [`elsewhere`] (which fails
/// with 1032), started when `go` fires.
struct Job {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    go: oneshot::Receiver<()>,
}

impl Job {
    fn held(conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) -> (Job, oneshot::Sender<()>) {
        let (go_tx, go) = oneshot::channel();
        (Job { conn, go }, go_tx)
    }

    fn now(conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) -> Job {
        let (job, go) = Job::held(conn);
        let _ = go.send(());
        job
    }
}

/// A handler that says which generation is in service when it starts, then
/// waits for its job's signal (holding its connection) and writes.
fn held_writer(
    live: LivePool,
    started: mpsc::UnboundedSender<u64>,
) -> impl Service<http::Request<Job>, Response = http::Response<()>, Error = AppError, Future: Send>
+ Clone {
    service_fn(move |request: http::Request<Job>| {
        let (live, started) = (live.clone(), started.clone());
        async move {
            let Job { mut conn, go } = request.into_body();
            let _ = started.send(live.generation());
            let _ = go.await;
            sqlx::query("INSERT INTO notes(body) VALUES ('late')")
                .execute(&mut *conn)
                .await
                .map_err(|err| AppError {
                    id: 11,
                    cause: Box::new(err),
                })?;
            Ok(http::Response::new(()))
        }
    })
}

/// A request that started on generation 0 and fails after a heal swapped in
/// generation 1 is stale: no second reopen, no give-up (the recurrence
/// window would make a second heal of generation 1 give up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_from_a_replaced_pool_is_stale() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), open_pool, false, |b| b).await?;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let service = DbLivenessLayer::new(server.live.clone())
        .layer(held_writer(server.live.clone(), started_tx));
    let mut dead = elsewhere(2).await?;
    let (first_job, first_go) = Job::held(dead.conns.pop().ok_or("no connection")?);
    let (late_job, late_go) = Job::held(dead.conns.pop().ok_or("no connection")?);
    let first = tokio::spawn(service.clone().oneshot(http::Request::new(first_job)));
    let late = tokio::spawn(service.oneshot(http::Request::new(late_job)));
    for _ in 0..2 {
        let generation = within("a request to start", started.recv()).await?;
        assert_eq!(generation, Some(0));
    }

    // The first failure heals generation 0.
    let _ = first_go.send(());
    let err = within("the first request", first).await??.err();
    assert_eq!(err.as_ref().and_then(sqlite_code).as_deref(), Some("1032"));
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);

    // The late failure, from generation 0, comes back on generation 1.
    let _ = late_go.send(());
    let err = within("the late request", late).await??.err();
    assert_eq!(err.as_ref().and_then(sqlite_code).as_deref(), Some("1032"));
    assert!(!server.live.is_healing(), "the late failure started a heal");
    within("a heal", server.live.healed()).await?;
    assert!(matches!(
        server.live.status(),
        PoolStatus::Live { generation: 1, .. }
    ));
    assert_eq!(server.reopens(), 1);
    assert_eq!(server.exits.count_now(), 0);
    Ok(())
}

/// Single flight through the layer: many requests on generation 0 fail
/// together with fatal errors while the heal is held at the gate; one
/// reopen in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fatal_failures_reopen_once() -> TestResult {
    const N: u32 = 8;
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), open_pool, true, |b| b).await?;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let service = DbLivenessLayer::new(server.live.clone())
        .layer(held_writer(server.live.clone(), started_tx));
    let dead = elsewhere(N).await?;
    let mut requests = tokio::task::JoinSet::new();
    let mut gos = Vec::new();
    for conn in dead.conns {
        let (job, go) = Job::held(conn);
        gos.push(go);
        requests.spawn(service.clone().oneshot(http::Request::new(job)));
    }
    for _ in 0..N {
        let generation = within("a request to start", started.recv()).await?;
        assert_eq!(generation, Some(0));
    }

    // All at once.
    for go in gos {
        let _ = go.send(());
    }
    for _ in 0..N {
        let done = within("a request", requests.join_next())
            .await?
            .ok_or("a request went missing")?;
        let err = done?.err();
        assert_eq!(err.as_ref().and_then(sqlite_code).as_deref(), Some("1032"));
    }
    assert!(server.live.is_healing());

    server.gate.notify_one();
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
    assert_eq!(server.exits.count_now(), 0);
    Ok(())
}

/// The heal budget, fed by the layer: with one heal allowed per hour (and
/// no recurrence window), the second fatal failure, on the healed pool,
/// gives up without reopening.
#[tokio::test]
async fn the_heal_budget_bounds_heals_reported_by_the_layer() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let mut server = open(db.options(), open_pool, false, |b| {
        b.max_heals(1, Duration::from_secs(3600))
            .recurrence_window(Duration::ZERO)
    })
    .await?;
    let (started, _) = mpsc::unbounded_channel();
    let service =
        DbLivenessLayer::new(server.live.clone()).layer(held_writer(server.live.clone(), started));
    let mut dead = elsewhere(2).await?;

    let job = Job::now(dead.conns.pop().ok_or("no connection")?);
    assert!(
        service
            .clone()
            .oneshot(http::Request::new(job))
            .await
            .is_err()
    );
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);

    let job = Job::now(dead.conns.pop().ok_or("no connection")?);
    assert!(service.oneshot(http::Request::new(job)).await.is_err());
    let gave_up = server.exits.next().await.ok_or("no give-up")?;
    assert!(
        matches!(gave_up.reason, GiveUpReason::TooManyHeals { heals: 1, .. }),
        "{:?}",
        gave_up.reason
    );
    assert_eq!(server.reopens(), 1);
    assert!(server.live.has_given_up());
    Ok(())
}

/// A service that fails a `call` not preceded by its own `poll_ready`; a
/// clone has not been polled.
#[derive(Debug)]
struct Readiness {
    ready: bool,
}

impl Clone for Readiness {
    fn clone(&self) -> Self {
        Readiness { ready: false }
    }
}

#[derive(Debug)]
struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("called without poll_ready")
    }
}

impl std::error::Error for NotReady {}

impl Service<http::Request<()>> for Readiness {
    type Response = http::Response<()>;
    type Error = NotReady;
    type Future = std::future::Ready<Result<http::Response<()>, NotReady>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), NotReady>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<()>) -> Self::Future {
        let ready = std::mem::take(&mut self.ready);
        std::future::ready(if ready {
            Ok(http::Response::new(()))
        } else {
            Err(NotReady)
        })
    }
}

/// A held request is served by the very service that was polled ready; the
/// layer keeps an unpolled clone for the next request.
#[tokio::test]
async fn a_held_request_runs_on_the_service_that_was_polled_ready() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), open_pool, true, |b| b).await?;
    // Start a real heal (held shut) with a real fatal error.
    let failing = DbLivenessLayer::new(server.live.clone()).layer(writer(server.live.clone()));
    warm(&server.live.pool()).await?;
    db.replace_file().await?; // a restore: the same application's database
    let err = failing.oneshot(http::Request::new(())).await.err();
    assert!(err.as_ref().is_some_and(
        |e| e.cause.downcast_ref::<sqlx::Error>().map(classify) == Some(ErrorClass::Fatal)
    ));
    assert!(server.live.is_healing());

    let mut service = DbLivenessLayer::new(server.live.clone())
        .hold_timeout(Duration::from_secs(60))
        .layer(Readiness { ready: false });
    let held = service.ready().await?.call(http::Request::new(()));
    assert!(
        !service.get_ref().ready,
        "the layer kept the unpolled clone"
    );

    server.gate.notify_one();
    within("the held request", held).await??;
    assert_eq!(server.live.generation(), 1);

    // No heal in flight now: the request goes straight to the inner service.
    service.ready().await?.call(http::Request::new(())).await?;
    Ok(())
}
