//! `LivePool<Postgres>` against a real primary, a streaming hot standby and a
//! TCP proxy standing in for the Service/VIP (`tests/pg_cluster`): the
//! switchover that pins a plain pool to the demoted primary, a primary made
//! read-only in place (degraded, kept), a black-holed node, the transient SQLSTATEs, and a
//! pool built while the proxy still points at the demoted node.
//!
//! Needs the PostgreSQL server binaries (`.ci/run` installs them); without
//! them every test here fails with what to install.

mod pg_cluster;
mod pg_support;

use pg_support::{BOUND, TestResult, admin, cluster, exits, get_health, wait_for_status};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pg_cluster::{Cluster, Node, StopMode};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, Postgres};
use tokio::sync::mpsc;
use tower_db_liveness::{
    ErrorClass, Expect, GaveUp, GiveUpReason, HealthService, LivePool, Outcome, PoolStatus,
};

async fn open(
    cluster: &Cluster,
    max_connections: u32,
    on_give_up: impl Fn(&GaveUp) + Send + Sync + 'static,
) -> sqlx::Result<LivePool<Postgres>> {
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(3)),
        )
        .on_give_up(on_give_up)
        .open()
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v text NOT NULL)")
        .execute(&live.pool())
        .await?;
    Ok(live)
}

/// Acknowledged and failed writes, counted by a writer task.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Failures with SQLSTATE 25006: writes that reached the demoted node.
    read_only: AtomicU64,
    /// Failures of writes leased on a generation after the first.
    failed_healed: AtomicU64,
}

