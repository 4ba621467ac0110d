//! How fast the policy heals, on real files with real faults.
//!
//! - `heal/*`: a real fatal report (1032 after the file was unlinked under a
//!   DELETE-journal pool) until the verified pool is swapped in, with and
//!   without the `VACUUM INTO` rescue.
//! - `herd/1000_reports`: 1,000 concurrent fatal reports until all are
//!   answered; the reopen count is checked to be 1 on every iteration.
//! - `detection/*`: from the unlink until the watchdog has started the heal,
//!   with no query failing: polling every 100 ms, and the filesystem watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::runtime::Runtime;
use tower_db_liveness::{LivePool, LivePoolBuilder, Outcome, PoolStatus};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)";

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    live: LivePool,
    reopens: Arc<AtomicUsize>,
}

fn options(path: &std::path::Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
}

async fn rig(configure: impl FnOnce(LivePoolBuilder) -> LivePoolBuilder) -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.db");
    let opts = options(&path);
    let pool_options = SqlitePoolOptions::new().max_connections(4);
    let pool = pool_options
        .clone()
        .connect_with(opts.clone())
        .await
        .expect("open");
    sqlx::query(TABLE).execute(&pool).await.expect("table");
    let reopens = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&reopens);
    let reopen = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let (pool_options, opts) = (pool_options.clone(), opts.clone());
        async move {
            let pool: SqlitePool = pool_options.connect_with(opts).await?;
            sqlx::query(TABLE).execute(&pool).await?;
            Ok(pool)
        }
    };
    // The reopen builds the schema, so it may create the unlinked file anew.
    let builder = LivePool::builder_with_pool(pool, reopen)
        .reopen_creates(true)
        .recurrence_window(Duration::ZERO)
        .max_heals(usize::MAX, Duration::from_secs(1))
        .on_give_up(|gave_up| panic!("the bench gave up: {gave_up:?}"));
    let live = configure(builder).open().await.expect("live pool");
    Rig {
        _dir: dir,
        path,
        live,
        reopens,
    }
}

impl Rig {
    /// Unlinks the file under a connection that was open on it and returns
    /// the 1032 its next write gets.
    async fn fault(&self) -> sqlx::Error {
        let pool = self.live.pool();
        let mut held = pool.acquire().await.expect("acquire");
        sqlx::query("SELECT count(*) FROM notes")
            .execute(&mut *held)
            .await
            .expect("read");
        std::fs::remove_file(&self.path).expect("unlink");
        sqlx::query("INSERT INTO notes(body) VALUES ('x')")
            .execute(&mut *held)
            .await
            .expect_err("write on an unlinked file")
    }
}

fn heal(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("heal");
    for (name, rescue) in [("with_rescue", true), ("without_rescue", false)] {
        let rig = rt.block_on(rig(|b| b.watchdog_interval(None).rescue(rescue)));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let err = rig.fault().await;
                        let generation = rig.live.generation();
                        let start = Instant::now();
                        let outcome = rig.live.report_at(generation, &err).await;
                        total += start.elapsed();
                        assert!(matches!(outcome, Outcome::Healed(_)), "{outcome:?}");
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

fn herd(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let rig = rt.block_on(rig(|b| b.watchdog_interval(None).rescue(false)));
    let mut group = c.benchmark_group("herd");
    group.sample_size(20);
    group.bench_function("1000_reports", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let err = Arc::new(rig.fault().await);
                    let generation = rig.live.generation();
                    let reopens = rig.reopens.load(Ordering::SeqCst);
                    let start = Instant::now();
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..1000 {
                        let (live, err) = (rig.live.clone(), Arc::clone(&err));
                        tasks.spawn(async move { live.report_at(generation, &err).await });
                    }
                    while tasks.join_next().await.is_some() {}
                    total += start.elapsed();
                    assert_eq!(rig.reopens.load(Ordering::SeqCst), reopens + 1);
                }
                total
            })
        })
    });
    group.finish();
}

fn detection(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("detection");
    group.sample_size(10);
    let mut variants = vec![("polling_100ms", false)];
    if cfg!(feature = "fs-watch") {
        variants.push(("fs_watch", true));
    }
    for (name, watch) in variants {
        let rig = rt.block_on(rig(|b| {
            let b = b
                .watchdog_interval(Some(Duration::from_millis(100)))
                .rescue(false);
            #[cfg(feature = "fs-watch")]
            let b = b.fs_watch(watch);
            let _ = watch;
            b
        }));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let generation = rig.live.generation();
                        let mut status = rig.live.subscribe();
                        let start = Instant::now();
                        std::fs::remove_file(&rig.path).expect("unlink");
                        status
                            .wait_for(|s| matches!(s, PoolStatus::Healing { .. }))
                            .await
                            .expect("the LivePool is gone");
                        total += start.elapsed();
                        status
                            .wait_for(|s| {
                                matches!(s, PoolStatus::Live { generation: g, .. } if *g > generation)
                            })
                            .await
                            .expect("the LivePool is gone");
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, heal, herd, detection);
criterion_main!(benches);
