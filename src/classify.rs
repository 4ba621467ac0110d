//! Sorting a `sqlx::Error` into *fatal*, *transient* or *other*.
//!
//! The decision is made on SQLite's numeric extended result code, which sqlx
//! reports through [`DatabaseError::code`](sqlx::error::DatabaseError::code)
//! as a decimal string, and only for a database error that is SQLite's
//! (`sqlx::sqlite::SqliteError`): another driver's codes (a Postgres
//! SQLSTATE such as `22026`) mean something else, so its errors are
//! [`Other`](ErrorClass::Other). The message text is never read: it can
//! carry user input, and several codes share one message anyway.
//!
//! | class | SQLite result codes | sqlx variants |
//! |---|---|---|
//! | [`Fatal`](ErrorClass::Fatal) | IOERR (10) and its extended codes except 2826 and 3850; CORRUPT (11) family; NOTADB (26); CANTOPEN (14) family; READONLY_DBMOVED (1032) | `WorkerCrashed` |
//! | [`Transient`](ErrorClass::Transient) | BUSY (5) family; LOCKED (6) family; IOERR_BLOCKED (2826); IOERR_LOCK (3850); FULL (13); READONLY (8) family except 1032 (the file or its directory cannot be written: the pool is kept, [read-only in place](crate::PoolStatus::ReadOnly)) | `PoolTimedOut`; `PoolClosed` (the pool was closed because a heal replaced it) |
//! | [`Other`](ErrorClass::Other) | everything else: constraints, SQLITE_ERROR, ...; any other driver's database error | everything else |

use std::error::Error as StdError;
use std::fmt;

use sqlx::error::DatabaseError;
use sqlx::sqlite::SqliteError;

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

// Primary result codes (https://www.sqlite.org/rescode.html).
const BUSY: i32 = 5;
const LOCKED: i32 = 6;
const IOERR: i32 = 10;
const CORRUPT: i32 = 11;
const READONLY: i32 = 8;
const FULL: i32 = 13;
const CANTOPEN: i32 = 14;
const NOTADB: i32 = 26;
// Extended result codes that cross the primary code's verdict.
const IOERR_BLOCKED: i32 = IOERR | (11 << 8);
const IOERR_LOCK: i32 = IOERR | (15 << 8);
const READONLY_DBMOVED: i32 = READONLY | (4 << 8);

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
        // A heal closes the dead pool: a request that got to it late is
        // refused, and its retry lands on the new pool.
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => ErrorClass::Transient,
        // A dead socket (Postgres): sqlx drops the connection and opens a new
        // one on the next acquire.
        sqlx::Error::Io(_) => ErrorClass::Transient,
        _ => ErrorClass::Other,
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

    /// The code of `err`, read only from a driver the crate knows.
    pub(crate) fn of(err: &sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(db) => Code::of_database(db.as_ref()),
            _ => Code::None,
        }
    }

    pub(crate) fn of_database(db: &dyn DatabaseError) -> Self {
        if let Some(code) = sqlite_code(db) {
            return Code::Sqlite(code);
        }
        #[cfg(feature = "postgres")]
        if let Some(code) = crate::backend::postgres::sqlstate(db) {
            return Code::Sqlstate(code);
        }
        #[cfg(feature = "mysql")]
        if let Some((number, read_only)) = crate::backend::mysql::number(db) {
            return Code::MySql { number, read_only };
        }
        Code::None
    }

    /// How the crate classifies this code.
    pub(crate) fn class(self) -> ErrorClass {
        match self {
            Code::Sqlite(code) => classify_code(code),
            #[cfg(feature = "postgres")]
            Code::Sqlstate(code) => crate::backend::postgres::classify_sqlstate(&code),
            #[cfg(feature = "mysql")]
            Code::MySql { number, read_only } => {
                crate::backend::mysql::classify_number(number, read_only)
            }
            _ => ErrorClass::Other,
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

/// Classifies any error that holds a `sqlx::Error` (or a driver's database
/// error) somewhere in its [`source`](StdError::source) chain, starting with
/// the error itself. The first one found decides; a database error of a
/// driver other than SQLite is [`ErrorClass::Other`].
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

    /// The error's code, when its driver is one the crate reads.
    pub(crate) fn code(&self) -> Code {
        match self {
            Found::Sqlx(err) => Code::of(err),
            Found::Database(db) => Code::of_database(*db),
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
        if let Some(db) = current.downcast_ref::<SqliteError>() {
            return Some(Found::Database(db));
        }
        #[cfg(feature = "postgres")]
        if let Some(db) = current.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            return Some(Found::Database(db));
        }
        #[cfg(feature = "mysql")]
        if let Some(db) = current.downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return Some(Found::Database(db));
        }
        // Any driver's: classified by its code, if it is a driver the crate reads.
        if let Some(db) = current.downcast_ref::<Box<dyn DatabaseError>>() {
            return Some(Found::Database(db.as_ref()));
        }
        next = current.source();
    }
    None
}

