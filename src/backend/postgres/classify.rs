//! Postgres errors by SQLSTATE, read only from a `PgDatabaseError`.

use sqlx::error::DatabaseError;
use sqlx::postgres::PgDatabaseError;

use crate::shared::{Code, ErrorClass};

/// The SQLSTATE of a database error, if it is Postgres's.
pub(crate) fn sqlstate(db: &dyn DatabaseError) -> Option<[u8; 5]> {
    let pg = db.try_downcast_ref::<PgDatabaseError>()?;
    pg.code().as_bytes().try_into().ok()
}

/// The code of a database error, if it is Postgres's.
pub(crate) fn code(db: &dyn DatabaseError) -> Code {
    sqlstate(db).map_or(Code::None, Code::Sqlstate)
}

/// How the crate classifies a Postgres code.
pub(crate) fn class(code: Code) -> ErrorClass {
    match code {
        Code::Sqlstate(code) => classify_sqlstate(&code),
        _ => ErrorClass::Other,
    }
}

/// `true` for the SQLSTATEs a write gets from a server that does not take
/// writes: `25006` read_only_sql_transaction, and `0A000` (a `BEGIN READ
/// WRITE` during recovery). Both also have other causes (a transaction the
/// application made read-only, an unsupported feature), so the policy
/// confirms with the writability check before it heals.
pub(crate) fn is_not_writable(code: &[u8; 5]) -> bool {
    matches!(code, b"25006" | b"0A000")
}

/// Classifies a SQLSTATE (see the crate's classification table).
pub(crate) fn classify_sqlstate(code: &[u8; 5]) -> ErrorClass {
    if is_not_writable(code) {
        return ErrorClass::Fatal;
    }
    match code {
        // The server ends or refuses the connection (admin or fast shutdown,
        // a crash, starting up, in recovery) or ends an idle session
        // (idle_session_timeout, idle_in_transaction_session_timeout): sqlx
        // opens another one.
        b"57P01" | b"57P02" | b"57P03" | b"57P05" | b"25P03"
        // Too many connections, out of memory, disk full on the server.
        | b"53300" | b"53000" | b"53100" | b"53200" | b"53400"
        // Retry the transaction: serialization failure, deadlock.
        | b"40001" | b"40P01"
        // Lock timeout, statement timeout or cancel.
        | b"55P03" | b"57014" => ErrorClass::Transient,
        // Class 08: connection exceptions.
        [b'0', b'8', ..] => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        for code in ["25006", "0A000"] {
            let code: [u8; 5] = code.as_bytes().try_into().unwrap();
            assert_eq!(classify_sqlstate(&code), ErrorClass::Fatal, "{code:?}");
        }
        for code in [
            "57P01", "57P02", "57P03", "57P05", "25P03", "53300", "40001", "40P01", "55P03",
            "57014", "08006", "08001", "53100",
        ] {
            let code: [u8; 5] = code.as_bytes().try_into().unwrap();
            assert_eq!(classify_sqlstate(&code), ErrorClass::Transient, "{code:?}");
        }
        for code in [
            "23505", "23503", "42P01", "42601", "22P02", "XX000", "25P02",
        ] {
            let code: [u8; 5] = code.as_bytes().try_into().unwrap();
            assert_eq!(classify_sqlstate(&code), ErrorClass::Other, "{code:?}");
        }
    }
}
