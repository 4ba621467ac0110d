//! `LivePool<MySql>` against a real MariaDB primary + GTID replica behind a
//! TCP proxy (tests/my_cluster): read-only in place, the switchover where the
//! old primary stays up, too many connections, killed connections and a
//! restart, an application's own READ ONLY transaction.
//!
//! Nothing here waits on a sleep where a signal exists: the policy's status
//! is awaited. Durations are printed, never asserted.

mod my_cluster;
mod my_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use my_cluster::Node;
use my_support::*;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use tower_db_liveness::{ErrorClass, Fault, HealthService, LivePool, Outcome, PoolStatus};

fn options(cluster: &my_cluster::Cluster) -> MySqlConnectOptions {
    cluster.url().parse().expect("the cluster's URL parses")
}

fn number(err: &sqlx::Error) -> Option<u16> {
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
        .map(|my| my.number())
}

/// The primary made read-only in place (the endpoint stays on it): degraded,
/// not dead. Found by the background check with no failing write; reads are
/// served, writes refused, readiness `warn` (`read_only`), no heal however
/// many checks run; `Live` again once it takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_in_place_is_degraded_not_healed() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    write(&live, "before").await?;
    let health = HealthService::new(live.clone());

    let started = Instant::now();
    admin(&cluster, |c| c.set_read_only(Node::M1, true)).await?;
    let status = wait_for_status(&live, "read-only in place", |s| {
        matches!(s, PoolStatus::ReadOnly { .. })
    })
    .await;
    println!(
        "read-only found by the background check {:?} after the flip: {status:?}",
        started.elapsed()
    );

    // Writes are refused, and a refused write does not heal.
    let err = write(&live, "refused")
        .await
        .expect_err("a write on a read-only server");
    assert_eq!(number(&err), Some(1290), "{err}");
    let outcome = live.lease().report(&err).await;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
        "{outcome:?}"
    );
    // Reads are served.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&live.pool())
        .await?;
    assert_eq!(n, 1);
    // Every probe asks where the endpoint leads (the same server): never a
    // pass, never a heal.
    for _ in 0..5 {
        let (code, body) = get_health(&health).await?;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("warn")),
            "{body}"
        );
        assert_eq!(body["state"], "read_only", "{body}");
    }
    assert_eq!(live.generation(), 0, "read-only in place must not heal");
    assert!(matches!(live.status(), PoolStatus::ReadOnly { .. }));

    let lifted = Instant::now();
    admin(&cluster, |c| c.set_read_only(Node::M1, false)).await?;
    wait_for_status(&live, "writable again", |s| {
        matches!(s, PoolStatus::Live { .. })
    })
    .await;
    println!("Live again {:?} after read_only=OFF", lifted.elapsed());
    write(&live, "after").await?;
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err(), "no give-up");
    live.close().await;
    Ok(())
}

/// Read-only in place while every pooled connection is checked out (a
/// saturated pool): the background check has no idle connection to ask, so
/// it asks the endpoint directly, and the pool is `Live` again once the
/// server takes writes, with no request and no connection freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_clears_while_every_connection_is_busy() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .pool_options(MySqlPoolOptions::new().max_connections(2))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    admin(&cluster, |c| c.set_read_only(Node::M1, true)).await?;
    wait_for_status(&live, "read-only in place", |s| {
        matches!(s, PoolStatus::ReadOnly { .. })
    })
    .await;

    // Every connection checked out, as under load.
    let pool = live.pool();
    let held = [pool.acquire().await?, pool.acquire().await?];
    assert_eq!(pool.num_idle(), 0, "the pool is saturated");
    admin(&cluster, |c| c.set_read_only(Node::M1, false)).await?;
    wait_for_status(&live, "writable again with no idle connection", |s| {
        matches!(s, PoolStatus::Live { .. })
    })
    .await;
    drop(held);

    write(&live, "after").await?;
    assert_eq!(live.generation(), 0, "read-only in place must not heal");
    assert!(gave_up.try_recv().is_err(), "no give-up");
    live.close().await;
    Ok(())
}

