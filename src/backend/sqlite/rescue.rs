//! Saving what a dead handle still sees with `VACUUM INTO`.
//!
//! When the database file is deleted or moved under the process, the
//! connections opened before the fault still read the old inode, including
//! WAL frames that were never checkpointed and writes acknowledged after the
//! deletion. A connection opened afterwards cannot reach it. So the rescue
//! runs on the generation's sentinel connection, opened with the pool.
//!
//! # Nobody else can read, redirect or destroy a rescue
//!
//! `VACUUM INTO` opens its target by name, so the name must lead to the
//! crate's own file for as long as SQLite writes it, whoever else can write
//! nearby. The trust comes from the directory: a rescue is only ever written
//! into the crate's private directory under a parent,
//! `<parent>/<database file name>.rescues/` in the database's own directory,
//! `<parent>/<file name>.<hash of its path>.rescues/` in a place other
//! databases of that name may share (so retention and listings stay with
//! one database), a directory
//!
//! * reached from `/` one component at a time without following a symlink,
//!   through directories that only root or the process's user can change
//!   (or that have the sticky bit, like `/tmp`, where nobody renames another
//!   user's entry): nobody else can swap any directory on the way;
//! * created by the crate with `mkdirat` (or found), opened with
//!   `O_NOFOLLOW` and verified on its descriptor: a directory, owned by the
//!   process's user, mode 0700, so nobody else can enter it. When its name
//!   is taken by anything else (in a sticky `/tmp` anyone can take a name
//!   first), `<name>.<16 random hex digits>` is used instead: a squatter
//!   cannot stop a rescue.
//!
//! In it the crate creates the target with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//! mode 0600, and keeps the descriptor. After the copy it verifies, on the
//! descriptor and at the name: the same inode is linked (once) at the
//! reported path, a regular file, mode 0600, owned by the process's user,
//! and complete (a valid SQLite header whose page count matches the size).
//! If no place passes, the rescue has failed, never "saved": the dead handle
//! is kept and the rescue retried.
//!
//! # Where
//!
//! Parents are tried in order: the configured rescue directory; then, for a
//! file that was deleted or moved (an `rm -rf` of its directory may be under
//! way), the nearest existing directory *above* the database's directory
//! before the database's directory itself, so the removal completes and the
//! rescue survives it; for other faults the database's directory first.
//! When none of them can be trusted, the system's temporary directory: a
//! copy there is not durable (a restart in a new container, with a tmpfs
//! `/tmp` or `PrivateTmp`, loses it) unless the database lives there too,
//! so it is reported but not counted as saved, and the rescue is retried.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use sqlx::SqliteConnection;
use time::OffsetDateTime;
use time::macros::format_description;

use super::identity::FileFault;
use crate::blocking;
use crate::shared::RescueConfig;

/// How long the filesystem calls of one rescue attempt may take.
const FS_BOUND: Duration = Duration::from_secs(2);

/// The retention the user opted into: in the private directory of `saved`,
/// removes this database's rescues older than the newest `keep` (at least
/// one: `saved` itself), except any a restore marker there names. Returns
/// what was removed.
pub(crate) fn prune(saved: &Path, db_path: &Path, keep: usize) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(dir_name)) = (saved.parent(), saved.parent().and_then(Path::file_name))
    else {
        return Ok(Vec::new());
    };
    let private = PrivateDir::open_existing(
        dir.parent().unwrap_or(Path::new("/")),
        &dir_name.to_string_lossy(),
    )?;
    let stem = file_stem(db_path);
    let (prefix, marker_prefix) = (
        format!("{stem}.rescued-"),
        format!("{stem}.restore-needed-"),
    );
    let mut rescues = Vec::new();
    let mut named = Vec::new();
    for entry in std::fs::read_dir(&private.path)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".db") {
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            rescues.push((modified, name));
        } else if name.starts_with(&marker_prefix)
            && !name.contains(".restored-")
            && let Ok(text) = std::fs::read_to_string(entry.path())
        {
            named.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("rescue="))
                    .map(PathBuf::from),
            );
        }
    }
    // Newest first: by modification time, then by name (its UTC stamp).
    rescues.sort_by(|a, b| b.cmp(a));
    let mut removed = Vec::new();
    for (_, name) in rescues.into_iter().skip(keep.max(1)) {
        let path = private.path.join(&name);
        if path == saved || named.contains(&path) {
            continue;
        }
        rustix::fs::unlinkat(&private.fd, name.as_str(), AtFlags::empty())?;
        removed.push(path);
    }
    Ok(removed)
}

