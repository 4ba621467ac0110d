//! Saving what a dead handle still sees with `VACUUM INTO`.
//!
//! When the database file is deleted or moved under the process, the
//! connections opened before the fault still read the old inode, including
//! WAL frames that were never checkpointed and writes acknowledged after the
//! deletion. A connection opened afterwards cannot reach it. So the rescue
//! runs on the generation's sentinel connection, opened with the pool.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::SqliteConnection;
use time::OffsetDateTime;
use time::macros::format_description;

/// Where and how long a rescue may run.
#[derive(Debug, Clone)]
pub(crate) struct RescueConfig {
    pub(crate) enabled: bool,
    /// `None`: the nearest existing ancestor directory of the database file.
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

/// Copies everything `conn` can see into a new file next to (or above) `db_path`.
pub(crate) async fn rescue(
    conn: &mut SqliteConnection,
    db_path: &Path,
    config: &RescueConfig,
) -> Result<PathBuf, sqlx::Error> {
    let dir = match &config.dir {
        Some(dir) => dir.clone(),
        None => nearest_existing_dir(db_path)?,
    };
    let (target, file) = create_target(&dir, db_path)?;
    drop(file);
    let Some(target_str) = target.to_str() else {
        return Err(sqlx::Error::InvalidArgument(format!(
            "rescue path is not valid UTF-8: {}",
            target.display()
        )));
    };

    // The target already exists, empty and private: SQLite accepts an empty
    // file for VACUUM INTO and keeps its mode.
    let vacuum = sqlx::query("VACUUM INTO ?").bind(target_str).execute(conn);
    let result = match tokio::time::timeout(config.timeout, vacuum).await {
        Ok(Ok(_)) => Ok(target.clone()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(sqlx::Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("VACUUM INTO did not finish within {:?}", config.timeout),
        ))),
    };
    if result.is_err() {
        remove_if_empty(&target);
    }
    result
}

/// The directory of `db_path`, or the closest ancestor that still exists
/// (after `rm -rf` of the database's own directory).
fn nearest_existing_dir(db_path: &Path) -> io::Result<PathBuf> {
    db_path
        .ancestors()
        .skip(1)
        .find(|dir| dir.is_dir())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no existing directory above {} for the rescue file",
                    db_path.display()
                ),
            )
        })
}

/// Creates `<file name>.rescued-<UTC timestamp>.db` in `dir`, mode 0600,
/// never reusing an existing name.
fn create_target(dir: &Path, db_path: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let stem = db_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".to_owned());
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(io::Error::other)?;
    for attempt in 0u32..1000 {
        let name = match attempt {
            0 => format!("{stem}.rescued-{stamp}.db"),
            n => format!("{stem}.rescued-{stamp}-{n}.db"),
        };
        let path = dir.join(name);
        match create_private(&path) {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free rescue file name in {}", dir.display()),
    ))
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

/// Removes a rescue target only while it is still the empty file we created.
fn remove_if_empty(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_collide_and_are_private() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("gone").join("app.db");
        let found = nearest_existing_dir(&db)?;
        assert_eq!(found, dir.path());
        let (first, _) = create_target(&found, &db)?;
        let (second, _) = create_target(&found, &db)?;
        assert_ne!(first, second);
        let name = first.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.starts_with("app.db.rescued-"), "{name}");
        assert!(name.ends_with("Z.db"), "{name}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        Ok(())
    }
}
