//! The adoption example (`examples/adopt.rs`): its `#[sqlx::test]` tests,
//! written as the guide's recipe says (`LivePool::fixed` around the test's
//! pool), and the app under real faults, in-process and as a binary.

mod common;
mod example_support;
mod layer_support;

#[allow(dead_code)]
#[path = "../examples/adopt.rs"]
mod example;

use std::net::SocketAddr;

use axum::Router;
use common::{Exits, TestDb, TestResult, count_in_file, warm, within};
use example::{AppState, Limits};
use example_support::Example;
use layer_support::{BoxError, Http};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tower_db_liveness::{LivePool, PoolStatus};

async fn serve(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The app on a full `LivePool` over `options` (its migrations, no
/// watchdog, the exit injected), served on 127.0.0.1.
async fn open_app(options: SqliteConnectOptions) -> Result<(LivePool, Http, Exits), BoxError> {
    let builder = LivePool::builder(options)
        .pool_options(TestDb::pool_options())
        .migrations(&example::MIGRATOR)
        .watchdog_interval(None);
    let (builder, exits) = Exits::install(builder);
    let live = builder.open().await?;
    let http = Http::new(
        serve(example::app(AppState {
            live: live.clone(),
            limits: Limits { max_note_len: 64 },
        }))
        .await?,
    );
    Ok((live, http, exits))
}

/// A backup of the same application's database (its migrations applied,
/// then `seed` with `bind`), renamed over `db`'s file: a restore by rename.
async fn restore_by_rename(db: &TestDb, seed: &'static str, bind: &str) -> Result<(), BoxError> {
    let backup = db.root.path().join("backup.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&backup)
            .create_if_missing(true),
    )
    .await?;
    example::MIGRATOR.run(&pool).await?;
    sqlx::query(seed)
        .bind(bind.to_owned())
        .execute(&pool)
        .await?;
    pool.close().await;
    std::fs::rename(&backup, &db.path)?;
    Ok(())
}

/// The synchronous test helper of the recipe: no `.await`, no runtime needed.
fn state(pool: SqlitePool) -> AppState {
    AppState {
        live: LivePool::fixed(pool),
        limits: Limits { max_note_len: 16 },
    }
}

/// The recipe: the app's handlers, its error enum, its session middleware
/// and the probes over real HTTP on the test's database.
#[sqlx::test(migrations = "examples/adopt/migrations")]
async fn the_app_serves_its_routes_on_a_fixed_pool(pool: SqlitePool) -> TestResult {
    let http = Http::new(serve(example::app(state(pool))).await?);

    let created = http.post("/notes", "first").await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body, r#"{"id":1}"#);
    let again = http.post("/notes", "first").await?;
    assert_eq!(again.status, 409, "UniqueViolation: {again:?}");
    assert_eq!(http.get("/notes/1").await?.body, "first");
    let missing = http.get("/notes/99").await?;
    assert_eq!(missing.status, 404, "RowNotFound: {missing:?}");
    assert_eq!(http.post("/notes", "x".repeat(17)).await?.status, 413);
    assert_eq!(
        http.get("/notes").await?.body,
        r#"[{"body":"first","id":1}]"#
    );
    // The session middleware, on the test's pool like every handler.
    assert_eq!(http.get("/me").await?.status, 401, "no token");
    let login = http.post("/login", "ann").await?;
    assert_eq!(login.status, 200, "{login:?}");
    let me = http
        .get_with(
            "/me",
            &[("authorization", &format!("Bearer {}", login.body))],
        )
        .await?;
    assert_eq!(
        (me.status.as_u16(), me.body.as_str()),
        (200, "ann"),
        "{me:?}"
    );
    assert_eq!(
        http.post("/login", " ").await?.status,
        400,
        "AuthError::EmptyName"
    );
    let ready = http.get("/readyz").await?;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(http.get("/livez").await?.status, 200);
    Ok(())
}

/// The session middleware called on its own, as the app's unit tests call
/// it: its state is still a plain `SqlitePool` (no `LivePool`, no layer),
/// and a database error is still its 401, now carrying the mark.
#[sqlx::test(migrations = "examples/adopt/migrations")]
async fn the_session_middleware_runs_on_a_plain_pool(pool: SqlitePool) -> TestResult {
    use tower::ServiceExt;
    let router = |pool: SqlitePool| {
        Router::new()
            .route("/", axum::routing::get(|| async { "in" }))
            .layer(axum::middleware::from_fn_with_state(
                pool,
                example::require_session,
            ))
    };
    sqlx::query("INSERT INTO sessions(token, user) VALUES ('t1', 'ann')")
        .execute(&pool)
        .await?;
    let request = |token: &str| {
        http::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
    };
    let ok = router(pool.clone()).oneshot(request("t1")?).await?;
    assert_eq!(ok.status(), 200);
    let unknown = router(pool.clone()).oneshot(request("t2")?).await?;
    assert_eq!(unknown.status(), 401);
    // A database error (the pool is closed) is the middleware's own 401.
    pool.close().await;
    let failed = router(pool).oneshot(request("t1")?).await?;
    assert_eq!(failed.status(), 401);
    Ok(())
}

/// The fault the middleware used to turn into a logout: the database is
/// restored by rename under the running app (DELETE journal, watchdog off).
/// The session lookup's write on the old file fails with 1032 (fatal); the
/// middleware answers 401 with the mark, the layer reports it, starts the
/// heal and sends 503 with `Retry-After`, never 401; the retry is served
/// from the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swallowed_session_error_is_503_during_a_heal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, http, mut exits) = open_app(db.options()).await?;
    let token = http.post("/login", "ann").await?.body;
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    assert_eq!(http.get_with("/me", &headers).await?.body, "ann");
    warm(&live.pool()).await?;

    // The backup: the same application's database, ann's session in it.
    restore_by_rename(
        &db,
        "INSERT INTO sessions(token, user) VALUES (?, 'ann')",
        &token,
    )
    .await?;

    let failed = http.get_with("/me", &headers).await?;
    assert_eq!(failed.status, 503, "not the middleware's 401: {failed:?}");
    assert_eq!(failed.headers["retry-after"], "1", "{failed:?}");
    within("the heal", live.healed()).await?;
    assert_eq!(live.generation(), 1, "{:?}", live.status());
    let again = http.get_with("/me", &headers).await?;
    assert_eq!(
        (again.status.as_u16(), again.body.as_str()),
        (200, "ann"),
        "{again:?}"
    );
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

/// A transient fault in the middleware: another process holds the write
/// lock, the session lookup's write gets SQLITE_BUSY. 503 with
/// `Retry-After` instead of 401, and nothing is healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_session_lookup_is_503_not_401() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let options = db
        .options()
        .busy_timeout(std::time::Duration::from_millis(50));
    let (live, http, mut exits) = open_app(options.clone()).await?;
    let token = http.post("/login", "ann").await?.body;
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];

    let lock = layer_support::WriteLock::take(options).await?;
    let locked = http.get_with("/me", &headers).await?;
    assert_eq!(locked.status, 503, "not the middleware's 401: {locked:?}");
    assert_eq!(locked.headers["retry-after"], "1", "{locked:?}");
    lock.release().await?;
    assert_eq!(http.get_with("/me", &headers).await?.body, "ann");
    assert_eq!(live.generation(), 0);
    assert!(!live.is_healing());
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

/// What `#[sqlx::test]` does after every test (it deletes the database
/// while the server still runs), done mid-test: the next write fails with
/// 1032 on the unlinked file, the mark reaches the layer, the policy is told
/// about a fatal error, and nothing heals or exits (a give-up would run the
/// default exit action and end this test binary). The generation stays 0.
#[sqlx::test(migrations = "examples/adopt/migrations")]
async fn a_deleted_test_database_is_never_healed(pool: SqlitePool) -> TestResult {
    let path: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&pool)
            .await?;
    let live = LivePool::fixed(pool.clone());
    let app = example::app(AppState {
        live: live.clone(),
        limits: Limits { max_note_len: 16 },
    });
    let http = Http::new(serve(app).await?);
    assert_eq!(http.post("/notes", "before").await?.status, 201);

    std::fs::remove_file(&path)?;
    // Which connection serves it is sqlx's choice: one opened before the
    // deletion fails with 1032 (fatal, 503); a new one opens a new, empty
    // file at the path and fails with "no such table" (500). Either way the
    // request fails, and nothing is decided.
    let failed = http.post("/notes", "after").await?;
    assert!(
        failed.status == 503 || failed.status == 500,
        "the write failed: {failed:?}"
    );
    assert_eq!(failed.body, "database error\n");

    assert!(!live.is_healing(), "a fixed pool never starts a heal");
    assert_eq!(live.generation(), 0);
    assert!(matches!(
        live.status(),
        PoolStatus::Live { generation: 0, .. }
    ));
    assert!(!live.has_given_up());
    // Errors keep being answered, and nothing is decided.
    assert!(http.post("/notes", "again").await?.status.is_server_error());
    assert_eq!(live.generation(), 0);
    Ok(())
}

