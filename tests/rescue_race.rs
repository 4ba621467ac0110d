//! Issue 18.1: a second local user races the rescue. The test runs as root
//! and starts a real racer process as uid 65534 (`setpriv`), which loops
//! over everything it can reach near the database: it copies every rescue
//! it can read, unlinks it, and (in the symlink case) plants a symlink at
//! its name. Three set-ups, 10 rounds each: the database's directory
//! writable by the racer, the directory deleted and re-created by the
//! racer, and symlinks planted at the name. In every round: no copy the
//! racer could read, no file created where a planted symlink points, and
//! the rescue reported is there, the crate's own, private and complete,
//! in a directory nobody else can change.
#![cfg(all(target_os = "linux", feature = "sqlite"))]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{TestDb, TestResult, count_in_file, insert, open_live, warm};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::Outcome;

const ROUNDS: usize = 10;
const ROWS: i64 = 20;
const NOBODY: u32 = 65534;

/// Copies, unlinks and (with `symlink`) replaces by a symlink every
/// rescue-looking entry it finds in the directories given, for ever.
const RACER: &str = r#"
OUT=$1; MODE=$2; shift 2; n=0; said=
while :; do
  for d in "$@"; do
    for f in "$d"/*rescue* "$d"/*/*rescued*; do
      [ -L "$f" ] && continue
      [ -e "$f" ] || continue
      n=$((n+1))
      [ -f "$f" ] && cp "$f" "$OUT/copy-$n" 2>/dev/null
      rm -f "$f" 2>/dev/null
      [ "$MODE" = symlink ] && ln -s "$OUT/planted-$n" "$f" 2>/dev/null
    done
  done
  [ -n "$said" ] || { echo ready; said=1; }
done
"#;

struct Racer {
    child: tokio::process::Child,
}

impl Racer {
    /// Starts the racer and waits (bounded) for the end of its first pass.
    async fn start(
        out: &Path,
        mode: &str,
        dirs: &[&Path],
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut child = tokio::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                RACER,
                "racer",
            ])
            .arg(out)
            .arg(mode)
            .args(dirs)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let first = common::within("the racer's first pass", lines.next_line()).await??;
        if first.as_deref() != Some("ready") {
            return Err(format!("the racer said {first:?}").into());
        }
        Ok(Racer { child })
    }
}

impl Racer {
    /// Kills the racer and waits for it (its `cp` children finish on their own).
    async fn stop(mut self) -> TestResult {
        self.child.start_kill()?;
        common::within("the racer's end", self.child.wait()).await??;
        Ok(())
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn as_nobody(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .status()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SetUp {
    /// The database's directory is writable by the racer.
    WritableDir,
    /// The directory is deleted, and re-created by the racer.
    RecreatedDir,
    /// The racer plants symlinks at every rescue name it sees.
    Symlink,
}

#[derive(Default, Debug)]
struct Tally {
    readable_copies: usize,
    planted_files: usize,
    reported_missing: usize,
}

async fn round(set_up: SetUp) -> Result<Tally, Box<dyn std::error::Error + Send + Sync>> {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    // The racer can reach the database's directory (and, when it re-creates
    // it, write the parent, as in /tmp: world-writable and sticky).
    let root_mode = if set_up == SetUp::RecreatedDir {
        0o1777
    } else {
        0o755
    };
    std::fs::set_permissions(db.root.path(), std::fs::Permissions::from_mode(root_mode))?;
    let out = tempfile::tempdir()?;
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(out.path(), Some(NOBODY), Some(NOBODY))?;

    let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
    for i in 0..ROWS {
        insert(&live.pool(), &format!("secret {i}")).await?;
    }
    warm(&live.pool()).await?;

    match set_up {
        SetUp::WritableDir | SetUp::Symlink => {
            std::fs::set_permissions(&db.dir, std::fs::Permissions::from_mode(0o777))?;
            db.unlink_files()?;
        }
        SetUp::RecreatedDir => {
            db.rm_rf_dir()?;
            let dir = db.dir.to_str().ok_or("path")?;
            assert!(as_nobody(&["mkdir", "-m", "0777", dir])?.success());
        }
    }
    let mode = if set_up == SetUp::Symlink {
        "symlink"
    } else {
        "steal"
    };
    let racer = Racer::start(out.path(), mode, &[&db.dir, db.root.path()]).await?;

    let outcome = common::within("the file check", live.check_file())
        .await?
        .ok_or("the file check found nothing")?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("{set_up:?}: expected a give-up, got {outcome:?}").into());
    };
    assert!(exits.next().await.is_some());
    common::within("the close", live.close()).await?;
    racer.stop().await?;

    let mut tally = Tally::default();
    let rescue = gave_up.rescue.ok_or("no rescue reported")?;
    match std::fs::symlink_metadata(&rescue) {
        Ok(meta) if meta.file_type().is_file() => {
            assert_eq!(meta.uid(), 0, "{set_up:?}: {}", rescue.display());
            assert_eq!(meta.mode() & 0o7777, 0o600, "{set_up:?}");
            assert_eq!(meta.nlink(), 1, "{set_up:?}");
            assert_eq!(count_in_file(&rescue).await?, ROWS, "{set_up:?}");
            assert_no_one_else_can_change(&rescue)?;
        }
        _ => tally.reported_missing += 1,
    }
    for entry in std::fs::read_dir(out.path())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("copy-") {
            tally.readable_copies += 1;
        } else if name.starts_with("planted-") {
            tally.planted_files += 1;
        }
    }
    Ok(tally)
}

