//! Recording of the policy's decisions through the `metrics` facade (feature
//! `metrics`); the names, types and labels are documented in the crate docs
//! ("Metrics"). Without the feature every function here is empty, so call
//! sites carry no `cfg`.
//!
//! Names and label values are literals in each macro call, so the facade
//! builds each key from statics. A recorder's lookup is its own business:
//! `metrics-exporter-prometheus` allocates on every call (measured with the
//! success-path allocation test), so nothing here runs on a request that
//! succeeds, only on errors, holds, heals, rescues and health answers.
#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

#[cfg(feature = "sqlite")]
use std::path::Path;
use std::time::{Duration, Instant};

use crate::shared::{ErrorClass, Fault, GiveUpReason};

#[cfg(feature = "metrics")]
use metrics::{counter, gauge, histogram};

/// `# HELP` texts, for exporters that show them. Cheap and idempotent: called
/// for each `LivePool` (after the application installed its recorder).
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "db_liveness_errors_total",
            "Database errors reported to the policy, by class"
        );
        describe_counter!(
            "db_liveness_heals_total",
            "Pools reopened, verified and swapped in, by what made the old one fatal"
        );
        describe_counter!(
            "db_liveness_give_ups_total",
            "Give-ups (the process exits next), by reason"
        );
        describe_histogram!(
            "db_liveness_heal_seconds",
            Unit::Seconds,
            "From a fatal finding to the swap or the give-up"
        );
        describe_counter!(
            "db_liveness_rescues_total",
            "Rescues of a dead file's data with VACUUM INTO, saved or failed"
        );
        describe_gauge!(
            "db_liveness_rescue_bytes",
            Unit::Bytes,
            "Size of the last rescue file saved"
        );
        describe_gauge!(
            "db_liveness_leftover_files",
            "SQLite: rescues, restore markers and set-aside files from earlier faults, found at open (the operator deletes them)"
        );
        describe_gauge!(
            "db_liveness_leftover_bytes",
            Unit::Bytes,
            "SQLite: the total size of those files"
        );
        describe_counter!(
            "db_liveness_held_requests_total",
            "Requests held by the layer while a heal was in flight"
        );
        describe_histogram!(
            "db_liveness_hold_seconds",
            Unit::Seconds,
            "How long held requests were held"
        );
        describe_counter!(
            "db_liveness_probe_total",
            "Health answers (HTTP, gRPC bridge, systemd watchdog), by status"
        );
        describe_histogram!(
            "db_liveness_probe_seconds",
            Unit::Seconds,
            "How long each probe of the database took"
        );
        describe_gauge!(
            "db_liveness_generation",
            "The pool generation in service: 0 for the first pool, one more per heal"
        );
    }
}

/// A database error reached the policy (from the layer, a `Lease`,
/// `report_at` or the probe), as classified.
pub(crate) fn error_seen(class: ErrorClass) {
    #[cfg(feature = "metrics")]
    let counter = match class {
        ErrorClass::Fatal => counter!("db_liveness_errors_total", "class" => "fatal"),
        ErrorClass::Transient => counter!("db_liveness_errors_total", "class" => "transient"),
        ErrorClass::Other => counter!("db_liveness_errors_total", "class" => "other"),
    };
    #[cfg(feature = "metrics")]
    counter.increment(1);
}

/// A heal swapped a new pool in.
pub(crate) fn healed(fault: &Fault, generation: u64) {
    #[cfg(feature = "metrics")]
    {
        use crate::shared::FileFault;
        let counter = match fault {
            Fault::Error { .. } => counter!("db_liveness_heals_total", "fault" => "error"),
            Fault::NotWritable { .. } => {
                counter!("db_liveness_heals_total", "fault" => "not_writable")
            }
            Fault::File(FileFault::Deleted) => {
                counter!("db_liveness_heals_total", "fault" => "deleted")
            }
            Fault::File(FileFault::Moved) => {
                counter!("db_liveness_heals_total", "fault" => "moved")
            }
            Fault::File(FileFault::Replaced) => {
                counter!("db_liveness_heals_total", "fault" => "replaced")
            }
            Fault::File(FileFault::CompanionDeleted) => {
                counter!("db_liveness_heals_total", "fault" => "companion_deleted")
            }
            Fault::File(FileFault::CompanionReplaced) => {
                counter!("db_liveness_heals_total", "fault" => "companion_replaced")
            }
        };
        counter.increment(1);
        self::generation(generation);
    }
}

