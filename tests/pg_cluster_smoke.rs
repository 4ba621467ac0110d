//! The PostgreSQL harness itself: a real primary + hot standby behind the
//! proxy, and the faults the other tests build on. Needs the PostgreSQL server
//! binaries (`.ci/run` installs them); without them every test here fails.
#![cfg(feature = "postgres")]

mod pg_cluster;

use std::time::Duration;

use pg_cluster::{Cluster, Node, StopMode};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Failure bound for anything that should happen promptly.
const BOUND: Duration = Duration::from_secs(30);

async fn pool(url: &str) -> sqlx::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

async fn insert(pool: &PgPool, v: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO t (v) VALUES ($1)")
        .bind(v)
        .execute(pool)
        .await
        .map(drop)
}

async fn create_table(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query("CREATE TABLE t (id bigserial PRIMARY KEY, v text NOT NULL)")
        .execute(pool)
        .await
        .map(drop)
}

async fn count(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(pool)
        .await
}

fn sqlstate(result: sqlx::Result<()>) -> Option<String> {
    let err = result.err()?;
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
        .or_else(|| Some(format!("not a database error: {err}")))
}

#[tokio::test]
async fn a_pool_through_the_proxy_writes_to_the_primary() -> TestResult {
    let cluster = Cluster::start().expect("start a PostgreSQL primary + standby");
    assert_eq!(cluster.primary(), Node::N1);
    assert!(!cluster.in_recovery(Node::N1)?);
    assert!(cluster.in_recovery(Node::N2)?);

    let pool = pool(&cluster.url()).await?;
    create_table(&pool).await?;
    insert(&pool, "one").await?;
    assert_eq!(count(&pool).await?, 1);
    assert!(cluster.accepted(Node::N1) >= 1);
    assert_eq!(cluster.accepted(Node::N2), 0);
    assert!(cluster.app_backends(Node::N1)? >= 1);

    // The standby streams it.
    until_count(&pool_with_one(&cluster.direct_url(Node::N2)).await?, 1).await
}

#[tokio::test]
async fn after_a_switchover_the_old_node_is_read_only_until_the_proxy_moves() -> TestResult {
    let cluster = Cluster::start().expect("start a PostgreSQL primary + standby");
    let before = pool(&cluster.url()).await?;
    create_table(&before).await?;
    insert(&before, "before").await?;
    before.close().await;

    assert_eq!(cluster.switchover()?, Node::N2);
    assert_eq!(cluster.primary(), Node::N2);
    assert_eq!(cluster.target(), Node::N1, "switchover must not repoint");
    assert!(cluster.in_recovery(Node::N1)?, "the old primary follows");
    assert!(!cluster.in_recovery(Node::N2)?);

    // Through the proxy, still at the demoted node: connecting and reading work.
    let pinned = pool(&cluster.url()).await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pinned)
        .await?;
    assert!(in_recovery);
    assert_eq!(count(&pinned).await?, 1);
    assert_eq!(
        sqlstate(insert(&pinned, "pinned").await).as_deref(),
        Some("25006")
    );

    cluster.repoint(Node::N2);
    let fresh = pool(&cluster.url()).await?;
    insert(&fresh, "after").await?;
    assert_eq!(count(&fresh).await?, 2);
    assert!(cluster.accepted(Node::N2) >= 1);
    // The pool built before the repoint stays where it was.
    assert_eq!(
        sqlstate(insert(&pinned, "still pinned").await).as_deref(),
        Some("25006")
    );
    Ok(())
}

#[tokio::test]
async fn a_black_hole_holds_a_query_until_lifted() -> TestResult {
    let cluster = Cluster::start().expect("start a PostgreSQL primary + standby");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url())
        .await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);

    cluster.black_hole(true);
    let query = tokio::spawn({
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT 42")
                .fetch_one(&pool)
                .await
        }
    });
    // The signal: the client's bytes are parked at the hole.
    tokio::time::timeout(BOUND, cluster.until_held(1))
        .await
        .map_err(|_| "nothing reached the black hole")?;
    assert!(
        !query.is_finished(),
        "a query finished through the black hole"
    );

    cluster.black_hole(false);
    let answer = tokio::time::timeout(BOUND, query)
        .await
        .map_err(|_| "the query stayed held after the hole was lifted")???;
    assert_eq!(answer, 42);
    assert_eq!(cluster.held(), 0);
    for i in 0..10 {
        let echoed: i32 = sqlx::query_scalar("SELECT $1")
            .bind(i)
            .fetch_one(&pool)
            .await?;
        assert_eq!(echoed, i);
    }
    Ok(())
}

