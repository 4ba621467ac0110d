//! Sorting a `sqlx::Error` into *fatal*, *transient* or *other*.
//!
//! The decision is made on SQLite's numeric extended result code first: sqlx
//! reports it through [`DatabaseError::code`](sqlx::error::DatabaseError::code)
//! as a decimal string. Several codes share one message (`8`, `1032` and
//! `1544` all say "attempt to write a readonly database"; `5` and `517` both
//! say "database is locked"), so the message text is consulted only when an
//! error carries no code at all.
//!
//! | class | SQLite result codes | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](ErrorClass::Fatal) | IOERR (10) and its extended codes except 2826 and 3850; CORRUPT (11) family; NOTADB (26); CANTOPEN (14) family; READONLY_DBMOVED (1032) | `WorkerCrashed` |
//! | [`Transient`](ErrorClass::Transient) | BUSY (5) family; LOCKED (6) family; IOERR_BLOCKED (2826); IOERR_LOCK (3850); FULL (13) | `PoolTimedOut` |
//! | [`Other`](ErrorClass::Other) | everything else: constraints, SQLITE_ERROR, READONLY (8) and its other sub-codes, ... | everything else |

use std::error::Error as StdError;
use std::fmt;

use sqlx::error::DatabaseError;

/// How the liveness policy treats an error.
///
/// ```
/// use tower_db_liveness::{classify, ErrorClass};
///
/// assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
/// assert_eq!(classify(&sqlx::Error::WorkerCrashed), ErrorClass::Fatal);
/// assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The handle is dead or the database is damaged: the pool is reopened once,
    /// and the process exits if that does not help.
    Fatal,
    /// A momentary condition (a lock held elsewhere, a full disk, an exhausted
    /// pool). Never reopens; the next request is expected to succeed.
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

// Primary result codes (https://www.sqlite.org/rescode.html).
const BUSY: i32 = 5;
const LOCKED: i32 = 6;
const IOERR: i32 = 10;
const CORRUPT: i32 = 11;
const FULL: i32 = 13;
const CANTOPEN: i32 = 14;
const NOTADB: i32 = 26;
// Extended result codes that cross the primary code's verdict.
const IOERR_BLOCKED: i32 = IOERR | (11 << 8);
const IOERR_LOCK: i32 = IOERR | (15 << 8);
const READONLY_DBMOVED: i32 = 8 | (4 << 8);

/// Classifies a `sqlx::Error`.
///
/// See the [classification table](crate#classification) for the full mapping.
///
/// ```
/// use tower_db_liveness::{classify, ErrorClass};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sqlx::Error> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let err = sqlx::query("SELECT * FROM missing").execute(&pool).await.unwrap_err();
/// assert_eq!(classify(&err), ErrorClass::Other); // SQLITE_ERROR: no such table
/// # Ok(())
/// # }
/// ```
pub fn classify(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Database(db) => classify_database_error(db.as_ref()),
        sqlx::Error::WorkerCrashed => ErrorClass::Fatal,
        sqlx::Error::PoolTimedOut => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

/// Classifies any error that holds a `sqlx::Error` (or a SQLite database
/// error) somewhere in its [`source`](StdError::source) chain, starting with
/// the error itself.
///
/// Returns `None` when the chain holds no database error at all, which is how
/// the layer tells a database failure from any other handler error.
///
/// ```
/// use tower_db_liveness::{classify_chain, ErrorClass};
///
/// #[derive(Debug)]
/// struct AppError(sqlx::Error);
/// impl std::fmt::Display for AppError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("app error")
///     }
/// }
/// impl std::error::Error for AppError {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(AppError(sqlx::Error::PoolTimedOut));
/// assert_eq!(classify_chain(boxed.as_ref()), Some(ErrorClass::Transient));
/// assert_eq!(classify_chain(&std::fmt::Error), None);
/// ```
pub fn classify_chain(err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
    find_in_chain(err).map(|found| found.class())
}

/// A database error found in a `source()` chain.
pub(crate) enum Found<'a> {
    Sqlx(&'a sqlx::Error),
    Database(&'a dyn DatabaseError),
}

impl Found<'_> {
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            Found::Sqlx(err) => classify(err),
            Found::Database(db) => classify_database_error(*db),
        }
    }

    /// SQLite's extended result code, when the error has one.
    pub(crate) fn code(&self) -> Option<i32> {
        match self {
            Found::Sqlx(err) => result_code(err),
            Found::Database(db) => parse_code(*db),
        }
    }
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Sqlx(err) => fmt::Display::fmt(err, f),
            Found::Database(db) => fmt::Display::fmt(db, f),
        }
    }
}

/// Walks `err` and its sources, returning the first database error.
pub(crate) fn find_in_chain<'a>(err: &'a (dyn StdError + 'static)) -> Option<Found<'a>> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(sqlx_err) = current.downcast_ref::<sqlx::Error>() {
            return Some(Found::Sqlx(sqlx_err));
        }
        // `sqlx::Error::Database` exposes its inner error as a source; someone
        // may have wrapped that inner error alone.
        if let Some(db) = current.downcast_ref::<sqlx::sqlite::SqliteError>() {
            return Some(Found::Database(db));
        }
        if let Some(db) = current.downcast_ref::<Box<dyn DatabaseError>>() {
            return Some(Found::Database(db.as_ref()));
        }
        next = current.source();
    }
    None
}

