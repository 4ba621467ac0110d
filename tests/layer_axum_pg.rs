//! The notes example (`examples/axum.rs`) on PostgreSQL, run as a binary
//! against a real primary and streaming standby behind a TCP proxy (the k8s
//! Service), through the realistic switchover of
//! `postgres-failure-modes.md` S1: the primary is stopped fast, the standby
//! promoted, the old primary restarted as a standby, and the proxy keeps
//! leading to the demoted node until the test repoints it.
//!
//! What must hold: every 201 is a note stored on the new primary; nothing is
//! acknowledged while the proxy leads to the demoted node; `/health` never
//! says `pass` then; after the repoint the service heals in place (no exit,
//! generation 1) and writes succeed again. Then two faults through the
//! example's `/livez` and `/readyz`: a 40 s wait for a primary, and 20 s of
//! a primary read-only in place.

mod common;
mod example_support;
mod layer_support;
mod pg_cluster;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::TestResult;
use example_support::Example;
use layer_support::{Http, Reply, within};
use pg_cluster::{Cluster, Node};
use sqlx::{Connection as _, PgConnection};

/// Where the switchover is, for the writer's samples.
const BEFORE: u8 = 0;
/// The switchover is done and the proxy still leads to the demoted node.
const PINNED: u8 = 1;
/// The proxy leads to the new primary.
const REPOINTED: u8 = 2;

/// One POST of the background writer.
struct Sample {
    body: String,
    /// The phase when the request was sent and when its answer came.
    sent: u8,
    answered: u8,
    took: Duration,
    reply: Reply,
}

/// `{"id":N}` of a 201.
fn id_of(reply: &Reply) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let value: serde_json::Value = serde_json::from_str(&reply.body)?;
    value["id"]
        .as_i64()
        .ok_or_else(|| format!("no id in {reply:?}").into())
}

/// `/health`'s `status` and `generation`.
fn health_of(reply: &Reply) -> Result<(String, u64), Box<dyn std::error::Error + Send + Sync>> {
    let value: serde_json::Value = serde_json::from_str(&reply.body)?;
    let status = value["status"].as_str().ok_or("no status")?.to_owned();
    let generation = value["generation"].as_u64().ok_or("no generation")?;
    Ok((status, generation))
}

/// Every row of `notes` on `node`, by body, read straight from the node.
async fn rows_on(cluster: &Cluster, node: Node) -> sqlx::Result<HashMap<String, i64>> {
    let mut conn = PgConnection::connect(&cluster.direct_url(node)).await?;
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    Ok(rows.into_iter().map(|(id, body)| (body, id)).collect())
}

