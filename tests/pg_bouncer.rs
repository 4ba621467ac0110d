//! `LivePool<Postgres>` through a real PgBouncer (Debian's, 1.18) in front
//! of the cluster's proxy, in session and in transaction mode: the crate's
//! own queries (the probe, the writability check, the confirmation, the
//! gate) use the simple query protocol, so they work in transaction mode
//! and survive `DEALLOCATE ALL` / `DISCARD ALL` on the server session.
//!
//! Needs `pgbouncer` (`.ci/run` installs it) besides the PostgreSQL server.
#![cfg(feature = "postgres")]

mod pg_cluster;
mod pg_support;

use pg_support::{BOUND, TestResult, admin, cluster, exits, get_health, wait_for_status};

use std::collections::BTreeMap;

use pg_cluster::PoolMode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Postgres, Row};
use tower_db_liveness::{ErrorClass, HealthService, LivePool, Outcome, PoolStatus};

/// What the application's own pool must set for PgBouncer in transaction
/// mode (see the guide): no statement cache.
fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(url.parse::<PgConnectOptions>()?.statement_cache_capacity(0))
}

async fn open(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<
    (
        LivePool<Postgres>,
        tokio::sync::mpsc::UnboundedReceiver<tower_db_liveness::GaveUp>,
    ),
    sqlx::Error,
> {
    let (on_give_up, gave_up) = exits();
    let live = LivePool::postgres(options)
        .pool_options(PgPoolOptions::new().max_connections(max_connections))
        .on_give_up(on_give_up)
        .open()
        .await?;
    // The tests' own statements use the simple query protocol too: in
    // transaction mode, sqlx's prepared statements break (see the last test).
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v text NOT NULL)")
        .execute(&live.pool())
        .await?;
    Ok((live, gave_up))
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
}

