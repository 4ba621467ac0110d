//! The crash-restart path, to compare with the heal (`heal/with_rescue` in
//! `benches/heal.rs`).
//!
//! `restart/axum_example_to_first_200`: from spawning the notes example
//! (`examples/axum.rs`, release build) as a process until its first 200 on
//! `/health`: process start, pool open, bind, then `GET /health` every 1 ms
//! until it answers 200. The process is then killed (SIGKILL, a crash) and
//! the next iteration restarts it on the same database file. A supervisor's
//! restart delay (systemd's `RestartSec=`, Kubernetes' back-off) comes on
//! top in production and is not counted here: this is the restart path's
//! lower bound.
//!
//! The example is built by the bench (`cargo build --example axum`, the
//! bench's profile and features), so it is never stale. After the group the
//! bench prints the ratio restart / heal from criterion's saved medians, when
//! `heal/with_rescue` has been run (`cargo bench` runs `heal` first).

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::runtime::Runtime;

const RETRY: Duration = Duration::from_millis(1);
const BREAKDOWN_RUNS: usize = 21;

/// `target/<profile>`, from this bench's own path
/// (`target/<profile>/deps/restart-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the bench runs from target/<profile>/deps")
        .to_owned()
}

/// Builds `target/<profile>/examples/axum` with this bench's profile and
/// features (a no-op when it is fresh) and returns its path.
fn example_binary() -> PathBuf {
    let profile_dir = profile_dir();
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let mut features = vec!["axum"];
    for (on, feature) in [
        (cfg!(feature = "fs-watch"), "fs-watch"),
        (cfg!(feature = "tonic"), "tonic"),
        (cfg!(feature = "systemd"), "systemd"),
    ] {
        if on {
            features.push(feature);
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--example",
            "axum",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--features")
        .arg(features.join(","))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the axum example failed");
    let binary = profile_dir
        .join("examples")
        .join(format!("axum{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

/// One crash-restart: spawn, wait for `listening on`, poll `/health` until
/// 200, then kill.
struct Restarted {
    /// From the spawn to the 200: the measured figure.
    to_200: Duration,
    /// From the spawn to `listening on`.
    to_listening: Duration,
    /// `GET /health` requests sent, the one answered 200 included.
    polls: u32,
}

async fn restart(binary: &Path, db: &Path) -> Restarted {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .arg("--addr")
        .arg("127.0.0.1:0")
        .arg("--db")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the example");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next_line()
            .await
            .expect("read stdout")
            .expect("the example ended before it was listening");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse().expect("an address");
        }
    };
    let to_listening = start.elapsed();
    let uri: http::Uri = format!("http://{addr}/health").parse().expect("uri");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut polls = 0;
    loop {
        polls += 1;
        let request = http::Request::get(uri.clone())
            .body(Full::default())
            .expect("a valid request");
        if let Ok(response) = client.request(request).await {
            let ok = response.status() == 200;
            let _ = response.into_body().collect().await;
            if ok {
                break;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    let to_200 = start.elapsed();
    child.kill().await.expect("kill the example");
    Restarted {
        to_200,
        to_listening,
        polls,
    }
}

/// The median criterion saved for `group/function`, in nanoseconds, and how
/// long ago it was saved.
fn saved_median(id: &str) -> Option<(f64, Duration)> {
    let root = match std::env::var_os("CRITERION_HOME") {
        Some(home) => PathBuf::from(home),
        None => profile_dir().parent()?.join("criterion"),
    };
    let file = root.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&file).ok()?;
    let age = std::fs::metadata(&file)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((json["median"]["point_estimate"].as_f64()?, age))
}

fn restarts(c: &mut Criterion) {
    let binary = example_binary();
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("notes.db");
    // The first start creates the file; every measured one reopens it.
    let _ = rt.block_on(restart(&binary, &db));

    let mut group = c.benchmark_group("restart");
    group.sample_size(10);
    group.bench_function("axum_example_to_first_200", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += restart(&binary, &db).await.to_200;
                }
                total
            })
        })
    });
    group.finish();

    // Where the time goes, over a few more restarts.
    let runs: Vec<Restarted> = rt.block_on(async {
        let mut runs = Vec::new();
        for _ in 0..BREAKDOWN_RUNS {
            runs.push(restart(&binary, &db).await);
        }
        runs
    });
    let median = |mut values: Vec<Duration>| {
        values.sort();
        values[values.len() / 2]
    };
    eprintln!(
        "restart/breakdown over {BREAKDOWN_RUNS} restarts: median spawn→listening {:?}, \
         median spawn→200 {:?}, polls per restart {}..={}",
        median(runs.iter().map(|run| run.to_listening).collect()),
        median(runs.iter().map(|run| run.to_200).collect()),
        runs.iter().map(|run| run.polls).min().unwrap_or(0),
        runs.iter().map(|run| run.polls).max().unwrap_or(0),
    );

    match (
        saved_median("restart/axum_example_to_first_200"),
        saved_median("heal/with_rescue"),
    ) {
        (Some((restart, _)), Some((heal, age))) => eprintln!(
            "restart/heal: restart median {:.2} ms / heal/with_rescue median {:.3} ms \
             (saved {} s ago) = heal {:.1}x faster",
            restart / 1e6,
            heal / 1e6,
            age.as_secs(),
            restart / heal
        ),
        _ => eprintln!("restart/heal: run `cargo bench --bench heal` first for the ratio"),
    }
}

criterion_group!(benches, restarts);
criterion_main!(benches);
