//! What one probe found, for the backends' probes to return.

use std::sync::Arc;

use super::{Code, ErrorClass, PolicyRef, Sealed, class};

/// Consecutive probes whose check was stuck (a hung mount, a black-holed
/// server) before the answer is `fail`; the ones before it are `warn`.
pub(crate) const STUCK_PROBES: u32 = 3;

/// A finding's text: `safe` holds no path and no SQLite message.
#[derive(Debug, Clone)]
pub struct Detail {
    pub(crate) safe: String,
    pub(crate) full: String,
}

impl Detail {
    /// A text that is safe as it is.
    pub(crate) fn same(text: impl Into<String>) -> Self {
        let text = text.into();
        Detail {
            safe: text.clone(),
            full: text,
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone)]
pub enum Finding {
    Pass,
    /// A lock, an exhausted pool, a timeout: `warn`.
    Transient(Detail),
    /// A check that did not answer (a hung mount, a black-holed server),
    /// the given number in a row: `warn`, and readiness `fail` from the
    /// [`STUCK_PROBES`]th. Nothing proves the database dead, so nothing is
    /// reported to the policy, and a restart would hang the same way.
    Silent(u32, Detail),
    /// A dead or unreadable database: `fail`.
    Dead(Detail),
}

impl Finding {
    /// A check that did not answer, the `in_a_row`th in a row.
    pub(crate) fn silent(in_a_row: u32, detail: Detail) -> Finding {
        if in_a_row < STUCK_PROBES {
            return Finding::Silent(in_a_row, detail);
        }
        Finding::Silent(
            in_a_row,
            Detail {
                safe: format!("{} ({in_a_row} probes in a row)", detail.safe),
                full: format!("{} ({in_a_row} probes in a row)", detail.full),
            },
        )
    }

    /// What a probe's failed read says, for every backend. A fatal error is
    /// handed to the policy (which decides now; nothing waits for the heal).
    pub(crate) fn from_error<DB: Sealed>(
        policy: &PolicyRef<DB>,
        generation: u64,
        err: &sqlx::Error,
    ) -> Finding {
        let (class, code) = class::read::<DB>(err);
        let safe = match (code, err) {
            (Code::None, _)
                if matches!(
                    err,
                    sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) =>
            {
                // sqlx's own fixed texts; nothing from the server or the file system.
                format!("{class} database error: {err}")
            }
            (Code::None, _) => format!("{class} database error"),
            (code, _) => format!("{class} database error ({code})"),
        };
        let detail = Detail {
            safe,
            full: format!("{class} database error: {err}"),
        };
        match class {
            // Closed under a heal, the pool is the policy's business (its
            // state answers first); a pool in service that is closed serves
            // nothing.
            ErrorClass::Transient if matches!(err, sqlx::Error::PoolClosed) => {
                Finding::Dead(Detail::same("the pool in service is closed"))
            }
            ErrorClass::Transient => Finding::Transient(detail),
            ErrorClass::Fatal => {
                drop(Arc::clone(policy).report(generation, class, code, err));
                // SQLite's CANTOPEN with the file in place (the probe checked
                // it first): a descriptor shortage, say. Reported, so the
                // policy checks again; not dead.
                if code.sqlite().is_some_and(|code| code & 0xff == 14) {
                    Finding::Transient(detail)
                } else {
                    Finding::Dead(detail)
                }
            }
            // The probe's query cannot fail on a healthy database: whatever
            // this is, the database is not serving.
            ErrorClass::Other => Finding::Dead(detail),
        }
    }
}
