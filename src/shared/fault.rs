//! What happened and what the policy did about it: the fault that made a
//! generation fatal, the outcome of a report, the status the policy
//! publishes. The public types here are re-exported at the crate root.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::class::Code;
use super::class::ErrorClass;

/// What the policy did with a reported error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// The error was not fatal: nothing to do.
    Ignored(ErrorClass),
    /// The error came from a generation that has already been replaced.
    Stale {
        /// The generation the failed request used.
        reported: u64,
        /// The generation in service now.
        current: u64,
    },
    /// The pool was reopened, verified and swapped in.
    Healed(Healed),
    /// The policy gave up and ran the exit action.
    GaveUp(GaveUp),
}

/// A successful reopen.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Healed {
    /// The generation now in service.
    pub generation: u64,
    /// What made the old generation fatal.
    pub fault: Fault,
    /// Where the old handle's data was saved, if a rescue ran.
    pub rescue: Option<PathBuf>,
}

/// The policy's last resort: the process is expected to exit and restart.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GaveUp {
    /// Why the policy gave up.
    pub reason: GiveUpReason,
    /// What made the generation fatal in the first place.
    pub fault: Fault,
    /// The exit code handed to the exit action.
    pub exit_code: i32,
    /// Where the old handle's data was saved, if a rescue ran.
    pub rescue: Option<PathBuf>,
}

/// Why the policy gave up instead of healing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// Opening the new pool failed (the directory is gone, say).
    ReopenFailed(String),
    /// The new pool opened but failed verification (page read or file identity).
    VerifyFailed(String),
    /// A fatal error came back on a pool swapped in less than the recurrence
    /// window ago.
    Recurred {
        /// How long the fresh generation lived.
        after: Duration,
    },
    /// Heals are off ([`restart_to_heal`](crate::LivePoolBuilder::restart_to_heal),
    /// or `max_heals(0, ..)`): the restart reopens.
    HealsOff,
    /// More heals than allowed within the heal window.
    TooManyHeals {
        /// Heals already made within the window.
        heals: usize,
        /// The window.
        within: Duration,
    },
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::ReopenFailed(err) => write!(f, "reopen failed: {err}"),
            GiveUpReason::VerifyFailed(err) => {
                write!(f, "verification of the new pool failed: {err}")
            }
            GiveUpReason::Recurred { after } => {
                write!(f, "fatal error recurred {after:?} after the last heal")
            }
            GiveUpReason::HealsOff => {
                f.write_str("heals are off (restart_to_heal): a restart reopens the database")
            }
            GiveUpReason::TooManyHeals { heals, within } => {
                write!(f, "{heals} heals within {within:?} already")
            }
        }
    }
}

/// What made a generation fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// A fatal database error reported by a caller, the layer or the probe.
    Error {
        /// SQLite's extended result code, when the error had one.
        code: Option<i32>,
        /// The error's text.
        message: String,
    },
    /// The database file is no longer the one the pool opened.
    File(FileFault),
    /// The Postgres server behind a pool meant for writes does not take
    /// them: a demoted primary (a hot standby now) or a primary turned
    /// read-only. Found from a write's SQLSTATE `25006` (or `0A000`) once a
    /// check confirmed it, or by the writability check itself. MySQL: the
    /// pool's server does not take writes and the endpoint leads to another
    /// server that does (a pool pinned to a demoted primary that stayed up);
    /// the message names both `@@server_id`s.
    NotWritable {
        /// The SQLSTATE of the error that led to the check, if one did
        /// (Postgres only: MySQL's read-only errors are told apart by their
        /// number, which the message holds).
        sqlstate: Option<String>,
        /// What was found (`pg_is_in_recovery()`, `transaction_read_only`).
        message: String,
    },
}

impl Fault {
    /// SQLite's extended result code, for a fault that came from an error
    /// that had one.
    pub fn code(&self) -> Option<i32> {
        match self {
            Fault::Error { code, .. } => *code,
            Fault::File(_) | Fault::NotWritable { .. } => None,
        }
    }

    /// The Postgres SQLSTATE, for a fault that came from an error that had one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Fault::NotWritable { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn from_error(err: &dyn fmt::Display, code: Code) -> Self {
        Fault::Error {
            code: code.sqlite(),
            message: err.to_string(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Error { message, .. } | Fault::NotWritable { message, .. } => {
                f.write_str(message)
            }
            Fault::File(file) => fmt::Display::fmt(file, f),
        }
    }
}

