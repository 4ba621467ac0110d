//! Issue 18, where a rescue may land, with real files, real faults and a
//! real second user (uid 65534 through `setpriv`):
//!
//! * a copy that could only go to the temporary directory is not durable (a
//!   new container, a tmpfs `/tmp`, `PrivateTmp` lose it): the dead handle is
//!   kept, readiness fails with the copy's path, and the process exits only
//!   once a durable place has taken the rescue;
//! * two databases of one file name that share a rescue parent never prune
//!   each other's rescues;
//! * another user who takes the rescue directory's name first (a directory,
//!   a file, a symlink) cannot stop the rescue, read it or redirect it.
#![cfg(all(target_os = "linux", feature = "sqlite"))]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TestDb, TestResult, count_in_file, insert, open_live, within};
use sqlx::sqlite::SqliteJournalMode;
use tower_db_liveness::{Check, HealthService, LivePool, Outcome, PoolStatus};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const NOBODY: u32 = 65534;
const ROWS: i64 = 12;

fn mode(bits: u32) -> std::fs::Permissions {
    std::fs::Permissions::from_mode(bits)
}

fn as_nobody(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
}

fn str_of(path: &Path) -> Result<&str, BoxError> {
    path.to_str()
        .ok_or_else(|| "a path that is not UTF-8".into())
}

/// `rescue` is the crate's own, private and complete, and uid 65534 can
/// neither read it nor list its directory.
async fn assert_private(rescue: &Path) -> TestResult {
    let meta = std::fs::symlink_metadata(rescue)?;
    assert!(meta.file_type().is_file(), "{}", rescue.display());
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.nlink(), 1);
    let dir = rescue.parent().ok_or("no parent")?;
    let dir_meta = std::fs::symlink_metadata(dir)?;
    assert!(dir_meta.file_type().is_dir());
    assert_eq!(dir_meta.uid(), 0);
    assert_eq!(dir_meta.mode() & 0o7777, 0o700, "{}", dir.display());
    assert!(!as_nobody(&["cat", str_of(rescue)?])?.success());
    assert!(!as_nobody(&["ls", str_of(dir)?])?.success());
    assert_eq!(count_in_file(rescue).await?, ROWS);
    Ok(())
}

/// One GET through `ServiceExt::oneshot`: status and body.
async fn get(health: HealthService) -> Result<(http::StatusCode, serde_json::Value), BoxError> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let request = http::Request::get("/health").body(())?;
    let response = within("a health answer", health.oneshot(request)).await??;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    eprintln!("/health: {status} {}", String::from_utf8_lossy(&bytes));
    Ok((status, serde_json::from_slice(&bytes)?))
}

