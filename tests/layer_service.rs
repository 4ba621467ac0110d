//! The layer as a plain tower service (no framework), driven with
//! `ServiceExt::oneshot` / `ready` + `call`, on a real SQLite file with real
//! faults. No feature needed.

mod common;
mod layer_support;

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{TestDb, TestResult, create_table, insert, warm};
use layer_support::{open, within};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_db_liveness::{DbLivenessLayer, ErrorClass, LivePool, classify, mark_response};

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
    db.unlink_files()?;

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
    db.unlink_files()?;

    let response = service.oneshot(http::Request::new(())).await?;
    assert_eq!(response.status(), 503);
    assert_eq!(*response.body(), "try again");
    assert!(server.live.is_healing());
    server.gate.notify_one();
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    Ok(())
}

/// The hold is bounded: with the heal held shut, a request waits at most
/// `hold_timeout`, then runs on the dead pool, which the heal has already
/// closed (so nothing more is acknowledged into the lost file): it fails
/// with `PoolClosed` while the heal is still in flight, and no second heal
/// starts.
#[tokio::test]
async fn the_hold_is_bounded() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let server = open(db.options(), open_pool, true, |b| b).await?;
    let layer = DbLivenessLayer::new(server.live.clone()).hold_timeout(Duration::from_millis(1));
    let service = layer.layer(writer(server.live.clone()));
    warm(&server.live.pool()).await?;
    db.unlink_files()?;

    let first = service.clone().oneshot(http::Request::new(())).await;
    assert!(first.is_err());
    assert!(server.live.is_healing());

    let held = service.oneshot(http::Request::new(())).await;
    let err = held
        .err()
        .ok_or("the held write succeeded on the dead pool")?;
    let closed = err.cause.downcast_ref::<sqlx::Error>();
    assert!(
        matches!(closed, Some(sqlx::Error::PoolClosed)),
        "{:?}",
        err.cause
    );
    assert!(server.live.is_healing(), "the heal is still held shut");
    assert_eq!(server.live.generation(), 0);

    server.gate.notify_one();
    within("the heal", server.live.healed()).await?;
    assert_eq!(server.live.generation(), 1);
    assert_eq!(server.reopens(), 1);
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
    db.unlink_files()?;
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
