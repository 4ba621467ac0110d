//! The switchover benchmark, the same for every server database: the
//! bench that includes it (`pg_switchover`, `my_switchover`) says which in
//! its `db` module (types, SQL, the cluster harness, the crate's builder,
//! the guard's check) and documents what is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tower_db_liveness::{GaveUp, LivePool, PoolStatus};

use crate::db::{self, Cluster};
use crate::timeline::{self, Done, Timeline};

const WRITERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(10);
const WARM_CONNECTIONS: usize = 10;
/// Writes before the switchover.
const STEADY: Duration = Duration::from_secs(3);
/// The proxy stays on the demoted node this long after the switchover.
const PINNED: Duration = Duration::from_secs(8);
/// Observed after the repoint.
const OBSERVE: Duration = Duration::from_secs(20);
/// How long writes still in flight at the end may take to finish.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Crate,
    Plain,
    Guard,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Crate, Variant::Plain, Variant::Guard];

    fn name(self) -> &'static str {
        match self {
            Variant::Crate => db::LABELS[0],
            Variant::Plain => db::LABELS[1],
            Variant::Guard => db::LABELS[2],
        }
    }

    fn short(self) -> &'static str {
        match self {
            Variant::Crate => "crate",
            Variant::Plain => "plain",
            Variant::Guard => "guard",
        }
    }
}

/// Where the writers take their pool from.
#[derive(Clone)]
enum Target {
    Live(LivePool<db::Db>),
    Pool(db::Pool),
}

struct Run {
    variant: Variant,
    /// From the repoint to the start of the first clean second.
    clean: Option<Duration>,
    failed_pinned: usize,
    failed_after_repoint: usize,
    ok_after_repoint: usize,
    failed_after_clean: Option<usize>,
    max_latency_after_repoint: Duration,
    /// Writes over 1 s that ended after the repoint: how many, the earliest
    /// start and the latest end, relative to the repoint (negative: before).
    slow: (usize, f64, f64),
    /// From the repoint to the first successful write that started after it.
    first_ok: Option<Duration>,
    kinds_after_repoint: Vec<(String, usize)>,
    /// The crate: from the repoint to generation 1 in service.
    healed: Option<Duration>,
    heals: u64,
    gave_up: bool,
    switchover_took: Duration,
    proxy_accepts_pinned: u64,
}

fn rounds() -> usize {
    std::env::var(format!("{}_ROUNDS", db::ENV))
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

async fn admin<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    op: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || op(&cluster))
        .await
        .expect("the cluster operation panicked")
}

async fn open(
    variant: Variant,
    options: db::ConnectOptions,
    gave_up: Arc<AtomicBool>,
) -> sqlx::Result<Target> {
    Ok(match variant {
        Variant::Crate => Target::Live(
            db::live(options)
                .on_give_up(move |_: &GaveUp| gave_up.store(true, Ordering::SeqCst))
                .open()
                .await?,
        ),
        Variant::Plain => Target::Pool(db::PoolOptions::new().connect_with(options).await?),
        Variant::Guard => Target::Pool(db::guard_options().connect_with(options).await?),
    })
}

impl Target {
    fn pool(&self) -> db::Pool {
        match self {
            Target::Live(live) => live.pool(),
            Target::Pool(pool) => pool.clone(),
        }
    }

    async fn close(&self) {
        match self {
            Target::Live(live) => live.close().await,
            Target::Pool(pool) => pool.close().await,
        }
    }
}

/// Opens `n` connections at once and returns them to the pool.
async fn warm(pool: &db::Pool, n: usize) -> sqlx::Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    drop(held);
    Ok(())
}

fn spawn_writers(
    target: &Target,
    timeline: &Arc<Timeline>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|worker| {
            let (target, timeline, stop) = (target.clone(), Arc::clone(timeline), Arc::clone(stop));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!("w{worker}-{n}");
                    let start = timeline.begin(worker);
                    let failed = match &target {
                        Target::Live(live) => {
                            let lease = live.lease();
                            let wrote = sqlx::query(db::INSERT)
                                .bind(&body)
                                .execute(lease.pool())
                                .await;
                            match wrote {
                                Ok(_) => None,
                                Err(err) => {
                                    let kind = timeline::kind_of(&err);
                                    // As the layer: the policy decides now,
                                    // the write does not wait for the heal.
                                    tokio::spawn(async move { lease.report(&err).await });
                                    Some(kind)
                                }
                            }
                        }
                        Target::Pool(pool) => sqlx::query(db::INSERT)
                            .bind(&body)
                            .execute(pool)
                            .await
                            .err()
                            .map(|err| timeline::kind_of(&err)),
                    };
                    timeline.end(worker, start, failed);
                    tokio::time::sleep(PAUSE).await;
                }
            })
        })
        .collect()
}