fn output(body: &serde_json::Value) -> String {
    body["checks"]["sqlite:responseTime"][0]["output"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn write_rows(live: &LivePool) -> TestResult {
    for i in 0..ROWS {
        insert(&live.pool(), &format!("note {i}")).await?;
    }
    common::warm(&live.pool()).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Removal {
    /// The database's files unlinked.
    Unlink,
    /// The database's directory removed.
    RmRf,
}

/// (a) A Kubernetes `fsGroup` volume: the data directory is group-writable
/// (2775) under a directory of another user, so no place near the database
/// can be trusted (nor, once the data directory is removed, above it), and
/// the database is not in the temporary directory. The copy there is not a
/// saved rescue: the dead handle is kept (liveness passes, readiness fails
/// naming the copy), the copy is taken once, and the policy gives up only
/// after the operator made a durable place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_only_in_the_temporary_directory_is_not_a_saved_rescue() -> TestResult {
    for removal in [Removal::Unlink, Removal::RmRf] {
        only_a_temporary_copy(removal).await?;
    }
    Ok(())
}

async fn only_a_temporary_copy(removal: Removal) -> TestResult {
    eprintln!("{removal:?}");
    // A persistent volume: not under the temporary directory.
    let root = common::outside_temporary_dir()?;
    let volume = root.path().join("volume");
    let dir = volume.join("data");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, mode(0o2775))?;
    std::os::unix::fs::chown(&volume, Some(NOBODY), Some(NOBODY))?;
    let path = dir.join("app.db");
    let db = TestDb {
        root,
        dir,
        path,
        journal: SqliteJournalMode::Wal,
    };
    let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
    write_rows(&live).await?;

    let mut status = live.subscribe();
    match removal {
        Removal::Unlink => db.unlink_files()?,
        Removal::RmRf => db.rm_rf_dir()?,
    }
    let check = tokio::spawn({
        let live = live.clone();
        async move { live.check_file().await }
    });

    // Three attempts, each kept from being the last: a copy in the
    // temporary directory, and no give-up.
    let pending = within(
        "a pending rescue with a temporary copy",
        status.wait_for(|s| match s {
            PoolStatus::RescueFailing {
                attempts,
                temporary_copy,
                ..
            } => *attempts >= 3 && temporary_copy.is_some(),
            PoolStatus::GaveUp(_) => true,
            _ => false,
        }),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    eprintln!("status: {pending:?}");
    let PoolStatus::RescueFailing {
        temporary_copy: Some(copy),
        ..
    } = pending
    else {
        return Err(format!(
            "a copy only in the temporary directory was taken as saved: {pending:?}"
        )
        .into());
    };
    let temp = std::fs::canonicalize(std::env::temp_dir())?;
    assert!(copy.starts_with(&temp), "{}", copy.display());
    assert_private(&copy).await?;
    // Taken once: nothing changed on the dead handle since.
    let copies = std::fs::read_dir(copy.parent().ok_or("no parent")?)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".rescued-"))
        .count();
    assert_eq!(copies, 1);

    // Liveness passes (a restart would lose the handle), readiness fails
    // and, verbose, names the copy; the public answer names no path.
    let health = HealthService::new(live.clone());
    let (code, body) = get(health.clone().check(Check::Liveness)).await?;
    assert_eq!(code, http::StatusCode::OK, "{body}");
    assert_eq!(body["state"], "rescue_pending", "{body}");
    let (code, body) = get(health.clone()).await?;
    assert_eq!(code, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["state"], "rescue_pending", "{body}");
    let public = output(&body);
    assert!(public.contains("temporary directory"), "{public}");
    assert!(!public.contains('/'), "{public}");
    let (_, body) = get(health.clone().verbose(true)).await?;
    let verbose = output(&body);
    assert!(verbose.contains(str_of(&copy)?), "{verbose}");
    assert!(verbose.contains("rescue_dir"), "{verbose}");
    assert_eq!(
        exits.count_now(),
        0,
        "exited on a rescue a restart may lose"
    );
    assert!(!live.has_given_up());
    assert!(!check.is_finished());

    // The operator makes the volume's top directory the service's own: a
    // durable place, taken at the next attempt; then the give-up.
    std::os::unix::fs::chown(&volume, Some(0), Some(0))?;
    let outcome = within("the heal", check)
        .await??
        .ok_or("the file check found nothing")?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("expected a give-up, got {outcome:?}").into());
    };
    assert!(exits.next().await.is_some(), "the exit action ran");
    live.close().await;
    let rescue = gave_up.rescue.ok_or("no rescue")?;
    let private = rescue.parent().ok_or("no parent")?;
    assert_eq!(
        private.parent(),
        Some(std::fs::canonicalize(&volume)?.as_path())
    );
    assert_private(&rescue).await?;
    let refusal = LivePool::check_pending_rescue(&db.path, None, Duration::from_secs(30))
        .await
        .err()
        .ok_or("the restart was not refused")?
        .to_string();
    assert!(refusal.contains(str_of(&rescue)?), "{refusal}");

    // This test's directory in the shared temporary directory (named
    // after this database's path).
    std::fs::remove_dir_all(copy.parent().ok_or("no parent")?)?;
    Ok(())
}

/// (b) Two databases named `app.db` in different directories, one
/// `rescue_dir`, `keep_rescues(1)`: a rescue of one never removes the
/// other's, however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_of_one_name_never_prune_each_others_rescues() -> TestResult {
    let shared = tempfile::tempdir()?;
    let shared_dir = shared.path().to_path_buf();
    let keep = move |b: tower_db_liveness::LivePoolBuilder| {
        b.rescue_dir(shared_dir.clone()).keep_rescues(1)
    };
    let mut rescues: Vec<PathBuf> = Vec::new();
    for _ in 0..2 {
        let db = TestDb::new(SqliteJournalMode::Wal)?;
        let (live, _reopens, _exits) = open_live(&db, keep.clone()).await?;
        write_rows(&live).await?;
        db.replace_file().await?;
        let outcome = within("the file check", live.check_file())
            .await?
            .ok_or("the file check found nothing")?;
        let Outcome::Healed(healed) = outcome else {
            return Err(format!("expected a heal, got {outcome:?}").into());
        };
        live.close().await;
        let rescue = healed.rescue.ok_or("no rescue")?;
        assert!(
            rescue.starts_with(std::fs::canonicalize(shared.path())?),
            "{}",
            rescue.display()
        );
        // Older than anything rescued after it: retention goes by age.
        std::fs::File::options()
            .write(true)
            .open(&rescue)?
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))?;
        rescues.push(rescue);
    }
    for rescue in &rescues {
        assert!(rescue.exists(), "pruned by the other database: {rescue:?}");
        assert_eq!(count_in_file(rescue).await?, ROWS);
    }
    assert_ne!(rescues[0].parent(), rescues[1].parent());
    Ok(())
}