/// What the policy is doing now, as published by [`LivePool::subscribe`](crate::LivePool::subscribe).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PoolStatus {
    /// A verified pool is in service.
    Live {
        /// The generation in service.
        generation: u64,
        /// The heal that put it there (`None` for the first pool).
        last_heal: Option<Healed>,
    },
    /// A heal of `generation` is in flight.
    Healing {
        /// The generation being replaced.
        generation: u64,
        /// What made it fatal.
        fault: Fault,
    },
    /// A heal of `generation` is held up: the rescue of the dead file's data
    /// failed (a full disk, say) and is retried with back-off. The dead handle
    /// may hold the only copy of acknowledged writes, so it is kept open, and
    /// nothing is healed or exited, until a rescue is saved.
    RescueFailing {
        /// The generation being replaced.
        generation: u64,
        /// What made it fatal.
        fault: Fault,
        /// Failed rescue attempts so far.
        attempts: u32,
        /// SQLite's result code of the last failure, if any (13: disk full).
        code: Option<i32>,
        /// A copy saved only in the system's temporary directory, when no
        /// place near the database could be trusted: a restart (a new
        /// container, a tmpfs `/tmp`, systemd's `PrivateTmp`) may lose it,
        /// so it does not count as saved. Copy it somewhere safe; the rescue
        /// completes once a durable place takes it (see
        /// [`LivePoolBuilder::rescue_dir`](crate::LivePoolBuilder::rescue_dir)).
        temporary_copy: Option<PathBuf>,
    },
    /// A heal of `generation` is waiting for a server that takes writes
    /// (Postgres, MySQL: the failover has not produced a reachable writable
    /// primary yet). Nothing is served meanwhile, so `/health` answers
    /// `fail`; the policy gives up at the reopen timeout (MySQL: none by
    /// default).
    AwaitingPrimary {
        /// The generation being replaced.
        generation: u64,
        /// What made it fatal.
        fault: Fault,
        /// Attempts so far that found no writable server.
        attempts: u32,
        /// What the last attempt found.
        last: String,
    },
    /// The database in service answers reads but does not take writes, for
    /// a reason a restart would not change: a Postgres primary made
    /// read-only in place (`default_transaction_read_only`, a read-only
    /// database or role), a MySQL server with `read_only` (or
    /// `innodb_read_only`) whose endpoint still leads to it, a SQLite file or directory that cannot be written
    /// (a wrong owner, a read-only mount). Degraded, not dead: the pool is
    /// kept, reads are served, writes get 503 with `Retry-After`, readiness
    /// says `read_only` (a 200 `warn`: routing reads away would make the
    /// outage bigger), and nothing is healed or exited however long it
    /// lasts. [`Live`](PoolStatus::Live) again once the database takes
    /// writes.
    ReadOnly {
        /// The generation in service.
        generation: u64,
        /// What was found, in words (no file path, no server message).
        reason: String,
    },
    /// The policy gave up; the exit action has run or is about to.
    GaveUp(GaveUp),
}

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
    /// The path leads to a different file than the one the pool has open:
    /// a restore or deploy replaced it, or the symlink that is the
    /// configured path was repointed.
    Replaced,
    /// The `-wal` or `-shm` file the pool has open was deleted: its commits
    /// are invisible to every other connection and lost at the next restart.
    CompanionDeleted,
    /// The `-wal` or `-shm` file at the path is not the one the pool has
    /// open: another process is working on a different write-ahead log.
    CompanionReplaced,
}

impl FileFault {
    /// A short lowercase name, as used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFault::Deleted => "deleted",
            FileFault::Moved => "moved",
            FileFault::Replaced => "replaced",
            FileFault::CompanionDeleted => "-wal or -shm deleted",
            FileFault::CompanionReplaced => "-wal or -shm replaced",
        }
    }

    /// `true` when the main file at the path is still the one the pool has
    /// open and only a companion changed.
    #[cfg(feature = "sqlite")]
    pub(crate) fn is_companion(self) -> bool {
        matches!(
            self,
            FileFault::CompanionDeleted | FileFault::CompanionReplaced
        )
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
