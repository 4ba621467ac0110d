//! Which file the pool really has open, and whether the path still leads to it.
//!
//! SQLite keeps reading and (in WAL mode) writing an unlinked inode without
//! reporting any error, so the only reliable signal is to compare the
//! device and inode recorded when the pool was opened with what the path
//! resolves to now.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What happened to the database file under the running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileFault {
    /// Nothing is at the path any more and the open file has no links left
    /// (`rm`, `rm -rf` of the directory). Also reported when the platform
    /// cannot tell a deletion from a move.
    Deleted,
    /// Nothing is at the path any more, but the open file still has a link
    /// somewhere else (`mv` of the file or of its directory).
    Moved,
    /// The path leads to a different file than the one the pool has open
    /// (a restore or deploy replaced it).
    Replaced,
}

impl FileFault {
    /// A short lowercase name, as used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFault::Deleted => "deleted",
            FileFault::Moved => "moved",
            FileFault::Replaced => "replaced",
        }
    }
}

impl fmt::Display for FileFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "database file {} under the running process",
            self.as_str()
        )
    }
}

/// The database file a generation opened, identified by device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbFile {
    path: PathBuf,
    id: FileId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl DbFile {
    /// Records the identity of the file now at `path`.
    pub(crate) fn at(path: PathBuf) -> io::Result<Self> {
        let id = file_id(&std::fs::metadata(&path)?);
        Ok(DbFile { path, id })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Compares the recorded identity with the path's current one.
    ///
    /// An error other than "not found" (a permission change, say) is not a
    /// finding: the file may well still be there, and a false alarm would
    /// reopen a healthy pool.
    pub(crate) fn check(&self) -> Result<(), FileFault> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if file_id(&meta) == self.id => Ok(()),
            Ok(_) => Err(FileFault::Replaced),
            Err(err) if is_gone(&err) => Err(self.gone_fault()),
            Err(err) => {
                tracing::debug!(path = %self.path.display(), error = %err, "database file identity could not be read");
                Ok(())
            }
        }
    }

    /// Tells a deletion from a move by the link count of the file this
    /// process still has open (Linux: found through `/proc/self/fd`).
    fn gone_fault(&self) -> FileFault {
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return FileFault::Deleted;
        };
        for fd in fds.flatten() {
            // `metadata` follows the fd link to the open inode, even an unlinked one.
            if let Ok(meta) = std::fs::metadata(fd.path())
                && file_id(&meta) == self.id
            {
                return if links(&meta) == 0 {
                    FileFault::Deleted
                } else {
                    FileFault::Moved
                };
            }
        }
        FileFault::Deleted
    }
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
    FileId { dev: 0, ino: 0 }
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
        let file = DbFile::at(path.clone())?;
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