/// Why a rescue attempt failed, at every place it tried.
#[derive(Debug)]
pub(crate) struct RescueError {
    /// One line per place: `<dir>: <error>`.
    pub(crate) attempts: Vec<String>,
    /// SQLite's result code of the last `VACUUM INTO` failure, if any (13: full).
    pub(crate) code: Option<i32>,
    /// A verified copy saved only in the system's temporary directory: not
    /// durable (a new container, a tmpfs `/tmp` or systemd's `PrivateTmp`
    /// loses it at the restart), so not a saved rescue.
    pub(crate) temporary: Option<PathBuf>,
}

impl std::fmt::Display for RescueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("no place to write a rescue file");
        }
        f.write_str(&self.attempts.join("; "))
    }
}

/// The name of the crate's private rescue directory for the database at
/// `db_path` under `parent`: `<file name>.rescues` in the database's own
/// directory (only this database has that name there); elsewhere, a place
/// other databases of the same file name may share (an ancestor, the
/// configured rescue directory, the temporary directory),
/// `<file name>.<hash of the path>.rescues`, so that retention and the
/// listing at open never mix two databases' rescues.
pub(crate) fn dir_name(parent: &Path, db_path: &Path) -> String {
    let stem = file_stem(db_path);
    if db_path.parent() == Some(parent) {
        format!("{stem}.rescues")
    } else {
        format!("{stem}.{:016x}.rescues", super::marker::path_hash(db_path))
    }
}

/// Whether `name` is the one a squatted `primary` falls back to
/// (`<primary>.<16 hex digits>`, see [`PrivateDir::make`]).
fn is_fallback(name: &str, primary: &str) -> bool {
    name.strip_prefix(primary)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|random| random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The names a rescue directory for `db_path` under `parent` may have: its
/// own, and the fallbacks found there.
fn dir_names(parent: &Path, db_path: &Path) -> Vec<String> {
    let primary = dir_name(parent, db_path);
    let mut names = vec![primary.clone()];
    if let Ok(entries) = std::fs::read_dir(parent) {
        names.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| is_fallback(name, &primary)),
        );
    }
    names
}

/// The crate's private rescue directories for `db_path` under `parent`
/// that exist: the one of its own name, and any made under a fresh name
/// because that name was taken by something not this user's. Only
/// directories that pass [`PrivateDir::open_existing`] count. Also the
/// first one that is this user's but can be written by others (an
/// operator's `chmod -R g+w`, a restore that dropped its mode): what is in
/// it cannot be trusted, and a restore marker may be. Its path and mode.
pub(crate) fn own_dirs(parent: &Path, db_path: &Path) -> (Vec<PrivateDir>, Option<(PathBuf, u32)>) {
    use std::os::unix::fs::MetadataExt;
    let (mut dirs, mut loose) = (Vec::new(), None);
    for name in dir_names(parent, db_path) {
        let path = parent.join(&name);
        // One lstat rules out what is not this user's directory (a
        // squatter's decoys, however many) before the full check on a
        // descriptor.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != euid() {
            continue;
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            loose.get_or_insert((path, mode));
        } else if let Ok(dir) = PrivateDir::open_existing(parent, &name) {
            dirs.push(dir);
        }
    }
    (dirs, loose)
}

fn file_stem(db_path: &Path) -> String {
    db_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".to_owned())
}

