//! Which file the pool really has open, and whether the path still leads to it.
//!
//! SQLite keeps reading and (in WAL mode) writing an unlinked inode without
//! reporting any error, so the only reliable signal is to compare the
//! device and inode recorded when the pool was opened with what the path
//! resolves to now.

use std::io;
use std::path::{Path, PathBuf};

pub use crate::shared::FileFault;

/// The database file a generation opened, identified by device and inode,
/// with the `-wal` and `-shm` files it had open.
///
/// Every method here makes filesystem calls that can block on a hung mount:
/// callers run them through [`crate::blocking::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbFile {
    /// The path as configured, made absolute when the pool was opened: what a
    /// reopen opens (a later `chdir` does not move it), and what a repointed
    /// symlink changes.
    configured: PathBuf,
    /// The file SQLite opened, symlinks resolved (`pragma_database_list`).
    path: PathBuf,
    id: FileId,
    companions: Vec<Companion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Companion {
    suffix: &'static str,
    id: FileId,
}

/// A file's identity: device and inode number, and its birth time where
/// the filesystem records one (statx's `btime`: ext4, xfs, btrfs, tmpfs on
/// recent kernels). An inode number alone is not enough once the file may
/// have been freed: ext4 hands a freed number to the next new file at once,
/// and that file is born later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    born: Option<std::time::SystemTime>,
}

/// The companions SQLite keeps open for the life of a connection in WAL
/// mode. (A `-journal` exists only during a write transaction.)
const COMPANIONS: [&str; 2] = ["-wal", "-shm"];

impl DbFile {
    /// Records the identity of the file now at `path` (as SQLite reports it)
    /// and of the companions next to it, reached through `configured`.
    ///
    /// Fails when this process has the path open on another file than the
    /// one now at the path, through a descriptor that was not open in
    /// `before` (taken before the pool was opened; empty when unknown) and
    /// is not a replaced generation's: the file was replaced while the pool
    /// was being opened, and its connections would be on a file nobody
    /// checks.
    pub(crate) fn record(
        configured: PathBuf,
        path: PathBuf,
        before: &OpenFiles,
    ) -> io::Result<Self> {
        let id = file_id(&std::fs::metadata(&path)?);
        if other_open_file(&path, id, before) {
            return Err(io::Error::other(format!(
                "{} was replaced while the pool was being opened: some of its connections are on the old file",
                path.display()
            )));
        }
        let companions = COMPANIONS
            .iter()
            .filter_map(|&suffix| {
                let meta = std::fs::metadata(companion(&path, suffix)).ok()?;
                Some(Companion {
                    suffix,
                    id: file_id(&meta),
                })
            })
            .collect();
        Ok(DbFile {
            configured,
            path,
            id,
            companions,
        })
    }

    /// The file SQLite opened.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path as configured, absolute.
    /// The filesystem (`st_dev`) the database file is on.
    pub(crate) fn device(&self) -> u64 {
        self.id.dev
    }

    pub(crate) fn configured(&self) -> &Path {
        &self.configured
    }

    /// Compares the recorded identities with what the paths lead to now.
    ///
    /// An error other than "not found" (a permission change, say) is not a
    /// finding: the file may well still be there, and a false alarm would
    /// reopen a healthy pool.
    pub(crate) fn check(&self) -> Result<(), FileFault> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if file_id(&meta) == self.id => {}
            Ok(_) => return Err(FileFault::Replaced),
            Err(err) if is_gone(&err) => return Err(self.gone_fault()),
            Err(err) => {
                tracing::debug!(path = %self.path.display(), error = %err, "database file identity could not be read");
                return Ok(());
            }
        }
        // A symlink at the configured path is followed: a repoint (blue/green)
        // leads it to another file although the resolved path is unchanged.
        if self.configured != self.path {
            match std::fs::metadata(&self.configured) {
                Ok(meta) if file_id(&meta) == self.id => {}
                Ok(_) => return Err(FileFault::Replaced),
                Err(err) if is_gone(&err) => return Err(FileFault::Moved),
                Err(_) => {}
            }
        }
        for recorded in &self.companions {
            match std::fs::metadata(companion(&self.path, recorded.suffix)) {
                Ok(meta) if file_id(&meta) == recorded.id => {}
                Ok(_) => return Err(FileFault::CompanionReplaced),
                Err(err) if is_gone(&err) => return Err(FileFault::CompanionDeleted),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Whether this process may write the file and the directory it is in
    /// (the directory holds the `-journal` of a DELETE-mode write): what a
    /// database that answered READONLY needs before it takes writes again.
    /// `access(2)` asks for the process's own user, so root on a read-only
    /// mount is `false`, root on a foreign directory `true`, as SQLite sees.
    pub(crate) fn writable(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        [self.path.as_path(), dir]
            .iter()
            .all(|path| rustix::fs::access(*path, rustix::fs::Access::WRITE_OK).is_ok())
    }

    /// After the main file at the path was replaced, deleted or moved:
    /// renames the `-wal` and `-shm` that still belong to the old file aside
    /// (`<name>.stale-<stamp>-<random>`), so that no connection ever opens the
    /// new file (a restore, or the file a restarted process creates) with
    /// the old file's write-ahead log and replays it. Never deletes
    /// anything. Returns the new names.
    pub(crate) fn move_aside_stale_companions(&self) -> io::Result<Vec<PathBuf>> {
        match std::fs::metadata(&self.path) {
            // The main file is still ours: its companions are too.
            Ok(meta) if file_id(&meta) == self.id => return Ok(Vec::new()),
            Ok(_) => {}
            Err(err) if is_gone(&err) => {}
            Err(err) => return Err(err),
        }
        let mut moved = Vec::new();
        for recorded in &self.companions {
            let at = companion(&self.path, recorded.suffix);
            let Ok(meta) = std::fs::metadata(&at) else {
                continue;
            };
            if file_id(&meta) != recorded.id {
                continue;
            }
            let mut name = at.as_os_str().to_owned();
            name.push(format!(".stale-{}", super::rescue::unique_suffix()));
            let aside = PathBuf::from(name);
            std::fs::rename(&at, &aside)?;
            moved.push(aside);
        }
        Ok(moved)
    }

    /// The permission bits of the file this process has open (found through
    /// `/proc/self/fd`, so also for a deleted file); `None` when unknown.
    pub(crate) fn open_mode(&self) -> Option<u32> {
        use std::os::unix::fs::PermissionsExt;
        descriptors()
            .find(|(_, meta)| file_id(meta) == self.id)
            .map(|(_, meta)| meta.permissions().mode() & 0o7777)
    }

    /// Tells a deletion from a move by the link count of the file this
    /// process still has open (Linux: found through `/proc/self/fd`).
    fn gone_fault(&self) -> FileFault {
        descriptors()
            .find(|(_, meta)| file_id(meta) == self.id)
            .map_or(FileFault::Deleted, |(_, meta)| {
                if links(&meta) == 0 {
                    FileFault::Deleted
                } else {
                    FileFault::Moved
                }
            })
    }
}

/// The process's open descriptors (their `/proc/self/fd` paths), each with
/// the file it leads to (`metadata` follows the link to the open inode, even
/// an unlinked one). Linux; elsewhere none are seen.
fn descriptors() -> impl Iterator<Item = (PathBuf, std::fs::Metadata)> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let path = fd.path();
            let meta = std::fs::metadata(&path).ok()?;
            Some((path, meta))
        })
}

