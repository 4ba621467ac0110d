//! `HealthService` over real SQLite files, behind a real server on
//! 127.0.0.1, asked by a real client.
#![cfg(feature = "sqlite")]

mod common;
mod health_support;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use common::{TestDb, TestResult, insert, open_live, warm};
use health_support::{
    BoxError, check_shape, fetch, open_gated, patch_file, raw, serve, show, within,
};
use http::{Method, StatusCode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, SqliteConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower_db_liveness::{Check, GiveUpReason, HealthService, LivePool, PoolStatus};

/// `/health` and `/readyz` (readiness) and `/livez` (liveness), as the
/// docs recommend: clones of one service.
fn app(health: HealthService) -> Router {
    Router::new()
        .route_service("/livez", health.clone().check(Check::Liveness))
        .route_service("/readyz", health.clone())
        .route_service("/health", health)
}

/// Asks `/livez` and `/readyz` and checks both against the state table:
/// the HTTP status, the body's `status` and `state` of each. Liveness reads
/// only the policy's state, so a state only a probe finds (`transient`)
/// is `healthy` there.
async fn verdicts(
    addr: std::net::SocketAddr,
    state: &str,
    (live_status, live_body): (StatusCode, &str),
    (ready_status, ready_body): (StatusCode, &str),
) -> TestResult {
    let policy_state = match state {
        "transient" | "not_answering" | "unavailable" => "healthy",
        other => other,
    };
    for (path, status, body_status, state) in [
        ("/livez", live_status, live_body, policy_state),
        ("/readyz", ready_status, ready_body, state),
    ] {
        let answer = fetch(addr, Method::GET, path).await?;
        show(&format!("{state} {path}"), answer.status, &answer.body);
        let body = answer.json()?;
        assert_eq!(answer.status, status, "{path} in {state}: {body}");
        assert_eq!(
            check_shape(&body)?,
            body_status,
            "{path} in {state}: {body}"
        );
        assert_eq!(body["state"], state, "{path}: {body}");
    }
    Ok(())
}

fn no_path(body: &[u8], db: &TestDb) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let root = db.root.path().to_string_lossy();
    if text.contains(root.as_ref()) || text.contains("app.db") {
        return Err(format!("the body holds a path: {text}"));
    }
    Ok(())
}

#[tokio::test]
async fn healthy_answers_200_pass_and_head_the_same_headers() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _, _exits) = open_live(&db, |b| b).await?;
    let server = serve(app(HealthService::new(live))).await?;

    let get = fetch(server.addr, Method::GET, "/health").await?;
    show("healthy GET", get.status, &get.body);
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.header("content-type"), Some("application/health+json"));
    assert_eq!(get.header("cache-control"), Some("no-store"));
    let body = get.json()?;
    assert_eq!(check_shape(&body)?, "pass");
    let check = &body["checks"]["sqlite:responseTime"][0];
    assert!(check["observedValue"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert_eq!(body["generation"], 0);
    assert_eq!(body["heals"], 0);
    no_path(&get.body, &db)?;
    verdicts(
        server.addr,
        "healthy",
        (StatusCode::OK, "pass"),
        (StatusCode::OK, "pass"),
    )
    .await?;

    let head = fetch(server.addr, Method::HEAD, "/health").await?;
    show("healthy HEAD", head.status, &head.body);
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), Some("application/health+json"));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    let announced: usize = head.header("content-length").ok_or("no length")?.parse()?;
    assert!(announced > 0, "HEAD announces the GET body's length");
    Ok(())
}

const LOCK_CHILD: &str = "TOWER_DB_LIVENESS_LOCK_CHILD";

