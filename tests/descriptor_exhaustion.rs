//! Issue 10.1: file-descriptor exhaustion (a burst of idle keep-alive
//! clients does it) is not a dead database. A new pool connection fails
//! with CANTOPEN (14) while the database file is intact: transient, no heal,
//! no exit, and the pool works again once descriptors are free.
//!
//! ONE test in this file on purpose: it exhausts the descriptors of the whole
//! test process, which would break any test running beside it.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::{Exits, TestDb, TestResult, count, create_table, insert};
use sqlx::sqlite::SqliteJournalMode;
use sqlx::sqlite::SqlitePoolOptions;
use tower::{Layer, ServiceExt, service_fn};
use tower_db_liveness::{DbLivenessLayer, ErrorClass, LivePool, Outcome, PoolStatus};

const WAIT: Duration = Duration::from_secs(30);
/// Room for a new connection after every existing one is checked out.
const MAX_CONNECTIONS: u32 = 8;
/// EMFILE: the process's descriptor table is full.
const EMFILE: i32 = 24;

/// Descriptors held open until the process has none left; released on drop.
struct Exhausted {
    held: Vec<std::fs::File>,
}

impl Exhausted {
    fn take_all() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut held = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(file) => held.push(file),
                Err(err) if err.raw_os_error() == Some(EMFILE) => break,
                Err(err) => return Err(err.into()),
            }
            // A safety net for hosts with a huge limit: the test would
            // otherwise spend minutes here.
            if held.len() > 2_000_000 {
                return Err("no EMFILE after 2,000,000 descriptors".into());
            }
        }
        Ok(Exhausted { held })
    }
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (for the report).
fn nofile_limit() -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3).map(str::to_owned)
}

fn sqlite_code(err: &sqlx::Error) -> Option<String> {
    Some(err.as_database_error()?.code()?.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_is_transient_and_heals_by_itself() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (builder, mut exits) = Exits::install(
        LivePool::builder(db.options())
            .pool_options(
                SqlitePoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .min_connections(0)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(Duration::from_secs(5)),
            )
            .watchdog_interval(None),
    );
    let live = builder.open().await?;
    create_table(&live.pool()).await?;
    insert(&live.pool(), "before").await?;

    // Every connection the pool has is checked out, and it may open more:
    // the next acquire must open a new connection, which needs a
    // descriptor. Established, not assumed: sqlx may still be handing a
    // connection back to the idle queue, or have opened one more under
    // load, so idle ones are taken until none is left (bounded).
    let pool = live.pool();
    let mut busy = Vec::new();
    common::within("every pool connection checked out", async {
        loop {
            if busy.len() >= 3 && pool.num_idle() == 0 && pool.size() as usize == busy.len() {
                return Ok::<(), sqlx::Error>(());
            }
            let mut conn = pool.acquire().await?;
            sqlx::query("SELECT count(*) FROM notes")
                .execute(&mut *conn)
                .await?;
            busy.push(conn);
        }
    })
    .await??;
    assert!(
        (pool.size() as usize) < MAX_CONNECTIONS as usize,
        "the pool has room for a new connection"
    );

    let layered = DbLivenessLayer::new(live.clone()).layer(service_fn({
        let live = live.clone();
        move |_request: http::Request<()>| {
            let live = live.clone();
            async move {
                insert(&live.pool(), "through the layer").await?;
                Ok::<_, sqlx::Error>(http::Response::new(()))
            }
        }
    }));

    let limit = nofile_limit();
    let exhausted = Exhausted::take_all()?;
    eprintln!(
        "holding {} descriptors (soft limit {limit:?})",
        exhausted.held.len()
    );

    // Reported by the layer first: the decision is taken before the error
    // comes back, so a fatal verdict would show as a heal in flight here.
    let layer_err =
        match tokio::time::timeout(WAIT, layered.oneshot(http::Request::new(()))).await? {
            Err(err) => err,
            Ok(_) => return Err("a new connection opened with no descriptor left".into()),
        };
    assert_eq!(
        sqlite_code(&layer_err).as_deref(),
        Some("14"),
        "{layer_err:?}"
    );
    assert!(!live.is_healing(), "the layer started a heal");

    // Reported by hand, through a lease: the verdict is awaited.
    let lease = live.lease();
    let err = match insert(lease.pool(), "while exhausted").await {
        Err(err) => err,
        Ok(()) => return Err("a new connection opened with no descriptor left".into()),
    };
    eprintln!("the write got: {err}");
    assert_eq!(sqlite_code(&err).as_deref(), Some("14"), "{err:?}");
    assert_eq!(tower_db_liveness::classify(&err), ErrorClass::Fatal);
    let outcome = tokio::time::timeout(WAIT, lease.report(&err)).await?;
    assert!(
        matches!(outcome, Outcome::Ignored(ErrorClass::Transient)),
        "{outcome:?}"
    );

    assert!(!live.is_healing() && !live.has_given_up());
    assert!(matches!(
        live.status(),
        PoolStatus::Live { generation: 0, .. }
    ));
    assert_eq!(exits.count_now(), 0, "the exit action ran");

    // Descriptors freed: the next write opens its connection and succeeds,
    // on the same generation.
    drop(exhausted);
    insert(&live.pool(), "after").await?;
    drop(busy);
    assert_eq!(live.generation(), 0);
    assert_eq!(count(&live.pool()).await?, 2);
    assert_eq!(exits.count_now(), 0, "the exit action ran");
    Ok(())
}