/// A burst of read-only errors from a busy pool (an application's own READ
/// ONLY transactions, on a primary that takes writes) is confirmed by one
/// check, which the reports that come while it runs join: not one query per
/// report on the pool's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_read_only_errors_costs_one_check() -> TestResult {
    use sqlx::Connection;

    let cluster = cluster();
    let live = LivePool::mysql(options(&cluster))
        .pool_options(MySqlPoolOptions::new().max_connections(10))
        .check_interval(None) // no background check in the count
        .open()
        .await?;
    create_table(&live).await?;
    // Idle connections for the checks to take.
    let pool = live.pool();
    let mut warm = Vec::new();
    for _ in 0..8 {
        warm.push(pool.acquire().await?);
    }
    drop(warm);
    let lease = live.lease();
    let mut tx = lease
        .pool()
        .begin_with("START TRANSACTION READ ONLY")
        .await?;
    let err = sqlx::query("INSERT INTO t (v) VALUES ('ro')")
        .execute(&mut *tx)
        .await
        .expect_err("a write in a READ ONLY transaction");
    assert_eq!(number(&err), Some(1792), "{err}");

    // The server's count of SELECTs (the check is one); SHOW is not one.
    let mut admin = sqlx::MySqlConnection::connect_with(&options(&cluster)).await?;
    let mut selects = async || -> sqlx::Result<u64> {
        let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
            .fetch_one(&mut admin)
            .await?;
        Ok(value.parse().unwrap_or_default())
    };
    let before = selects().await?;
    // Each report is decided when it is made: all fifty before any check ends.
    let reports: Vec<_> = (0..50).map(|_| lease.report(&err)).collect();
    let mut outcomes = Vec::new();
    for report in reports {
        outcomes.push(report.await);
    }
    let checks = selects().await? - before;
    tx.rollback().await?;

    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Ignored(ErrorClass::Other))),
        "{outcomes:?}"
    );
    assert!(checks <= 2, "{checks} SELECTs for 50 reports");
    assert_eq!(live.generation(), 0);
    live.close().await;
    Ok(())
}

/// The switchover of the measurements (S2): the old primary stays up and
/// only flips read_only; the endpoint stays on it for 8 s, then moves.
async fn switchover(max_connections: u32) -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .pool_options(MySqlPoolOptions::new().max_connections(max_connections))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let health = HealthService::new(live.clone());

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = writers(&live, 3, start, Arc::clone(&stop));
    // Load before the fault (a duration of the scenario, not a signal).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let new = admin(&cluster, |c| c.switchover()).await?;
    let switched = start.elapsed();
    wait_for_status(&live, "read-only while pinned", |s| {
        matches!(s, PoolStatus::ReadOnly { .. })
    })
    .await;
    println!(
        "pool of {max_connections}: switchover done at {switched:?}, read_only at {:?}",
        start.elapsed()
    );
    // The endpoint stays on the demoted node for 8 s (the scenario).
    let pinned_until = Instant::now() + Duration::from_secs(8);
    let mut probes = 0;
    while Instant::now() < pinned_until {
        let (code, body) = get_health(&health).await?;
        assert_ne!(
            body["status"], "pass",
            "readiness pass while pinned: {body}"
        );
        assert_eq!(code, 200, "{body}");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        live.generation(),
        0,
        "no heal while the endpoint is on the demoted node"
    );

    cluster.repoint(new);
    let repointed = start.elapsed();
    let healed = wait_for_status(&live, "healed onto the new primary", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    let swapped = start.elapsed();
    // Load after the heal (a duration of the scenario).
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let log = join(handles).await;

    let PoolStatus::Live {
        last_heal: Some(heal),
        ..
    } = healed
    else {
        panic!("healed without a heal: {healed:?}");
    };
    assert!(
        matches!(heal.fault, Fault::NotWritable { .. }),
        "{:?}",
        heal.fault
    );
    let first_ok = log
        .ok
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| *at >= repointed)
        .min()
        .expect("a write succeeded after the repoint");
    let failed_after_repoint = log.failed.iter().filter(|(at, _)| *at >= repointed).count();
    let failed_after_swap: Vec<_> = log.failed.iter().filter(|(at, _)| *at >= swapped).collect();
    let failed_pinned = log
        .failed
        .iter()
        .filter(|(at, _)| *at >= switched && *at < repointed)
        .count();
    println!(
        "pool of {max_connections}: {} writes ok, {} failed ({failed_pinned} while pinned, \
         {failed_after_repoint} after the repoint, {} after the swap); {probes} probes while \
         pinned, none pass; repoint -> swap {:?}, repoint -> first ok write {:?}; fault: {}",
        log.ok.len(),
        log.failed.len(),
        failed_after_swap.len(),
        swapped - repointed,
        first_ok - repointed,
        heal.fault
    );
    assert!(
        failed_after_swap.is_empty(),
        "writes started after the swap failed: {failed_after_swap:?}"
    );

    // Every acknowledged write is on the new primary; none was committed on
    // the demoted node alone.
    let old = new.other();
    admin(&cluster, move |c| c.catch_up(old)).await?;
    let on_new: HashSet<i64> = admin(&cluster, move |c| c.ids(new, "t")).await?;
    let on_old: HashSet<i64> = admin(&cluster, move |c| c.ids(old, "t")).await?;
    let missing: Vec<i64> = log
        .ok
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| !on_new.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the new primary: {missing:?}"
    );
    let only_on_old: Vec<&i64> = on_old.difference(&on_new).collect();
    assert!(
        only_on_old.is_empty(),
        "writes committed on the demoted node: {only_on_old:?}"
    );
    let app_on_old = admin(&cluster, move |c| c.app_connections(old)).await?;
    println!("pool of {max_connections}: app connections left on the demoted node: {app_on_old}");
    assert!(gave_up.try_recv().is_err(), "no give-up");
    live.close().await;
    Ok(())
}

