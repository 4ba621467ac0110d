//! What a give-up leaves for the next start: a restart must never serve a
//! new, empty database where the one that was lost stood.
//!
//! When the policy gives up after rescuing a database that is no longer at
//! its path (deleted, moved, its directory removed), it writes a marker
//! next to the rescue, in the crate's private rescue directory
//! (`<that directory>/<file name>.restore-needed-<hash of the path>`). The
//! next [`open`](crate::LivePoolBuilder::open) of that path looks for it in
//! this database's private directories (see [`rescue::dir_name`], and the
//! fresh names used when a name was taken) in the configured rescue
//! directory, under every ancestor of the path and in the temporary
//! directory, and refuses to open, whatever `create_if_missing` says, until
//! one of:
//!
//! * the rescue is at the path (moved there with `mv`, or put there by
//!   [`LivePool::restore_rescue`](crate::LivePool::restore_rescue)): the
//!   marker is renamed `...restored-<stamp>` and the open goes on;
//! * the operator removed the marker: starting empty, on purpose.
//!
//! Only markers in a private directory of the process's own user count, so
//! nobody else can block a start by planting one.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::identity::FileFault;
use super::rescue::{self, PrivateDir};

/// What a marker records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) marker: PathBuf,
    pub(crate) database: PathBuf,
    pub(crate) rescue: PathBuf,
    fault: String,
    at: String,
    rescue_dev: u64,
    rescue_ino: u64,
    rescue_size: u64,
    rescue_header: String,
}

/// 64-bit FNV-1a of the path's bytes: which database a marker (or a rescue
/// directory in a shared place) is for, in its name (two databases of one
/// name may share a rescue directory).
pub(crate) fn path_hash(path: &Path) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn marker_name(db_path: &Path) -> String {
    let stem = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".to_owned());
    format!("{stem}.restore-needed-{:016x}", path_hash(db_path))
}