/// The SQLite extended result code of a database error, if it has one.
pub(crate) fn result_code(err: &sqlx::Error) -> Option<i32> {
    match err {
        sqlx::Error::Database(db) => parse_code(db.as_ref()),
        _ => None,
    }
}

fn parse_code(db: &dyn DatabaseError) -> Option<i32> {
    db.code()?.trim().parse().ok()
}

fn classify_database_error(db: &dyn DatabaseError) -> ErrorClass {
    match parse_code(db) {
        Some(code) => classify_code(code),
        None => classify_message(db.message()),
    }
}

/// Classifies a SQLite (extended) result code.
pub(crate) fn classify_code(code: i32) -> ErrorClass {
    match code {
        // The two IOERR sub-codes that mean "someone else holds a lock".
        IOERR_BLOCKED | IOERR_LOCK => ErrorClass::Transient,
        READONLY_DBMOVED => ErrorClass::Fatal,
        _ => match code & 0xff {
            IOERR | CORRUPT | NOTADB | CANTOPEN => ErrorClass::Fatal,
            BUSY | LOCKED | FULL => ErrorClass::Transient,
            _ => ErrorClass::Other,
        },
    }
}

/// Fallback for a database error without a code: SQLite's own messages.
/// Ambiguous messages ("attempt to write a readonly database" is shared by
/// codes 8, 1032 and 1544) stay [`ErrorClass::Other`].
pub(crate) fn classify_message(message: &str) -> ErrorClass {
    let message = message.to_ascii_lowercase();
    const TRANSIENT: [&str; 3] = [
        "database is locked",
        "database table is locked",
        "database or disk is full",
    ];
    const FATAL: [&str; 4] = [
        "disk i/o error",
        "database disk image is malformed",
        "file is not a database",
        "unable to open database file",
    ];
    // Transient first, so a lock is never mistaken for a dead handle.
    if TRANSIENT.iter().any(|m| message.contains(m)) {
        ErrorClass::Transient
    } else if FATAL.iter().any(|m| message.contains(m)) {
        ErrorClass::Fatal
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_code() {
        use ErrorClass::*;
        let table: &[(i32, ErrorClass, &str)] = &[
            (10, Fatal, "IOERR"),
            (266, Fatal, "IOERR_READ"),
            (522, Fatal, "IOERR_SHORT_READ"),
            (778, Fatal, "IOERR_WRITE"),
            (1034, Fatal, "IOERR_FSYNC"),
            (2570, Fatal, "IOERR_DELETE"),
            (2826, Transient, "IOERR_BLOCKED"),
            (3850, Transient, "IOERR_LOCK"),
            (4874, Fatal, "IOERR_SHMOPEN"),
            (6922, Fatal, "IOERR_DELETE_NOENT"),
            (7946, Fatal, "IOERR_CORRUPTFS"),
            (8714, Fatal, "IOERR_DATA"),
            (11, Fatal, "CORRUPT"),
            (267, Fatal, "CORRUPT_VTAB"),
            (523, Fatal, "CORRUPT_SEQUENCE"),
            (779, Fatal, "CORRUPT_INDEX"),
            (26, Fatal, "NOTADB"),
            (14, Fatal, "CANTOPEN"),
            (526, Fatal, "CANTOPEN_ISDIR"),
            (1294, Fatal, "CANTOPEN_DIRTYWAL"),
            (1032, Fatal, "READONLY_DBMOVED"),
            (5, Transient, "BUSY"),
            (261, Transient, "BUSY_RECOVERY"),
            (517, Transient, "BUSY_SNAPSHOT"),
            (773, Transient, "BUSY_TIMEOUT"),
            (6, Transient, "LOCKED"),
            (262, Transient, "LOCKED_SHAREDCACHE"),
            (518, Transient, "LOCKED_VTAB"),
            (13, Transient, "FULL"),
            (8, Other, "READONLY"),
            (264, Other, "READONLY_RECOVERY"),
            (520, Other, "READONLY_CANTLOCK"),
            (776, Other, "READONLY_ROLLBACK"),
            (1288, Other, "READONLY_CANTINIT"),
            (1544, Other, "READONLY_DIRECTORY"),
            (1, Other, "ERROR"),
            (19, Other, "CONSTRAINT"),
            (2067, Other, "CONSTRAINT_UNIQUE"),
            (1555, Other, "CONSTRAINT_PRIMARYKEY"),
            (787, Other, "CONSTRAINT_FOREIGNKEY"),
            (20, Other, "MISMATCH"),
            (0, Other, "OK"),
        ];
        for &(code, class, name) in table {
            assert_eq!(classify_code(code), class, "{name} ({code})");
        }
    }

    #[test]
    fn messages_without_code() {
        assert_eq!(
            classify_message("database is locked"),
            ErrorClass::Transient
        );
        assert_eq!(classify_message("Disk I/O error"), ErrorClass::Fatal);
        assert_eq!(
            classify_message("database disk image is malformed"),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify_message("file is not a database"),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify_message("attempt to write a readonly database"),
            ErrorClass::Other
        );
        assert_eq!(classify_message(""), ErrorClass::Other);
    }

    #[test]
    fn sqlx_variants() {
        assert_eq!(classify(&sqlx::Error::WorkerCrashed), ErrorClass::Fatal);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::PoolClosed), ErrorClass::Other);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
        assert_eq!(
            classify(&sqlx::Error::Protocol("x".into())),
            ErrorClass::Other
        );
    }
}