/// No request at all, before or after the endpoint moves: the background
/// check alone finds the pool's server read-only, then the endpoint leading
/// to another server that takes writes, and heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_move_is_found_with_no_request() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let new = admin(&cluster, |c| c.switchover()).await?;
    let switched = Instant::now();
    wait_for_status(&live, "read-only while pinned", |s| {
        matches!(s, PoolStatus::ReadOnly { .. })
    })
    .await;
    let found = switched.elapsed();
    cluster.repoint(new);
    let repointed = Instant::now();
    wait_for_status(&live, "healed with no request", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    println!(
        "read-only found {found:?} after the switchover; healed {:?} after the repoint, \
         with no request",
        repointed.elapsed()
    );
    let id = write(&live, "after").await?;
    let on_new = admin(&cluster, move |c| c.ids(new, "t")).await?;
    assert!(
        on_new.contains(&id),
        "the write after the heal is on the new primary"
    );
    assert!(gave_up.try_recv().is_err());
    live.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_pool_of_10() -> TestResult {
    switchover(10).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_pool_of_2() -> TestResult {
    switchover(2).await
}

/// 1040 comes back from sqlx's `acquire` at once (no retry): transient, no
/// heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_is_transient() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    admin(&cluster, |c| c.set_max_connections(Node::M1, 1)).await?;
    // MariaDB raises max_connections=1 to its minimum, 10. Connections are
    // held until the server refuses one (the replica's binlog dump thread
    // and the pool's first connection already count).
    let mut held = Vec::new();
    let err = loop {
        let lease = live.lease();
        match lease.pool().acquire().await {
            Ok(conn) if held.len() < 20 => held.push(conn),
            Ok(_) => panic!("the server let the app open 21 connections with max_connections=10"),
            Err(err) => {
                let outcome = lease.report(&err).await;
                assert!(
                    matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
                    "{outcome:?}"
                );
                break err;
            }
        }
    };
    println!("refused after {} connections: {err}", held.len());
    assert_eq!(number(&err), Some(1040), "{err}");
    drop(held);
    admin(&cluster, |c| c.set_max_connections(Node::M1, 100)).await?;
    write(&live, "after").await?;
    assert_eq!(live.generation(), 0);
    assert!(matches!(live.status(), PoolStatus::Live { .. }));
    assert!(gave_up.try_recv().is_err());
    live.close().await;
    Ok(())
}

/// A killed connection and a restarted server surface as `Io` errors:
/// transient, no heal; the pool replaces its connections itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_and_restart_are_transient() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;

    let mut held = live.pool().acquire().await?;
    let killed = admin(&cluster, |c| c.kill_app_connections(Node::M1)).await?;
    assert!(killed > 0);
    let err = sqlx::query("INSERT INTO t (v) VALUES ('k')")
        .execute(&mut *held)
        .await
        .expect_err("a killed connection");
    assert!(matches!(err, sqlx::Error::Io(_)), "{err:?}");
    let outcome = live.report_at(0, &err).await;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
        "{outcome:?}"
    );
    drop(held);
    write(&live, "after kill").await?;

    let mut held = live.pool().acquire().await?;
    admin(&cluster, |c| c.stop_node(Node::M1)).await?;
    let err = sqlx::query("INSERT INTO t (v) VALUES ('r')")
        .execute(&mut *held)
        .await
        .expect_err("a connection to a stopped server");
    drop(held);
    assert!(matches!(err, sqlx::Error::Io(_)), "{err:?}");
    let outcome = live.report_at(0, &err).await;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
        "{outcome:?}"
    );
    // While it is down, a new connection is reset by the proxy: transient.
    let err = write(&live, "down").await.expect_err("the server is down");
    println!("while down: {err}");
    assert_eq!(
        tower_db_liveness::classify(&err),
        ErrorClass::Transient,
        "{err:?}"
    );
    admin(&cluster, |c| c.start_node(Node::M1)).await?;
    write(&live, "after restart").await?;
    assert_eq!(live.generation(), 0);
    assert!(
        matches!(live.status(), PoolStatus::Live { .. }),
        "{:?}",
        live.status()
    );
    assert!(gave_up.try_recv().is_err());
    live.close().await;
    Ok(())
}

