//! Second review of the Postgres backend: attacks on the check that lets a
//! retired generation's connection through, on `AwaitingPrimary`, and on
//! the no-panic rule. Each test runs against the real primary + standby +
//! proxy of `tests/pg_cluster`. A failing test is a finding (see its
//! comment); bounds are failure bounds, never measurements.

mod pg_cluster;
mod pg_support;

use pg_support::{BOUND, TestResult, admin, cluster, create_table, exits, takes_writes};

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, Postgres};
use tower_db_liveness::{LivePool, PoolStatus};

// ---------------------------------------------------------------------------
// A primary read-only in place (S2, `default_transaction_read_only=on`) is
// degraded, not dead: the gate accepts a new connection to it and marks
// the pool read-only; nothing is healed or let through half-ended. What
// `default_transaction_read_only` is: a default, not a fence. A
// transaction that says `READ WRITE` writes, on the primary (not in
// recovery), and the row is there: nothing acknowledged is lost. (It used
// to be refused by the gate, which started a heal, and a let-through
// connection committed it anyway.) Fence a primary with
// `pg_is_in_recovery()`, or by revoking the privilege, not with this
// default.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_write_transaction_on_a_read_only_primary_is_stored_on_the_primary() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(20)),
        )
        // Only the gate finds the read-only server (no idle-connection check).
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let primary = cluster.primary();
    admin(&cluster, |c| c.set_read_only(true)).await?;
    // The pool's idle connection dies: the next acquire opens a new one,
    // which the gate checks.
    admin(&cluster, |c| c.terminate_app_backends()).await?;
    assert!(
        !takes_writes(&cluster, primary).await?,
        "the primary is read-only"
    );
    let pool = live.pool();
    let write = tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION READ WRITE")
            .execute(&mut *tx)
            .await?;
        let id: i64 = sqlx::query_scalar("INSERT INTO t (v) VALUES ('fenced') RETURNING id")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<i64, sqlx::Error>(id)
    });
    let id = tokio::time::timeout(BOUND, write)
        .await
        .map_err(|_| format!("the write did not end within {BOUND:?}"))???;
    assert!(
        matches!(live.status(), PoolStatus::ReadOnly { generation: 0, .. }),
        "the gate marked the pool read-only: {:?}",
        live.status()
    );
    let mut conn = PgConnection::connect(&cluster.superuser_url(primary)).await?;
    let (found, in_recovery): (i64, bool) =
        sqlx::query_as("SELECT (SELECT count(*) FROM t WHERE id = $1), pg_is_in_recovery()")
            .bind(id)
            .fetch_one(&mut conn)
            .await?;
    assert_eq!((found, in_recovery), (1, false), "stored on the primary");
    assert_eq!(live.generation(), 0, "no heal");
    assert!(gave_up.try_recv().is_err());
    admin(&cluster, |c| c.set_read_only(false)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// FINDING: a read on a pool for writes misses an acknowledged write.
//
// The guide admits "a read in that instant may be answered by the standby";
// what that costs: the demoted node replays behind the new primary, so the
// read answers from before a write the new primary already acknowledged
// (read-your-writes broken for a pool that promises it never connects to a
// server that does not take writes). Replay is paused here to make the lag
// certain rather than lucky; the result is the same for any lag.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_let_through_never_misses_an_acknowledged_write() -> TestResult {
    let cluster = cluster();
    let (on_give_up, _gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(20)),
        )
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let new_primary = admin(&cluster, |c| c.switchover()).await?;
    let demoted = new_primary.other();
    // The proxy still leads to the demoted node, now a streaming standby.
    let mut su = PgConnection::connect(&cluster.superuser_url(demoted)).await?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut su)
        .await?;
    // Another instance, already on the new primary, acknowledges a write.
    let mut other = PgConnection::connect(&cluster.direct_url(new_primary)).await?;
    sqlx::query("INSERT INTO t (v) VALUES ('acknowledged')")
        .execute(&mut other)
        .await?;
    let pool = live.pool();
    let read = tokio::spawn(async move {
        sqlx::query_as::<_, (i64, bool)>(
            "SELECT (SELECT count(*) FROM t WHERE v = 'acknowledged'), pg_is_in_recovery()",
        )
        .fetch_one(&pool)
        .await
    });
    let result = tokio::time::timeout(BOUND, read)
        .await
        .map_err(|_| format!("the read did not end within {BOUND:?}"))??;
    eprintln!("the read ended: {result:?}; status {:?}", live.status());
    let _ = sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut su)
        .await;
    if let Ok((seen, in_recovery)) = result {
        assert!(
            seen == 1 && !in_recovery,
            "a read on a pool for writes was answered by a server in recovery ({in_recovery}) \
             and missed a write the primary had acknowledged ({seen} of 1 rows)"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// FINDING: library code panics on a reopen timeout of Duration::MAX
// ("wait for the primary for ever"): `Instant::now() + reopen_timeout` in
// `open()` (and in the heal's `reopen`, where the panic turns a heal into a
// give-up and an exit; and `rescue.timeout + reopen_timeout` in `close()`).
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reopen_timeout_of_duration_max_does_not_panic() -> TestResult {
    let cluster = cluster();
    let url = cluster.url();
    let (on_give_up, _gave_up) = exits();
    let opened = tokio::spawn(async move {
        LivePool::postgres(url.parse()?)
            .reopen_timeout(Duration::MAX)
            .on_give_up(on_give_up)
            .open()
            .await
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    });
    let opened = tokio::time::timeout(BOUND, opened)
        .await
        .map_err(|_| format!("open did not end within {BOUND:?}"))?;
    let live = match opened {
        Ok(result) => result?,
        Err(join) => panic!("open() panicked with reopen_timeout(Duration::MAX): {join}"),
    };
    let closing = live.clone();
    let closed = tokio::time::timeout(BOUND, tokio::spawn(async move { closing.close().await }))
        .await
        .map_err(|_| format!("close did not end within {BOUND:?}"))?;
    assert!(closed.is_ok(), "close() panicked: {:?}", closed.err());
    assert!(!matches!(live.status(), PoolStatus::GaveUp(_)));
    Ok(())
}

async fn health_status(
    live: &LivePool<Postgres>,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let health = tower_db_liveness::HealthService::new(live.clone());
    let response = health
        .oneshot(http::Request::get("/health").body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await?;
    Ok(status)
}

// ---------------------------------------------------------------------------
// HELD: close() during AwaitingPrimary ends the wait; the status leaves
// AwaitingPrimary, nothing gives up, and /health never answers 200 for the
// closed pool. Also single flight: four acquires refused by their gates at
// once start one heal, and the repoint heals exactly once (generation 1).
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_gates_refusing_at_once_heal_once_and_close_ends_awaiting_primary() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(20)),
        )
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let new_primary = admin(&cluster, |c| c.switchover()).await?;
    let pool = live.pool();
    let writes: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO t (v) VALUES ('x')")
                    .execute(&pool)
                    .await
            })
        })
        .collect();
    let mut status = live.subscribe();
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| matches!(s, PoolStatus::AwaitingPrimary { .. })),
    )
    .await
    .map_err(|_| format!("no AwaitingPrimary within {BOUND:?}: {:?}", live.status()))?;
    assert_eq!(
        health_status(&live).await?,
        503,
        "/health while awaiting a primary"
    );
    for write in writes {
        let ended = tokio::time::timeout(BOUND, write)
            .await
            .map_err(|_| "a write hung")??;
        assert!(
            ended.is_err(),
            "a write succeeded on the pinned pool: {ended:?}"
        );
    }
    // First half: the repoint heals once.
    cluster.repoint(new_primary);
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| matches!(s, PoolStatus::Live { generation: 1, .. })),
    )
    .await
    .map_err(|_| format!("no heal within {BOUND:?}: {:?}", live.status()))?;
    assert_eq!(live.generation(), 1, "one heal for four refusals");
    sqlx::query("INSERT INTO t (v) VALUES ('healed')")
        .execute(&live.pool())
        .await?;
    // Second half: the next switchover, closed while awaiting the primary.
    let newer = admin(&cluster, |c| c.switchover()).await?;
    let _ = sqlx::query("INSERT INTO t (v) VALUES ('y')")
        .execute(&live.pool())
        .await;
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| matches!(s, PoolStatus::AwaitingPrimary { generation: 1, .. })),
    )
    .await
    .map_err(|_| format!("no AwaitingPrimary within {BOUND:?}: {:?}", live.status()))?;
    tokio::time::timeout(BOUND, live.close())
        .await
        .map_err(|_| format!("close() did not end within {BOUND:?}"))?;
    let after = live.status();
    assert!(
        !matches!(
            after,
            PoolStatus::AwaitingPrimary { .. } | PoolStatus::Healing { .. }
        ),
        "status after close: {after:?}"
    );
    assert!(!live.is_healing());
    assert!(gave_up.try_recv().is_err(), "close during the wait gave up");
    assert_ne!(
        health_status(&live).await?,
        200,
        "/health after close: {after:?}"
    );
    // Even once a primary is reachable, the closed LivePool stays closed.
    cluster.repoint(newer);
    assert_ne!(
        health_status(&live).await?,
        200,
        "/health after close and repoint"
    );
    assert_eq!(live.generation(), 1);
    Ok(())
}