/// Writers that go through a lease and report their errors, as the layer
/// does, until `stop` is set. Each acknowledged id is sent to `acked`.
fn writers(
    live: &LivePool<Postgres>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
    acked: &mpsc::UnboundedSender<i64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|_| {
            let (live, stop, tally, acked) = (
                live.clone(),
                Arc::clone(stop),
                Arc::clone(tally),
                acked.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let lease = live.lease();
                    let wrote =
                        sqlx::query_scalar::<_, i64>("INSERT INTO t (v) VALUES ('w') RETURNING id")
                            .fetch_one(lease.pool())
                            .await;
                    match wrote {
                        Ok(id) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let _ = acked.send(id);
                        }
                        Err(err) => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            if lease.generation() > 0 {
                                tally.failed_healed.fetch_add(1, Ordering::Relaxed);
                            }
                            if err
                                .as_database_error()
                                .and_then(|e| e.code())
                                .is_some_and(|c| c == "25006")
                            {
                                tally.read_only.fetch_add(1, Ordering::Relaxed);
                            }
                            // Decided now; not awaited: a request does not
                            // wait for the heal.
                            drop(lease.report(&err));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect()
}

async fn rows_on(cluster: &Cluster, node: Node, ids: &[i64]) -> sqlx::Result<i64> {
    let mut conn = PgConnection::connect(&cluster.direct_url(node)).await?;
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(found)
}

/// The realistic switchover: the old primary stopped fast, the standby
/// promoted, the old primary restarted as a standby, the proxy still at it;
/// then the proxy moves. A plain pool stays pinned to the demoted node (see
/// the reference measurements); the LivePool never writes to it, heals once
/// when the primary is reachable, and every acknowledged write is on the
/// new primary.
async fn switchover(max_connections: u32) -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = open(&cluster, max_connections, on_give_up).await?;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
    let tasks = writers(&live, 3, &stop, &tally, &acked_tx);
    // Some writes on the old primary first.
    let before = tally.ok.load(Ordering::Relaxed);
    tokio::time::timeout(BOUND, async {
        while tally.ok.load(Ordering::Relaxed) < before + 20 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;

    let new_primary = admin(&cluster, |c| c.switchover()).await?;
    // The old primary is a standby now and the proxy still leads to it: the
    // pool's new connections are refused by the check, which heals.
    wait_for_status(&live, "a heal after the switchover", |s| {
        matches!(
            s,
            PoolStatus::Healing { .. } | PoolStatus::AwaitingPrimary { .. }
        )
    })
    .await;
    let pinned_failures = tally.failed.load(Ordering::Relaxed);
    admin(&cluster, move |c| c.repoint(new_primary)).await;
    let repointed = Instant::now();
    wait_for_status(&live, "the heal onto the new primary", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    let healed_after = repointed.elapsed();
    // Writes after the heal: none fails.
    let (ok_at_heal, failed_at_heal) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    tokio::time::timeout(BOUND, async {
        while tally.ok.load(Ordering::Relaxed) < ok_at_heal + 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }
    eprintln!(
        "max_connections {max_connections}: acknowledged {}, failed {} (25006: {}), \
         failed while pinned {pinned_failures}, healed {healed_after:?} after the repoint",
        acked.len(),
        tally.failed.load(Ordering::Relaxed),
        tally.read_only.load(Ordering::Relaxed),
    );
    let _ = failed_at_heal;
    assert_eq!(
        tally.failed_healed.load(Ordering::Relaxed),
        0,
        "no write on the new generation fails"
    );
    // No write ever reaches the demoted node: new connections to it are
    // refused, and one opened for a request already inside sqlx's acquire
    // when the heal began is handed out with its session ended.
    assert_eq!(
        tally.read_only.load(Ordering::Relaxed),
        0,
        "no write reached the demoted node"
    );
    assert_eq!(live.generation(), 1, "one heal");
    assert!(gave_up.try_recv().is_err(), "no give-up");
    // Every acknowledged write is on the new primary (the old one's were
    // streamed to it before the fast stop).
    let stored = rows_on(&cluster, new_primary, &acked).await?;
    assert_eq!(
        stored,
        acked.len() as i64,
        "every acknowledged write is stored"
    );
    // The demoted node holds none of the new pool's connections.
    assert_eq!(
        admin(&cluster, move |c| c.app_backends(new_primary.other())).await?,
        0
    );
    live.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_heals_onto_the_new_primary() -> TestResult {
    switchover(10).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_heals_a_pool_of_two() -> TestResult {
    switchover(2).await
}

/// A primary turned read-only in place (`default_transaction_read_only`):
/// `pg_is_in_recovery()` is false, and no write needs to fail for the
/// background check to find it. Degraded, not dead: the pool is kept and
/// marked read-only, `/health` never fails, and the state clears by itself
/// once the server takes writes again (no heal, generation 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_turned_read_only_is_found_without_a_write_and_kept() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = open(&cluster, 4, on_give_up).await?;
    let health = HealthService::new(live.clone());
    admin(&cluster, |c| c.set_read_only(true)).await?;
    let found = wait_for_status(&live, "the background check's finding", |s| {
        !matches!(s, PoolStatus::Live { generation: 0, .. })
    })
    .await;
    let PoolStatus::ReadOnly {
        generation: 0,
        reason,
    } = found
    else {
        panic!("expected the pool marked read-only, got {found:?}");
    };
    assert!(reason.contains("default_transaction_read_only"), "{reason}");
    let (status, body) = get_health(&health).await?;
    assert_ne!(status, 503, "{body}");
    admin(&cluster, |c| c.set_read_only(false)).await?;
    wait_for_status(&live, "Live again", |s| {
        matches!(s, PoolStatus::Live { generation: 0, .. })
    })
    .await;
    sqlx::query("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    let (status, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{status} {body}");
    assert_eq!(live.generation(), 0, "no heal");
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

/// The probe alone (no background check): a server in recovery (the
/// demoted primary, the proxy still leading to it) is never `pass`; the
/// probe's finding starts the heal, `/health` fails while it waits for a
/// primary, and passes once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_on_a_server_in_recovery_and_starts_the_heal() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    let health = HealthService::new(live.clone());
    let (_, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{body}");
    assert!(body["checks"]["postgres:responseTime"].is_array(), "{body}");
    let new_primary = admin(&cluster, |c| c.switchover()).await?;
    let (status, body) = get_health(&health).await?;
    assert_ne!(body["status"], "pass", "{status} {body}");
    assert!(
        !matches!(live.status(), PoolStatus::Live { generation: 0, .. }),
        "the probe's finding started the heal: {:?}",
        live.status()
    );
    wait_for_status(&live, "the wait for a primary", |s| {
        matches!(s, PoolStatus::AwaitingPrimary { .. })
    })
    .await;
    let (status, body) = get_health(&health).await?;
    assert_eq!(status, 503, "{body}");
    admin(&cluster, move |c| c.repoint(new_primary)).await;
    wait_for_status(&live, "the heal", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    let (status, body) = get_health(&health).await?;
    assert_eq!(status, 200, "{body}");
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

/// A deadline the user sets, and no primary by then (the proxy left on the
/// demoted node): give up (the exit action runs once) with what was found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writable_primary_by_the_deadline_gives_up() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .reopen_timeout(Duration::from_secs(2))
        .on_give_up(on_give_up)
        .open()
        .await?;
    admin(&cluster, |c| c.switchover()).await?;
    // Something uses the pool: its new connection reaches the demoted node.
    let pool = live.pool();
    tokio::spawn(async move { sqlx::query("SELECT 1").execute(&pool).await });
    let gave = tokio::time::timeout(BOUND, gave_up.recv())
        .await?
        .expect("the exit action ran");
    assert!(
        matches!(&gave.reason, GiveUpReason::ReopenFailed(why) if why.contains("no writable primary")),
        "{:?}",
        gave.reason
    );
    assert_eq!(gave.exit_code, 1);
    assert!(live.has_given_up());
    Ok(())
}

/// Transient and other SQLSTATEs, produced for real, never heal or exit;
/// a 25006 from the application's own read-only transaction on a primary
/// that takes writes is checked and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_other_errors_never_heal() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = open(&cluster, 4, on_give_up).await?;
    let pool = live.pool();
    sqlx::query("CREATE TABLE u (id int PRIMARY KEY)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO u VALUES (1)")
        .execute(&pool)
        .await?;

    let mut seen = Vec::new();
    // 23505 unique violation: other.
    let err = sqlx::query("INSERT INTO u VALUES (1)")
        .execute(&pool)
        .await
        .expect_err("duplicate key");
    seen.push(("23505", live.lease().report(&err).await));
    // 57014 statement timeout: transient.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '50ms'")
        .execute(&mut *tx)
        .await?;
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *tx)
        .await
        .expect_err("statement timeout");
    drop(tx);
    seen.push(("57014", live.lease().report(&err).await));
    // 55P03 lock timeout: a second connection holds the row lock.
    let mut holder = pool.begin().await?;
    sqlx::query("SELECT * FROM u WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '50ms'")
        .execute(&mut *tx)
        .await?;
    let err = sqlx::query("SELECT * FROM u WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .expect_err("lock timeout");
    drop(tx);
    holder.rollback().await?;
    seen.push(("55P03", live.lease().report(&err).await));
    // 25006 from the application's own read-only transaction.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let err = sqlx::query("INSERT INTO u VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect_err("read-only transaction");
    drop(tx);
    seen.push(("25006", live.lease().report(&err).await));
    // 57P01: the backend terminated by an administrator.
    let mut held = pool.acquire().await?;
    admin(&cluster, |c| c.terminate_app_backends()).await?;
    let err = sqlx::query("SELECT 1")
        .execute(&mut *held)
        .await
        .expect_err("terminated");
    drop(held);
    seen.push(("57P01/Io", live.lease().report(&err).await));

    for (what, outcome) in &seen {
        match (*what, outcome) {
            ("23505" | "25006", Outcome::Ignored(ErrorClass::Other)) => {}
            ("57014" | "55P03" | "57P01/Io", Outcome::Ignored(ErrorClass::Transient)) => {}
            _ => panic!("{what}: {outcome:?}"),
        }
    }
    // The pool recovers from the terminated backends by itself.
    sqlx::query("INSERT INTO u VALUES (3)")
        .execute(&pool)
        .await?;
    assert_eq!(live.generation(), 0, "no heal");
    assert!(!live.is_healing());
    assert!(gave_up.try_recv().is_err(), "no give-up");
    Ok(())
}

/// A fast or immediate stop and restart of the primary (through the proxy:
/// every connect is reset meanwhile) is transient: the pool's connections
/// die and are replaced; no heal, no exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_is_transient() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = open(&cluster, 4, on_give_up).await?;
    for mode in [StopMode::Fast, StopMode::Immediate] {
        admin(&cluster, move |c| c.stop_node(Node::N1, mode)).await?;
        let err = sqlx::query("INSERT INTO t (v) VALUES ('down')")
            .execute(&live.pool())
            .await
            .expect_err("the primary is down");
        let outcome = live.lease().report(&err).await;
        assert!(
            matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
            "{mode:?}: {err} → {outcome:?}"
        );
        admin(&cluster, |c| c.start_node(Node::N1)).await?;
        tokio::time::timeout(BOUND, async {
            loop {
                let lease = live.lease();
                match sqlx::query("INSERT INTO t (v) VALUES ('up')")
                    .execute(lease.pool())
                    .await
                {
                    Ok(_) => break,
                    Err(err) => {
                        let outcome = lease.report(&err).await;
                        assert!(matches!(outcome, Outcome::Ignored(_)), "{err}: {outcome:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
        .await?;
    }
    assert_eq!(live.generation(), 0, "no heal");
    assert!(gave_up.try_recv().is_err(), "no give-up");
    Ok(())
}

/// A black-holed node (bytes stop flowing, sockets stay open): the probe
/// does not answer within its bound: `warn`, then `fail` from the third in
/// a row; never a heal (nothing is known to be wrong with the server).
/// Bytes flowing again: `pass`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_node_warns_then_fails_and_never_heals() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    let health = HealthService::new(live.clone()).timeout(Duration::from_millis(400));
    let (_, body) = get_health(&health).await?;
    assert_eq!(body["status"], "pass", "{body}");
    admin(&cluster, |c| c.black_hole(true)).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        let (_, body) = get_health(&health).await?;
        answers.push(body["status"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(answers, ["warn", "warn", "fail", "fail"]);
    assert_eq!(live.generation(), 0);
    assert!(
        !live.is_healing(),
        "a black hole is not a proven dead server"
    );
    admin(&cluster, |c| c.black_hole(false)).await;
    let passed = tokio::time::timeout(BOUND, async {
        loop {
            let (_, body) = get_health(&health).await.expect("health answers");
            if body["status"] == "pass" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(passed.is_ok(), "pass again once bytes flow");
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

/// A LivePool opened while the proxy still points at the demoted node does
/// not pin itself there (a plain pool does: it connects and every write
/// fails with 25006): `open` waits for a writable primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_opened_during_the_switchover_waits_for_the_primary() -> TestResult {
    let cluster = cluster();
    let new_primary = admin(&cluster, |c| c.switchover()).await?;
    // The plain pool: connects, and is pinned.
    let plain = PgPoolOptions::new().connect(&cluster.url()).await?;
    let err = sqlx::query("CREATE TABLE p (id int)")
        .execute(&plain)
        .await
        .expect_err("the demoted node refuses writes");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("25006")
    );
    plain.close().await;

    let url = cluster.url();
    let opening = tokio::spawn(async move {
        LivePool::postgres(url.parse()?)
            .reopen_timeout(BOUND)
            .open()
            .await
    });
    // Not open while only the demoted node answers: wait for its attempts
    // to reach the proxy, then check it is still waiting.
    let accepted = cluster.accepted(new_primary.other());
    tokio::time::timeout(BOUND, async {
        while cluster.accepted(new_primary.other()) < accepted + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    assert!(
        !opening.is_finished(),
        "open() waits for a writable primary"
    );
    admin(&cluster, move |c| c.repoint(new_primary)).await;
    let live = tokio::time::timeout(BOUND, opening).await???;
    sqlx::query("CREATE TABLE p (id int)")
        .execute(&live.pool())
        .await?;
    assert_eq!(live.generation(), 0);
    Ok(())
}

/// A pool for a read replica (`Expect::Any`) connects to a standby and
/// never treats read-only as fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_pool_never_treats_read_only_as_fatal() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.direct_url(Node::N2).parse()?)
        .expect(Expect::Any)
        .on_give_up(on_give_up)
        .open()
        .await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&live.pool())
        .await?;
    assert!(in_recovery, "connected to the standby");
    let err = sqlx::query("CREATE TABLE r (id int)")
        .execute(&live.pool())
        .await
        .expect_err("a standby refuses writes");
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