/// A blocking cluster operation, off the runtime's workers.
async fn admin<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    op: impl FnOnce(&Cluster) -> Result<T, pg_cluster::ClusterError> + Send + 'static,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    let cluster = Arc::clone(cluster);
    Ok(tokio::task::spawn_blocking(move || op(&cluster)).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_heals_in_place_and_every_201_is_on_the_new_primary() -> TestResult {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let mut example = Example::start(&["--db", &cluster.url(), "--failover-secs", "60"]).await?;
    let http = Arc::new(Http::new(example.addr));
    // (id, body) of every 201.
    let mut acknowledged: Vec<(i64, String)> = Vec::new();

    for i in 0..20 {
        let body = format!("before {i}");
        let reply = http.post("/notes", body.clone()).await?;
        assert_eq!(reply.status, 201, "{reply:?}");
        acknowledged.push((id_of(&reply)?, body));
    }
    let health = http.get("/health").await?;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health_of(&health)?, ("pass".to_owned(), 0), "{health:?}");

    // A writer that keeps posting through the switchover; every answer it
    // gets is checked below.
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, phase, stop) = (Arc::clone(&http), Arc::clone(&phase), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("load {i}");
                i += 1;
                let sent = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let reply = http.post("/notes", body.clone()).await?;
                let answered = phase.load(Ordering::SeqCst);
                samples.push(Sample {
                    body,
                    sent,
                    answered,
                    took: started.elapsed(),
                    reply,
                });
                // Pacing of the load (about 100 writes/s), not a synchronisation.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, layer_support::BoxError>(samples)
        })
    };

    let new_primary = admin(&cluster, Cluster::switchover).await?;
    phase.store(PINNED, Ordering::SeqCst);
    assert_eq!(new_primary, Node::N2);
    assert_eq!(
        cluster.target(),
        Node::N1,
        "the proxy still leads to the demoted node"
    );
    assert!(
        admin(&cluster, |c| c.in_recovery(Node::N1)).await?,
        "n1 is a standby now"
    );

    // The pool found its server demoted (a write's 25006, a refused new
    // connection or the background check) and the heal waits for a
    // writable primary.
    example.logged("reopening the pool once").await?;
    // While the proxy leads to the demoted node, /health never passes:
    // sampled 20 times across the pinned window (the pacing only spreads
    // the samples; the window lasts until the repoint below).
    let mut pinned_health = Vec::new();
    for _ in 0..20 {
        let reply = http.get("/health").await?;
        let (status, generation) = health_of(&reply)?;
        match (reply.status.as_u16(), status.as_str()) {
            (503, "fail") | (200, "warn") => {}
            _ => panic!("/health while the proxy leads to the demoted node: {reply:?}"),
        }
        assert_eq!(generation, 0, "{reply:?}");
        pinned_health.push(status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes sent now have nowhere to go: 503, never a 201.
    for i in 0..3 {
        let reply = http.post("/notes", format!("pinned {i}")).await?;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.headers["retry-after"], "1", "{reply:?}");
    }
    assert!(!example.log().contains("exiting so the supervisor restarts"));

    phase.store(REPOINTED, Ordering::SeqCst);
    cluster.repoint(new_primary);
    let healed = example
        .logged("database pool reopened and swapped in")
        .await?;
    assert!(healed.contains("generation=1"), "{healed}");
    let health = http.get("/health").await?;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health_of(&health)?, ("pass".to_owned(), 1), "{health:?}");
    for i in 0..20 {
        let body = format!("after {i}");
        let reply = http.post("/notes", body.clone()).await?;
        assert_eq!(reply.status, 201, "{reply:?}");
        acknowledged.push((id_of(&reply)?, body));
    }

    stop.store(true, Ordering::SeqCst);
    let samples = within("the writer's last request", writer).await???;
    for sample in &samples {
        match sample.reply.status.as_u16() {
            201 => {
                assert!(
                    !(sample.sent == PINNED && sample.answered == PINNED),
                    "a 201 while the proxy led to the demoted node: {:?}",
                    sample.reply
                );
                acknowledged.push((id_of(&sample.reply)?, sample.body.clone()));
            }
            503 => assert_eq!(sample.reply.headers["retry-after"], "1"),
            _ => panic!("the writer got {:?}", sample.reply),
        }
    }
    // For the log: how the switchover looked from the writer.
    let count = |status: u16| samples.iter().filter(|s| s.reply.status == status).count();
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "writer: {} requests, {} answered 201, {} answered 503, slowest {slowest:?}; \
         /health while pinned: {pinned_health:?}",
        samples.len(),
        count(201),
        count(503),
    );

    // Every acknowledged note, with its id, is on the new primary.
    let stored = within("reading the new primary", rows_on(&cluster, new_primary)).await??;
    let missing: Vec<&(i64, String)> = acknowledged
        .iter()
        .filter(|(id, body)| stored.get(body) != Some(id))
        .collect();
    assert_eq!(
        missing.len(),
        0,
        "{} of {} acknowledged notes are not on the new primary: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
    // The service healed in place: the same process, still serving, and it
    // stops cleanly.
    let log = example.log();
    assert!(!log.contains("exiting so the supervisor restarts"), "{log}");
    assert_eq!(
        log.matches("database pool reopened and swapped in").count(),
        1,
        "{log}"
    );
    example.terminate().await?;
    let status = example.wait().await?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", example.log());
    Ok(())
}

/// `state` of a `/livez` or `/readyz` JSON body.
fn state_of(reply: &Reply) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let value: serde_json::Value = serde_json::from_str(&reply.body)?;
    Ok(value["state"].as_str().ok_or("no state")?.to_owned())
}