/// Every directory from `/` to the rescue belongs to root and nobody else
/// can write it (or it is sticky, where nobody renames another's entry).
fn assert_no_one_else_can_change(rescue: &Path) -> TestResult {
    let mut dir: PathBuf = rescue.parent().ok_or("no parent")?.to_path_buf();
    let private = std::fs::symlink_metadata(&dir)?;
    assert_eq!(private.mode() & 0o777, 0o700, "{}", dir.display());
    loop {
        let meta = std::fs::symlink_metadata(&dir)?;
        assert!(meta.is_dir(), "{} is not a directory", dir.display());
        assert_eq!(meta.uid(), 0, "{} belongs to another user", dir.display());
        let sticky = meta.mode() & 0o1000 != 0;
        assert!(
            meta.mode() & 0o022 == 0 || sticky,
            "{} can be written by others (mode {:o})",
            dir.display(),
            meta.mode() & 0o7777
        );
        if !dir.pop() {
            return Ok(());
        }
    }
}

async fn rounds(set_up: SetUp) -> TestResult {
    let mut total = Tally::default();
    for _ in 0..ROUNDS {
        let tally = round(set_up).await?;
        total.readable_copies += tally.readable_copies;
        total.planted_files += tally.planted_files;
        total.reported_missing += tally.reported_missing;
    }
    eprintln!("{set_up:?}, {ROUNDS} rounds: {total:?}");
    assert_eq!(total.readable_copies, 0, "{set_up:?}: {total:?}");
    assert_eq!(total.planted_files, 0, "{set_up:?}: {total:?}");
    assert_eq!(total.reported_missing, 0, "{set_up:?}: {total:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racer_with_write_access_to_the_directory_gets_nothing() -> TestResult {
    rounds(SetUp::WritableDir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racer_who_recreated_the_directory_gets_nothing() -> TestResult {
    rounds(SetUp::RecreatedDir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racer_planting_symlinks_gets_nothing() -> TestResult {
    rounds(SetUp::Symlink).await
}

/// Issue 18.1: a rescue is mode 0600, or the database's own mode where
/// that is stricter (root writes a 0400 file all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_is_never_less_private_than_the_database() -> TestResult {
    for (db_mode, expected) in [(0o644, 0o600), (0o400, 0o400)] {
        let db = TestDb::new(SqliteJournalMode::Wal)?;
        let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
        insert(&live.pool(), "private").await?;
        warm(&live.pool()).await?;
        std::fs::set_permissions(&db.path, std::fs::Permissions::from_mode(db_mode))?;
        db.unlink_files()?;
        let outcome = common::within("the file check", live.check_file())
            .await?
            .ok_or("the file check found nothing")?;
        let Outcome::GaveUp(gave_up) = outcome else {
            return Err(format!("expected a give-up, got {outcome:?}").into());
        };
        assert!(exits.next().await.is_some());
        let rescue = gave_up.rescue.ok_or("no rescue")?;
        let mode = std::fs::metadata(&rescue)?.mode() & 0o7777;
        assert_eq!(mode, expected, "database {db_mode:o}: rescue {mode:o}");
        assert_eq!(count_in_file(&rescue).await?, 1);
        live.close().await;
    }
    Ok(())
}

/// When neither the database's directory nor any place above it can be
/// trusted (both writable by other users), the rescue still lands in a
/// private directory: under the system's temporary directory, the last
/// resort; and the restart's refusal finds it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_trusted_place_nearby_the_rescue_goes_to_the_temporary_directory() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
    insert(&live.pool(), "kept").await?;
    warm(&live.pool()).await?;
    std::fs::set_permissions(db.root.path(), std::fs::Permissions::from_mode(0o777))?;
    std::fs::set_permissions(&db.dir, std::fs::Permissions::from_mode(0o777))?;
    db.unlink_files()?;
    let outcome = common::within("the file check", live.check_file())
        .await?
        .ok_or("the file check found nothing")?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert!(exits.next().await.is_some());
    live.close().await;
    let rescue = gave_up.rescue.ok_or("no rescue")?;
    // Named after this database's path: the temporary directory is shared.
    let private = rescue.parent().ok_or("no parent")?.to_path_buf();
    assert_eq!(
        private.parent(),
        Some(std::fs::canonicalize(std::env::temp_dir())?.as_path())
    );
    let private_name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        private_name.starts_with("app.db.") && private_name.ends_with(".rescues"),
        "{private_name}"
    );
    assert_no_one_else_can_change(&rescue)?;
    assert_eq!(count_in_file(&rescue).await?, 1);
    let refused = tower_db_liveness::LivePool::check_pending_rescue(
        &db.path,
        None,
        std::time::Duration::from_secs(30),
    )
    .await;
    let text = refused
        .err()
        .ok_or("the restart was not refused")?
        .to_string();
    assert!(text.contains(&rescue.display().to_string()), "{text}");
    // This test's files in the shared temporary directory.
    std::fs::remove_file(&rescue)?;
    for entry in std::fs::read_dir(&private)? {
        let path = entry?.path();
        if text.contains(&path.display().to_string()) {
            std::fs::remove_file(path)?;
        }
    }
    // Named after this database's path: nobody else's.
    std::fs::remove_dir(&private)?;
    Ok(())
}