/// Copies everything `conn` can see into a new file in the first place
/// that takes it, and verifies it there.
///
/// When no place near the database can be trusted and the temporary
/// directory is the only one left, a copy there is saved only if
/// `temporary` says so (none taken yet, or the data changed since), and is
/// handed back in the error: it is not durable unless the database lives
/// in the temporary directory too.
pub(crate) async fn rescue(
    conn: &mut SqliteConnection,
    db_path: &Path,
    config: &RescueConfig,
    fault: Option<FileFault>,
    db_mode: Option<u32>,
    temporary: bool,
    db_dev: Option<u64>,
) -> Result<PathBuf, RescueError> {
    // 0600, or the database's own mode where it is stricter (0400, 0000).
    let mode = db_mode.map_or(0o600, |db| db & 0o600);
    let (configured, db) = (config.dir.clone(), db_path.to_path_buf());
    let places = blocking::run(FS_BOUND, move || {
        places(configured.as_deref(), &db, fault, db_dev)
    })
    .await
    .unwrap_or_default();
    let mut failed = RescueError {
        attempts: Vec::new(),
        code: None,
        temporary: None,
    };
    let mut all_denied = true;
    let mut tried = places.clone();
    for parent in places {
        match rescue_into(conn, &parent, db_path, config.timeout, mode).await {
            Ok(path) => return Ok(path),
            Err(err) => {
                all_denied &= denied(&err);
                if let sqlx::Error::Database(db) = &err {
                    failed.code = db.code().and_then(|code| code.parse().ok());
                }
                failed.attempts.push(format!("{}: {err}", parent.display()));
            }
        }
    }
    let last = last_resort();
    // A rescue there is durable only when the database lives there too: a
    // restart (a new container, a tmpfs /tmp, PrivateTmp) loses it. A
    // configured rescue directory in it was tried above, and counts.
    let durable = within_temporary(db_path, &last);
    if all_denied && !tried.contains(&last) && (durable || temporary) {
        tried.push(last.clone());
        match rescue_into(conn, &last, db_path, config.timeout, mode).await {
            Ok(path) if durable => {
                tracing::warn!(rescue = %path.display(), tried = %failed, "no place near the database could be trusted; the rescue went to the temporary directory");
                return Ok(path);
            }
            Ok(path) => {
                failed.attempts.push(format!(
                    "{}: a copy is saved at {}, but a restart may lose the temporary directory",
                    last.display(),
                    path.display()
                ));
                failed.temporary = Some(path);
            }
            Err(err) => failed.attempts.push(format!("{}: {err}", last.display())),
        }
    }
    Err(failed)
}

fn io_err(err: io::Error) -> sqlx::Error {
    sqlx::Error::Io(err)
}

async fn rescue_into(
    conn: &mut SqliteConnection,
    parent: &Path,
    db_path: &Path,
    timeout: Duration,
    mode: u32,
) -> Result<PathBuf, sqlx::Error> {
    let (parent_owned, db) = (parent.to_path_buf(), db_path.to_path_buf());
    let target = blocking::run(FS_BOUND, move || Target::create(&parent_owned, &db))
        .await
        .map_err(|stuck| io_err(io::Error::new(io::ErrorKind::TimedOut, stuck)))?
        .map_err(io_err)?;
    let Some(target_str) = target.path.to_str().map(str::to_owned) else {
        target.discard(FS_BOUND).await;
        return Err(sqlx::Error::InvalidArgument(
            "rescue path is not valid UTF-8".to_owned(),
        ));
    };

    // The target already exists, empty and private: SQLite accepts an empty
    // file for VACUUM INTO and keeps its mode. Its name leads through
    // directories nobody else can change into one nobody else can enter.
    let vacuum = sqlx::query("VACUUM INTO ?")
        .bind(target_str)
        .execute(&mut *conn);
    let copied = match tokio::time::timeout(timeout, vacuum).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(io_err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("VACUUM INTO did not finish within {timeout:?}"),
        ))),
    };
    if let Err(err) = copied {
        // A failed VACUUM INTO leaves a partial copy that holds nothing
        // usable and takes the room the next attempt needs.
        target.discard(FS_BOUND).await;
        return Err(err);
    }
    let target = std::sync::Arc::new(target);
    let verifying = std::sync::Arc::clone(&target);
    let verified = blocking::run(FS_BOUND, move || verifying.verify(mode)).await;
    match verified {
        Ok(Ok(())) => Ok(target.path.clone()),
        Ok(Err(err)) => {
            tracing::error!(rescue = %target.path.display(), error = %err, "a rescue copy failed its verification; not counted as saved");
            Err(io_err(err))
        }
        Err(stuck) => Err(io_err(io::Error::new(io::ErrorKind::TimedOut, stuck))),
    }
}

