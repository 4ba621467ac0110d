//! What differs between databases, one module per backend: how it fails
//! (its errors, read by code), how it is checked (what is verified when a
//! pool is opened, what the probe reads), how a dead generation is replaced.
//! Each implements [`Sealed`] against the shared
//! vocabulary in [`crate::shared`] and never imports the policy, health or
//! the layer, which sit above it.

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use std::future::Future;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
#[cfg(feature = "mysql")]
use std::time::Duration;

use tokio::sync::watch;

use crate::shared::{BoxFuture, ErrorClass, Outcome};
#[cfg(any(feature = "postgres", feature = "mysql"))]
use crate::shared::{Fault, Generation, GiveUpReason, PolicyRef, Sealed};

/// One check of the database at a time, per generation, for errors whose
/// code alone does not prove a fault (SQLite's IOERR from an attached file,
/// Postgres's `25006`, MySQL's `1792`): reports that come while a check
/// runs wait for its verdict instead of starting another, so a burst of
/// errors from a busy pool costs one check, and an endpoint that makes such
/// errors on purpose cannot keep the database busy with checks.
#[derive(Default)]
pub(crate) struct SingleCheck(Mutex<Option<Running>>);

struct Running {
    generation: u64,
    done: watch::Receiver<Option<Outcome>>,
}

impl SingleCheck {
    /// Joins the check of `generation` in flight, or spawns the one `check`
    /// makes. Decided when called; the future only waits for the verdict.
    pub(crate) fn join_or_start<F>(
        &self,
        generation: u64,
        check: impl FnOnce() -> F,
    ) -> BoxFuture<Outcome>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let mut done = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_ref() {
                // Still running: no verdict yet, and its task alive.
                Some(running)
                    if running.generation == generation
                        && running.done.borrow().is_none()
                        && running.done.has_changed().is_ok() =>
                {
                    running.done.clone()
                }
                _ => {
                    let (tx, rx) = watch::channel(None);
                    *slot = Some(Running {
                        generation,
                        done: rx.clone(),
                    });
                    let check = check();
                    tokio::spawn(async move {
                        let _ = tx.send(Some(check.await));
                    });
                    rx
                }
            }
        };
        Box::pin(async move {
            match done.wait_for(Option::is_some).await {
                Ok(outcome) => outcome
                    .clone()
                    .unwrap_or(Outcome::Ignored(ErrorClass::Transient)),
                // The check's task vanished (the runtime is shutting down).
                Err(_) => Outcome::Ignored(ErrorClass::Transient),
            }
        })
    }
}

/// A pause in `[max / 2, max]`: spread (a fleet does not act in one
/// burst), and never much shorter than a back-off asks for.
#[cfg(feature = "mysql")]
pub(crate) fn jitter(max: Duration) -> Duration {
    let half = max / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(crate::shared::random_u64() % nanos)
}

/// The start of a server backend's heal (Postgres, MySQL): closes the
/// pinned pool, so its writes fail fast (PoolClosed, 503) instead of reaching
/// a server that refuses them, and checks the heal budget. A generation that
/// was verified writable and lost its primary later is a new failover, not
/// the same fault coming back: only `max_heals` applies to it, not the
/// recurrence window.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn begin_server_heal<DB: Sealed>(
    policy: &PolicyRef<DB>,
    old: &Generation<DB>,
    fault: &Fault,
) -> Option<GiveUpReason> {
    drop(old.pool.close());
    let recurrence = !matches!(fault, Fault::NotWritable { .. });
    policy.budget_exceeded(old, recurrence)
}

/// A server backend's heal, waiting for a writable primary: each failed
/// attempt published (`AwaitingPrimary`, what readiness and `subscribe`
/// show), and what it gives up with when none came in time.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) struct AwaitingPrimary<'a, DB: Sealed> {
    pub(crate) policy: &'a PolicyRef<DB>,
    /// The generation being replaced.
    pub(crate) generation: u64,
    pub(crate) fault: &'a Fault,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<DB: Sealed> AwaitingPrimary<'_, DB> {
    pub(crate) fn failed(&self, attempts: u32, last: &str) {
        self.policy
            .publish(crate::shared::PoolStatus::AwaitingPrimary {
                generation: self.generation,
                fault: self.fault.clone(),
                attempts,
                last: last.to_owned(),
            });
    }

    pub(crate) fn gave_up(&self, why: String) -> GiveUpReason {
        GiveUpReason::ReopenFailed(format!(
            "no writable primary within {:?}: {why}",
            self.policy.config().reopen_timeout
        ))
    }
}

/// A server backend's replaced generation: its pool closed in the
/// background, bounded by the close timeout.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn retire_server_pool<DB: Sealed>(policy: &PolicyRef<DB>, old: Arc<Generation<DB>>) {
    let limit = policy.config().close_timeout;
    tokio::spawn(async move {
        if tokio::time::timeout(limit, old.pool.close()).await.is_err() {
            tracing::warn!(
                generation = old.number,
                "replaced pool still has connections checked out after {limit:?}"
            );
        }
    });
}
