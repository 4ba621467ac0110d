//! The incident, replayed twice in one process: with tower-db-liveness, and
//! without it.
//!
//! Each run starts the notes server (axum, SQLite in WAL mode, a temporary
//! directory) on an ephemeral port, drives writes and health checks from a
//! client over 127.0.0.1, deletes the database's directory mid-run (as the
//! operator did), and counts what happened: writes acknowledged, writes in
//! the rescue file, writes lost, and how long `/health` stayed green while
//! the database was dead.
//!
//! Run: `cargo run --release --example demo` (about 10 s).
//!
//! With the crate the watchdog (polling every second; the `fs-watch` feature
//! reacts at once) or the health probe sees the file gone, the rescue saves
//! every acknowledged write with `VACUUM INTO`, the reopen fails because the
//! directory is gone, and the policy decides to exit so the supervisor
//! restarts the process (here the exit action only records the decision and
//! stops the server). Without it, WAL acknowledges every write into the
//! unlinked file and `/health` (`SELECT 1`) stays green.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::oneshot;
use tower_db_liveness::{
    DbLivenessLayer, GaveUp, HealthService, LivePool, PoolStatus, mark_response,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the server runs before the fault, and at most after it.
const BEFORE_FAULT: Duration = Duration::from_millis(1500);
const AFTER_FAULT: Duration = Duration::from_millis(3000);
const HEALTH_EVERY: Duration = Duration::from_millis(10);

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The crate's own logs are off unless RUST_LOG asks for them: the
    // timeline below tells the story.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();

    println!("== with tower-db-liveness (layer, watchdog, rescue, HealthService)");
    let with = run(true).await?;
    println!();
    println!("== without it (a plain SqlitePool, /health runs SELECT 1)");
    let without = run(false).await?;

    println!();
    println!("{:<42} {:>24} {:>24}", "", "with the crate", "without");
    let row = |name: &str, a: String, b: String| println!("{name:<42} {a:>24} {b:>24}");
    row(
        "writes acknowledged (201)",
        with.acknowledged.to_string(),
        without.acknowledged.to_string(),
    );
    row(
        "  of which after the directory was deleted",
        with.acknowledged_after_fault.to_string(),
        without.acknowledged_after_fault.to_string(),
    );
    row(
        "writes in the rescue file",
        with.rescued.to_string(),
        without.rescued.to_string(),
    );
    row(
        "writes lost",
        with.lost.to_string(),
        without.lost.to_string(),
    );
    row(
        "seconds /health was green while dead",
        with.green_while_dead(),
        without.green_while_dead(),
    );
    row("decision", with.decision.clone(), without.decision.clone());
    if with.lost != 0 {
        return Err(format!("{} acknowledged writes were lost with the crate", with.lost).into());
    }
    Ok(())
}

/// The notes server's database handle: the crate's `LivePool`, or a plain pool.
#[derive(Clone)]
enum Db {
    Live(LivePool),
    Plain(SqlitePool),
}

impl Db {
    fn pool(&self) -> SqlitePool {
        match self {
            Db::Live(live) => live.pool(),
            Db::Plain(pool) => pool.clone(),
        }
    }
}

async fn open_pool(options: SqliteConnectOptions) -> sqlx::Result<SqlitePool> {
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    Ok(pool)
}

async fn add_note(State(db): State<Db>, body: String) -> Response {
    // `execute` reports a failed commit; `fetch_one` on `INSERT … RETURNING`
    // would drop it (a full disk) and return an id for a row never stored.
    let inserted = sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(&body)
        .execute(&db.pool())
        .await;
    match inserted {
        Ok(done) => (StatusCode::CREATED, done.last_insert_rowid().to_string()).into_response(),
        Err(err) => {
            let mut response =
                (StatusCode::SERVICE_UNAVAILABLE, "database error\n").into_response();
            // Records the error for the layer, when there is one.
            mark_response(&mut response, &err);
            response
        }
    }
}