/// The parents to try, in order, each once (see the module docs).
fn places(
    configured: Option<&Path>,
    db_path: &Path,
    fault: Option<FileFault>,
    db_dev: Option<u64>,
) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut places: Vec<PathBuf> = Vec::new();
    if let Some(dir) = configured.filter(|dir| dir.is_dir()) {
        places.push(dir.to_path_buf());
    }
    // Only the database's own filesystem lasts as long as the database: the
    // directory above a volume mounted at the data directory is a
    // container's writable layer, gone with the container. (The configured
    // directory is the user's word.)
    let mut push = |dir: &Path| {
        let durable = std::fs::metadata(dir)
            .is_ok_and(|meta| meta.is_dir() && db_dev.is_none_or(|dev| meta.dev() == dev));
        if durable && !places.iter().any(|p| p == dir) {
            places.push(dir.to_path_buf());
        }
    };
    let db_dir = db_path.parent();
    // The nearest existing directory above the database's own.
    let outside = db_dir.and_then(|dir| dir.ancestors().skip(1).find(|a| a.is_dir()));
    let removal = matches!(fault, Some(FileFault::Deleted | FileFault::Moved));
    if removal {
        if let Some(dir) = outside {
            push(dir);
        }
        if let Some(dir) = db_dir {
            push(dir);
        }
    } else {
        if let Some(dir) = db_dir {
            push(dir);
        }
        if let Some(dir) = outside {
            push(dir);
        }
    }
    places
}

/// The last resort when no place near the database can be trusted or
/// written (a root process with its database in another user's directory,
/// a Kubernetes `fsGroup` volume, say): the system's temporary directory,
/// sticky like /tmp. Better a copy there than none, but unless the database
/// lives there too it is not a saved rescue (see [`rescue`]). Not tried
/// when a place failed for another reason (a full disk): that is retried.
fn last_resort() -> PathBuf {
    std::env::temp_dir()
}

/// Whether the database lives in the temporary directory itself (a rescue
/// there lasts as long as the database would).
fn within_temporary(db_path: &Path, temp: &Path) -> bool {
    db_path.starts_with(temp)
        || std::fs::canonicalize(temp).is_ok_and(|temp| {
            db_path.starts_with(&temp)
                || db_path
                    .ancestors()
                    .find_map(|a| std::fs::canonicalize(a).ok())
                    .is_some_and(|a| a.starts_with(&temp))
        })
}

fn denied(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Io(io) if io.kind() == io::ErrorKind::PermissionDenied)
}

/// A name part nobody can guess: a timestamp and 64 random bits.
pub(crate) fn unique_suffix() -> String {
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    format!("{stamp}-{:016x}", crate::shared::random_u64())
}

/// The process's effective user.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(target_os = "linux")]
const WALK: OFlags = OFlags::PATH;
#[cfg(not(target_os = "linux"))]
const WALK: OFlags = OFlags::RDONLY;

/// Opens `dir` (absolute, symlinks resolved) from `/`, one component at a
/// time without following symlinks, and checks that nobody but root and
/// the process's user can change any directory on the way (unless it is
/// sticky: nobody renames another user's entry there).
pub(crate) fn open_trusted(dir: &Path) -> io::Result<OwnedFd> {
    let flags = WALK | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(CWD, "/", flags, Mode::empty())?;
    let mut walked = PathBuf::from("/");
    check_trusted(&fd, &walked)?;
    for component in dir.components() {
        match component {
            std::path::Component::RootDir => continue,
            std::path::Component::Normal(name) => {
                walked.push(name);
                let next = rustix::fs::openat(&fd, name, flags, Mode::empty()).map_err(|err| {
                    io::Error::new(
                        io::Error::from(err).kind(),
                        format!("{}: {err}", walked.display()),
                    )
                })?;
                check_trusted(&next, &walked)?;
                fd = next;
            }
            _ => {
                return Err(io::Error::other(format!(
                    "{} is not an absolute path without `..`",
                    dir.display()
                )));
            }
        }
    }
    Ok(fd)
}

fn check_trusted(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    let (uid, mode) = (stat.st_uid, stat.st_mode as u32);
    if uid != 0 && uid != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {uid}, who could swap what the rescue's name leads to",
                path.display()
            ),
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} can be written by other users (mode {:o}), who could swap what the rescue's name leads to",
                path.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The crate's private rescue directory under a trusted parent, held open.
