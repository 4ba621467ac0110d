//! The vocabulary the policy and the backends share, as `sqlx-core` is to
//! sqlx's drivers: the error classes and codes, what made a generation
//! fatal and what the policy did about it, one generation's record, what a
//! probe found, the settings, and the boundary traits ([`Sealed`], which a
//! backend implements, and [`Policy`], what a backend may ask of the
//! policy).
//!
//! It imports nothing of the crate: the backends build on it and never on
//! the policy, health or the layer, which build on the backends.

pub(crate) mod backend;
pub(crate) mod class;
mod config;
mod fault;
mod finding;
mod generation;

pub(crate) use backend::PolicyRef;
pub use backend::{Backend, Policy, Sealed, Triage};
pub use class::{Code, ErrorClass};
pub(crate) use config::{BoxFuture, Config, deadline_after};
#[cfg(feature = "sqlite")]
pub(crate) use config::{ReopenFn, RescueConfig, panic_text};
pub use fault::{Fault, FileFault, GaveUp, GiveUpReason, Healed, Outcome, PoolStatus};
pub(crate) use finding::{Detail, Finding, STUCK_PROBES};
pub use generation::Generation;

/// 64 bits nobody can guess: the process's randomly seeded hasher over a
/// counter and the clock, so every call differs even with one seed (rescue
/// names, back-off jitter).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}
