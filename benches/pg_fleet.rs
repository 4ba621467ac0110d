//! A fleet through one switchover: N service instances, each with its own
//! `LivePool<Postgres>` (in one process, all on one server), through the
//! realistic switchover of `benches/pg_switchover.rs` (the primary stopped
//! fast, the standby promoted, the old primary restarted as its standby, the
//! proxy left on the demoted node for 8 s, then repointed), 20 s observed
//! after the repoint.
//!
//! Each instance has one writer (`INSERT`, 20 ms pause) and a pool of
//! `PG_FLEET_POOL` connections (default 2), so the fleet holds at most
//! N x pool connections: keep that within the server's slots (the harness
//! runs `max_connections = 100`), or sqlx retries 53300 inside `acquire` and
//! a writer stalls for its `acquire_timeout`. Every instance keeps the
//! crate's defaults (no deadline on the wait for a primary, jittered
//! back-off); `on_give_up` records a give-up instead of exiting, since one
//! process holds the whole fleet.
//!
//! Measured: for each instance, the end of its first clean second after the
//! repoint (a 1 s window with a successful write, no failed write and no
//! write over 1 s; its end, so never under 1 s, as `fleet-failover.md`
//! reads it); the fleet's all-clean time is the largest. Also the writes
//! that failed after the repoint, instances that never got clean, give-ups.
//!
//! `PG_FLEET_N` (default 40), `PG_FLEET_POOL` (2), `PG_FLEET_ROUNDS` (1).
//! `cargo bench --bench pg_fleet --features postgres`.

#[path = "../tests/pg_cluster/mod.rs"]
mod pg_cluster;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;
#[path = "support/timeline.rs"]
mod timeline;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pg_cluster::Cluster;
use pg_support::admin;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use timeline::Timeline;
use tower_db_liveness::{GaveUp, LivePool};

const PAUSE: Duration = Duration::from_millis(20);
const STEADY: Duration = Duration::from_secs(3);
const PINNED: Duration = Duration::from_secs(8);
const OBSERVE: Duration = Duration::from_secs(20);
const DRAIN: Duration = Duration::from_secs(5);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

struct Round {
    /// Per instance: the end of its first clean second after the repoint.
    clean: Vec<Option<Duration>>,
    failed_after_repoint: usize,
    gave_up: usize,
    healed: usize,
}

async fn round(n: usize, pool: u32) -> Round {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("start")
            .expect("start a PostgreSQL primary + standby (tests/pg_cluster)"),
    );
    let options: PgConnectOptions = cluster.url().parse().expect("url");
    let gave_up = Arc::new(AtomicUsize::new(0));
    let mut fleet: Vec<LivePool<Postgres>> = Vec::with_capacity(n);
    for _ in 0..n {
        let gave_up = Arc::clone(&gave_up);
        let live = LivePool::postgres(options.clone())
            .pool_options(PgPoolOptions::new().max_connections(pool))
            .on_give_up(move |_: &GaveUp| {
                gave_up.fetch_add(1, Ordering::SeqCst);
            })
            .open()
            .await
            .expect("open an instance's LivePool");
        fleet.push(live);
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v text NOT NULL)")
        .execute(&fleet[0].pool())
        .await
        .expect("create table");

    // One timeline per instance: each measures its own first clean second.
    let timelines: Vec<Arc<Timeline>> = (0..n).map(|_| Arc::new(Timeline::new(1))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = fleet
        .iter()
        .zip(&timelines)
        .enumerate()
        .map(|(instance, (live, timeline))| {
            let (live, timeline, stop) = (live.clone(), Arc::clone(timeline), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let start = timeline.begin(0);
                    let lease = live.lease();
                    let failed = match sqlx::query("INSERT INTO t (v) VALUES ($1)")
                        .bind(format!("i{instance}-{k}"))
                        .execute(lease.pool())
                        .await
                    {
                        Ok(_) => None,
                        Err(err) => {
                            let kind = timeline::kind_of(&err);
                            // As the layer: decided now, not waited for.
                            drop(lease.report(&err));
                            Some(kind)
                        }
                    };
                    timeline.end(0, start, failed);
                    tokio::time::sleep(PAUSE).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(STEADY).await;
    let new_primary = admin(&cluster, |c| c.switchover())
        .await
        .expect("switchover");
    tokio::time::sleep(PINNED).await;
    cluster.repoint(new_primary);
    let repoints: Vec<Duration> = timelines.iter().map(|t| t.now()).collect();
    tokio::time::sleep(OBSERVE).await;
    let untils: Vec<Duration> = timelines.iter().map(|t| t.now()).collect();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(DRAIN, async {
        for writer in writers {
            let _ = writer.await;
        }
    })
    .await;
    let mut clean = Vec::with_capacity(n);
    let mut failed_after_repoint = 0;
    for ((timeline, repoint), until) in timelines.iter().zip(&repoints).zip(&untils) {
        let done = timeline.finish(*until);
        failed_after_repoint += timeline::failed_between(&done, *repoint, Duration::MAX);
        clean.push(
            timeline::first_clean_second(&done, *repoint, *until)
                .map(|t| t + Duration::from_secs(1)),
        );
    }
    let healed = fleet.iter().filter(|live| live.generation() >= 1).count();
    for live in &fleet {
        live.close().await;
    }
    drop(fleet);
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    Round {
        clean,
        failed_after_repoint,
        gave_up: gave_up.load(Ordering::SeqCst),
        healed,
    }
}

fn main() {
    let n = env("PG_FLEET_N", 40);
    let pool = env("PG_FLEET_POOL", 2) as u32;
    let rounds = env("PG_FLEET_ROUNDS", 1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "fleet: {n} LivePool<Postgres> instances, pool {pool} each ({} connections at most), one writer each",
        n * pool as usize
    );
    for r in 1..=rounds {
        let round = runtime.block_on(round(n, pool));
        let mut clean: Vec<Duration> = round.clean.iter().flatten().copied().collect();
        clean.sort();
        let never = round.clean.iter().filter(|c| c.is_none()).count();
        let all = if never == 0 {
            clean.last().map(|d| format!("{:.2} s", d.as_secs_f64()))
        } else {
            None
        };
        let p50 = clean.get(clean.len() / 2).map(|d| d.as_secs_f64());
        println!(
            "round {r}: repoint -> all {n} clean: {}; p50 {}; never clean: {never}; healed: {}; \
             gave up: {}; writes failed after the repoint: {}",
            all.unwrap_or_else(|| "never".into()),
            p50.map_or("-".into(), |s| format!("{s:.2} s")),
            round.healed,
            round.gave_up,
            round.failed_after_repoint
        );
    }
}