pub(crate) struct PrivateDir {
    pub(crate) path: PathBuf,
    pub(crate) fd: OwnedFd,
    /// The trusted parent, and whether this made the directory: a failed
    /// first attempt leaves no empty directory behind.
    parent: OwnedFd,
    created: bool,
}

impl PrivateDir {
    /// Makes (or finds) `<parent>/<name>`: mode 0700, owned by the process's
    /// user, not a symlink, under a trusted path. When the name is taken by
    /// something not this user's private directory (another user's
    /// directory, a file, a symlink: in a sticky `/tmp` anyone can take a
    /// name first), uses `<name>.<16 random hex digits>` instead, one made
    /// earlier or a new one: a squatter cannot stop the rescue.
    pub(crate) fn make(parent: &Path, name: &str) -> io::Result<Self> {
        let parent = std::fs::canonicalize(parent)?;
        let parent_fd = open_trusted(&parent)?;
        let created = match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(err) => return Err(err.into()),
        };
        match Self::open_at(&parent_fd, &parent, name) {
            Ok((path, fd)) => Ok(PrivateDir {
                path,
                fd,
                parent: parent_fd,
                created,
            }),
            Err(taken) => Self::make_fallback(parent_fd, &parent, name, &taken),
        }
    }

    fn make_fallback(
        parent_fd: OwnedFd,
        parent: &Path,
        name: &str,
        taken: &io::Error,
    ) -> io::Result<Self> {
        // One made earlier: this database's rescues stay together. (A
        // parent that cannot be listed: a new one.)
        let earlier = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|entry| is_fallback(entry, name))
            .find_map(|entry| Self::open_at(&parent_fd, parent, &entry).ok());
        let (path, fd, created) = match earlier {
            Some((path, fd)) => (path, fd, false),
            None => {
                let mut made = None;
                for _ in 0..8 {
                    let fresh = format!("{name}.{:016x}", crate::shared::random_u64());
                    match rustix::fs::mkdirat(
                        &parent_fd,
                        fresh.as_str(),
                        Mode::from_raw_mode(0o700),
                    ) {
                        Ok(()) => {
                            made = Some(fresh);
                            break;
                        }
                        Err(rustix::io::Errno::EXIST) => continue,
                        Err(err) => return Err(err.into()),
                    }
                }
                let fresh = made.ok_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists))?;
                let (path, fd) = Self::open_at(&parent_fd, parent, &fresh)?;
                (path, fd, true)
            }
        };
        tracing::warn!(taken = %parent.join(name).display(), why = %taken, private = %path.display(), "the rescue directory's name is taken by something that is not this user's private directory; using a private directory of a fresh name instead");
        Ok(PrivateDir {
            path,
            fd,
            parent: parent_fd,
            created,
        })
    }

    /// Opens an existing `<parent>/<name>` only if it is private (for
    /// reading what the crate left there).
    pub(crate) fn open_existing(parent: &Path, name: &str) -> io::Result<Self> {
        let parent = std::fs::canonicalize(parent)?;
        let parent_fd = open_trusted(&parent)?;
        let (path, fd) = Self::open_at(&parent_fd, &parent, name)?;
        Ok(PrivateDir {
            path,
            fd,
            parent: parent_fd,
            created: false,
        })
    }

    /// Removes the directory this attempt made, only if it is empty.
    fn remove_if_made(&self) {
        if self.created
            && let Some(name) = self.path.file_name()
        {
            let _ = rustix::fs::unlinkat(&self.parent, name, AtFlags::REMOVEDIR);
        }
    }

    fn open_at(parent_fd: &OwnedFd, parent: &Path, name: &str) -> io::Result<(PathBuf, OwnedFd)> {
        let path = parent.join(name);
        let fd = rustix::fs::openat(
            parent_fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| {
            io::Error::new(
                io::Error::from(err).kind(),
                format!("{}: {err}", path.display()),
            )
        })?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        if stat.st_uid != euid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to this process's user",
                    path.display(),
                    stat.st_uid
                ),
            ));
        }
        let mode = stat.st_mode as u32 & 0o7777;
        if mode & 0o022 != 0 {
            // Others could have put things in it: not the crate's private place.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} can be written by other users (mode {mode:o})",
                    path.display()
                ),
            ));
        }
        if mode & 0o077 != 0 {
            // Ours, and nobody else could write it: made private now.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
        }
        Ok((path, fd))
    }
}

