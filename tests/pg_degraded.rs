//! Degraded, not dead: a Postgres primary that refuses writes in place
//! (`default_transaction_read_only` on, `pg_is_in_recovery()` false) keeps
//! its pool, serves reads, answers writes 503, and comes back by itself;
//! only the server's state counts (a session's own settings never trigger
//! anything); an idle session the server ends is transient; a fleet's waits
//! and the reports of a busy pool stay bounded. Real primary, standby and
//! proxy (`tests/pg_cluster`); each test says what it shows.
#![cfg(all(feature = "postgres", feature = "axum"))]

mod pg_cluster;
mod pg_support;

use pg_support::{
    BOUND, TestResult, admin, cluster, create_table, exits, get_health, takes_writes,
    wait_for_status,
};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use pg_cluster::Node;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, Postgres};
use tower::ServiceExt;
use tower_db_liveness::{
    DbError, DbLivenessLayer, ErrorClass, GiveUpReason, HealthService, LivePool, Outcome,
    PoolStatus,
};

/// Every status the policy publishes, in order, from now on.
fn record_statuses(live: &LivePool<Postgres>) -> Arc<Mutex<Vec<PoolStatus>>> {
    let seen = Arc::new(Mutex::new(vec![live.status()]));
    let mut status = live.subscribe();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(s) = status.changed().await {
            log.lock().expect("status log").push(s);
        }
    });
    seen
}

fn never_healed(seen: &Mutex<Vec<PoolStatus>>) -> Result<(), String> {
    let seen = seen.lock().expect("status log");
    match seen.iter().find(|s| {
        !matches!(
            s,
            PoolStatus::Live { generation: 0, .. } | PoolStatus::ReadOnly { generation: 0, .. }
        )
    }) {
        Some(s) => Err(format!("a heal or give-up: {s:?} in {seen:?}")),
        None => Ok(()),
    }
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
}

async fn count(live: &LivePool<Postgres>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&live.pool())
        .await
}

async fn add(State(live): State<LivePool<Postgres>>) -> Result<&'static str, DbError> {
    sqlx::query("INSERT INTO t (v) VALUES ('layer')")
        .execute(&live.pool())
        .await?;
    Ok("added")
}

async fn list(State(live): State<LivePool<Postgres>>) -> Result<String, DbError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&live.pool())
        .await?;
    Ok(n.to_string())
}

fn app(live: &LivePool<Postgres>) -> Router {
    Router::new()
        .route("/notes", post(add).get(list))
        .route("/count", get(list))
        .layer(DbLivenessLayer::new(live.clone()))
        .with_state(live.clone())
}

/// `(status, Retry-After)` of one request through the layer.
async fn call(
    app: &Router,
    method: &str,
) -> Result<(u16, Option<String>), Box<dyn std::error::Error + Send + Sync>> {
    let request = http::Request::builder()
        .method(method)
        .uri("/notes")
        .body(axum::body::Body::empty())?;
    let response = app.clone().oneshot(request).await?;
    let retry = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((response.status().as_u16(), retry))
}

