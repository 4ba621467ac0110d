//! A rescue that cannot be written, through the real `examples/axum`
//! binary: its database's directory is deleted (WAL: no write fails, the
//! watchdog sees it) on a disk with no room left for the rescue. While the
//! rescue is pending the dead handle holds the only copy of the notes, so a
//! restart would lose them: `/livez` answers 200 every time it is asked and
//! `/readyz` 503, polled the way a kubelet does. Once room is freed the
//! rescue is saved with every acknowledged note, and only then does the
//! process give up and exit 1.
//!
//! The disk is a real, small tmpfs (or a loop-mounted ext2 image); the test
//! fails, never skips, when neither can be mounted.

mod common;
mod example_support;
mod layer_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{SmallDisk, TestResult, bodies_in_file, fill};
use example_support::{BoxError, Example};
use layer_support::{Http, within};

/// Every `*.rescued-*` file under `dir`, at any depth.
fn rescues(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(rescues(&path)?);
        } else if path.to_string_lossy().contains(".rescued-") {
            found.push(path);
        }
    }
    Ok(found)
}

async fn state(http: &Http, path: &str) -> Result<(u16, String), BoxError> {
    let answer = http.get(path).await?;
    let body: serde_json::Value = serde_json::from_str(&answer.body)?;
    Ok((
        answer.status.as_u16(),
        body["state"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_rescue_keeps_livez_up_and_readyz_down_until_it_is_saved() -> TestResult {
    let disk = SmallDisk::mount(2048)?;
    let data = disk.path().join("data");
    let rescue_dir = disk.path().join("rescue");
    std::fs::create_dir(&data)?;
    std::fs::create_dir(&rescue_dir)?;
    let db = data.join("notes.db").display().to_string();
    let rescue_arg = rescue_dir.display().to_string();
    let mut example = Example::start(&[
        "--db",
        &db,
        "--journal",
        "wal",
        "--rescue-dir",
        &rescue_arg,
        "--watchdog-ms",
        "100",
    ])
    .await?;
    let http = Http::new(example.addr);
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let body = format!("note {i:03} {}", "x".repeat(200));
        let created = http.post("/notes", body.clone()).await?;
        assert_eq!(created.status, 201, "{created:?}");
        acknowledged.push(body);
    }

    // The unlinked database keeps its blocks; the filler takes the rest.
    std::fs::remove_dir_all(&data)?;
    let filler = disk.path().join("filler");
    fill(&filler)?;

    within("the rescue to fail", async {
        loop {
            if state(&http, "/readyz").await?.1 == "rescue_pending" {
                return Ok::<_, BoxError>(());
            }
            // Polling another process's endpoint: its answer is the signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;

    // A kubelet's probes, every period (here 200 ms), ten times each.
    let mut period = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..10 {
        period.tick().await;
        assert_eq!(
            state(&http, "/livez").await?,
            (200, "rescue_pending".to_owned()),
            "{}",
            example.log()
        );
        assert_eq!(
            state(&http, "/readyz").await?,
            (503, "rescue_pending".to_owned())
        );
    }
    assert!(
        !example.log().contains("exiting so the supervisor"),
        "{}",
        example.log()
    );

    // Room again: the rescue is saved, then the policy gives up (nothing to
    // reattach) and the process exits 1.
    std::fs::remove_file(&filler)?;
    let status = example.wait().await?;
    assert_eq!(status.code(), Some(1), "{}", example.log());
    let found = rescues(disk.path())?;
    assert_eq!(found.len(), 1, "{found:?}\n{}", example.log());
    let rescued: Vec<String> = bodies_in_file(&found[0]).await?;
    assert_eq!(rescued, acknowledged);
    Ok(())
}
