//! Filesystem calls kept off the async runtime, each with a bound.
//!
//! A `stat` on a hung network or FUSE mount blocks its thread for as long as
//! the mount stays hung. Such a call never runs on a runtime worker: it runs
//! here, and the caller stops waiting after `bound`.

use std::fmt;
use std::time::Duration;

/// A filesystem call that did not finish within its bound (a hung mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stuck {
    pub(crate) bound: Duration,
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a filesystem call did not finish within {} ms",
            self.bound.as_millis()
        )
    }
}

impl std::error::Error for Stuck {}

/// Runs `job` off the runtime and waits for it at most `bound`.
pub(crate) async fn run<T, F>(bound: Duration, job: F) -> Result<T, Stuck>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::time::timeout(bound, tokio::task::spawn_blocking(job)).await {
        Ok(Ok(value)) => Ok(value),
        // A panic in a filesystem call: treat it like a call that never answered.
        Ok(Err(_)) | Err(_) => Err(Stuck { bound }),
    }
}
