//! A SQLite database whose directory cannot be written (a wrong `chown` at
//! deploy): degraded, not dead. Through the real example binary, run as an
//! unprivileged user (root writes anyway): writes get 503 + `Retry-After`
//! (1544 READONLY_DIRECTORY, never a 500), reads are served, readiness says
//! `read_only` and stays a 200 (routing reads away would make the outage
//! bigger), liveness stays 200, nothing is healed or exited; once the
//! directory can be written again, writes succeed and readiness is
//! `healthy`.

mod common;
mod example_support;
mod layer_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::TestResult;
use example_support::{BoxError, Example};
use layer_support::{Http, within};

/// `nobody`: an unprivileged user for the example when the test is root.
const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A directory the example's user owns, reachable by it.
fn data_dir() -> Result<(tempfile::TempDir, std::path::PathBuf), BoxError> {
    let root = tempfile::tempdir()?;
    chmod(root.path(), 0o755)?;
    let data = root.path().join("data");
    std::fs::create_dir(&data)?;
    if example_support::is_root() {
        std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY))?;
    }
    Ok((root, data))
}

async fn json(http: &Http, path: &str) -> Result<(u16, serde_json::Value), BoxError> {
    let answer = http.get(path).await?;
    println!("{path}: {} {}", answer.status, answer.body);
    Ok((answer.status.as_u16(), serde_json::from_str(&answer.body)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_written_is_read_only_not_dead() -> TestResult {
    let (_root, data) = data_dir()?;
    let db = data.join("notes.db").display().to_string();
    let mut example = Example::start_as_user(
        NOBODY,
        NOBODY,
        &["--db", &db, "--journal", "delete", "--watchdog-ms", "100"],
    )
    .await?;
    let http = Http::new(example.addr);
    let created = http.post("/notes", "before").await?;
    assert_eq!(created.status, 201, "{created:?}");

    // The deploy's wrong chown: the directory is no longer writable by the
    // service's user, so a DELETE-mode write cannot create its journal.
    chmod(&data, 0o555)?;
    let refused = http.post("/notes", "during").await?;
    assert_eq!(refused.status, 503, "{refused:?}\n{}", example.log());
    assert_eq!(refused.headers["retry-after"], "1", "{refused:?}");
    let read = http.get("/notes").await?;
    assert_eq!(read.status, 200, "{read:?}");
    assert!(read.body.contains("before"), "{read:?}");

    let (status, ready) = json(&http, "/readyz").await?;
    assert_eq!(
        (status, &ready["state"]),
        (200, &"read_only".into()),
        "{ready}"
    );
    assert_eq!(ready["status"], "warn");
    let output = ready["checks"]["sqlite:responseTime"][0]["output"]
        .as_str()
        .ok_or("no output")?;
    assert!(output.contains("directory cannot be written"), "{output}");
    assert!(!output.contains('/'), "a path in the output: {output}");
    let (status, live) = json(&http, "/livez").await?;
    assert_eq!(
        (status, &live["state"]),
        (200, &"read_only".into()),
        "{live}"
    );
    // Writes keep failing, and nothing heals or exits meanwhile.
    for _ in 0..3 {
        assert_eq!(http.post("/notes", "during").await?.status, 503);
    }
    assert_eq!(json(&http, "/health").await?.1["generation"], 0);

    // Fixed: the watchdog sees the directory writable again.
    chmod(&data, 0o755)?;
    within("readiness back to healthy", async {
        loop {
            let (status, ready) = json(&http, "/readyz").await?;
            if status == 200 && ready["state"] == "healthy" {
                return Ok::<_, BoxError>(());
            }
            // Polling another process's endpoint: its answer is the signal.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await??;
    let created = http.post("/notes", "after").await?;
    assert_eq!(created.status, 201, "{created:?}");
    let (_, health) = json(&http, "/health").await?;
    assert_eq!(health["generation"], 0, "no heal: {health}");
    assert!(
        !example.log().contains("exiting so the supervisor"),
        "{}",
        example.log()
    );
    example.terminate().await?;
    assert_eq!(example.wait().await?.code(), Some(0), "{}", example.log());
    Ok(())
}
