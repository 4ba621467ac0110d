//! SQLite's health probe: the file identity, then a page read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::Sqlite;

use super::generation::read_page;
use crate::blocking::{self, Stuck};
use crate::shared::{Detail, Fault, Finding, PolicyRef};

/// File identity, then a page read, on the generation in service; a fatal
/// finding is handed to the policy.
///
/// The identity check runs on the crate's filesystem threads and is given
/// up after `bound`: a stuck check is `warn`, and `fail` from the
/// [`STUCK_PROBES`](crate::shared::STUCK_PROBES)th in a row. `stuck` counts them across probes.
pub(crate) async fn probe(
    policy: &PolicyRef<Sqlite>,
    bound: Duration,
    stuck: &AtomicU32,
) -> (u64, Finding) {
    let current = policy.current();
    let generation = current.number;
    if let Some(file) = current.file.clone() {
        let path = file.path().to_owned();
        let read_only = policy.is_read_only(generation);
        // A stat can block on a dead network filesystem: keep it off the
        // runtime. While read-only in place, also whether writes are
        // possible again.
        let checked = blocking::run(bound, move || {
            file.check().map(|()| read_only && file.writable())
        })
        .await;
        let in_a_row = match checked {
            Err(_) => stuck.fetch_add(1, Ordering::Relaxed).saturating_add(1),
            Ok(_) => {
                stuck.store(0, Ordering::Relaxed);
                0
            }
        };
        match checked {
            Ok(Ok(writable_again)) => {
                if writable_again {
                    policy.clear_read_only(generation);
                }
            }
            Ok(Err(fault)) => {
                // The policy takes the finding now; the answer does not wait
                // for the heal it starts.
                drop(Arc::clone(policy).fatal(generation, Fault::File(fault)));
                let detail = Detail {
                    safe: format!("database file {}", fault.as_str()),
                    full: format!("{fault}: {}", path.display()),
                };
                return (generation, Finding::Dead(detail));
            }
            // A hung mount is not a dead file: nothing is reported to the
            // policy, and no page is read (it would only wait longer).
            Err(Stuck { bound }) => {
                let safe = format!(
                    "the file identity check did not answer within {} ms",
                    bound.as_millis()
                );
                let full = format!("{safe}: {}", path.display());
                return (generation, Finding::silent(in_a_row, Detail { safe, full }));
            }
        }
    }
    let err = match read_page(&current.pool).await {
        Ok(()) => return (generation, Finding::Pass),
        Err(err) => err,
    };
    (generation, Finding::from_error(policy, generation, &err))
}