/// The application's own READ ONLY transaction gets 1792 on a primary that
/// takes writes: checked, and not a fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_read_only_transaction_is_not_a_fault() -> TestResult {
    let cluster = cluster();
    let live = LivePool::mysql(options(&cluster)).open().await?;
    create_table(&live).await?;
    // An idle connection for the confirmation, besides the transaction's.
    write(&live, "x").await?;
    let lease = live.lease();
    let mut tx = lease
        .pool()
        .begin_with("START TRANSACTION READ ONLY")
        .await?;
    let err = sqlx::query("INSERT INTO t (v) VALUES ('ro')")
        .execute(&mut *tx)
        .await
        .expect_err("a write in a READ ONLY transaction");
    assert_eq!(number(&err), Some(1792), "{err}");
    let outcome = lease.report(&err).await;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
        "{outcome:?}"
    );
    tx.rollback().await?;
    write(&live, "y").await?;
    assert_eq!(live.generation(), 0);
    assert!(matches!(live.status(), PoolStatus::Live { .. }));
    live.close().await;
    Ok(())
}

/// The endpoint black-holed (the node's network gone, sockets open): the
/// probe answers `warn`, then `fail` from the third in a row, and nothing
/// heals (nothing proves the server dead); `pass` again once bytes flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_is_not_answering_and_never_heals() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let health = HealthService::new(live.clone());
    let (_, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{body}");

    cluster.black_hole(true);
    let mut answers = Vec::new();
    for _ in 0..4 {
        let (code, body) = get_health(&health).await?;
        answers.push((code, body["status"].as_str().unwrap_or("").to_owned()));
        assert!(
            matches!(body["state"].as_str(), Some("not_answering" | "transient")),
            "{body}"
        );
    }
    println!("probes while black-holed: {answers:?}");
    assert_eq!(answers[0], (200, "warn".to_owned()));
    assert_eq!(answers[2], (503, "fail".to_owned()));
    assert_eq!(answers[3], (503, "fail".to_owned()));
    assert_eq!(live.generation(), 0, "a black hole must not heal");
    assert!(
        matches!(live.status(), PoolStatus::Live { .. }),
        "{:?}",
        live.status()
    );

    cluster.black_hole(false);
    let lifted = Instant::now();
    let mut probes = 0;
    loop {
        probes += 1;
        let (_, body) = get_health(&health).await?;
        if body["status"] == "pass" {
            break;
        }
        assert!(
            lifted.elapsed() < BOUND,
            "no pass after the black hole: {body}"
        );
        // Each probe is bounded by its own timeout; this only spaces them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "pass again {:?} ({probes} probes) after the black hole",
        lifted.elapsed()
    );
    write(&live, "after").await?;
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err());
    live.close().await;
    Ok(())
}