/// Through the example binary: the proxy left on the demoted node for 40 s
/// (a slow orchestrator). With the default reopen timeout the wait has no
/// deadline: `/livez` stays 200 (a restart would wait the same way),
/// `/readyz` 503 for the whole wait, no exit; after the repoint a 201
/// arrives (the time to it is printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forty_second_wait_for_a_primary_is_not_live_failing_and_ends_in_a_201() -> TestResult {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let mut example = Example::start(&["--db", &cluster.url()]).await?;
    let http = Arc::new(Http::new(example.addr));
    let reply = http.post("/notes", "before").await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    let new_primary = admin(&cluster, Cluster::switchover).await?;
    // A write reaches the demoted node (its new connection is refused).
    let reply = http.post("/notes", "pinned").await?;
    assert_eq!(reply.status, 503, "{reply:?}");
    example.logged("reopening the pool once").await?;
    let waiting = Instant::now();
    let mut states = Vec::new();
    while waiting.elapsed() < Duration::from_secs(40) {
        let live = http.get("/livez").await?;
        assert_eq!(live.status, 200, "/livez while waiting: {live:?}");
        let ready = http.get("/readyz").await?;
        assert_eq!(ready.status, 503, "/readyz while waiting: {ready:?}");
        let state = state_of(&ready)?;
        if states.last() != Some(&state) {
            states.push(state);
        }
        // Pacing of the samples across the 40 s fault, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("awaiting_primary"),
        "{states:?}"
    );
    assert!(!example.log().contains("exiting so the supervisor restarts"));
    cluster.repoint(new_primary);
    let repointed = Instant::now();
    let first_201 = within("a 201 after the repoint", async {
        loop {
            let reply = http.post("/notes", "after").await?;
            if reply.status == 201 {
                return Ok::<_, layer_support::BoxError>(repointed.elapsed());
            }
            // Pacing of the retries, as a client's would be.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    eprintln!(
        "waited {:?} for a primary (/readyz states {states:?}); first 201 {first_201:?} after the repoint",
        repointed - waiting
    );
    let ready = http.get("/readyz").await?;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(!example.log().contains("exiting so the supervisor restarts"));
    example.terminate().await?;
    let status = example.wait().await?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", example.log());
    Ok(())
}

/// Through the example binary: the primary read-only in place for 20 s.
/// Reads 200, writes 503 with `Retry-After`, `/readyz` 200 `read_only`,
/// `/livez` 200, no heal, no exit; writes 201 again after the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_read_only_in_place_serve_reads_and_refuse_writes() -> TestResult {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let mut example = Example::start(&["--db", &cluster.url()]).await?;
    let http = Arc::new(Http::new(example.addr));
    let reply = http.post("/notes", "before").await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    admin(&cluster, |c| c.set_read_only(true)).await?;
    let started = Instant::now();
    let mut ready_states = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        let read = http.get("/notes").await?;
        assert_eq!(read.status, 200, "a read while read-only: {read:?}");
        let write = http.post("/notes", "refused").await?;
        assert_eq!(write.status, 503, "a write while read-only: {write:?}");
        assert!(write.headers.contains_key("retry-after"), "{write:?}");
        let live = http.get("/livez").await?;
        assert_eq!(live.status, 200, "{live:?}");
        let ready = http.get("/readyz").await?;
        assert_eq!(ready.status, 200, "/readyz while read-only: {ready:?}");
        let state = state_of(&ready)?;
        if ready_states.last() != Some(&state) {
            ready_states.push(state);
        }
        // Pacing of the samples across the 20 s fault, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ready_states.last().map(String::as_str),
        Some("read_only"),
        "{ready_states:?}"
    );
    admin(&cluster, |c| c.set_read_only(false)).await?;
    let reset = Instant::now();
    within("a 201 after the reset", async {
        loop {
            if http.post("/notes", "after").await?.status == 201 {
                return Ok::<_, layer_support::BoxError>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    eprintln!(
        "/readyz states {ready_states:?}; writes back {:?} after the reset",
        reset.elapsed()
    );
    let log = example.log();
    assert!(!log.contains("reopening the pool once"), "no heal: {log}");
    assert!(!log.contains("exiting so the supervisor restarts"), "{log}");
    example.terminate().await?;
    let status = example.wait().await?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", example.log());
    Ok(())
}

/// Through the example binary: `idle_session_timeout = 1s` on the app's
/// role, so the server ends every pooled session that idles for a second
/// (FATAL 57P05). Between rounds the test waits until the server has ended
/// them all (no app backend left: the signal), then asks every health route
/// and writes: no health route ever answers 503 while writes succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_timeout_never_makes_a_health_route_503() -> TestResult {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let mut su = PgConnection::connect(&cluster.superuser_url(Node::N1)).await?;
    sqlx::query("ALTER ROLE app SET idle_session_timeout = '1s'")
        .execute(&mut su)
        .await?;
    let mut example = Example::start(&["--db", &cluster.url()]).await?;
    let http = Http::new(example.addr);
    let mut answers = Vec::new();
    for round in 0..4 {
        within("the server to end the idle sessions", async {
            while admin(&cluster, |c| c.app_backends(Node::N1)).await? > 0 {
                // Polling the server's own view: nothing signals it otherwise.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, layer_support::BoxError>(())
        })
        .await??;
        for path in ["/livez", "/readyz", "/health"] {
            let reply = http.get(path).await?;
            assert_ne!(reply.status, 503, "round {round} {path}: {reply:?}");
            answers.push(format!("{round} {path} {}", reply.status.as_u16()));
        }
        let write = http.post("/notes", "while sessions time out").await?;
        assert_eq!(write.status, 201, "round {round}: {write:?}");
    }
    eprintln!("health answers: {answers:?}");
    sqlx::query("ALTER ROLE app RESET idle_session_timeout")
        .execute(&mut su)
        .await?;
    assert!(
        !example.log().contains("reopening the pool once"),
        "{}",
        example.log()
    );
    example.terminate().await?;
    assert_eq!(example.wait().await?.code(), Some(0), "{}", example.log());
    Ok(())
}