/// Files of replaced generations, of every `LivePool` in the process: their
/// connections may stay open a while (requests still running, the sealed
/// rescue connection), and are no sign of a replaced file.
static RETIRED: std::sync::Mutex<Vec<FileId>> = std::sync::Mutex::new(Vec::new());

/// Marks `file` as a replaced generation's (see [`DbFile::record`]).
pub(crate) fn retire(file: &DbFile) {
    let mut retired = RETIRED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !retired.contains(&file.id) {
        retired.push(file.id);
    }
}

/// The process's open descriptors and the files they lead to, at one
/// moment (Linux: `/proc/self/fd`; elsewhere nothing is known).
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenFiles(Vec<(std::ffi::OsString, FileId)>);

impl OpenFiles {
    pub(crate) fn now() -> Self {
        OpenFiles(
            descriptors()
                .filter_map(|(fd, meta)| Some((fd.file_name()?.to_owned(), file_id(&meta))))
                .collect(),
        )
    }

    fn contains(&self, fd: &std::ffi::OsStr, id: FileId) -> bool {
        self.0.iter().any(|(name, open)| name == fd && *open == id)
    }
}

/// Whether this process has `path` (or `path`, deleted) open on a file that
/// is not `id`, through a descriptor not in `before` and not on a retired
/// generation's file (Linux: `/proc/self/fd`; elsewhere nothing is found).
fn other_open_file(path: &Path, id: FileId, before: &OpenFiles) -> bool {
    let retired = RETIRED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut deleted = path.as_os_str().to_owned();
    deleted.push(" (deleted)");
    descriptors().any(|(fd, meta)| {
        let open = file_id(&meta);
        let on_path = std::fs::read_link(&fd)
            .is_ok_and(|target| target == path || target.as_os_str() == deleted);
        on_path
            && open != id
            && !retired.contains(&open)
            && fd
                .file_name()
                .is_none_or(|name| !before.contains(name, open))
    })
}

/// `<path><suffix>`: where SQLite keeps a companion file.
pub(crate) fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn is_gone(err: &io::Error) -> bool {
    // ENOTDIR: a path component was replaced by a file.
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        born: meta.created().ok(),
    }
}

#[cfg(unix)]
fn links(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.nlink()
}

// Without inode numbers the identity degrades to "the path still exists".
#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: 0,
        ino: 0,
        born: None,
    }
}

#[cfg(not(unix))]
fn links(_meta: &std::fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_deleted_moved_replaced() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.db");
        std::fs::write(&path, b"x")?;
        let file = DbFile::record(path.clone(), path.clone(), &OpenFiles::default())?;
        assert_eq!(file.check(), Ok(()));

        // Keep the file open so its inode outlives the unlink, as SQLite does.
        let held = std::fs::File::open(&path)?;
        std::fs::rename(&path, dir.path().join("b.db"))?;
        assert_eq!(file.check(), Err(FileFault::Moved));

        std::fs::write(&path, b"y")?;
        assert_eq!(file.check(), Err(FileFault::Replaced));

        std::fs::remove_file(&path)?;
        std::fs::remove_file(dir.path().join("b.db"))?;
        assert_eq!(file.check(), Err(FileFault::Deleted));
        drop(held);
        Ok(())
    }
}
