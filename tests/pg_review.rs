//! Review of the Postgres backend: faults next to the ones `pg_failover`
//! proves, each against the real primary + standby + proxy of
//! `tests/pg_cluster`. Every test states what it shows; a failing test is a
//! finding (see its comment), a passing one is a guarantee that held.

mod pg_cluster;
mod pg_support;

use pg_support::{
    BOUND, TestResult, admin, cluster, create_table, exits, get_health, takes_writes,
    wait_for_status,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pg_cluster::{APP, Cluster, Node};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, Postgres};
use tower_db_liveness::{ErrorClass, Expect, HealthService, LivePool, Outcome, PoolStatus};

// ---------------------------------------------------------------------------
// A saturated pool on a primary turned read-only in place: degraded, not
// dead. Every write fails with 25006; the confirmation cannot get an idle
// connection (10 handlers on a pool of 2) and asks on one direct
// connection; the pool is marked read-only (no heal, no exit, generation
// 0), and Live again once the server takes writes, busy pool or not (the
// background check asks on a direct connection while read-only). The old
// test passed on a give-up: any status other than Live counted as "found".
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_pool_on_a_read_only_primary_is_marked_read_only_not_healed() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(30)),
        )
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let read_only = Arc::new(AtomicU64::new(0));
    // Successful writes so far: the signal that the load runs.
    let (wrote_tx, mut wrote) = tokio::sync::watch::channel(0u64);
    let wrote_tx = Arc::new(wrote_tx);
    // Handlers that read (slowly) and then write, in one transaction, as a
    // reporting endpoint would; 10 of them on a pool of 2.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (live, stop, read_only, wrote_tx) = (
                live.clone(),
                Arc::clone(&stop),
                Arc::clone(&read_only),
                Arc::clone(&wrote_tx),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let lease = live.lease();
                    let result = async {
                        let mut tx = lease.pool().begin().await?;
                        sqlx::query("SELECT pg_sleep(0.2)")
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("INSERT INTO t (v) VALUES ('w')")
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await
                    }
                    .await;
                    match result {
                        Ok(()) => wrote_tx.send_modify(|n| *n += 1),
                        Err(err) => {
                            if err.as_database_error().and_then(|e| e.code()).as_deref()
                                == Some("25006")
                            {
                                read_only.fetch_add(1, Ordering::Relaxed);
                            }
                            // Decided when called; not awaited, as the layer does.
                            drop(lease.report(&err));
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(BOUND, wrote.wait_for(|n| *n >= 5)).await??;
    let mut status = live.subscribe();
    admin(&cluster, |c| c.set_read_only(true)).await?;
    assert!(
        !takes_writes(&cluster, Node::N1).await?,
        "the primary is read-only now"
    );
    let found = tokio::time::timeout(
        BOUND,
        status.wait_for(|s| !matches!(s, PoolStatus::Live { generation: 0, .. })),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    assert!(
        matches!(found, PoolStatus::ReadOnly { generation: 0, .. }),
        "{found:?} ({} writes failed with 25006)",
        read_only.load(Ordering::Relaxed)
    );
    admin(&cluster, |c| c.set_read_only(false)).await?;
    let again = tokio::time::timeout(
        BOUND,
        status.wait_for(|s| !matches!(s, PoolStatus::ReadOnly { .. })),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    assert!(
        matches!(again, PoolStatus::Live { generation: 0, .. }),
        "{again:?}"
    );
    let before = *wrote.borrow_and_update();
    tokio::time::timeout(BOUND, wrote.wait_for(|n| *n > before)).await??;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    eprintln!(
        "{} writes failed with 25006 while read-only",
        read_only.load(Ordering::Relaxed)
    );
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err(), "no exit");
    Ok(())
}

// ---------------------------------------------------------------------------
// FINDING candidate: the probe reads an exhausted pool on a healthy server as
// a black hole. All connections are checked out (long queries); the probe's
// acquire does not complete within its bound; that counts as a "stuck"
// probe, and the third in a row answers `fail` (503), although the server
// answers and takes writes. The health table documents an exhausted pool as
// `warn`. A liveness probe on /health restarts a busy, healthy pod.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_pool_on_a_healthy_server_never_answers_fail() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(30)),
        )
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    let health = HealthService::new(live.clone());
    let (_, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{body}");
    // Two slow queries hold the whole pool; each task says when it holds
    // its connection.
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (pool, held_tx) = (live.pool(), held_tx.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                let _ = held_tx.send(());
                sqlx::query("SELECT pg_sleep(20)").execute(&mut *conn).await
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(BOUND, held.recv()).await?;
    }
    assert_eq!(live.pool().num_idle(), 0, "the pool is exhausted");
    let mut answers = Vec::new();
    for _ in 0..4 {
        let (_, body) = get_health(&health).await?;
        answers.push(format!(
            "{} ({})",
            body["status"], body["checks"]["postgres:responseTime"][0]["output"]
        ));
    }
    assert!(
        takes_writes(&cluster, Node::N1).await?,
        "the server takes writes"
    );
    for task in busy {
        task.abort();
    }
    assert!(gave_up.try_recv().is_err());
    assert!(
        answers.iter().all(|a| !a.starts_with("\"fail\"")),
        "a healthy, writable server behind an exhausted pool: {answers:?}"
    );
    Ok(())
}

/// Does a switchover, waits for the heal onto the new primary (the proxy
/// is repointed once the heal is in flight), returns the new primary.
async fn switchover_and_heal(
    cluster: &Arc<Cluster>,
    live: &LivePool<Postgres>,
    to: u64,
) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
    let new_primary = admin(cluster, |c| c.switchover()).await?;
    // Something must use the pool for the gate to see the demoted node: a
    // write through the pool (the old connections died with the fast stop).
    // Not awaited: see `a_request_waiting_on_the_pinned_pool_is_released_by_the_heal`.
    let pool = live.pool();
    tokio::spawn(async move {
        sqlx::query("INSERT INTO t (v) VALUES ('x')")
            .execute(&pool)
            .await
    });
    wait_for_status(
        live,
        "a heal (or give-up) after the switchover",
        |s| !matches!(s, PoolStatus::Live { generation, .. } if *generation == to - 1),
    )
    .await;
    admin(cluster, move |c| c.repoint(new_primary)).await;
    wait_for_status(live, "the end of the heal", |s| {
        !matches!(
            s,
            PoolStatus::Healing { .. } | PoolStatus::AwaitingPrimary { .. }
        )
    })
    .await;
    Ok(new_primary)
}