fn header_hex(fd: impl AsFd) -> String {
    let mut header = [0u8; 100];
    let read = rustix::io::pread(fd, &mut header[..], 0).unwrap_or(0);
    header[..read].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the marker for `db_path` next to `rescue` (replacing an older
/// one atomically). Returns the marker's path.
pub(crate) fn write(db_path: &Path, rescue: &Path, fault: FileFault) -> io::Result<PathBuf> {
    let (Some(dir), Some(dir_name)) = (rescue.parent(), rescue.parent().and_then(Path::file_name))
    else {
        return Err(io::Error::other("the rescue has no directory"));
    };
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let private = PrivateDir::open_existing(parent, &dir_name.to_string_lossy())?;
    let rescue_name = rescue
        .file_name()
        .ok_or_else(|| io::Error::other("the rescue has no name"))?;
    let file = rustix::fs::openat(
        &private.fd,
        rescue_name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&file)?;
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let text = format!(
        "# {}\n# Written by tower-db-liveness when it gave up: the database was lost under the\n\
         # running process and its data rescued. The next start refuses to open the path\n\
         # until the rescue is there (mv RESCUE DATABASE) or this file is removed.\n\
         database={}\nrescue={}\nfault={}\nat={at}\nrescue_dev={}\nrescue_ino={}\nrescue_size={}\nrescue_header={}\n",
        db_path.display(),
        db_path.display(),
        rescue.display(),
        fault.as_str(),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        header_hex(&file),
    );
    let name = marker_name(db_path);
    let temp = format!(".{name}.{}", rescue::unique_suffix());
    let fd = rustix::fs::openat(
        &private.fd,
        temp.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut out = file_from(fd);
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    rustix::fs::renameat(&private.fd, temp.as_str(), &private.fd, name.as_str())?;
    let _ = rustix::fs::fsync(&private.fd);
    Ok(private.path.join(name))
}

/// Renames `marker` to `<marker>.<why>-<stamp>`: no longer in force, kept
/// as a record.
pub(crate) fn set_aside(marker: &Path, why: &str) -> io::Result<()> {
    let mut done = marker.as_os_str().to_owned();
    done.push(format!(".{why}-{}", rescue::unique_suffix()));
    std::fs::rename(marker, PathBuf::from(done))
}

fn file_from(fd: OwnedFd) -> std::fs::File {
    std::fs::File::from(fd)
}

/// Where a marker for `db_path` may be: the configured rescue directory,
/// then under every ancestor of the path.
fn candidates(db_path: &Path, rescue_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut parents: Vec<PathBuf> = Vec::new();
    if let Some(dir) = rescue_dir {
        parents.push(dir.to_path_buf());
    }
    for ancestor in db_path.ancestors().skip(1) {
        if !ancestor.as_os_str().is_empty() && !parents.iter().any(|p| p == ancestor) {
            parents.push(ancestor.to_path_buf());
        }
    }
    // The rescue's last resort (see `rescue::places`).
    let temp = std::env::temp_dir();
    if !parents.contains(&temp) {
        parents.push(temp);
    }
    parents
}

/// The marker left for `db_path`, if any (only in a private directory of
/// the process's user).
pub(crate) fn find(db_path: &Path, rescue_dir: Option<&Path>) -> io::Result<Option<Pending>> {
    let name = marker_name(db_path);
    let mut places: Vec<(PathBuf, PathBuf)> = rescue_places(db_path, rescue_dir);
    // A symlink at the path (dangling, once its target was deleted): the
    // rescue, and the marker beside it, went where the target's rescues go.
    if let Ok(target) = std::fs::read_link(db_path) {
        let target = match db_path.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
        places.extend(rescue_places(&target, None));
    }
    for (parent, db) in places {
        // Fail closed: a restart must not start empty because the marker
        // sits in a directory nobody should trust any more.
        let (dirs, loose) = rescue::own_dirs(&parent, &db);
        if let Some((loose, mode)) = loose {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} (this service's rescue directory) can be written by other users \
                     (mode {mode:o}): a restore marker in it cannot be trusted, and one may be there. \
                     Check what is in it, then chmod 700 it",
                    loose.display()
                ),
            ));
        }
        for private in dirs {
            // Cheap first: most starts find nothing.
            if rustix::fs::statat(&private.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_err() {
                continue;
            }
            let fd = rustix::fs::openat(
                &private.fd,
                name.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut text = String::new();
            file_from(fd).read_to_string(&mut text)?;
            let pending = parse(&text, private.path.join(&name));
            if let Some(pending) = pending.filter(|p| p.database == db_path) {
                return Ok(Some(pending));
            }
        }
    }
    Ok(None)
}

/// The database's path as given and with the symlinks of its existing
/// directories resolved (what SQLite reports, and the rescue is named
/// after): a rescue directory in a shared place is named by its path.
fn aliases(db_path: &Path) -> Vec<PathBuf> {
    let mut aliases = vec![db_path.to_path_buf()];
    let resolved = db_path.ancestors().skip(1).find_map(|dir| {
        let rest = db_path.strip_prefix(dir).ok()?;
        Some(std::fs::canonicalize(dir).ok()?.join(rest))
    });
    if let Some(resolved) = resolved.filter(|r| *r != db_path) {
        aliases.push(resolved);
    }
    aliases
}

/// Every (parent, database path) whose rescue directory may hold what was
/// left for `db_path`.
fn rescue_places(db_path: &Path, rescue_dir: Option<&Path>) -> Vec<(PathBuf, PathBuf)> {
    let mut places = Vec::new();
    for db in aliases(db_path) {
        for parent in candidates(&db, rescue_dir) {
            if !places.iter().any(|(p, d)| *p == parent && *d == db) {
                places.push((parent, db.clone()));
            }
        }
    }
    places
}

fn parse(text: &str, marker: PathBuf) -> Option<Pending> {
    let get = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(Pending {
        marker,
        database: PathBuf::from(get("database")?),
        rescue: PathBuf::from(get("rescue")?),
        fault: get("fault").unwrap_or_default(),
        at: get("at").unwrap_or_default(),
        rescue_dev: get("rescue_dev")?.parse().ok()?,
        rescue_ino: get("rescue_ino")?.parse().ok()?,
        rescue_size: get("rescue_size")?.parse().ok()?,
        rescue_header: get("rescue_header").unwrap_or_default(),
    })
}

impl Pending {
    /// Whether the file at the path now is the rescue: moved there (the
    /// same inode), or copied (the same size and header).
    pub(crate) fn restored(&self) -> bool {
        let Ok(file) = rustix::fs::open(
            self.database.as_path(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let Ok(stat) = rustix::fs::fstat(&file) else {
            return false;
        };
        if (stat.st_dev, stat.st_ino) == (self.rescue_dev, self.rescue_ino) {
            return true;
        }
        stat.st_size as u64 == self.rescue_size
            && !self.rescue_header.is_empty()
            && header_hex(&file) == self.rescue_header
    }

    /// Renames the marker `...restored-<stamp>`: kept as a record.
    pub(crate) fn retire(&self) -> io::Result<()> {
        set_aside(&self.marker, "restored")
    }

    /// The refusal: what happened, where the data is, how to restore it,
    /// how to start empty on purpose.
    pub(crate) fn refusal(&self) -> String {
        let would = if self.fault.contains("-wal") {
            "the file without the writes that were only in its lost -wal"
        } else {
            "a new, empty database"
        };
        format!(
            "refusing to open {db}: the database there was {fault} under the running process ({at}) \
             and its data was rescued to {rescue}; opening now would serve {would}. \
             To restore it, with the service stopped: mv '{rescue}' '{db}' \
             (or call LivePool::restore_rescue), then start again. \
             To start with an empty database on purpose: rm '{marker}'",
            db = self.database.display(),
            fault = self.fault,
            at = self.at,
            rescue = self.rescue.display(),
            marker = self.marker.display(),
        )
    }
}

/// Puts the rescue a marker names back at the database's path: verifies it
/// (complete, and SQLite's `quick_check` says ok: the caller's part, see
/// [`crate::LivePool::restore_rescue`]), sets whatever is at the path and
/// its `-wal`/`-shm`/`-journal` aside (renamed, never deleted), copies the
/// rescue into the database's directory and renames it into place (the
/// rescue itself stays, as evidence), then retires the marker.
pub(crate) fn put_back(pending: &Pending) -> io::Result<Vec<PathBuf>> {
    let db = &pending.database;
    let dir = db
        .parent()
        .ok_or_else(|| io::Error::other("the database path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let source = std::fs::File::open(&pending.rescue)?;
    let size = source.metadata()?.len();
    rescue::complete(&source, size).map_err(io::Error::other)?;
    let suffix = rescue::unique_suffix();
    let mut set_aside = Vec::new();
    for companion in ["", "-wal", "-shm", "-journal"] {
        let at = super::identity::companion(db, companion);
        if std::fs::symlink_metadata(&at).is_ok() {
            let mut name = at.as_os_str().to_owned();
            name.push(if companion.is_empty() {
                format!(".replaced-{suffix}")
            } else {
                format!(".stale-{suffix}")
            });
            let aside = PathBuf::from(name);
            std::fs::rename(&at, &aside)?;
            set_aside.push(aside);
        }
    }
    let file_name = db
        .file_name()
        .ok_or_else(|| io::Error::other("the database path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.restoring-{suffix}",
        file_name.to_string_lossy()
    ));
    let mut out = std::fs::OpenOptions::new();
    out.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut out, 0o600);
    let mut out = out.open(&temp)?;
    let mut input = &source;
    io::copy(&mut input, &mut out)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&temp, db)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    pending.retire()?;
    let _ = rustix::fs::statat(rustix::fs::CWD, db.as_path(), AtFlags::empty())?;
    Ok(set_aside)
}

/// What earlier faults left for the operator: rescues, restore markers,
/// and files set aside next to the database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Leftovers {
    pub(crate) files: Vec<(PathBuf, u64)>,
}

impl Leftovers {
    pub(crate) fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// Lists what earlier faults left for the database at `db_path`: the
/// crate's rescue directories (the configured one, and under every ancestor
/// of the path), and `-wal`/`-shm` set aside (`.stale-`) or a file replaced
/// by a restore (`.replaced-`) next to it. Nothing is deleted.
pub(crate) fn leftovers(db_path: &Path, rescue_dir: Option<&Path>) -> Leftovers {
    let mut found = Leftovers::default();
    let Some(stem) = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return found;
    };
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.is_file()
        {
            found.files.push((path, meta.len()));
        }
    };
    // Only this database's own rescue directories: in a shared place
    // another database of the same file name has its own.
    let mut listed: Vec<PathBuf> = Vec::new();
    for (parent, db) in rescue_places(db_path, rescue_dir) {
        for private in rescue::own_dirs(&parent, &db).0 {
            if listed.contains(&private.path) {
                continue;
            }
            listed.push(private.path.clone());
            let Ok(entries) = std::fs::read_dir(&private.path) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{stem}.rescued-"))
                    || name.starts_with(&format!("{stem}.restore-needed-"))
                {
                    add(entry.path());
                }
            }
        }
    }
    if let Some(dir) = db_path.parent()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let set_aside = [
                format!("{stem}-wal.stale-"),
                format!("{stem}-shm.stale-"),
                format!("{stem}-journal.stale-"),
                format!("{stem}.replaced-"),
            ];
            if set_aside
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
            {
                add(entry.path());
            }
        }
    }
    found.files.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names_differ_by_path() {
        let a = marker_name(Path::new("/srv/a/app.db"));
        let b = marker_name(Path::new("/srv/b/app.db"));
        assert_ne!(a, b);
        assert!(a.starts_with("app.db.restore-needed-"), "{a}");
    }
}