/// The health check the incident had: `SELECT 1`, which a dead handle answers.
async fn select_one(State(db): State<Db>) -> StatusCode {
    match sqlx::query("SELECT 1").execute(&db.pool()).await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

struct Totals {
    acknowledged: usize,
    acknowledged_after_fault: usize,
    rescued: usize,
    lost: usize,
    /// `None`: green until the end of the run.
    green_while_dead: Option<Duration>,
    run_after_fault: Duration,
    decision: String,
}

impl Totals {
    fn green_while_dead(&self) -> String {
        match self.green_while_dead {
            Some(green) => format!("{:.3}", green.as_secs_f64()),
            None => format!(">= {:.1} (never red)", self.run_after_fault.as_secs_f64()),
        }
    }
}

async fn run(with_crate: bool) -> Result<Totals, Error> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("data");
    std::fs::create_dir(&dir)?;
    let path = dir.join("notes.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = open_pool(options.clone()).await?;

    let (gave_up_tx, gave_up_rx) = oneshot::channel::<GaveUp>();
    let (db, app, live) = if with_crate {
        let gave_up_tx = Mutex::new(Some(gave_up_tx));
        let live = LivePool::builder_with_pool(pool, move || open_pool(options.clone()))
            // Instead of exiting, record the decision and stop the server.
            .on_give_up(move |gave_up| {
                if let Some(tx) = gave_up_tx.lock().ok().and_then(|mut tx| tx.take()) {
                    let _ = tx.send(gave_up.clone());
                }
            })
            .open()
            .await?;
        let db = Db::Live(live.clone());
        let app = Router::new()
            .route("/notes", post(add_note))
            .layer(DbLivenessLayer::new(live.clone()))
            .route_service("/health", HealthService::new(live.clone()))
            .with_state(db.clone());
        (db, app, Some(live))
    } else {
        drop(gave_up_tx);
        let db = Db::Plain(pool);
        let app = Router::new()
            .route("/notes", post(add_note))
            .route("/health", get(select_one))
            .with_state(db.clone());
        (db, app, None)
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    let started = Instant::now();
    let fault_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(tokio::sync::Notify::new());
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    let writer = tokio::spawn(write_notes(
        client.clone(),
        addr,
        Arc::clone(&fault_at),
        Arc::clone(&stop),
    ));
    let health = tokio::spawn(check_health(
        client.clone(),
        addr,
        Arc::clone(&fault_at),
        Arc::clone(&stop),
    ));
    let mut status = live.as_ref().map(LivePool::subscribe);

    tokio::time::sleep(BEFORE_FAULT).await;
    std::fs::remove_dir_all(&dir)?;
    let fault = Instant::now();
    if let Ok(mut at) = fault_at.lock() {
        *at = Some(fault);
    }
    println!(
        "  +{:>6.3} s  fault: rm -rf {}",
        (fault - started).as_secs_f64(),
        dir.display()
    );

    let mut decision = "none: keeps serving".to_owned();
    let mut rescue: Option<PathBuf> = None;
    if let Some(status) = status.as_mut() {
        let detected = tokio::time::timeout(
            AFTER_FAULT,
            status.wait_for(|s| !matches!(s, PoolStatus::Live { generation: 0, .. })),
        )
        .await;
        if matches!(detected, Ok(Some(_))) {
            println!(
                "  +{:>6.3} s  detected with no query failing: heal started",
                (Instant::now() - started).as_secs_f64()
            );
        }
        match tokio::time::timeout(AFTER_FAULT, gave_up_rx).await {
            Ok(Ok(gave_up)) => {
                let at = Instant::now();
                if let Some(path) = &gave_up.rescue {
                    println!(
                        "  +{:>6.3} s  rescue file: {} ({} rows)",
                        (at - started).as_secs_f64(),
                        path.display(),
                        count_rows(path).await?
                    );
                }
                println!(
                    "  +{:>6.3} s  decision: exit({}) for the supervisor to restart the process ({})",
                    (at - started).as_secs_f64(),
                    gave_up.exit_code,
                    gave_up.reason
                );
                decision = format!(
                    "exit({}) at +{:.3} s",
                    gave_up.exit_code,
                    (at - fault).as_secs_f64()
                );
                rescue = gave_up.rescue.clone();
            }
            _ => println!("  no decision within {AFTER_FAULT:?}"),
        }
        // The process would be gone now; a last moment of traffic shows that
        // nothing more is acknowledged into the dead file.
        tokio::time::sleep(Duration::from_millis(200)).await;
    } else {
        tokio::time::sleep(AFTER_FAULT).await;
    }
    let run_after_fault = fault.elapsed();

    stop.notify_waiters();
    let written = writer.await??;
    let health_log = health.await??;
    let _ = stop_tx.send(());
    server.await??;
    drop(db);

    let red_at = health_log.iter().find(|(_, ok)| !ok).map(|(at, _)| *at);
    let green_while_dead = red_at.map(|at| at.saturating_duration_since(fault));
    if let Some(green) = green_while_dead {
        println!(
            "  /health went red {:.3} s after the fault",
            green.as_secs_f64()
        );
    } else {
        println!("  /health stayed green for the whole run");
    }

    let acknowledged = written.len();
    let acknowledged_after_fault = written.iter().filter(|(_, after)| *after).count();
    let (rescued, lost) = match &rescue {
        Some(path) => {
            let bodies = rescued_bodies(path).await?;
            let lost = written
                .iter()
                .filter(|(body, _)| !bodies.contains(body))
                .count();
            (bodies.len(), lost)
        }
        // Everything acknowledged went into files that no longer exist.
        None => (0, acknowledged),
    };
    Ok(Totals {
        acknowledged,
        acknowledged_after_fault,
        rescued,
        lost,
        green_while_dead,
        run_after_fault,
        decision,
    })
}

/// Posts notes one after another; returns each acknowledged note's body and
/// whether it was acknowledged after the fault.
async fn write_notes(
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    fault_at: Arc<Mutex<Option<Instant>>>,
    stop: Arc<tokio::sync::Notify>,
) -> Result<Vec<(String, bool)>, Error> {
    let mut acknowledged = Vec::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for n in 0.. {
        let body = format!("note {n}");
        let request = http::Request::post(format!("http://{addr}/notes"))
            .body(Full::new(Bytes::from(body.clone())))?;
        let response = tokio::select! {
            _ = &mut stopped => break,
            response = client.request(request) => response,
        };
        let Ok(response) = response else { continue };
        let status = response.status();
        response.into_body().collect().await?;
        if status == StatusCode::CREATED {
            let after = fault_at.lock().map(|at| at.is_some()).unwrap_or(false);
            acknowledged.push((body, after));
        } else {
            // A failing database answers at once: don't spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(acknowledged)
}

/// Polls `/health`; returns (when, green?) for each answer after the fault.
async fn check_health(
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    fault_at: Arc<Mutex<Option<Instant>>>,
    stop: Arc<tokio::sync::Notify>,
) -> Result<Vec<(Instant, bool)>, Error> {
    let mut log = Vec::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut ticker = tokio::time::interval(HEALTH_EVERY);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = ticker.tick() => {}
        }
        let request = http::Request::get(format!("http://{addr}/health")).body(Full::default())?;
        let Ok(response) = client.request(request).await else {
            continue;
        };
        let green = response.status() == StatusCode::OK;
        response.into_body().collect().await?;
        let after_fault = fault_at.lock().map(|at| at.is_some()).unwrap_or(false);
        if after_fault {
            log.push((Instant::now(), green));
        }
    }
    Ok(log)
}

async fn rescued_bodies(path: &Path) -> Result<std::collections::HashSet<String>, Error> {
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await?;
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(bodies.into_iter().collect())
}

async fn count_rows(path: &Path) -> Result<usize, Error> {
    Ok(rescued_bodies(path).await?.len())
}
