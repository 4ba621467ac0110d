//! The three classes, a database error's code, and the class of the sqlx
//! errors that are not a database's (the same for every backend).

use std::fmt;

use super::backend::Sealed;

/// How the liveness policy treats an error.
///
/// ```
/// use tower_db_liveness::{classify, ErrorClass};
///
/// assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
/// assert_eq!(classify(&sqlx::Error::PoolClosed), ErrorClass::Transient);
/// assert_eq!(classify(&sqlx::Error::WorkerCrashed), ErrorClass::Fatal);
/// assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The handle is dead or the database is damaged: the pool is reopened once,
    /// and the process exits if that does not help.
    Fatal,
    /// A momentary condition (a lock held elsewhere, a full disk, an exhausted
    /// pool, a pool closed by a heal). Never reopens; a retry is expected to
    /// succeed.
    Transient,
    /// Not a liveness concern: constraint violations, SQL mistakes, decode errors.
    Other,
}

impl ErrorClass {
    /// `true` for [`ErrorClass::Fatal`].
    pub fn is_fatal(self) -> bool {
        self == ErrorClass::Fatal
    }

    /// A short lowercase name, as used in logs and health bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Fatal => "fatal",
            ErrorClass::Transient => "transient",
            ErrorClass::Other => "other",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database error's code, for the driver that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    /// Not a database error, or a driver the crate does not read.
    #[default]
    None,
    /// SQLite's extended result code.
    Sqlite(i32),
    /// A Postgres SQLSTATE (five ASCII characters).
    Sqlstate([u8; 5]),
    /// A MySQL / MariaDB error number (`MySqlDatabaseError::number()`; the
    /// SQLSTATE of the read-only error is the generic `HY000`).
    MySql {
        /// The error number.
        number: u16,
        /// For 1290 (an option prevents the statement): whether the option
        /// is `--read-only` (or MySQL's `--super-read-only`) and not another
        /// one (`--max-user-connections`, ...).
        read_only: bool,
    },
}

impl Code {
    /// SQLite's code, if this is one.
    pub(crate) fn sqlite(self) -> Option<i32> {
        match self {
            Code::Sqlite(code) => Some(code),
            _ => None,
        }
    }

    /// The SQLSTATE, if this is one.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            Code::Sqlstate(code) => std::str::from_utf8(code).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::None => f.write_str("none"),
            Code::Sqlite(code) => write!(f, "SQLite code {code}"),
            Code::Sqlstate(_) => write!(f, "SQLSTATE {}", self.sqlstate().unwrap_or("?")),
            Code::MySql { number, .. } => write!(f, "MySQL error {number}"),
        }
    }
}

/// The class of a sqlx error that is not a database error: the same for
/// every backend.
pub(crate) fn of_variant(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::WorkerCrashed => ErrorClass::Fatal,
        // A heal closes the dead pool: a request that got to it late is
        // refused, and its retry lands on the new pool.
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => ErrorClass::Transient,
        // A dead socket (Postgres): sqlx drops the connection and opens a new
        // one on the next acquire.
        sqlx::Error::Io(_) => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

/// The class and code of an error from `DB`'s own pool, read by `DB`'s
/// backend alone.
pub(crate) fn read<DB: Sealed>(err: &sqlx::Error) -> (ErrorClass, Code) {
    match err {
        sqlx::Error::Database(db) => {
            let code = DB::code(db.as_ref());
            (DB::class(code), code)
        }
        _ => (of_variant(err), Code::None),
    }
}