// ---------------------------------------------------------------------------
// FINDING candidate: a second switchover inside the recurrence window (30 s
// by default) after a heal gives up (exit) instead of healing. The first
// heal verified the new generation on a writable primary; the second
// NotWritable is a new failover (Patroni switchover and switch back,
// a failed-over node that fails again), not the same fault recurring, and
// the exit buys nothing: the restarted process waits in open() the same way.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_switchover_soon_after_a_heal_heals_again() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    switchover_and_heal(&cluster, &live, 1).await?;
    assert_eq!(
        live.generation(),
        1,
        "first switchover: one heal; {:?}",
        live.status()
    );
    assert!(
        gave_up.try_recv().is_err(),
        "no exit on the first switchover"
    );
    sqlx::query("INSERT INTO t (v) VALUES ('gen 1')")
        .execute(&live.pool())
        .await?;
    // Back again 10 s later (a switch back after maintenance).
    tokio::time::sleep(Duration::from_secs(10)).await;
    sqlx::query("INSERT INTO t (v) VALUES ('gen 1, 10 s later')")
        .execute(&live.pool())
        .await?;
    switchover_and_heal(&cluster, &live, 2).await?;
    let gave = gave_up.try_recv().ok();
    assert!(
        gave.is_none(),
        "exit on the second switchover: {:?}",
        gave.map(|g| g.reason)
    );
    assert_eq!(live.generation(), 2, "{:?}", live.status());
    sqlx::query("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    Ok(())
}

/// A switchover with the proxy left on the demoted node, and something
/// using the pool: the heal starts and waits for a primary. Returns the new
/// primary.
async fn awaiting_primary(
    cluster: &Arc<Cluster>,
    live: &LivePool<Postgres>,
) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
    let new_primary = admin(cluster, |c| c.switchover()).await?;
    let pool = live.pool();
    tokio::spawn(async move { sqlx::query("SELECT 1").execute(&pool).await });
    wait_for_status(live, "the wait for a primary", |s| {
        matches!(s, PoolStatus::AwaitingPrimary { .. })
    })
    .await;
    Ok(new_primary)
}