/// The child half of `an_exclusive_lock_held_by_another_process_answers_warn`,
/// which runs it (ignored, so it never counts as a passing test on its
/// own): takes `BEGIN EXCLUSIVE` on the database, says so on stdout, and
/// holds the lock until its stdin is closed.
#[tokio::test]
#[ignore = "child half of an_exclusive_lock_held_by_another_process_answers_warn, which runs it"]
async fn child_holds_an_exclusive_lock() -> TestResult {
    let path = std::env::var_os(LOCK_CHILD).ok_or("run by its parent test only")?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Delete);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await?;
    sqlx::query("INSERT INTO notes(body) VALUES ('held')")
        .execute(&mut conn)
        .await?;
    println!("LOCKED");
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await??;
    sqlx::query("COMMIT").execute(&mut conn).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_lock_held_by_another_process_answers_warn() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    // sqlx's default busy_timeout (5 s): a read waits that long for the lock.
    let options = SqliteConnectOptions::new()
        .filename(&db.path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete);
    let pool = TestDb::pool_options().connect_with(options.clone()).await?;
    common::create_table(&pool).await?;
    warm(&pool).await?;
    let (reopens, reopen) = common::counting_reopen(options);
    let live = LivePool::builder_with_pool(pool, reopen)
        .watchdog_interval(None)
        .open()
        .await?;
    let health = HealthService::new(live.clone());
    let patient = health.clone().timeout(Duration::from_secs(30));
    let server = serve(app(health).route_service("/patient", patient)).await?;

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "child_holds_an_exclusive_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_CHILD, &db.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    within("the other process to take the lock", async {
        loop {
            match lines.next_line().await? {
                // libtest prints the test's name on the same line.
                Some(line) if line.trim_end().ends_with("LOCKED") => return Ok(()),
                Some(_) => continue,
                None => return Err("the lock holder ended without taking the lock".into()),
            }
        }
    })
    .await
    .and_then(|taken: Result<(), health_support::BoxError>| taken)?;

    // A flood of health checks while the other process holds the lock.
    let mut answers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let addr = server.addr;
        answers.spawn(async move { fetch(addr, Method::GET, "/health").await });
    }
    let mut first = None;
    while let Some(answer) = within("a health answer", answers.join_next()).await? {
        let answer = answer??;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let body = answer.json()?;
        assert_eq!(check_shape(&body)?, "warn", "{body}");
        first.get_or_insert((answer.status, answer.body));
    }
    if let Some((status, body)) = first {
        show("locked by another process", status, &body);
        no_path(&body, &db)?;
    }
    verdicts(
        server.addr,
        "transient",
        (StatusCode::OK, "pass"),
        (StatusCode::OK, "warn"),
    )
    .await?;
    // One probe for all fifty: one connection is waiting for the lock, the
    // others are idle.
    let pool = live.pool();
    assert_eq!(pool.size() as usize - pool.num_idle(), 1);
    assert!(!live.is_healing());

    // The other process commits and ends; a request that waits long enough
    // sees the probe through.
    drop(child.stdin.take());
    assert!(
        within("the other process to end", child.wait())
            .await??
            .success()
    );
    let after = within(
        "the patient answer",
        fetch(server.addr, Method::GET, "/patient"),
    )
    .await??;
    show("lock released", after.status, &after.body);
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(check_shape(&after.json()?)?, "pass");
    assert_eq!(reopens.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn a_deleted_directory_under_wal_fails_and_reaches_the_policy() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    // No watchdog: nothing but the health probe looks at the file.
    // Allowed to create the file, the reopen is tried, and fails: the directory is gone.
    let (live, reopens, mut exits) = open_live(&db, |b| b.reopen_creates(true)).await?;
    let health = HealthService::new(live.clone());
    let server = serve(
        app(health.clone())
            .route_service("/health-200", health.clone().always_ok(true))
            .route_service("/health-verbose", health.verbose(true)),
    )
    .await?;
    insert(&live.pool(), "before").await?;
    warm(&live.pool()).await?;
    let mut status = live.subscribe();

    db.rm_rf_dir()?;
    // The incident: writes still succeed, into the unlinked file.
    insert(&live.pool(), "into the void").await?;

    let dead = fetch(server.addr, Method::GET, "/health").await?;
    show("directory deleted", dead.status, &dead.body);
    assert_eq!(dead.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = dead.json()?;
    assert_eq!(check_shape(&body)?, "fail");
    assert_eq!(
        body["checks"]["sqlite:responseTime"][0]["output"],
        "database file deleted"
    );
    no_path(&dead.body, &db)?;

    // The probe's finding reached the policy: it tried the reopen once and
    // gave up (the directory is gone), running the injected exit action.
    let gave_up = match within(
        "the give-up",
        status.wait_for(|s| matches!(s, PoolStatus::GaveUp(_))),
    )
    .await?
    .ok_or("the LivePool is gone")?
    {
        PoolStatus::GaveUp(gave_up) => gave_up,
        other => return Err(format!("{other:?}").into()),
    };
    assert!(matches!(gave_up.reason, GiveUpReason::ReopenFailed(_)));
    assert!(exits.next().await.is_some());
    assert_eq!(reopens.load(Ordering::SeqCst), 1);

    let after = fetch(server.addr, Method::GET, "/health").await?;
    show("after give-up", after.status, &after.body);
    assert_eq!(after.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = after.json()?;
    assert_eq!(check_shape(&body)?, "fail");
    let output = body["checks"]["sqlite:responseTime"][0]["output"]
        .as_str()
        .ok_or("no output")?;
    assert!(output.starts_with("gave up (reopen failed)"), "{output}");
    no_path(&after.body, &db)?;
    // The only state in which a restart helps: liveness fails too.
    verdicts(
        server.addr,
        "gave_up",
        (StatusCode::SERVICE_UNAVAILABLE, "fail"),
        (StatusCode::SERVICE_UNAVAILABLE, "fail"),
    )
    .await?;

    let always_ok = fetch(server.addr, Method::GET, "/health-200").await?;
    show(
        "after give-up, always_ok",
        always_ok.status,
        &always_ok.body,
    );
    assert_eq!(always_ok.status, StatusCode::OK);
    assert_eq!(check_shape(&always_ok.json()?)?, "fail");

    // Verbose shows what the safe text leaves out: SQLite's message.
    let verbose = fetch(server.addr, Method::GET, "/health-verbose").await?;
    show("after give-up, verbose", verbose.status, &verbose.body);
    assert!(!after.text().contains("unable to open database file"));
    assert!(
        verbose
            .text()
            .contains("(code: 14) unable to open database file")
    );
    Ok(())
}

#[tokio::test]
async fn a_heal_in_flight_answers_warn_then_pass() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, gate, mut exits) = open_gated(&db, |b| b.reopen_creates(true)).await?;
    let server = serve(app(HealthService::new(live.clone()))).await?;
    warm(&live.pool()).await?;

    db.unlink_files()?;
    // The request that finds the unlinked file answers fail, and its report
    // has reached the policy before the answer was sent.
    let found = fetch(server.addr, Method::GET, "/health").await?;
    show(
        "file unlinked (found by this probe)",
        found.status,
        &found.body,
    );
    assert_eq!(found.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(check_shape(&found.json()?)?, "fail");
    assert!(live.is_healing());

    // The real reopen is held at the gate: the heal is in flight.
    let healing = fetch(server.addr, Method::GET, "/health").await?;
    show("heal in flight", healing.status, &healing.body);
    assert_eq!(healing.status, StatusCode::OK);
    let body = healing.json()?;
    assert_eq!(check_shape(&body)?, "warn");
    assert_eq!(
        body["checks"]["sqlite:responseTime"][0]["output"],
        "reopening the database after: database file deleted"
    );
    no_path(&healing.body, &db)?;
    verdicts(
        server.addr,
        "healing",
        (StatusCode::OK, "warn"),
        (StatusCode::OK, "warn"),
    )
    .await?;

    gate.open.notify_one();
    within("the heal", live.healed()).await?;
    let healed = fetch(server.addr, Method::GET, "/health").await?;
    show("healed", healed.status, &healed.body);
    assert_eq!(healed.status, StatusCode::OK);
    let body = healed.json()?;
    assert_eq!(check_shape(&body)?, "pass");
    assert_eq!(body["generation"], 1);
    assert_eq!(body["heals"], 1);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

#[tokio::test]
async fn a_fatal_error_from_the_read_fails_and_reaches_the_policy() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    let server = serve(app(HealthService::new(live.clone()))).await?;
    insert(&live.pool(), "before").await?;
    warm(&live.pool()).await?;
    let mut status = live.subscribe();

    // Garbage over the whole file, in place: same inode, so the file
    // identity holds and only the page read can tell.
    let len = std::fs::metadata(&db.path)?.len() as usize;
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
    let mut file = std::fs::OpenOptions::new().write(true).open(&db.path)?;
    std::io::Write::write_all(&mut file, &garbage)?;
    file.sync_all()?;
    drop(file);

    let dead = fetch(server.addr, Method::GET, "/health").await?;
    show("file overwritten (NOTADB)", dead.status, &dead.body);
    assert_eq!(dead.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = dead.json()?;
    assert_eq!(check_shape(&body)?, "fail");
    assert_eq!(
        body["checks"]["sqlite:responseTime"][0]["output"],
        "fatal database error (SQLite code 26)"
    );
    no_path(&dead.body, &db)?;

    // The reopen meets the same garbage and the policy gives up.
    within(
        "the give-up",
        status.wait_for(|s| matches!(s, PoolStatus::GaveUp(_))),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    assert!(exits.next().await.is_some());
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn every_method_and_odd_input_gets_a_well_formed_answer() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _, _exits) = open_live(&db, |b| b).await?;
    let server = serve(app(HealthService::new(live))).await?;
    let addr = server.addr;

    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW", "M-SEARCH",
    ] {
        let request = format!(
            "{method} /health HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{{\"a\":\"b\"}}\r\n"
        );
        let answer = raw(addr, request.as_bytes()).await?;
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method}");
    }
    let chunked = b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(raw(addr, chunked).await?.status, 405);

    // GET with a body, a query string, HTTP/1.0 without Host: answered, body ignored.
    let requests: [&[u8]; 4] = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /health?verbose=true&format=%ff%00&x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.0\r\n\r\n",
    ];
    for request in requests {
        let answer = raw(addr, request).await?;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(request));
        let body: serde_json::Value = serde_json::from_slice(&answer.body)?;
        assert_eq!(check_shape(&body)?, "pass");
        no_path(&answer.body, &db)?;
    }

    // Oversized input: hyper may refuse it (431, 414) before the service;
    // either way a well-formed answer.
    let long_value = "v".repeat(64 * 1024);
    let long_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Long: {long_value}\r\nConnection: close\r\n\r\n"
    );
    let status = raw(addr, long_header.as_bytes()).await?.status;
    assert!([200, 431].contains(&status), "{status}");
    let many: String = (0..300).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many_headers =
        format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let status = raw(addr, many_headers.as_bytes()).await?.status;
    assert!([200, 431].contains(&status), "{status}");
    let long_query = format!(
        "GET /health?q={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "q".repeat(16 * 1024)
    );
    let status = raw(addr, long_query.as_bytes()).await?.status;
    assert!([200, 414, 431].contains(&status), "{status}");
    let garbage = b"\x16\x03\x01\x02\x00 nonsense\r\n\r\n";
    assert_eq!(raw(addr, garbage).await?.status, 400);

    // Still serving.
    let answer = fetch(addr, Method::GET, "/health").await?;
    assert_eq!(answer.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn mounts_in_plain_hyper() -> TestResult {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _, _exits) = open_live(&db, |b| b).await?;
    let health = HealthService::new(live);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(health.clone());
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let get = fetch(addr, Method::GET, "/any/path?at=all").await?;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(check_shape(&get.json()?)?, "pass");
    let head = fetch(addr, Method::HEAD, "/").await?;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let post = fetch(addr, Method::POST, "/").await?;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    server.abort();
    Ok(())
}

