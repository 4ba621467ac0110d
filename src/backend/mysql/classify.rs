//! MySQL / MariaDB errors by error number, read only from a
//! `MySqlDatabaseError`: the SQLSTATE of the read-only error is the generic
//! `HY000`, so only `number()` tells it apart.

use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;

use crate::shared::{Code, ErrorClass};

/// `ER_OPTION_PREVENTS_STATEMENT`: "running with the `--<option>` option so it
/// cannot execute this statement". Generic: the option may be `--read-only`
/// (or MySQL's `--super-read-only`), or `--max-user-connections`, ...
const OPTION_PREVENTS_STATEMENT: u16 = 1290;

/// The error number of a database error, if it is MySQL's, and for 1290
/// whether the option that refused the statement is the read-only one.
pub(crate) fn number(db: &dyn DatabaseError) -> Option<(u16, bool)> {
    let my = db.try_downcast_ref::<MySqlDatabaseError>()?;
    let number = my.number();
    // The server's own text, fixed for this number: "--read-only option",
    // "--super-read-only option". Nothing else of the message is kept.
    let read_only = number == OPTION_PREVENTS_STATEMENT && my.message().contains("read-only");
    Some((number, read_only))
}

/// The code of a database error, if it is MySQL's.
pub(crate) fn code(db: &dyn DatabaseError) -> Code {
    number(db).map_or(Code::None, |(number, read_only)| Code::MySql {
        number,
        read_only,
    })
}

/// How the crate classifies a MySQL code.
pub(crate) fn class(code: Code) -> ErrorClass {
    match code {
        Code::MySql { number, read_only } => classify_number(number, read_only),
        _ => ErrorClass::Other,
    }
}

/// Classifies a MySQL / MariaDB error number (see the table in
/// [`crate::mysql`]).
pub(crate) fn classify_number(number: u16, read_only: bool) -> ErrorClass {
    match number {
        // The server does not take writes: 1290 with --read-only (a demoted
        // primary, a primary made read-only), 1792 a write in a READ ONLY
        // transaction (also the application's own: confirmed first), 1836
        // MySQL's ER_READ_ONLY_MODE, 1036 a table read only
        // (--innodb-read-only, an Aurora reader). Fatal only once the
        // server's state confirms it.
        OPTION_PREVENTS_STATEMENT if read_only => ErrorClass::Fatal,
        1792 | 1836 | 1036 => ErrorClass::Fatal,
        // Too many connections (server, global per-user, account limit).
        1040 | 1203 | 1226
        // Lock wait timeout (the statement is rolled back), deadlock (the
        // transaction is).
        | 1205 | 1213
        // KILL QUERY, max_statement_time.
        | 1317 | 1969 => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        assert_eq!(classify_number(1290, true), ErrorClass::Fatal);
        // --max-user-connections and other options: not a liveness concern.
        assert_eq!(classify_number(1290, false), ErrorClass::Other);
        for number in [1792, 1836, 1036] {
            assert_eq!(
                classify_number(number, false),
                ErrorClass::Fatal,
                "{number}"
            );
        }
        for number in [1040, 1203, 1226, 1205, 1213, 1317, 1969] {
            assert_eq!(
                classify_number(number, false),
                ErrorClass::Transient,
                "{number}"
            );
        }
        for number in [1062, 1452, 1048, 1064, 1146, 1045, 1044, 1193, 1227, 1005] {
            assert_eq!(
                classify_number(number, false),
                ErrorClass::Other,
                "{number}"
            );
        }
    }
}
