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

pub(crate) use crate::shared::Code;
pub use crate::shared::ErrorClass;
use crate::shared::{Sealed, class};

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
        _ => class::of_variant(err),
    }
}

/// The readings of every backend the crate is built with: the classification
/// of an error whose driver is not known in advance.
impl Code {
    /// The code of `err`, read only from a driver the crate knows.
    pub(crate) fn of(err: &sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(db) => Code::of_database(db.as_ref()),
            _ => Code::None,
        }
    }

    pub(crate) fn of_database(db: &dyn DatabaseError) -> Self {
        let readers: &[fn(&dyn DatabaseError) -> Code] = &[
            #[cfg(feature = "sqlite")]
            <sqlx::Sqlite as Sealed>::code,
            #[cfg(feature = "postgres")]
            <sqlx::Postgres as Sealed>::code,
            #[cfg(feature = "mysql")]
            <sqlx::MySql as Sealed>::code,
        ];
        readers
            .iter()
            .map(|read| read(db))
            .find(|code| *code != Code::None)
            .unwrap_or_default()
    }

    /// How the crate classifies this code: by the backend whose code it is.
    pub(crate) fn class(self) -> ErrorClass {
        match self {
            #[cfg(feature = "sqlite")]
            Code::Sqlite(_) => <sqlx::Sqlite as Sealed>::class(self),
            #[cfg(feature = "postgres")]
            Code::Sqlstate(_) => <sqlx::Postgres as Sealed>::class(self),
            #[cfg(feature = "mysql")]
            Code::MySql { .. } => <sqlx::MySql as Sealed>::class(self),
            _ => ErrorClass::Other,
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
        #[cfg(feature = "sqlite")]
        if let Some(db) = current.downcast_ref::<sqlx::sqlite::SqliteError>() {
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

fn classify_database_error(db: &dyn DatabaseError) -> ErrorClass {
    // Never the message: it can carry user input, and a `SqliteError` (or
    // `PgDatabaseError`) always has a code. (MySQL's 1290 is the one
    // exception, read where the code is: its number alone does not say
    // which server option refused the statement.)
    Code::of_database(db).class()
}

#[cfg(test)]
mod tests {
    use super::*;

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