#[cfg(feature = "systemd")]
const NO_SYSTEMD_CHILD: &str = "TOWER_DB_LIVENESS_NO_SYSTEMD_CHILD";

/// The child half of `the_systemd_watchdog_is_a_no_op_outside_systemd`,
/// started without systemd's variables whatever this process was given.
#[cfg(feature = "systemd")]
#[tokio::test]
#[ignore = "child half of the_systemd_watchdog_is_a_no_op_outside_systemd, which runs it"]
async fn child_outside_systemd() -> TestResult {
    std::env::var_os(NO_SYSTEMD_CHILD).ok_or("run by its parent test only")?;
    // The premise: the parent removed it.
    assert!(std::env::var_os("WATCHDOG_USEC").is_none());
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _, _exits) = open_live(&db, |b| b).await?;
    assert!(tower_db_liveness::systemd::spawn_watchdog(&HealthService::new(live)).is_none());
    Ok(())
}

#[cfg(feature = "systemd")]
#[tokio::test]
async fn the_systemd_watchdog_is_a_no_op_outside_systemd() -> TestResult {
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "child_outside_systemd",
            "--test-threads=1",
        ])
        .env(NO_SYSTEMD_CHILD, "1")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("NOTIFY_SOCKET")
        .kill_on_drop(true)
        .output();
    let output = within("the child", child).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child stdout: {stdout}\nchild stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// One GET through `ServiceExt::oneshot`: status and body.