/// 64-bit FNV-1a of the path, as the crate names a rescue directory in a
/// shared place (the test then checks the name was indeed the one taken).
fn path_hash(path: &Path) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Squat {
    Dir,
    File,
    Symlink,
}

/// (c) No place near the database can be trusted, so the rescue goes to
/// the temporary directory (sticky: anyone may create a name there), where
/// uid 65534 took the rescue directory's name first.
async fn squatted(squat: Squat) -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (live, _reopens, mut exits) = open_live(&db, |b| b).await?;
    write_rows(&live).await?;
    std::fs::set_permissions(db.root.path(), mode(0o777))?;
    std::fs::set_permissions(&db.dir, mode(0o777))?;

    let temp = std::fs::canonicalize(std::env::temp_dir())?;
    let name = format!("app.db.{:016x}.rescues", path_hash(&db.path));
    let taken = temp.join(&name);
    // Where a planted symlink points: the squatter's own directory.
    let theirs = tempfile::tempdir()?;
    std::fs::set_permissions(theirs.path(), mode(0o777))?;
    std::os::unix::fs::chown(theirs.path(), Some(NOBODY), Some(NOBODY))?;
    let planted = match squat {
        Squat::Dir => as_nobody(&["mkdir", "-m", "0777", str_of(&taken)?])?,
        Squat::File => as_nobody(&["touch", str_of(&taken)?])?,
        Squat::Symlink => as_nobody(&["ln", "-s", str_of(theirs.path())?, str_of(&taken)?])?,
    };
    assert!(planted.success(), "{squat:?}: the squatter could not plant");

    db.unlink_files()?;
    let outcome = within("the file check", live.check_file())
        .await?
        .ok_or("the file check found nothing")?;
    let Outcome::GaveUp(gave_up) = outcome else {
        return Err(format!("{squat:?}: expected a give-up, got {outcome:?}").into());
    };
    assert!(exits.next().await.is_some());
    live.close().await;
    let rescue = gave_up.rescue.ok_or("no rescue")?;
    let private = rescue.parent().ok_or("no parent")?.to_path_buf();
    let private_name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Next to the name taken, under one nobody could guess.
    assert_eq!(private.parent(), Some(temp.as_path()), "{squat:?}");
    assert!(
        private_name.starts_with(&format!("{name}.")),
        "{squat:?}: {private_name}"
    );
    assert_private(&rescue).await?;
    assert_eq!(
        std::fs::read_dir(theirs.path())?.count(),
        0,
        "{squat:?}: something was written where the squatter points"
    );
    // What was taken is untouched, and still theirs.
    assert_eq!(std::fs::symlink_metadata(&taken)?.uid(), NOBODY);

    // The restart's refusal and the restore find the rescue there.
    let refusal = LivePool::check_pending_rescue(&db.path, None, Duration::from_secs(30))
        .await
        .err()
        .ok_or("the restart was not refused")?
        .to_string();
    assert!(refusal.contains(str_of(&rescue)?), "{squat:?}: {refusal}");
    let restored = LivePool::restore_rescue(&db.path, None).await?;
    assert_eq!(restored, rescue);
    LivePool::check_pending_rescue(&db.path, None, Duration::from_secs(30)).await?;
    assert_eq!(count_in_file(&db.path).await?, ROWS);

    // This test's entries in the shared temporary directory.
    std::fs::remove_dir_all(&private)?;
    match squat {
        Squat::Dir => std::fs::remove_dir(&taken)?,
        Squat::File | Squat::Symlink => std::fs::remove_file(&taken)?,
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_rescue_directory_name_does_not_stop_the_rescue() -> TestResult {
    for squat in [Squat::Dir, Squat::File, Squat::Symlink] {
        squatted(squat).await?;
    }
    Ok(())
}