/// A rescue target: created by the crate in its private directory, held open.
struct Target {
    dir: PrivateDir,
    name: String,
    path: PathBuf,
    file: OwnedFd,
}

impl Target {
    /// Creates `<private dir>/<db>.rescued-<stamp>-<random>.db` (see
    /// [`dir_name`] and [`PrivateDir::make`]),
    /// mode 0600, never reusing an existing name or following a link.
    fn create(parent: &Path, db_path: &Path) -> io::Result<Self> {
        let dir = PrivateDir::make(parent, &dir_name(parent, db_path))?;
        let stem = file_stem(db_path);
        let mut last = None;
        for _ in 0..8 {
            let name = format!("{stem}.rescued-{}.db", unique_suffix());
            let created = rustix::fs::openat(
                &dir.fd,
                name.as_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            );
            match created {
                Ok(file) => {
                    // The umask may have taken bits away, never added any;
                    // the owner must be able to read and write it.
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))?;
                    let path = dir.path.join(&name);
                    return Ok(Target {
                        dir,
                        name,
                        path,
                        file,
                    });
                }
                Err(rustix::io::Errno::EXIST) => last = Some(io::ErrorKind::AlreadyExists.into()),
                Err(err) => {
                    dir.remove_if_made();
                    return Err(err.into());
                }
            }
        }
        dir.remove_if_made();
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
    }

    /// After the copy: the file the crate created and holds is the one
    /// linked at the reported path, private (`mode`: 0600, or stricter when
    /// the database is) and complete; synced to disk.
    fn verify(&self, mode: u32) -> io::Result<()> {
        if mode != 0o600 {
            // Written while 0600 (SQLite opens it for writing by name).
            rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode))?;
        }
        let held = rustix::fs::fstat(&self.file)?;
        let fail = |what: String| io::Error::other(format!("{}: {what}", self.path.display()));
        let linked =
            rustix::fs::statat(&self.dir.fd, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| fail(format!("not linked in the rescue directory ({err})")))?;
        if (linked.st_dev, linked.st_ino) != (held.st_dev, held.st_ino) {
            return Err(fail("another file is linked at the name".into()));
        }
        // The path as reported (what an operator and `restore` use) leads
        // to the same file.
        let at_path = rustix::fs::statat(CWD, self.path.as_path(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| fail(format!("not found at the reported path ({err})")))?;
        if (at_path.st_dev, at_path.st_ino) != (held.st_dev, held.st_ino) {
            return Err(fail("the reported path leads to another file".into()));
        }
        if FileType::from_raw_mode(held.st_mode) != FileType::RegularFile || held.st_nlink != 1 {
            return Err(fail(format!(
                "not a regular file with one link (links: {})",
                held.st_nlink
            )));
        }
        if held.st_mode as u32 & 0o7777 != mode {
            return Err(fail(format!(
                "mode {:o}, not {mode:o}",
                held.st_mode as u32 & 0o7777
            )));
        }
        if held.st_uid != euid() {
            return Err(fail(format!("owned by uid {}", held.st_uid)));
        }
        complete(&self.file, held.st_size as u64).map_err(fail)?;
        rustix::fs::fsync(&self.file)?;
        // The directory entry too, so the rescue survives a power loss.
        let _ = rustix::fs::fsync(&self.dir.fd);
        Ok(())
    }

    /// Removes a failed attempt's partial copy: it is in the crate's private
    /// directory, so the name is still the file created.
    async fn discard(self, bound: Duration) {
        let _ = blocking::run(bound, move || {
            let _ = rustix::fs::unlinkat(&self.dir.fd, self.name.as_str(), AtFlags::empty());
            self.dir.remove_if_made();
        })
        .await;
    }
}