// ---------------------------------------------------------------------------
// close() while the heal waits for a primary, the proxy black-holed (each
// attempt takes its full 2 s bound): close must return promptly (the wait
// has no deadline by default), and the heal ends without a give-up.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_during_the_heals_wait_in_a_black_hole_returns_without_exit() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .on_give_up(on_give_up)
        .open()
        .await?;
    awaiting_primary(&cluster, &live).await?;
    admin(&cluster, |c| c.black_hole(true)).await;
    // An attempt of the wait is in the hole.
    tokio::time::timeout(BOUND, cluster.until_held(1)).await?;
    let closed = tokio::time::timeout(Duration::from_secs(15), live.close()).await;
    assert!(
        closed.is_ok(),
        "close() did not return within 15 s; {:?}",
        live.status()
    );
    // close() waited for the heal: its outcome is published, and a give-up
    // would be published (before the exit action) as the status.
    tokio::time::timeout(BOUND, live.healed()).await?;
    assert!(
        !matches!(live.status(), PoolStatus::GaveUp(_)),
        "{:?}",
        live.status()
    );
    assert!(gave_up.try_recv().is_err(), "no exit after close()");
    assert!(!live.is_healing());
    admin(&cluster, |c| c.black_hole(false)).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// A black hole during the heal's wait, then the primary reachable: the
