//! SQLite errors by extended result code, read only from a `SqliteError`.
//!
//! The message text is never read: it can carry user input, and several
//! codes share one message anyway.

use sqlx::error::DatabaseError;
use sqlx::sqlite::SqliteError;

use crate::shared::{Code, ErrorClass};

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

/// The code of a database error, if it is SQLite's.
pub(crate) fn code(db: &dyn DatabaseError) -> Code {
    sqlite_code(db).map_or(Code::None, Code::Sqlite)
}

/// How the crate classifies one of SQLite's codes.
pub(crate) fn class(code: Code) -> ErrorClass {
    code.sqlite().map_or(ErrorClass::Other, classify_code)
}

/// SQLite's code, read only from a `SqliteError`: another driver's code
/// (a SQLSTATE) would be misread as a SQLite one.
fn sqlite_code(db: &dyn DatabaseError) -> Option<i32> {
    let sqlite = db.try_downcast_ref::<SqliteError>()?;
    sqlite.code()?.trim().parse().ok()
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
}
