//! Properties of `classify` over other drivers' errors: arbitrary codes and
//! messages.
//!
//! No other database server runs in these tests, so this file uses a fake:
//! `Foreign`, a `DatabaseError` of another driver (standing in for Postgres
//! or MySQL) that carries whatever code string and message proptest
//! generates. SQLite's own table is asserted as properties over arbitrary
//! extended codes in the unit tests of `src/classify.rs` (a `SqliteError`
//! cannot be built outside sqlx), and on real SQLite errors in
//! `classify_real.rs`.
#![cfg(feature = "sqlite")]

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use proptest::prelude::*;
use sqlx::error::{DatabaseError, ErrorKind};
use tower_db_liveness::{ErrorClass, classify, classify_chain};

/// A fake: another driver's database error (no foreign server runs here).
#[derive(Debug)]
struct Foreign {
    code: Option<String>,
    message: String,
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Foreign {}

impl DatabaseError for Foreign {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }
    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

fn foreign(code: Option<String>, message: String) -> sqlx::Error {
    sqlx::Error::Database(Box::new(Foreign { code, message }))
}

/// An application error holding a database error as its source.
#[derive(Debug)]
struct Wrapped(sqlx::Error);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}

impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// An application error holding a driver's boxed error without its
/// `sqlx::Error` wrapper.
#[derive(Debug)]
struct WrappedInner(Box<dyn DatabaseError>);

impl fmt::Display for WrappedInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("query failed")
    }
}

impl StdError for WrappedInner {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// Messages SQLite uses for its fatal and transient codes, which a foreign
/// driver's error can carry in user input.
fn sqlite_like_message() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("disk I/O error".to_owned()),
        Just("database is locked".to_owned()),
        Just("database table is locked".to_owned()),
        Just("database or disk is full".to_owned()),
        Just("database disk image is malformed".to_owned()),
        Just("file is not a database".to_owned()),
        Just("unable to open database file".to_owned()),
        Just(r#"invalid input syntax for type integer: "disk I/O error""#.to_owned()),
        ".*",
    ]
}

/// Code strings a foreign driver reports: SQLSTATEs that read as SQLite
/// codes (`22026` & 0xff is 10, IOERR; `42501` & 0xff is 5, BUSY), SQLite's
/// own fatal and transient codes, any 5-character string, anything.
fn foreign_code() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        Just("22026".to_owned()),
        Just("42501".to_owned()),
        Just("10".to_owned()),
        Just("11".to_owned()),
        Just("14".to_owned()),
        Just("26".to_owned()),
        Just("1032".to_owned()),
        Just("5".to_owned()),
        Just("13".to_owned()),
        "[0-9A-Z]{5}",
        any::<i32>().prop_map(|n| n.to_string()),
        ".*",
    ])
}

proptest! {
    /// Any numeric code a foreign driver reports (a MySQL error number, a
    /// SQLSTATE made of digits) is not a SQLite code.
    #[test]
    fn a_foreign_numeric_code_is_other(
        code in prop_oneof![0i64..=0xffff, any::<i64>()],
        message in sqlite_like_message(),
    ) {
        let err = foreign(Some(code.to_string()), message);
        prop_assert_eq!(classify(&err), ErrorClass::Other, "code {}", code);
    }

    /// Another driver's error is never read as SQLite's, whatever its code
    /// or message: never fatal, never transient, and it has no SQLite code
    /// for the layer to act on. (Before, `22026` read as IOERR: a client
    /// could make the SQLite pool reopen, then exit.)
    #[test]
    fn a_foreign_drivers_error_is_other(code in foreign_code(), message in sqlite_like_message()) {
        let err = foreign(code.clone(), message.clone());
        prop_assert_eq!(classify(&err), ErrorClass::Other, "code {:?}, message {:?}", code, message);
        prop_assert_eq!(classify_chain(&err), Some(ErrorClass::Other));
        prop_assert_eq!(tower_db_liveness::DbError::from(err).status(), http::StatusCode::INTERNAL_SERVER_ERROR);

        // Wrapped in an application error, and its boxed inner error alone
        // (what `sqlx::Error::Database` holds).
        let wrapped = Wrapped(foreign(code.clone(), message.clone()));
        prop_assert_eq!(classify_chain(&wrapped), Some(ErrorClass::Other));
        let inner = WrappedInner(Box::new(Foreign { code, message }));
        prop_assert_eq!(classify_chain(&inner), Some(ErrorClass::Other));
    }
}