/// The same application's database restored by rename under the running
/// app (watchdog off: the handler's mark is the only way the layer learns
/// of the fault). The write on the old file fails (503), the layer reports
/// it, the reopen runs the migrations on the restore (which predates them:
/// `_sqlx_migrations` appears), the policy swaps it in, and the next
/// requests are served from the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_healed_with_migrations_and_served() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Delete)?;
    let (live, http, mut exits) = open_app(db.options()).await?;
    assert_eq!(http.post("/notes", "before").await?.status, 201);
    warm(&live.pool()).await?;

    // The backup: the same application's database (its migrations applied).
    restore_by_rename(&db, "INSERT INTO notes(body) VALUES (?)", "from the backup").await?;

    let failed = http.post("/notes", "lost").await?;
    assert_eq!(failed.status, 503, "{failed:?}");
    within("the heal", live.healed()).await?;
    assert_eq!(live.generation(), 1, "{:?}", live.status());

    let list = http.get("/notes").await?;
    assert_eq!(list.body, r#"[{"body":"from the backup","id":1}]"#);
    let next = http.post("/notes", "after").await?;
    assert_eq!(next.status, 201, "{next:?}");
    assert_eq!(next.body, r#"{"id":2}"#);
    assert_eq!(count_in_file(&db.path).await?, 2);
    let check = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&db.path)).await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&check)
        .await?;
    check.close().await;
    assert_eq!(
        applied as usize,
        example::MIGRATOR.iter().count(),
        "the migrations are recorded once"
    );
    assert_eq!(exits.count_now(), 0);
    Ok(())
}

