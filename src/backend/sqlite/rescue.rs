//! Saving what a dead handle still sees with `VACUUM INTO`.
//!
//! When the database file is deleted or moved under the process, the
//! connections opened before the fault still read the old inode, including
//! WAL frames that were never checkpointed and writes acknowledged after the
//! deletion. A connection opened afterwards cannot reach it. So the rescue
//! runs on the generation's sentinel connection, opened with the pool.
//!
//! Places are tried in order: the configured rescue directory, the
//! database's own directory, then the nearest existing ancestor. Names carry
//! a random part, so nobody can squat them in a shared directory such as
//! `/tmp`, and are created with `O_EXCL`, mode 0600.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::SqliteConnection;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::blocking;

/// How long the filesystem calls of one rescue attempt may take.
const FS_BOUND: Duration = Duration::from_secs(2);

/// Where and how long a rescue may run.
#[derive(Debug, Clone)]
pub(crate) struct RescueConfig {
    pub(crate) enabled: bool,
    /// Tried first when set.
    pub(crate) dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
}

impl Default for RescueConfig {
    fn default() -> Self {
        RescueConfig {
            enabled: true,
            dir: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why a rescue attempt failed, at every place it tried.
#[derive(Debug)]
pub(crate) struct RescueError {
    /// One line per place: `<dir>: <error>`.
    pub(crate) attempts: Vec<String>,
    /// SQLite's result code of the last `VACUUM INTO` failure, if any (13: full).
    pub(crate) code: Option<i32>,
}

impl std::fmt::Display for RescueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("no place to write a rescue file");
        }
        f.write_str(&self.attempts.join("; "))
    }
}

/// Copies everything `conn` can see into a new file at the first place that
/// takes it.
pub(crate) async fn rescue(
    conn: &mut SqliteConnection,
    db_path: &Path,
    config: &RescueConfig,
) -> Result<PathBuf, RescueError> {
    let (configured, db) = (config.dir.clone(), db_path.to_path_buf());
    let places = blocking::run(FS_BOUND, move || places(configured.as_deref(), &db))
        .await
        .unwrap_or_default();
    let mut failed = RescueError {
        attempts: Vec::new(),
        code: None,
    };
    for dir in places {
        match rescue_into(conn, &dir, db_path, config.timeout).await {
            Ok(path) => return Ok(path),
            Err(err) => {
                if let sqlx::Error::Database(db) = &err {
                    failed.code = db.code().and_then(|code| code.parse().ok());
                }
                failed.attempts.push(format!("{}: {err}", dir.display()));
            }
        }
    }
    Err(failed)
}

async fn rescue_into(
    conn: &mut SqliteConnection,
    dir: &Path,
    db_path: &Path,
    timeout: Duration,
) -> Result<PathBuf, sqlx::Error> {
    let (dir_owned, db) = (dir.to_path_buf(), db_path.to_path_buf());
    let (target, created) = blocking::run(FS_BOUND, move || create_target(&dir_owned, &db))
        .await
        .map_err(|stuck| sqlx::Error::Io(io::Error::new(io::ErrorKind::TimedOut, stuck)))??;
    let Some(target_str) = target.to_str() else {
        remove_ours(target.clone(), created).await;
        return Err(sqlx::Error::InvalidArgument(format!(
            "rescue path is not valid UTF-8: {}",
            target.display()
        )));
    };

    // The target already exists, empty and private: SQLite accepts an empty
    // file for VACUUM INTO and keeps its mode.
    let vacuum = sqlx::query("VACUUM INTO ?").bind(target_str).execute(conn);
    let result = match tokio::time::timeout(timeout, vacuum).await {
        Ok(Ok(_)) => Ok(target.clone()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(sqlx::Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("VACUUM INTO did not finish within {timeout:?}"),
        ))),
    };
    if result.is_err() {
        // A failed VACUUM INTO leaves a partial copy that holds nothing
        // usable and takes the room the next attempt needs.
        remove_ours(target, created).await;
    }
    result
}

/// The places to try, in order, each once: the configured directory, the
/// database's directory, the nearest existing ancestor (after `rm -rf` of
/// the database's own directory).
fn places(configured: Option<&Path>, db_path: &Path) -> Vec<PathBuf> {
    let mut places: Vec<PathBuf> = Vec::new();
    let mut push = |dir: &Path| {
        if dir.is_dir() && !places.iter().any(|p| p == dir) {
            places.push(dir.to_path_buf());
        }
    };
    if let Some(dir) = configured {
        push(dir);
    }
    if let Some(dir) = db_path.parent() {
        push(dir);
    }
    if let Some(dir) = db_path.ancestors().skip(1).find(|dir| dir.is_dir()) {
        push(dir);
    }
    places
}

/// A name part nobody can guess: a timestamp and 64 random bits.
pub(crate) fn unique_suffix() -> String {
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    format!("{stamp}-{:016x}", crate::backend::random_u64())
}

/// Creates `<file name>.rescued-<stamp>-<random>.db` in `dir`, mode 0600,
/// never reusing an existing name. Returns the path and the identity of the
/// file created.
fn create_target(dir: &Path, db_path: &Path) -> io::Result<(PathBuf, (u64, u64))> {
    let stem = db_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".to_owned());
    let mut last = None;
    for _ in 0..8 {
        let path = dir.join(format!("{stem}.rescued-{}.db", unique_suffix()));
        match create_private(&path) {
            Ok(file) => return Ok((path, identity(&file.metadata()?))),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

fn create_private(path: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Removes a failed rescue target, only while it is still the file we created.
async fn remove_ours(path: PathBuf, created: (u64, u64)) {
    let _ = blocking::run(FS_BOUND, move || {
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| identity(&meta) == created) {
            let _ = std::fs::remove_file(&path);
        }
    })
    .await;
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.len(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unpredictable_and_private() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("gone").join("app.db");
        assert_eq!(places(None, &db), vec![dir.path().to_path_buf()]);
        let (first, _) = create_target(dir.path(), &db)?;
        let (second, _) = create_target(dir.path(), &db)?;
        assert_ne!(first, second);
        let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        let (a, b) = (
            name(&first).unwrap_or_default(),
            name(&second).unwrap_or_default(),
        );
        assert!(a.starts_with("app.db.rescued-"), "{a}");
        assert!(a.ends_with(".db"), "{a}");
        // The random parts (16 hex digits before ".db") share no prefix
        // pattern a squatter could pre-create: they differ in most digits.
        let random = |n: &str| n[n.len() - 19..n.len() - 3].to_owned();
        let differing = random(&a)
            .chars()
            .zip(random(&b).chars())
            .filter(|(x, y)| x != y)
            .count();
        assert!(differing >= 8, "{a} vs {b}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        Ok(())
    }

    #[test]
    fn places_are_ordered_and_distinct() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let data = root.path().join("data");
        let rescue = root.path().join("rescue");
        std::fs::create_dir(&data)?;
        std::fs::create_dir(&rescue)?;
        let db = data.join("app.db");
        assert_eq!(
            places(Some(&rescue), &db),
            vec![rescue.clone(), data.clone()]
        );
        std::fs::remove_dir(&data)?;
        assert_eq!(
            places(Some(&rescue), &db),
            vec![rescue, root.path().to_path_buf()]
        );
        Ok(())
    }
}