/// The probe passes, a write works, the app's own read-only transaction's
/// 25006 is confirmed on a server that takes writes (`Other`, no heal).
async fn works_through(mode: PoolMode) -> TestResult {
    let cluster = cluster();
    let bouncer = admin(&cluster, move |c| c.pgbouncer(mode)).await?;
    let (live, mut gave_up) = open(options(&bouncer.url())?, 4).await?;
    let health = HealthService::new(live.clone());
    for _ in 0..10 {
        let (status, body) = get_health(&health).await?;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("pass")),
            "{body}"
        );
        sqlx::raw_sql("INSERT INTO t (v) VALUES ('through pgbouncer')")
            .execute(&live.pool())
            .await?;
    }
    let mut tx = live.pool().begin().await?;
    sqlx::raw_sql("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let err = sqlx::raw_sql("INSERT INTO t (v) VALUES ('x')")
        .execute(&mut *tx)
        .await
        .expect_err("read-only transaction");
    drop(tx);
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
    let outcome = tokio::time::timeout(BOUND, live.lease().report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
        "{mode:?}: {outcome:?}"
    );
    assert!(matches!(
        live.status(),
        PoolStatus::Live { generation: 0, .. }
    ));
    assert!(gave_up.try_recv().is_err());
    drop(bouncer);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_check_and_confirmation_work_through_pgbouncer_in_session_mode() -> TestResult {
    works_through(PoolMode::Session).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_check_and_confirmation_work_through_pgbouncer_in_transaction_mode() -> TestResult
{
    works_through(PoolMode::Transaction).await
}

/// A primary read-only in place, seen through PgBouncer: a write's 25006 is
/// confirmed as read-only in place (transient, the pool marked read-only),
/// the probe passes, and the background check clears the state once the
/// server takes writes again. No heal, no exit.
async fn read_only_through(mode: PoolMode) -> TestResult {
    let cluster = cluster();
    let bouncer = admin(&cluster, move |c| c.pgbouncer(mode)).await?;
    let (live, mut gave_up) = open(options(&bouncer.url())?, 4).await?;
    let health = HealthService::new(live.clone());
    admin(&cluster, |c| c.set_read_only(true)).await?;
    let lease = live.lease();
    let err = sqlx::raw_sql("INSERT INTO t (v) VALUES ('refused')")
        .execute(lease.pool())
        .await
        .expect_err("a read-only primary refuses writes");
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
    let outcome = tokio::time::timeout(BOUND, lease.report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
        "{mode:?}: {outcome:?}"
    );
    assert!(
        matches!(live.status(), PoolStatus::ReadOnly { generation: 0, .. }),
        "{:?}",
        live.status()
    );
    let (status, body) = get_health(&health).await?;
    assert_ne!(status, 503, "{body}");
    let row = sqlx::raw_sql("SELECT count(*) FROM t")
        .fetch_one(&live.pool())
        .await?;
    assert_eq!(row.try_get::<i64, _>(0)?, 0, "reads are served");
    admin(&cluster, |c| c.set_read_only(false)).await?;
    wait_for_status(&live, "Live again (the background check)", |s| {
        matches!(s, PoolStatus::Live { generation: 0, .. })
    })
    .await;
    sqlx::raw_sql("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err());
    drop(bouncer);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_primary_through_pgbouncer_in_session_mode_is_degraded() -> TestResult {
    read_only_through(PoolMode::Session).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_primary_through_pgbouncer_in_transaction_mode_is_degraded() -> TestResult {
    read_only_through(PoolMode::Transaction).await
}

/// `DEALLOCATE ALL` and `DISCARD ALL` on the pool's server session (a
/// handler's, or PgBouncer's `server_reset_query`) drop every named
/// prepared statement, behind sqlx's back. The old probe and check were sqlx prepared
/// statements, cached per connection: after that, `26000 prepared statement
/// does not exist`, an `Other` error, and `/health` answered 503.
async fn discard_through(url: &str, mode: Option<PoolMode>) -> TestResult {
    // sqlx's statement cache on (its default), except where it must be off:
    // the old check's cached statements were what a DEALLOCATE broke.
    let connect = match mode {
        Some(PoolMode::Transaction) => options(url)?,
        _ => url.parse::<PgConnectOptions>()?,
    };
    let (live, mut gave_up) = open(connect, 1).await?;
    let health = HealthService::new(live.clone());
    // The crate's queries have run on these connections (the gate, the probe).
    for _ in 0..3 {
        let (status, body) = get_health(&health).await?;
        assert_eq!(status, 200, "{body}");
    }
    for statement in ["DEALLOCATE ALL", "DISCARD ALL"] {
        // The pool's only connection (acquire waits for its release: a
        // `try_acquire` right after a probe may find it still being returned).
        let mut conn = live.pool().acquire().await?;
        sqlx::raw_sql(statement).execute(&mut *conn).await?;
        let left = sqlx::raw_sql("SELECT count(*) FROM pg_prepared_statements")
            .fetch_one(&mut *conn)
            .await?;
        assert_eq!(left.try_get::<i64, _>(0)?, 0, "{statement} ran");
        drop(conn);
        for _ in 0..5 {
            let (status, body) = get_health(&health).await?;
            assert_eq!(status, 200, "after {statement}: {body}");
        }
    }
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_all_never_fail_health_directly() -> TestResult {
    let cluster = cluster();
    discard_through(&cluster.url(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_all_never_fail_health_through_pgbouncer() -> TestResult {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let cluster = cluster();
        let bouncer = admin(&cluster, move |c| c.pgbouncer(mode)).await?;
        discard_through(&bouncer.url(), Some(mode)).await?;
        drop(bouncer);
    }
    Ok(())
}

/// Measured, for the guide: what the application's own parameterized
/// queries get through PgBouncer 1.18 in transaction mode with
/// `statement_cache_capacity(0)`, four writers at once, with sqlx's default
/// (named) statements and with `persistent(false)` (unnamed). Printed, not
/// asserted: it is PgBouncer's and sqlx's behaviour, not the crate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_queries_through_pgbouncer_in_transaction_mode() -> TestResult {
    let cluster = cluster();
    let bouncer = admin(&cluster, |c| c.pgbouncer(PoolMode::Transaction)).await?;
    let (live, _gave_up) = open(options(&bouncer.url())?, 4).await?;
    for persistent in [true, false] {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let pool = live.pool();
                tokio::spawn(async move {
                    let mut errors = BTreeMap::<String, u32>::new();
                    for i in 0..200 {
                        let wrote = sqlx::query("INSERT INTO t (v) VALUES ($1)")
                            .bind(format!("w{i}"))
                            .persistent(persistent)
                            .execute(&pool)
                            .await;
                        if let Err(err) = wrote {
                            *errors
                                .entry(sqlstate(&err).unwrap_or_else(|| err.to_string()))
                                .or_default() += 1;
                        }
                    }
                    errors
                })
            })
            .collect();
        let mut errors = BTreeMap::<String, u32>::new();
        for task in tasks {
            for (code, n) in task.await? {
                *errors.entry(code).or_default() += n;
            }
        }
        eprintln!(
            "800 writes through PgBouncer 1.18, transaction mode, cache 0, persistent({persistent}): \
             errors {errors:?}"
        );
    }
    drop(bouncer);
    Ok(())
}