/// The example binary on a real WAL file, its directory deleted: writes
/// acknowledged before (and any after) the deletion are in the rescue file,
/// the reopen cannot reattach anything, and the process drains and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_rescues_and_exits_1_when_its_directory_is_deleted() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let db_path = db.path.display().to_string();
    let mut example = Example::start_named("adopt", &["--db", &db_path]).await?;
    let http = Http::new(example.addr);
    let mut acknowledged = 1; // the app's seed
    for body in ["one", "two", "three"] {
        let created = http.post("/notes", body).await?;
        assert_eq!(created.status, 201, "{created:?}");
        acknowledged += 1;
    }
    assert_eq!(http.get("/readyz").await?.status, 200);

    db.rm_rf_dir()?;
    // WAL: a write into the unlinked file is acknowledged without an error,
    // unless the watchdog (1 s) has already seen the file gone.
    if let Ok(late) = http.post("/notes", "after the deletion").await
        && late.status == 201
    {
        acknowledged += 1;
    }

    let gave_up = example.logged("exiting so the supervisor restarts").await?;
    assert!(gave_up.contains("no database file at"), "{gave_up}");
    let status = example.wait().await?;
    assert_eq!(status.code(), Some(1), "stderr:\n{}", example.log());

    // In the crate's private rescue directory, above the removed one.
    let rescues_dir = common::shared_rescues_dir(db.root.path())?;
    let rescues: Vec<_> = std::fs::read_dir(&rescues_dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().contains(".rescued-"))
        .collect();
    assert_eq!(rescues.len(), 1, "{rescues:?}\nstderr:\n{}", example.log());
    assert_eq!(count_in_file(&rescues[0]).await?, acknowledged);
    Ok(())
}