async fn oneshot_get(health: HealthService) -> Result<(StatusCode, serde_json::Value), BoxError> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let request = http::Request::get("/health").body(())?;
    let response = within("the health answer", health.oneshot(request)).await??;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    show("oneshot", status, &bytes);
    Ok((status, serde_json::from_slice(&bytes)?))
}

fn output(body: &serde_json::Value) -> &serde_json::Value {
    &body["checks"]["sqlite:responseTime"][0]["output"]
}

/// A schema that cannot be read with an error of class other (SQLITE_ERROR,
/// "unsupported file format": the header's schema format number is 5, one
/// more than SQLite knows) is not a pass and not a warn: the database does
/// not serve. Nothing for the policy: other errors are not faults.
#[tokio::test]
async fn an_unreadable_schema_fails_with_an_error_of_class_other() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    warm(&live.pool()).await?;
    let health = HealthService::new(live.clone());
    assert_eq!(oneshot_get(health.clone()).await?.0, StatusCode::OK);

    // The schema cookie (offset 40) changes too, so cached schemas are
    // reloaded; the format number is at offset 44.
    let cookie = {
        let bytes = std::fs::read(&db.path)?;
        u32::from_be_bytes(bytes[40..44].try_into()?).wrapping_add(1)
    };
    patch_file(&db.path, 40, &cookie.to_be_bytes())?;
    patch_file(&db.path, 44, &5u32.to_be_bytes())?;

    let (status, body) = oneshot_get(health.clone()).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(check_shape(&body)?, "fail");
    assert_eq!(body["state"], "unavailable");
    assert_eq!(*output(&body), "other database error (SQLite code 1)");
    // Nothing a restart is known to fix: liveness passes.
    let (status, body) = oneshot_get(health.check(Check::Liveness)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(check_shape(&body)?, "pass");
    assert!(!live.is_healing());
    assert_eq!(reopens.load(Ordering::SeqCst), 0);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

/// A closed pool (no heal in flight: closed by the application, say)
/// cannot serve: `fail`, not `warn`.
#[tokio::test]
async fn a_closed_pool_fails() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    let health = HealthService::new(live.clone());
    live.pool().close().await;

    let (status, body) = oneshot_get(health).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(check_shape(&body)?, "fail");
    assert_eq!(*output(&body), "the pool in service is closed");
    assert!(!live.is_healing());
    assert_eq!(reopens.load(Ordering::SeqCst), 0);
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

/// A second angle on a fatal read: a corrupt b-tree page (page 1's page
/// type byte, offset 100; the file header before it stays valid), asked
/// through `oneshot`: 11 CORRUPT, `fail`, and the finding reaches the
/// policy, whose reopen meets the same page and gives up.
#[tokio::test]
async fn a_corrupt_page_fails_and_reaches_the_policy() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, reopens, mut exits) = open_live(&db, |b| b).await?;
    warm(&live.pool()).await?;
    let health = HealthService::new(live.clone());
    let mut status = live.subscribe();

    patch_file(&db.path, 100, &[0x01])?;

    let (code, body) = oneshot_get(health).await?;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(check_shape(&body)?, "fail");
    assert_eq!(*output(&body), "fatal database error (SQLite code 11)");
    let gave_up = match within(
        "the give-up",
        status.wait_for(|s| matches!(s, PoolStatus::GaveUp(_))),
    )
    .await?
    {
        Some(PoolStatus::GaveUp(gave_up)) => gave_up,
        other => return Err(format!("{other:?}").into()),
    };
    // The new pool's connect already reads the page (journal_mode).
    assert!(
        matches!(
            gave_up.reason,
            GiveUpReason::ReopenFailed(_) | GiveUpReason::VerifyFailed(_)
        ),
        "{:?}",
        gave_up.reason
    );
    assert!(
        gave_up.reason.to_string().contains("(code: 11)"),
        "{}",
        gave_up.reason
    );
    assert!(exits.next().await.is_some());
    assert_eq!(reopens.load(Ordering::SeqCst), 1);
    Ok(())
}