#[tokio::test]
async fn a_read_only_primary_refuses_writes_but_is_not_in_recovery() -> TestResult {
    let cluster = Cluster::start().expect("start a PostgreSQL primary + standby");
    let pool = pool(&cluster.url()).await?;
    create_table(&pool).await?;
    insert(&pool, "writable").await?;

    cluster.set_read_only(true)?;
    // On the pool's existing connection as well as on a new one.
    assert_eq!(
        sqlstate(insert(&pool, "read-only").await).as_deref(),
        Some("25006")
    );
    let fresh = pool_with_one(&cluster.url()).await?;
    assert_eq!(
        sqlstate(insert(&fresh, "read-only").await).as_deref(),
        Some("25006")
    );
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pool)
        .await?;
    assert!(!in_recovery);

    cluster.set_read_only(false)?;
    insert(&pool, "writable again").await?;
    assert_eq!(count(&pool).await?, 2);
    Ok(())
}

async fn pool_with_one(url: &str) -> sqlx::Result<PgPool> {
    PgPoolOptions::new().max_connections(1).connect(url).await
}

#[tokio::test]
async fn a_stopped_node_through_the_proxy_is_a_reset_and_comes_back() -> TestResult {
    let cluster = Cluster::start().expect("start a PostgreSQL primary + standby");
    let pool = pool(&cluster.url()).await?;
    create_table(&pool).await?;
    assert!(cluster.app_backends(Node::N1)? >= 1);
    assert!(cluster.terminate_app_backends()? >= 1);
    assert_eq!(cluster.app_backends(Node::N1)?, 0);

    cluster.stop_node(Node::N1, StopMode::Fast)?;
    let err = pool_with_one(&cluster.url())
        .await
        .expect_err("connected to a stopped node");
    match &err {
        sqlx::Error::Io(io) => assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("expected Io(ConnectionReset), got {other:?}"),
    }
    assert!(cluster.resets() >= 1);

    cluster.start_node(Node::N1)?;
    insert(&pool_with_one(&cluster.url()).await?, "back").await?;
    Ok(())
}

#[tokio::test]
async fn a_switchover_rewinds_an_old_primary_that_diverged() -> TestResult {
    let cluster = Cluster::start().expect("start a PostgreSQL primary + standby");
    let n1 = pool_with_one(&cluster.direct_url(Node::N1)).await?;
    create_table(&n1).await?;
    insert(&n1, "on both").await?;
    let n2 = pool_with_one(&cluster.direct_url(Node::N2)).await?;
    until_count(&n2, 1).await?;
    n2.close().await;

    // n1 goes on alone, then crashes; n2 never sees its last row.
    cluster.stop_node(Node::N2, StopMode::Immediate)?;
    let mut conn = n1.acquire().await?;
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO t (v) VALUES ('only on n1')")
        .execute(&mut *conn)
        .await?;
    drop(conn);
    n1.close().await;
    cluster.stop_node(Node::N1, StopMode::Immediate)?;

    cluster.start_node(Node::N2)?;
    assert_eq!(cluster.switchover()?, Node::N2);
    // n1 follows n2 again, so its own last row was rewound away.
    assert!(cluster.in_recovery(Node::N1)?);
    until_count(&pool_with_one(&cluster.direct_url(Node::N2)).await?, 1).await?;
    until_count(&pool_with_one(&cluster.direct_url(Node::N1)).await?, 1).await?;
    Ok(())
}

/// Until `SELECT count(*) FROM t` is `n` (a standby replays asynchronously).
async fn until_count(pool: &PgPool, n: i64) -> TestResult {
    let mut last = None;
    let reached = tokio::time::timeout(BOUND, async {
        loop {
            match count(pool).await {
                Ok(c) if c == n => return,
                other => last = Some(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    reached.map_err(|_| format!("count never reached {n} (last: {last:?})").into())
}