async fn run(variant: Variant) -> Run {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("start")
            .expect(db::STARTING),
    );
    let options: db::ConnectOptions = cluster.url().parse().expect("url");
    let gave_up = Arc::new(AtomicBool::new(false));
    let target = open(variant, options, Arc::clone(&gave_up))
        .await
        .expect("open the pool");
    sqlx::query(db::CREATE)
        .execute(&target.pool())
        .await
        .expect("create table");
    warm(&target.pool(), WARM_CONNECTIONS)
        .await
        .expect("warm the pool");

    // The crate: when generation 1 went into service.
    let healed_at = match &target {
        Target::Live(live) => {
            let mut status = live.subscribe();
            Some(tokio::spawn(async move {
                status
                    .wait_for(
                        |s| matches!(s, PoolStatus::Live { generation, .. } if *generation >= 1),
                    )
                    .await
                    .map(|_| Instant::now())
            }))
        }
        Target::Pool(_) => None,
    };

    let timeline = Arc::new(Timeline::new(WRITERS));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&target, &timeline, &stop);
    tokio::time::sleep(STEADY).await;

    let switch_start = timeline.now();
    let new_primary = admin(&cluster, |c| c.switchover())
        .await
        .expect("switchover");
    let switch_end = timeline.now();
    let accepts_before = db::NODES
        .iter()
        .map(|node| cluster.accepted(*node))
        .sum::<u64>();
    tokio::time::sleep(PINNED).await;
    let accepts_pinned = db::NODES
        .iter()
        .map(|node| cluster.accepted(*node))
        .sum::<u64>()
        - accepts_before;
    cluster.repoint(new_primary);
    let repoint = timeline.now();
    let repointed = Instant::now();
    tokio::time::sleep(OBSERVE).await;
    let until = timeline.now();
    stop.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(DRAIN, async {
        for writer in writers {
            let _ = writer.await;
        }
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "  ({}: writes still in flight {DRAIN:?} after the end)",
            variant.short()
        );
    }
    let done: Vec<Done> = timeline.finish(until);

    let clean = timeline::first_clean_second(&done, repoint, until);
    let healed = match healed_at {
        Some(task) => {
            task.abort();
            match task.await {
                Ok(Some(at)) => Some(at.saturating_duration_since(repointed)),
                _ => None,
            }
        }
        None => None,
    };
    let heals = match &target {
        Target::Live(live) => live.generation(),
        Target::Pool(_) => 0,
    };
    target.close().await;
    drop(target);
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;

    Run {
        variant,
        clean,
        failed_pinned: timeline::failed_between(&done, switch_start, repoint),
        failed_after_repoint: timeline::failed_between(&done, repoint, Duration::MAX),
        ok_after_repoint: timeline::ok_between(&done, repoint, Duration::MAX),
        failed_after_clean: clean
            .map(|c| timeline::failed_between(&done, repoint + c, Duration::MAX)),
        max_latency_after_repoint: timeline::max_latency_after(&done, repoint),
        slow: {
            let slow: Vec<&Done> = done
                .iter()
                .filter(|d| d.end >= repoint && d.latency() > timeline::SLOW)
                .collect();
            let rel = |d: Duration| d.as_secs_f64() - repoint.as_secs_f64();
            (
                slow.len(),
                slow.iter()
                    .map(|d| rel(d.start))
                    .fold(f64::INFINITY, f64::min),
                slow.iter()
                    .map(|d| rel(d.end))
                    .fold(f64::NEG_INFINITY, f64::max),
            )
        },
        first_ok: done
            .iter()
            .filter(|d| d.ok() && d.start >= repoint)
            .map(|d| d.end - repoint)
            .min(),
        kinds_after_repoint: timeline::failures_by_kind(&done, repoint),
        healed,
        heals,
        gave_up: gave_up.load(Ordering::SeqCst),
        switchover_took: switch_end - switch_start,
        proxy_accepts_pinned: accepts_pinned,
    }
}

