//! The notes example (`examples/axum.rs`) on MariaDB, run as a binary
//! against a real primary and GTID replica behind a TCP proxy (the VIP),
//! through the switchover of `mysql-failure-modes.md` S2: the old primary
//! stays up and only turns read-only, no connection breaks, and the proxy
//! keeps leading to it for 8 s before the test repoints it.
//!
//! What must hold: no readiness `pass` while the proxy leads to the demoted
//! node; nothing acknowledged then; after the repoint the service heals in
//! place (no exit, generation 1) with no failing write needed; every 201 is
//! a note stored on the new primary. How long the repoint took to the first
//! 201 is printed, not asserted.

mod common;
mod example_support;
mod layer_support;
mod my_cluster;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::TestResult;
use example_support::Example;
use layer_support::{Http, Reply, within};
use my_cluster::{Cluster, Node};
use sqlx::{Connection as _, MySqlConnection};

/// Where the switchover is, for the writer's samples.
const BEFORE: u8 = 0;
/// The switchover is done and the proxy still leads to the demoted node.
const PINNED: u8 = 1;
/// The proxy leads to the new primary.
const REPOINTED: u8 = 2;

/// One POST of the background writer.
struct Sample {
    body: String,
    sent: u8,
    answered: u8,
    /// When the request was sent, since the test started.
    sent_at: Duration,
    /// When the answer came.
    at: Duration,
    reply: Reply,
}

fn id_of(reply: &Reply) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let value: serde_json::Value = serde_json::from_str(&reply.body)?;
    value["id"]
        .as_i64()
        .ok_or_else(|| format!("no id in {reply:?}").into())
}

/// `/readyz`'s `status`, `state` and `generation`.
fn health_of(
    reply: &Reply,
) -> Result<(String, String, u64), Box<dyn std::error::Error + Send + Sync>> {
    let value: serde_json::Value = serde_json::from_str(&reply.body)?;
    let status = value["status"].as_str().ok_or("no status")?.to_owned();
    let state = value["state"].as_str().ok_or("no state")?.to_owned();
    let generation = value["generation"].as_u64().ok_or("no generation")?;
    Ok((status, state, generation))
}

/// Every row of `notes` on `node`, by body, read straight from the node.
async fn rows_on(cluster: &Cluster, node: Node) -> sqlx::Result<HashMap<String, i64>> {
    let mut conn = MySqlConnection::connect(&cluster.admin_url(node)).await?;
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    Ok(rows.into_iter().map(|(id, body)| (body, id)).collect())
}

async fn admin<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    op: impl FnOnce(&Cluster) -> Result<T, my_cluster::ClusterError> + Send + 'static,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    let cluster = Arc::clone(cluster);
    Ok(tokio::task::spawn_blocking(move || op(&cluster)).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_with_the_old_primary_up_heals_in_place() -> TestResult {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await??);
    let mut example = Example::start(&["--db", &cluster.url()]).await?;
    let http = Arc::new(Http::new(example.addr));
    let start = Instant::now();
    let mut acknowledged: Vec<(i64, String)> = Vec::new();

    for i in 0..20 {
        let body = format!("before {i}");
        let reply = http.post("/notes", body.clone()).await?;
        assert_eq!(reply.status, 201, "{reply:?}");
        acknowledged.push((id_of(&reply)?, body));
    }
    let ready = http.get("/readyz").await?;
    assert_eq!(health_of(&ready)?.0, "pass", "{ready:?}");

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
                let sent_at = start.elapsed();
                let reply = http.post("/notes", body.clone()).await?;
                let answered = phase.load(Ordering::SeqCst);
                samples.push(Sample {
                    body,
                    sent,
                    answered,
                    sent_at,
                    at: start.elapsed(),
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
    assert_eq!(new_primary, Node::M2);
    assert_eq!(
        cluster.target(),
        Node::M1,
        "the proxy still leads to the demoted node"
    );
    assert!(
        admin(&cluster, |c| c.read_only(Node::M1)).await?,
        "m1 is read-only now"
    );

    // The pool finds its server read-only (a write's 1290, confirmed, or
    // the background check): degraded, not healed, while the endpoint
    // leads to the same server.
    example
        .logged("the database does not take writes: serving reads")
        .await?;
    // 8 s with the endpoint on the demoted node (the scenario's length);
    // readiness is sampled across it.
    let pinned_until = Instant::now() + Duration::from_secs(8);
    let mut pinned_ready = Vec::new();
    while Instant::now() < pinned_until {
        let reply = http.get("/readyz").await?;
        let (status, state, generation) = health_of(&reply)?;
        assert_ne!(status, "pass", "readiness pass while pinned: {reply:?}");
        assert_eq!(generation, 0, "{reply:?}");
        pinned_ready.push(format!("{status}/{state}"));
        let live = http.get("/livez").await?;
        assert_eq!(live.status, 200, "liveness while pinned: {live:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reply = http.post("/notes", "pinned").await?;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.headers["retry-after"], "1", "{reply:?}");
    // Reads are served meanwhile.
    let reply = http.get("/notes").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !example.log().contains("reopening the pool once"),
        "healed while pinned"
    );

    cluster.repoint(new_primary);
    let repointed = start.elapsed();
    phase.store(REPOINTED, Ordering::SeqCst);
    let healed = example
        .logged("database pool reopened and swapped in")
        .await?;
    let swapped = start.elapsed();
    assert!(healed.contains("generation=1"), "{healed}");
    let ready = http.get("/readyz").await?;
    assert_eq!(
        health_of(&ready)?,
        ("pass".into(), "healthy".into(), 1),
        "{ready:?}"
    );
    for i in 0..20 {
        let body = format!("after {i}");
        let reply = http.post("/notes", body.clone()).await?;
        assert_eq!(reply.status, 201, "{reply:?}");
        acknowledged.push((id_of(&reply)?, body));
    }

    // Load for 2 s more (the scenario's length, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    let first_201 = samples
        .iter()
        .filter(|s| s.sent == REPOINTED && s.reply.status == 201)
        .map(|s| s.at)
        .min()
        .ok_or("no 201 after the repoint")?;
    let failed_after = samples
        .iter()
        .filter(|s| s.sent == REPOINTED && s.reply.status != 201)
        .count();
    let after_swap: Vec<&Sample> = samples.iter().filter(|s| s.sent_at > swapped).collect();
    let failed_after_swap = after_swap.iter().filter(|s| s.reply.status != 201).count();
    let mut ready_counts: HashMap<&str, usize> = HashMap::new();
    for answer in &pinned_ready {
        *ready_counts.entry(answer.as_str()).or_default() += 1;
    }
    let count = |status: u16| samples.iter().filter(|s| s.reply.status == status).count();
    println!(
        "writer: {} requests, {} answered 201, {} answered 503; repoint -> swap {:?}, \
         repoint -> first 201 {:?}; {failed_after} failed after the repoint, \
         {failed_after_swap} of {} sent after the swap failed; readiness while pinned: \
         {ready_counts:?}",
        samples.len(),
        count(201),
        count(503),
        swapped - repointed,
        first_201 - repointed,
        after_swap.len(),
    );
    assert_eq!(failed_after_swap, 0, "writes failed after the swap");

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