/// A heal that runs longer than the layer holds requests (2 s by default:
/// the rescue of a large file, say) fails readiness from then on: held
/// requests reach the closed pool and fail. Liveness stays 200. The real
/// reopen is held at a gate; the 2 s are the behaviour under test, so the
/// test lets them pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heal_longer_than_the_hold_fails_readiness() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, gate, mut exits) = open_gated(&db, |b| b.reopen_creates(true)).await?;
    let server = serve(app(HealthService::new(live.clone()))).await?;
    warm(&live.pool()).await?;
    db.unlink_files()?;
    // The probe finds the unlinked file and starts the heal.
    let found = fetch(server.addr, Method::GET, "/readyz").await?;
    assert_eq!(found.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(live.is_healing());
    verdicts(
        server.addr,
        "healing",
        (StatusCode::OK, "warn"),
        (StatusCode::OK, "warn"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(live.is_healing(), "the gate holds the reopen");
    verdicts(
        server.addr,
        "healing",
        (StatusCode::OK, "warn"),
        (StatusCode::SERVICE_UNAVAILABLE, "fail"),
    )
    .await?;
    gate.open.notify_one();
    within("the heal", live.healed()).await?;
    verdicts(
        server.addr,
        "healthy",
        (StatusCode::OK, "pass"),
        (StatusCode::OK, "pass"),
    )
    .await?;
    assert_eq!(exits.count_now(), 0);
    Ok(())
}