// ---------------------------------------------------------------------------
// Read-only in place for a while: reads served every time, writes 25006 (503
// with Retry-After through the layer), status ReadOnly, no heal, no exit;
// writes succeed again after the reset and the status is Live, generation 0.
// The old code healed: it closed the pool (reads failed too) and waited for
// a writable server, then swapped in generation 1.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_in_place_serves_reads_refuses_writes_and_recovers() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(PgPoolOptions::new().max_connections(4))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let app = app(&live);
    let seen = record_statuses(&live);
    assert_eq!(call(&app, "POST").await?.0, 200);

    admin(&cluster, |c| c.set_read_only(true)).await?;
    assert!(!takes_writes(&cluster, Node::N1).await?);
    assert!(
        !cluster.in_recovery(Node::N1)?,
        "read-only in place, not a standby"
    );
    // A write's 25006, confirmed: transient, and the pool is marked read-only.
    let lease = live.lease();
    let err = sqlx::query("INSERT INTO t (v) VALUES ('refused')")
        .execute(lease.pool())
        .await
        .expect_err("a read-only primary refuses writes");
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
    let outcome = tokio::time::timeout(BOUND, lease.report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
        "{outcome:?}"
    );
    assert!(
        matches!(live.status(), PoolStatus::ReadOnly { generation: 0, .. }),
        "{:?}",
        live.status()
    );
    // A while in that state, through the pool and through the layer.
    let rows = count(&live).await?;
    for _ in 0..50 {
        assert_eq!(count(&live).await?, rows, "a read is served");
        let (status, _) = call(&app, "GET").await?;
        assert_eq!(status, 200, "a read through the layer");
        let (status, retry) = call(&app, "POST").await?;
        assert_eq!(status, 503, "a write through the layer");
        assert!(retry.is_some(), "503 with Retry-After");
        let err = sqlx::query("INSERT INTO t (v) VALUES ('refused')")
            .execute(&live.pool())
            .await
            .expect_err("still read-only");
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
        let outcome = live.lease().report(&err).await;
        assert!(
            matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
            "{outcome:?}"
        );
    }
    never_healed(&seen)?;
    assert_eq!(live.generation(), 0);

    admin(&cluster, |c| c.set_read_only(false)).await?;
    let reset = Instant::now();
    wait_for_status(&live, "Live again once the server takes writes", |s| {
        matches!(s, PoolStatus::Live { generation: 0, .. })
    })
    .await;
    eprintln!("read-only cleared {:?} after the reset", reset.elapsed());
    sqlx::query("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    assert_eq!(call(&app, "POST").await?.0, 200);
    never_healed(&seen)?;
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err(), "no exit");
    Ok(())
}

