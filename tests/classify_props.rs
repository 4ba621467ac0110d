//! Properties of `classify` over arbitrary codes and messages.
//!
//! SQLite cannot be made to return an arbitrary result code, so this file
//! uses a stand-in `DatabaseError` that carries whatever code string and
//! message proptest generates. Every real code is covered in
//! `classify_real.rs` and the unit tests.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use proptest::prelude::*;
use sqlx::error::{DatabaseError, ErrorKind};
use tower_db_liveness::{ErrorClass, classify, classify_chain};

#[derive(Debug)]
struct Fake {
    code: Option<String>,
    message: String,
}

impl fmt::Display for Fake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Fake {}

impl DatabaseError for Fake {
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

fn db_error(code: Option<String>, message: String) -> sqlx::Error {
    sqlx::Error::Database(Box::new(Fake { code, message }))
}

proptest! {
    #[test]
    fn never_panics(code in proptest::option::of(".*"), message in ".*") {
        let err = db_error(code, message);
        let class = classify(&err);
        prop_assert_eq!(classify_chain(&err), Some(class));
    }

    #[test]
    fn any_numeric_code_never_panics(code in any::<i64>(), message in ".*") {
        classify(&db_error(Some(code.to_string()), message));
    }

    #[test]
    fn busy_and_locked_families_are_never_fatal(
        extended in 0i32..=0xffffff,
        primary in prop_oneof![Just(5i32), Just(6i32)],
        message in ".*",
    ) {
        let code = (extended << 8) | primary;
        let class = classify(&db_error(Some(code.to_string()), message));
        prop_assert_eq!(class, ErrorClass::Transient, "code {}", code);
    }

    #[test]
    fn a_code_always_wins_over_the_message(
        message in prop_oneof![
            Just("disk I/O error".to_owned()),
            Just("database disk image is malformed".to_owned()),
            Just("database is locked".to_owned()),
        ],
    ) {
        // 2067 is a constraint violation whatever the text says.
        let class = classify(&db_error(Some("2067".to_owned()), message));
        prop_assert_eq!(class, ErrorClass::Other);
    }
}

#[test]
fn lock_messages_without_code_are_transient() {
    let err = db_error(None, "database is locked".to_owned());
    assert_eq!(classify(&err), ErrorClass::Transient);
    let err = db_error(None, "disk I/O error".to_owned());
    assert_eq!(classify(&err), ErrorClass::Fatal);
}
