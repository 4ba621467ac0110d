//! When the layer turns a marked response into 503 + `Retry-After`, and when
//! it leaves the status alone. Real SQLite errors through a real pool, the
//! layer driven by `tower::ServiceExt::oneshot`.
#![cfg(feature = "sqlite")]

mod common;

use std::convert::Infallible;

use common::{TestDb, TestResult, open_live};
use sqlx::sqlite::SqliteJournalMode;
use tower::{Layer, ServiceExt, service_fn};
use tower_db_liveness::{DbLivenessLayer, LivePool, mark_response};

/// A handler that runs `sql` and answers `status`, marked with the error
/// if the query failed.
async fn answer(
    live: &LivePool,
    sql: &'static str,
    status: u16,
) -> Result<http::Response<()>, Box<dyn std::error::Error + Send + Sync>> {
    let handler_live = live.clone();
    let service =
        DbLivenessLayer::new(live.clone()).layer(service_fn(move |_: http::Request<()>| {
            let live = handler_live.clone();
            async move {
                let mut response = http::Response::new(());
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
                if let Err(err) = sqlx::query(sql).execute(&live.pool()).await {
                    mark_response(&mut response, &err);
                }
                Ok::<_, Infallible>(response)
            }
        }));
    Ok(service.oneshot(http::Request::new(())).await?)
}

/// An upload the application attaches is not a database (NOTADB, 26, a
/// fatal class): another file's damage, which the policy checks and finds
/// not to be this pool's. The application's 422 stays a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_files_damage_keeps_the_applications_status() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _, mut exits) = open_live(&db, |b| b).await?;
    let upload = db.root.path().join("upload.bin");
    std::fs::write(&upload, vec![0x42u8; 8192])?;
    let sql: &'static str = Box::leak(
        format!(
            "ATTACH DATABASE '{}' AS upload; SELECT count(*) FROM upload.sqlite_schema",
            upload.display()
        )
        .into_boxed_str(),
    );
    let response = answer(&live, sql, 422).await?;
    assert_eq!(response.status(), 422);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(live.generation(), 0);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

/// A success that carries a mark (a best-effort write failed, the rest of
/// the answer stands) stays a success, whatever the error's class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_success_stays_a_success() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, _, _exits) = open_live(&db, |b| b).await?;
    // Another connection holds the write lock: the write gets BUSY
    // (transient) after the busy timeout.
    let other = sqlx::SqlitePool::connect_with(db.options()).await?;
    let mut lock = other.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await?;
    let response = answer(&live, "INSERT INTO notes(body) VALUES ('x')", 200).await?;
    assert_eq!(response.status(), 200);
    // The same transient error on an error response: 503 + Retry-After.
    let response = answer(&live, "INSERT INTO notes(body) VALUES ('x')", 401).await?;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    sqlx::query("ROLLBACK").execute(&mut *lock).await?;
    drop(lock);
    other.close().await;
    Ok(())
}

/// A middleware that swallows the database's error into its own 401 and
/// marks nothing: a request in flight when its pool was found dead is
/// answered 503 with `Retry-After` (its retry is held and lands after the
/// heal or the restart), never the 401 that would log the client out. Its
/// own 401 with no fault stays a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmarked_error_while_the_pool_died_is_503_not_the_apps_status() -> TestResult {
    use std::sync::Arc;
    use tokio::sync::Notify;

    // DELETE journal: a write on the unlinked file fails (1032).
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, _, mut exits) = open_live(&db, |b| b).await?;
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let service = {
        let (live, started, release) = (live.clone(), started.clone(), release.clone());
        DbLivenessLayer::new(live.clone()).layer(service_fn(move |request: http::Request<()>| {
            let (live, started, release) = (live.clone(), started.clone(), release.clone());
            async move {
                let pool = live.pool();
                if request.uri().path() == "/slow" {
                    started.notify_one();
                    release.notified().await;
                }
                // A session lookup that answers 401 for every failure, its
                // database errors included.
                let looked_up = sqlx::query("INSERT INTO notes(body) VALUES ('session')")
                    .execute(&pool)
                    .await;
                let mut response = http::Response::new(());
                if looked_up.is_err() || request.uri().path() == "/nobody" {
                    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                }
                Ok::<_, Infallible>(response)
            }
        }))
    };
    let request = |path: &str| http::Request::get(path).body(());

    let own = service.clone().oneshot(request("/nobody")?).await?;
    assert_eq!(own.status(), 401, "the app's own 401, no fault");
    assert!(own.headers().get("retry-after").is_none());

    let in_flight = tokio::spawn(service.clone().oneshot(request("/slow")?));
    started.notified().await;
    db.unlink_files()?;
    let _ = live.check_file().await;
    common::within("the give-up", exits.next())
        .await?
        .ok_or("no give-up")?;
    release.notify_one();
    let response = in_flight.await??;
    assert_eq!(
        response.status(),
        503,
        "not the middleware's 401 for the dead pool's error"
    );
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    Ok(())
}