// ---------------------------------------------------------------------------
// The probe alone (no background check): a read-only primary is never
// `fail`; the probe marks the pool read-only and clears it once the server
// takes writes again. The old probe answered 503 and started a heal.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_a_read_only_primary_and_follows_it() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    let seen = record_statuses(&live);
    let health = HealthService::new(live.clone());
    admin(&cluster, |c| c.set_read_only(true)).await?;
    let (status, body) = get_health(&health).await?;
    assert_ne!(status, 503, "{body}");
    assert_ne!(body["status"], "fail", "{body}");
    assert!(
        matches!(live.status(), PoolStatus::ReadOnly { generation: 0, .. }),
        "the probe marked it: {:?}",
        live.status()
    );
    admin(&cluster, |c| c.set_read_only(false)).await?;
    let (status, body) = get_health(&health).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(live.status(), PoolStatus::Live { generation: 0, .. }),
        "the probe cleared it: {:?}",
        live.status()
    );
    never_healed(&seen)?;
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// A new connection to a read-only primary (the gate): accepted, reads work,
// the pool is marked read-only. The old gate refused it and healed.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_accepts_a_read_only_primary_and_marks_it() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let seen = record_statuses(&live);
    admin(&cluster, |c| c.set_read_only(true)).await?;
    // The pool's connections die: the next read opens a new one, through the gate.
    admin(&cluster, |c| c.terminate_app_backends()).await?;
    assert_eq!(count(&live).await?, 0, "a read on a new connection");
    assert!(
        matches!(live.status(), PoolStatus::ReadOnly { generation: 0, .. }),
        "{:?}",
        live.status()
    );
    admin(&cluster, |c| c.set_read_only(false)).await?;
    admin(&cluster, |c| c.terminate_app_backends()).await?;
    sqlx::query("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    assert!(
        matches!(live.status(), PoolStatus::Live { generation: 0, .. }),
        "the gate cleared it: {:?}",
        live.status()
    );
    never_healed(&seen)?;
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// Only the server's state counts. A handler's `SET SESSION CHARACTERISTICS
// AS TRANSACTION READ ONLY` stays on its pooled connection: the next write
// on it gets 25006, the confirmation runs on that same idle connection, and
// the old check (`current_setting('transaction_read_only')`) read the
// session's setting: a heal of a healthy primary. Meanwhile `ALTER SYSTEM`
// + reload IS seen by that existing session.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_own_read_only_setting_never_heals() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(PgPoolOptions::new().max_connections(1))
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let seen = record_statuses(&live);
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&live.pool())
        .await?;
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .execute(&live.pool())
        .await?;
    let lease = live.lease();
    let err = sqlx::query("INSERT INTO t (v) VALUES ('x')")
        .execute(lease.pool())
        .await
        .expect_err("the session is read-only");
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
    let outcome = tokio::time::timeout(BOUND, lease.report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
        "{outcome:?}"
    );
    // The probe reads the same session.
    let health = HealthService::new(live.clone());
    let (status, body) = get_health(&health).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(live.status(), PoolStatus::Live { generation: 0, .. }),
        "{:?}",
        live.status()
    );
    // Still the same session: the pool of one never replaced it.
    let same: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&live.pool())
        .await?;
    assert_eq!(same, pid);
    // The server's state reaches that existing session.
    admin(&cluster, |c| c.set_read_only(true)).await?;
    wait_for_status(
        &live,
        "the server's read-only state, seen by the old session",
        |s| matches!(s, PoolStatus::ReadOnly { generation: 0, .. }),
    )
    .await;
    let same: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&live.pool())
        .await?;
    assert_eq!(same, pid, "seen on the existing session");
    admin(&cluster, |c| c.set_read_only(false)).await?;
    wait_for_status(&live, "Live again", |s| {
        matches!(s, PoolStatus::Live { generation: 0, .. })
    })
    .await;
    never_healed(&seen)?;
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// `ALTER ROLE app SET idle_session_timeout = '1s'`: the server ends every
// idle session of the pool (FATAL 57P05). Writes succeed (sqlx's ping
// replaces a dead connection); the probe, which takes an idle connection
// without sqlx's ping, must never answer 503. The old probe got 57P05
// (classified `Other`: a dead database, 503).
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_timeout_never_fails_the_probe() -> TestResult {
    let cluster = cluster();
    let mut su = PgConnection::connect(&cluster.superuser_url(Node::N1)).await?;
    sqlx::query("ALTER ROLE app SET idle_session_timeout = '1s'")
        .execute(&mut su)
        .await?;
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(PgPoolOptions::new().max_connections(2))
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let health = HealthService::new(live.clone());
    let mut answers = Vec::new();
    for round in 0..4 {
        // The server ends the pool's idle sessions: wait for it to have
        // (no app backend left), the signal that they are dead.
        tokio::time::timeout(BOUND, async {
            while admin(&cluster, |c| c.app_backends(Node::N1)).await? > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, pg_cluster::ClusterError>(())
        })
        .await??;
        let (status, body) = get_health(&health).await?;
        answers.push(format!("{round}: {status} {}", body["status"]));
        assert_ne!(status, 503, "round {round}: {body}");
        sqlx::query("INSERT INTO t (v) VALUES ('w')")
            .execute(&live.pool())
            .await?;
    }
    eprintln!("health after the server ended idle sessions: {answers:?}");
    sqlx::query("ALTER ROLE app RESET idle_session_timeout")
        .execute(&mut su)
        .await?;
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// 300 reports of a 25006 from a pool of 4 whose connections are all busy:
// one confirmation, on one direct connection (counted at the proxy, and
// the app's backends on the server sampled meanwhile). The old code
// spawned a confirmation per report, each opening its own direct
// connection: up to 300 connections against max_connections = 100.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_reports_open_one_connection() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .pool_options(PgPoolOptions::new().max_connections(4))
        .check_interval(None)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    // Four transactions of the application's own, read-only, hold the pool.
    let mut held = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..4 {
        let mut tx = live.pool().begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        let err = sqlx::query("INSERT INTO t (v) VALUES ('x')")
            .execute(&mut *tx)
            .await
            .expect_err("read-only transaction");
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
        errors.push(err);
        held.push(tx);
    }
    assert_eq!(live.pool().num_idle(), 0, "every connection is busy");
    // Sample the app's backends on the server while the reports run.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (cluster, sampling) = (Arc::clone(&cluster), Arc::clone(&sampling));
        tokio::task::spawn_blocking(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(cluster.app_backends(Node::N1).unwrap_or(0));
            }
            peak
        })
    };
    let accepted = cluster.accepted(Node::N1);
    let lease = live.lease();
    let reports: Vec<_> = (0..300).map(|i| lease.report(&errors[i % 4])).collect();
    for report in reports {
        let outcome = tokio::time::timeout(BOUND, report).await?;
        assert!(
            matches!(outcome, Outcome::Ignored(ErrorClass::Other)),
            "{outcome:?}"
        );
    }
    let opened = cluster.accepted(Node::N1) - accepted;
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.await?;
    eprintln!("300 reports: {opened} connections opened, peak app backends {peak} (pool of 4)");
    assert!(opened <= 2, "{opened} connections opened for 300 reports");
    assert!(peak <= 4 + 2, "peak app backends {peak}");
    drop(held);
    assert_eq!(live.generation(), 0);
    assert!(gave_up.try_recv().is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// A long wait for a primary (the endpoint left on the demoted node for
// several seconds, far past the 0.5 s back-off cap) with the default reopen
// timeout: no exit, AwaitingPrimary meanwhile, healed after the repoint.
// Prints the time from the repoint to the heal's first attempt on the new
// primary and to the heal.
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_for_a_primary_never_exits_by_default() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let live = LivePool::postgres(cluster.url().parse()?)
        .on_give_up(on_give_up)
        .open()
        .await?;
    create_table(&live).await?;
    let new_primary = admin(&cluster, |c| c.switchover()).await?;
    let demoted = new_primary.other();
    let pool = live.pool();
    tokio::spawn(async move {
        sqlx::query("INSERT INTO t (v) VALUES ('x')")
            .execute(&pool)
            .await
    });
    let waiting = Instant::now();
    // Attempts at the demoted node, until the wait has lasted 6 s.
    let mut status = live.subscribe();
    let mut attempts = 0;
    while waiting.elapsed() < Duration::from_secs(6) {
        let next = tokio::time::timeout(BOUND, status.changed())
            .await?
            .ok_or("the LivePool is gone")?;
        match next {
            PoolStatus::AwaitingPrimary { attempts: n, .. } => attempts = n,
            PoolStatus::Healing { .. } => {}
            other => panic!("while the endpoint leads to the demoted node: {other:?}"),
        }
    }
    assert!(gave_up.try_recv().is_err(), "no exit while waiting");
    let at_demoted = cluster.accepted(demoted);
    let on_new = cluster.accepted(new_primary);
    admin(&cluster, move |c| c.repoint(new_primary)).await;
    let repointed = Instant::now();
    let first = tokio::time::timeout(BOUND, async {
        while cluster.accepted(new_primary) == on_new {
            tokio::task::yield_now().await;
        }
        repointed.elapsed()
    })
    .await?;
    wait_for_status(&live, "the heal", |s| {
        matches!(s, PoolStatus::Live { generation: 1, .. })
    })
    .await;
    eprintln!(
        "waited {:?} ({attempts} attempts, {at_demoted} connections at the demoted node); \
         first attempt {first:?} after the repoint, healed {:?} after it",
        repointed - waiting,
        repointed.elapsed()
    );
    sqlx::query("INSERT INTO t (v) VALUES ('after')")
        .execute(&live.pool())
        .await?;
    assert!(gave_up.try_recv().is_err(), "no exit");
    Ok(())
}