/// Whether the SQLite file behind `fd` (of `size` bytes) is whole: the
/// header's magic, and a size that matches its page size and page count.
pub(crate) fn complete(fd: impl AsFd, size: u64) -> Result<(), String> {
    let mut header = [0u8; 100];
    let read = rustix::io::pread(fd, &mut header[..], 0).map_err(|err| err.to_string())?;
    if read < 100 || &header[..16] != b"SQLite format 3\0" {
        return Err("not a complete SQLite database (no header)".into());
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536u64,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([
        header[28], header[29], header[30], header[31],
    ]));
    // The in-header size is valid when the change counter matches
    // "version-valid-for" (always, for a file VACUUM INTO wrote).
    let valid = header[24..28] == header[92..96];
    if page_size < 512
        || size == 0
        || !size.is_multiple_of(page_size)
        || (valid && pages * page_size != size)
    {
        return Err(format!(
            "not a complete SQLite database ({size} bytes, {pages} pages of {page_size})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unpredictable_and_private() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("gone").join("app.db");
        assert_eq!(
            places(None, &db, None, None),
            vec![dir.path().to_path_buf()]
        );
        let first = Target::create(dir.path(), &db)?;
        let second = Target::create(dir.path(), &db)?;
        assert_ne!(first.path, second.path);
        assert_eq!(
            first.path.parent(),
            Some(
                std::fs::canonicalize(dir.path())?
                    .join(format!(
                        "app.db.{:016x}.rescues",
                        super::super::marker::path_hash(&db)
                    ))
                    .as_path()
            )
        );
        let (a, b) = (first.name.clone(), second.name.clone());
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
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&first.dir.path)?.permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // An empty target is not a saved rescue.
        assert!(first.verify(0o600).is_err());
        Ok(())
    }

    #[test]
    fn a_shared_place_lists_only_this_databases_rescues() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let shared = root.path().join("rescues");
        std::fs::create_dir(&shared)?;
        let (a, b) = (root.path().join("a/app.db"), root.path().join("b/app.db"));
        let mine = Target::create(&shared, &a)?;
        let theirs = Target::create(&shared, &b)?;
        assert_ne!(mine.dir.path, theirs.dir.path);
        let listed = super::super::marker::leftovers(&a, Some(&shared));
        let paths: Vec<&Path> = listed.files.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(paths, vec![mine.path.as_path()]);
        Ok(())
    }

    #[test]
    fn a_taken_name_falls_back_to_a_private_directory_that_is_found() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let shared = root.path().join("rescues");
        std::fs::create_dir(&shared)?;
        let db = root.path().join("a/app.db");
        let name = dir_name(&shared, &db);
        // Not a directory of ours: a file at the name.
        std::fs::write(shared.join(&name), b"taken")?;
        let first = Target::create(&shared, &db)?;
        let used = first
            .dir
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        assert!(
            used.as_deref().is_some_and(|n| is_fallback(n, &name)),
            "{used:?}"
        );
        // The same one again, so retention sees every rescue together.
        let second = Target::create(&shared, &db)?;
        assert_eq!(first.dir.path, second.dir.path);
        let listed = super::super::marker::leftovers(&db, Some(&shared));
        assert_eq!(listed.files.len(), 2, "{listed:?}");
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
        let top = root.path().to_path_buf();
        assert_eq!(
            places(Some(&rescue), &db, Some(FileFault::Replaced), None),
            vec![rescue.clone(), data.clone(), top.clone()]
        );
        // A deletion may be an `rm -rf` of the directory under way.
        assert_eq!(
            places(Some(&rescue), &db, Some(FileFault::Deleted), None),
            vec![rescue.clone(), top.clone(), data.clone()]
        );
        std::fs::remove_dir(&data)?;
        assert_eq!(
            places(Some(&rescue), &db, Some(FileFault::Deleted), None),
            vec![rescue, top]
        );
        Ok(())
    }

    #[test]
    fn a_directory_others_can_write_is_not_trusted() -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir()?;
        let open = root.path().join("open");
        std::fs::create_dir(&open)?;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
        let canonical = std::fs::canonicalize(&open)?;
        assert!(open_trusted(&canonical).is_err());
        assert!(PrivateDir::make(&open, "x.rescues").is_err());
        // Sticky, like /tmp: others cannot rename what is ours.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777))?;
        assert!(open_trusted(&canonical).is_ok());
        Ok(())
    }
}