/// The health probe alone (no background check, no request): a server that
/// does not take writes is never `pass`; read-only in place answers
/// `read_only`; once the endpoint leads to another server that takes
/// writes, the probe's finding is `fail` and starts the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_alone_never_passes_a_pinned_pool_and_heals_it() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let health = HealthService::new(live.clone());
    let new = admin(&cluster, |c| c.switchover()).await?;
    let (code, body) = get_health(&health).await?;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("warn")),
        "{body}"
    );
    assert_eq!(body["state"], "read_only", "{body}");
    assert_eq!(live.generation(), 0);

    cluster.repoint(new);
    let (code, body) = get_health(&health).await?;
    println!("the first probe after the repoint: {code} {body}");
    assert_eq!(
        (code, body["status"].as_str()),
        (503, Some("fail")),
        "{body}"
    );
    wait_for_status(&live, "healed by the probe's finding", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    let (_, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{body}");
    assert!(gave_up.try_recv().is_err());
    live.close().await;
    Ok(())
}

/// The check of a new connection (no background check, no probe): the
/// pool is read-only (found from a write's 1290), the endpoint moves, and
/// the first new connection, which reaches the new primary, heals at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_that_finds_the_endpoint_moved_heals_at_once() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::mysql(options(&cluster))
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let new = admin(&cluster, |c| c.switchover()).await?;
    // Reported by `write`, as the layer would: confirmed, read-only.
    let err = write(&live, "pinned")
        .await
        .expect_err("the demoted node refuses writes");
    assert_eq!(number(&err), Some(1290), "{err}");
    wait_for_status(&live, "read-only, from the write's 1290", |s| {
        matches!(s, PoolStatus::ReadOnly { .. })
    })
    .await;

    cluster.repoint(new);
    // Every connection the pool has is busy: the next write opens one.
    let mut held = Vec::new();
    while let Some(conn) = live.pool().try_acquire() {
        held.push(conn);
    }
    let id = write(&live, "on a new connection").await?;
    wait_for_status(&live, "healed by a new connection's check", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    drop(held);
    let on_new = admin(&cluster, move |c| c.ids(new, "t")).await?;
    assert!(
        on_new.contains(&id),
        "the write on the new connection is on the new primary"
    );
    assert!(gave_up.try_recv().is_err());
    live.close().await;
    Ok(())
}

/// A new connection that reaches another server that does not take writes
/// (the endpoint misrouted to the replica) is never served: it is handed
/// out ended, so the request fails at once (transient) instead of reading
/// from the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_to_another_read_only_server_is_never_served() -> TestResult {
    let cluster = cluster();
    let live = LivePool::mysql(options(&cluster))
        .check_interval(None)
        .open()
        .await?;
    create_table(&live).await?;
    let mut held = Vec::new();
    while let Some(conn) = live.pool().try_acquire() {
        held.push(conn);
    }
    cluster.repoint(Node::M2);
    let answered: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT CAST(@@server_id AS SIGNED)")
            .fetch_one(&live.pool())
            .await;
    println!("a query on a new connection to the replica: {answered:?}");
    let err = answered.expect_err("a connection to the replica must not serve");
    assert_eq!(
        tower_db_liveness::classify(&err),
        ErrorClass::Transient,
        "{err:?}"
    );
    assert_eq!(live.generation(), 0);
    assert!(
        matches!(live.status(), PoolStatus::Live { .. }),
        "{:?}",
        live.status()
    );
    cluster.repoint(Node::M1);
    drop(held);
    write(&live, "after").await?;
    live.close().await;
    Ok(())
}