// heal completes (no attempt hangs past its bound), one heal, no exit.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_hole_during_the_heal_then_recovery_heals_once() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let new_primary = awaiting_primary(&cluster, &live).await?;
    admin(&cluster, |c| c.black_hole(true)).await;
    tokio::time::timeout(BOUND, cluster.until_held(1)).await?;
    // Two attempts of the wait end in the hole (each at its bound).
    let mut status = live.subscribe();
    let attempts = |s: &PoolStatus| match s {
        PoolStatus::AwaitingPrimary { attempts, .. } => *attempts,
        _ => 0,
    };
    let first = attempts(&status.latest());
    tokio::time::timeout(BOUND, status.wait_for(|s| attempts(s) >= first + 2))
        .await?
        .ok_or("the LivePool is gone")?;
    admin(&cluster, move |c| c.repoint(new_primary)).await;
    admin(&cluster, |c| c.black_hole(false)).await;
    wait_for_status(&live, "the heal onto the new primary", |s| {
        !matches!(
            s,
            PoolStatus::Healing { .. } | PoolStatus::AwaitingPrimary { .. }
        )
    })
    .await;
    assert_eq!(live.generation(), 1, "{:?}", live.status());
    assert!(gave_up.try_recv().is_err());
    sqlx::query("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// FINDING candidate: open() against a permanent configuration error (a
// database that does not exist, SQLSTATE 3D000) is retried, silently at
// the default log level, for the whole reopen timeout (60 s by default)
// before open() returns. A failover never makes a database appear; the
// user waits a minute for a typo. (A refused or black-holed address is
// legitimately waited for: the primary may be restarting.)
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_with_a_missing_database_fails_without_waiting_the_reopen_timeout() -> TestResult {
    let cluster = cluster();
    let url = format!(
        "postgres://{APP}@127.0.0.1:{}/no_such_db",
        cluster.proxy_port()
    );
    let opened = tokio::time::timeout(
        Duration::from_secs(15),
        LivePool::postgres(url.parse()?).open(),
    )
    .await;
    match opened {
        Ok(Err(err)) => eprintln!("open() failed as it should: {err}"),
        Ok(Ok(_)) => panic!("opened a pool on a database that does not exist"),
        Err(_) => panic!(
            "open() on a missing database (3D000) was still retrying after 15 s \
             (it retries for the whole 60 s reopen timeout)"
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A 0A000 that is not about recovery (FOR UPDATE with an aggregate) on a
// writable primary: checked, Other, no heal, no exit.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feature_not_supported_error_is_not_a_failover() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let err = sqlx::query("SELECT count(*) FROM t FOR UPDATE")
        .execute(&live.pool())
        .await
        .expect_err("FOR UPDATE with an aggregate");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("0A000"),
        "{err}"
    );
    let outcome = tokio::time::timeout(BOUND, live.lease().report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
        "{outcome:?}"
    );
    assert_eq!(live.generation(), 0);
    assert!(!live.is_healing());
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// Expect::Any on a primary: works, /health pass, a 25006 from the app's own
// read-only transaction is Other, never a heal.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expect_any_on_a_primary_is_quiet() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .expect(Expect::Any)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let mut tx = live.pool().begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let err = sqlx::query("INSERT INTO t (v) VALUES ('x')")
        .execute(&mut *tx)
        .await
        .expect_err("read-only transaction");
    drop(tx);
    let outcome = live.lease().report(&err).await;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
        "{outcome:?}"
    );
    let health = HealthService::new(live.clone());
    let (_, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{body}");
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// `ALTER ROLE app SET default_transaction_read_only = on`: existing sessions
// keep taking writes, new ones are read-only. Once a new connection is
// opened, its check finds the primary read-only in place: the pool is
// marked read-only (degraded), never healed; `/health` never fails; after
// the reset, new sessions take writes and the pool is Live again.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_for_the_app_role_only_is_degraded_not_healed() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let health = HealthService::new(live.clone());
    let mut su = PgConnection::connect(&cluster.superuser_url(Node::N1)).await?;
    sqlx::query("ALTER ROLE app SET default_transaction_read_only = on")
        .execute(&mut su)
        .await?;
    // A new session of the app role cannot write.
    assert!(!takes_writes(&cluster, Node::N1).await?);
    // Force a new connection: hold every idle one, then acquire once more.
    let pool = live.pool();
    let mut held = Vec::new();
    while let Some(conn) = pool.try_acquire() {
        held.push(conn);
    }
    let new = pool.acquire().await?;
    drop((held, new));
    assert!(
        matches!(live.status(), PoolStatus::ReadOnly { generation: 0, .. }),
        "{:?}",
        live.status()
    );
    let (status, body) = get_health(&health).await?;
    assert_ne!(status, 503, "{body}");
    sqlx::query("ALTER ROLE app RESET default_transaction_read_only")
        .execute(&mut su)
        .await?;
    // New sessions take writes again; the probe's session may be an old
    // one, so make every session new.
    admin(&cluster, |c| c.terminate_app_backends()).await?;
    let (status, body) = get_health(&health).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(live.status(), PoolStatus::Live { generation: 0, .. }),
        "{:?}",
        live.status()
    );
    assert_eq!(live.generation(), 0, "no heal");
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// FINDING (fixed): a request already waiting in `acquire` on the pinned
// pool when the heal closes it was not released: sqlx's acquire loop kept
// opening connections to the demoted node (each refused by the gate,
// un-jittered) until the pool's acquire_timeout (30 s by default), and
// `Pool::close` does not stop that loop. The check now lets a retired
// generation's connection through, so the write fails at once (25006) on
// its next turn. 10 s is a failure bound, three orders above the expected.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_waiting_on_the_pinned_pool_is_released_by_the_heal() -> TestResult {
    let cluster = cluster();
    let (on_give_up, _gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let _new_primary = admin(&cluster, |c| c.switchover()).await?;
    // The proxy still leads to the demoted node: this write's acquire is
    // refused by the gate, which starts the heal (and closes this pool).
    let pool = live.pool();
    let write = tokio::spawn(async move {
        sqlx::query("INSERT INTO t (v) VALUES ('x')")
            .execute(&pool)
            .await
    });
    wait_for_status(&live, "the heal", |s| {
        matches!(
            s,
            PoolStatus::Healing { .. } | PoolStatus::AwaitingPrimary { .. }
        )
    })
    .await;
    assert!(live.pool().is_closed() || live.is_healing());
    let released = tokio::time::timeout(Duration::from_secs(10), write).await;
    match released {
        Ok(result) => eprintln!("the write ended: {:?}", result?.err()),
        Err(_) => panic!(
            "a write waiting on the pinned pool was still in acquire 10 s after the heal closed \
             the pool (pool closed: {})",
            live.lease().pool().is_closed()
        ),
    }
    Ok(())
}