fn print_run(round: usize, run: &Run) {
    let kinds: Vec<String> = run
        .kinds_after_repoint
        .iter()
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect();
    println!(
        "round {round} {:<5} | clean second {:>7} after the repoint | failed: pinned {:>5}, \
         after repoint {:>5} (ok {:>5}), after clean {:>5} | max latency after repoint {:>6.0} ms{} | \
         first ok write started after the repoint {} | \
         switchover {:.2} s, proxy accepts while pinned {} | {}{}{}",
        run.variant.short(),
        timeline::secs(run.clean),
        run.failed_pinned,
        run.failed_after_repoint,
        run.ok_after_repoint,
        run.failed_after_clean
            .map_or("-".to_string(), |n| n.to_string()),
        run.max_latency_after_repoint.as_secs_f64() * 1e3,
        if run.slow.0 > 0 {
            format!(
                " ({} writes over 1 s, started from {:+.2} s, ended by {:+.2} s)",
                run.slow.0, run.slow.1, run.slow.2
            )
        } else {
            String::new()
        },
        timeline::secs(run.first_ok),
        run.switchover_took.as_secs_f64(),
        run.proxy_accepts_pinned,
        if kinds.is_empty() {
            "no failure after the repoint".to_string()
        } else {
            format!("after the repoint: {}", kinds.join(", "))
        },
        match (run.variant, run.healed) {
            (Variant::Crate, Some(h)) => format!(
                " | heals {}, generation 1 in service {:.2} s after the repoint",
                run.heals,
                h.as_secs_f64()
            ),
            (Variant::Crate, None) => format!(" | heals {}, generation 1 never", run.heals),
            _ => String::new(),
        },
        if run.gave_up { " | GAVE UP" } else { "" },
    );
}

pub fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects nothing here.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let rounds = rounds();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{}: {rounds} rounds x {} variants; {WRITERS} writers, {PAUSE:?} pause; \
         pinned {PINNED:?}, observed {OBSERVE:?} after the repoint",
        db::NAME,
        Variant::ALL.len()
    );
    let only = std::env::var(format!("{}_VARIANTS", db::ENV)).unwrap_or_default();
    let selected = |v: Variant| only.is_empty() || only.split(',').any(|name| name == v.short());
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..rounds {
        // Rotate the order, so no variant always runs first.
        for i in 0..Variant::ALL.len() {
            let variant = Variant::ALL[(round + i) % Variant::ALL.len()];
            if !selected(variant) {
                continue;
            }
            let run = rt.block_on(run(variant));
            print_run(round + 1, &run);
            runs.push(run);
        }
    }

    println!();
    println!(
        "| variant | repoint → first clean second, median / max | writes failed after the repoint, median / max | failed after the clean second began, max | writes failed while pinned, median | max write latency after the repoint |"
    );
    println!("|---|---|---|---|---|---|");
    for variant in Variant::ALL {
        let of: Vec<&Run> = runs.iter().filter(|r| r.variant == variant).collect();
        if of.is_empty() {
            continue;
        }
        let (clean_med, clean_max) =
            timeline::median_max(&of.iter().map(|r| r.clean).collect::<Vec<_>>());
        let (failed_med, failed_max) = timeline::median_max_count(
            &of.iter()
                .map(|r| r.failed_after_repoint)
                .collect::<Vec<_>>(),
        );
        let after_clean = if of.iter().all(|r| r.failed_after_clean.is_some()) {
            of.iter()
                .filter_map(|r| r.failed_after_clean)
                .max()
                .unwrap_or(0)
                .to_string()
        } else {
            "never clean".to_string()
        };
        let (pinned_med, _) =
            timeline::median_max_count(&of.iter().map(|r| r.failed_pinned).collect::<Vec<_>>());
        let latency = of
            .iter()
            .map(|r| r.max_latency_after_repoint)
            .max()
            .unwrap_or_default();
        println!(
            "| {} | {} / {} | {failed_med} / {failed_max} | {after_clean} | {pinned_med} | {:.0} ms |",
            variant.name(),
            timeline::secs(clean_med),
            timeline::secs(clean_max),
            latency.as_secs_f64() * 1e3,
        );
    }
}