/// SQLite's code, read only from a `SqliteError`: another driver's code
/// (a SQLSTATE) would be misread as a SQLite one.
fn sqlite_code(db: &dyn DatabaseError) -> Option<i32> {
    let sqlite = db.try_downcast_ref::<SqliteError>()?;
    sqlite.code()?.trim().parse().ok()
}

fn classify_database_error(db: &dyn DatabaseError) -> ErrorClass {
    // Never the message: it can carry user input, and a `SqliteError` (or
    // `PgDatabaseError`) always has a code. (MySQL's 1290 is the one
    // exception, read where the code is: its number alone does not say
    // which server option refused the statement.)
    Code::of_database(db).class()
}

/// Classifies a SQLite (extended) result code.
pub(crate) fn classify_code(code: i32) -> ErrorClass {
    match code {
        // The two IOERR sub-codes that mean "someone else holds a lock".
        IOERR_BLOCKED | IOERR_LOCK => ErrorClass::Transient,
        READONLY_DBMOVED => ErrorClass::Fatal,
        _ => match code & 0xff {
            IOERR | CORRUPT | NOTADB | CANTOPEN => ErrorClass::Fatal,
            // READONLY: the file or its directory cannot be written (a wrong
            // owner, a read-only mount): degraded until it can, not dead.
            BUSY | LOCKED | FULL | READONLY => ErrorClass::Transient,
            _ => ErrorClass::Other,
        },
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
            (8, Transient, "READONLY"),
            (264, Transient, "READONLY_RECOVERY"),
            (520, Transient, "READONLY_CANTLOCK"),
            (776, Transient, "READONLY_ROLLBACK"),
            (1288, Transient, "READONLY_CANTINIT"),
            (1544, Transient, "READONLY_DIRECTORY"),
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

    /// The documented table, written out independently of `classify_code`.
    fn documented(code: i32) -> ErrorClass {
        match code {
            2826 | 3850 => ErrorClass::Transient,
            1032 => ErrorClass::Fatal,
            _ => match code & 0xff {
                10 | 11 | 14 | 26 => ErrorClass::Fatal,
                5 | 6 | 8 | 13 => ErrorClass::Transient,
                _ => ErrorClass::Other,
            },
        }
    }

    // A `SqliteError` cannot be built outside sqlx, so the table is asserted
    // here on the code alone; `tests/classify_real.rs` runs real SQLite
    // errors through `classify`.
    proptest::proptest! {
        #[test]
        fn busy_and_locked_families_are_never_fatal(
            extended in 0i32..=0x7fffff,
            primary in proptest::prop_oneof![proptest::strategy::Just(BUSY), proptest::strategy::Just(LOCKED)],
        ) {
            let code = (extended << 8) | primary;
            proptest::prop_assert_eq!(classify_code(code), ErrorClass::Transient, "code {}", code);
        }

        #[test]
        fn fatal_families_are_always_fatal(
            extended in 0i32..=0x7fffff,
            primary in proptest::prop_oneof![
                proptest::strategy::Just(IOERR),
                proptest::strategy::Just(CORRUPT),
                proptest::strategy::Just(CANTOPEN),
                proptest::strategy::Just(NOTADB),
            ],
        ) {
            let code = (extended << 8) | primary;
            proptest::prop_assume!(code != IOERR_BLOCKED && code != IOERR_LOCK);
            proptest::prop_assert_eq!(classify_code(code), ErrorClass::Fatal, "code {}", code);
        }

        #[test]
        fn any_code_gets_the_documented_class(code in proptest::arbitrary::any::<i32>()) {
            proptest::prop_assert_eq!(classify_code(code), documented(code), "code {}", code);
        }
    }

    #[test]
    fn sqlx_variants() {
        assert_eq!(classify(&sqlx::Error::WorkerCrashed), ErrorClass::Fatal);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::PoolClosed), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
        assert_eq!(
            classify(&sqlx::Error::Protocol("x".into())),
            ErrorClass::Other
        );
    }
}