// ---------------------------------------------------------------------------
// A deadline the user sets is stretched per instance: eight pools that lose
// their primary at the same moment, each with a 2 s reopen timeout, do not
// give up in the same instant. The old code gave up at the deadline for
// every one of them (within one attempt's time of each other).
// ---------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_a_deadline_gives_up_spread_out() -> TestResult {
    let cluster = cluster();
    let (on_give_up, mut gave_up) = exits();
    let on_give_up = Arc::new(on_give_up);
    let mut fleet = Vec::new();
    for _ in 0..8 {
        let on_give_up = Arc::clone(&on_give_up);
        fleet.push(
            LivePool::postgres(cluster.url().parse()?)
                .reopen_timeout(Duration::from_secs(2))
                .check_interval(None)
                .on_give_up(move |g| on_give_up(g))
                .open()
                .await?,
        );
    }
    create_table(&fleet[0]).await?;
    admin(&cluster, |c| c.switchover()).await?;
    // Every instance finds the demoted node at once (its probe, here).
    for live in &fleet {
        let health = HealthService::new(live.clone());
        let _ = get_health(&health).await?;
    }
    let mut times = Vec::new();
    for _ in 0..fleet.len() {
        let gave = tokio::time::timeout(BOUND, gave_up.recv())
            .await?
            .ok_or("the exit action ran")?;
        assert!(
            matches!(&gave.reason, GiveUpReason::ReopenFailed(why) if why.contains("no writable primary")),
            "{:?}",
            gave.reason
        );
        times.push(Instant::now());
    }
    let spread = times[times.len() - 1] - times[0];
    eprintln!("8 instances with a 2 s deadline gave up over {spread:?}");
    assert!(
        spread > Duration::from_millis(100),
        "8 instances gave up within {spread:?} of each other"
    );
    Ok(())
}