/// The policy gave up.
pub(crate) fn gave_up(reason: &GiveUpReason) {
    #[cfg(feature = "metrics")]
    let counter = match reason {
        GiveUpReason::ReopenFailed(_) => {
            counter!("db_liveness_give_ups_total", "reason" => "reopen_failed")
        }
        GiveUpReason::VerifyFailed(_) => {
            counter!("db_liveness_give_ups_total", "reason" => "verify_failed")
        }
        GiveUpReason::Recurred { .. } => {
            counter!("db_liveness_give_ups_total", "reason" => "recurred")
        }
        GiveUpReason::HealsOff => counter!("db_liveness_give_ups_total", "reason" => "heals_off"),
        GiveUpReason::TooManyHeals { .. } => {
            counter!("db_liveness_give_ups_total", "reason" => "too_many_heals")
        }
    };
    #[cfg(feature = "metrics")]
    counter.increment(1);
}

/// A heal is about to swap (`healed`) or give up; `started` is when it began.
pub(crate) fn heal_ended(healed: bool, started: Instant) {
    #[cfg(feature = "metrics")]
    let histogram = if healed {
        histogram!("db_liveness_heal_seconds", "outcome" => "healed")
    } else {
        histogram!("db_liveness_heal_seconds", "outcome" => "gave_up")
    };
    #[cfg(feature = "metrics")]
    histogram.record(started.elapsed());
}

/// A rescue file was saved at `path`; its size is read off the runtime.
#[cfg(feature = "sqlite")]
pub(crate) async fn rescue_saved(path: &Path) {
    #[cfg(feature = "metrics")]
    {
        counter!("db_liveness_rescues_total", "result" => "saved").increment(1);
        let path = path.to_path_buf();
        let size = crate::blocking::run(Duration::from_secs(2), move || {
            std::fs::metadata(path).map(|m| m.len())
        })
        .await;
        // A size that cannot be read (a hung mount) leaves the last one.
        if let Ok(Ok(bytes)) = size {
            // f64 holds every size below 2^53 bytes exactly.
            gauge!("db_liveness_rescue_bytes").set(bytes as f64);
        }
    }
}

/// What earlier faults left next to a SQLite database, found at open.
#[cfg(feature = "sqlite")]
pub(crate) fn leftovers(files: usize, bytes: u64) {
    #[cfg(feature = "metrics")]
    {
        // f64 holds every count and size below 2^53 exactly.
        gauge!("db_liveness_leftover_files").set(files as f64);
        gauge!("db_liveness_leftover_bytes").set(bytes as f64);
    }
}

/// A rescue attempt failed (it is retried).
#[cfg(feature = "sqlite")]
pub(crate) fn rescue_failed() {
    #[cfg(feature = "metrics")]
    counter!("db_liveness_rescues_total", "result" => "failed").increment(1);
}

/// The layer holds a request for the heal in flight.
pub(crate) fn held() {
    #[cfg(feature = "metrics")]
    counter!("db_liveness_held_requests_total").increment(1);
}

/// A held request is let through (healed, or the hold timed out).
pub(crate) fn hold_ended(held_for: Duration) {
    #[cfg(feature = "metrics")]
    histogram!("db_liveness_hold_seconds").record(held_for);
}

/// A health answer was decided: `status` is `pass`, `warn` or `fail`.
pub(crate) fn probe_answered(status: &'static str) {
    #[cfg(feature = "metrics")]
    counter!("db_liveness_probe_total", "status" => status).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// A probe of the database finished (or was given up) after `took`.
pub(crate) fn probe_ran(took: Duration) {
    #[cfg(feature = "metrics")]
    histogram!("db_liveness_probe_seconds").record(took);
}

/// The generation in service.
pub(crate) fn generation(generation: u64) {
    // Exact below 2^53 heals.
    #[cfg(feature = "metrics")]
    gauge!("db_liveness_generation").set(generation as f64);
}
