//! What differs between databases, one module per backend: how an error is
//! read, what is verified when a pool is opened, how a dead generation is
//! replaced, what the health probe reads. The policy around them
//! ([`LivePool`](crate::LivePool)'s single flight, generations, budget,
//! give-up and exit) is the same for all.

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use crate::classify::{Code, ErrorClass};
use crate::health::Finding;
use crate::live_pool::{Fault, Generation, GiveUpReason, Inner, LivePool, Outcome};

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

/// A pause in `[max / 2, max]`: spread (a fleet does not act in one
/// burst), and never much shorter than a back-off asks for.
#[cfg(feature = "mysql")]
pub(crate) fn jitter(max: Duration) -> Duration {
    let half = max / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random_u64() % nanos)
}

/// The start of a server backend's heal (Postgres, MySQL): closes the
/// pinned pool, so its writes fail fast (PoolClosed, 503) instead of reaching
/// a server that refuses them, and checks the heal budget. A generation that
/// was verified writable and lost its primary later is a new failover, not
/// the same fault coming back: only `max_heals` applies to it, not the
/// recurrence window.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn begin_server_heal<DB: sealed::Sealed>(
    inner: &Arc<Inner<DB>>,
    old: &Generation<DB>,
    fault: &Fault,
) -> Option<GiveUpReason> {
    drop(old.pool.close());
    let recurrence = !matches!(fault, Fault::NotWritable { .. });
    inner.budget_exceeded(old, recurrence)
}

/// A server backend's replaced generation: its pool closed in the
/// background, bounded by the close timeout.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn retire_server_pool<DB: sealed::Sealed>(
    inner: &Arc<Inner<DB>>,
    old: Arc<Generation<DB>>,
) {
    let limit = inner.config.close_timeout;
    tokio::spawn(async move {
        if tokio::time::timeout(limit, old.pool.close()).await.is_err() {
            tracing::warn!(
                generation = old.number,
                "replaced pool still has connections checked out after {limit:?}"
            );
        }
    });
}

/// A database [`LivePool`](crate::LivePool) supports: [`sqlx::Sqlite`],
/// [`sqlx::Postgres`] with the `postgres` feature and [`sqlx::MySql`] with
/// the `mysql` feature.
///
/// Sealed: the crate implements it for the databases it knows how to watch.
pub trait Backend: sealed::Sealed {}

impl Backend for sqlx::Sqlite {}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {}

#[cfg(feature = "mysql")]
impl Backend for sqlx::MySql {}

/// What a fatal error is, once the backend has looked at it.
pub enum Triage {
    /// Heal now.
    Fatal(Fault),
    /// Decided off the request path (a check runs first).
    Check(tokio::task::JoinHandle<Outcome>),
    /// Decided off the request path by work already in flight, which this
    /// report joins (no task of its own).
    Wait(crate::live_pool::BoxFuture<Outcome>),
    /// Not fatal for this pool after all.
    Ignored(ErrorClass),
}

pub(crate) mod sealed {
    use super::*;

    /// The backend's half of the policy. Nominally public so that
    /// [`Backend`] can name it; unreachable from outside the crate.
    pub trait Sealed: sqlx::Database + Sized {
        /// What is recorded per generation.
        type Extra: Send + Sync + 'static;
        /// What the heals of every generation share.
        type State: Send + Sync + 'static;
        /// What only this backend's builder sets.
        type Settings: Send + 'static;
        /// The backend's name in logs and `Debug` output.
        const NAME: &'static str;
        /// The key of the database's entry in the health body's `checks`.
        const CHECK_KEY: &'static str;

        /// A fatal error (by class) about `generation`: heal, check first,
        /// or not fatal for this pool.
        fn triage(
            inner: &Arc<Inner<Self>>,
            generation: u64,
            code: Code,
            err: &dyn fmt::Display,
        ) -> Triage;

        /// A transient error about `generation`: the backend may read a
        /// degraded state from it (SQLite's READONLY: the file or its
        /// directory cannot be written).
        fn transient(_inner: &Arc<Inner<Self>>, _generation: u64, _code: Code) {}

        /// Everything between a fatal finding and a verified new
        /// generation. Also returns where the dead generation's data was
        /// rescued, if it was.
        fn replace(
            inner: &Arc<Inner<Self>>,
            old: &Arc<Generation<Self>>,
            fault: &Fault,
        ) -> impl Future<Output = (Result<Generation<Self>, GiveUpReason>, Option<PathBuf>)> + Send;

        /// Lets a replaced generation go, in the background.
        fn retire(inner: &Arc<Inner<Self>>, old: Arc<Generation<Self>>);

        /// Closes a generation that failed verification, in the background.
        fn discard(generation: Generation<Self>);

        /// Closes the generation in service (from `LivePool::close`).
        fn close(generation: &Generation<Self>) -> impl Future<Output = ()> + Send;

        /// The health probe's read of the generation in service; a fatal
        /// finding is handed to the policy. `stuck` counts probes in a row
        /// that did not answer within `bound`.
        fn probe(
            live: &LivePool<Self>,
            bound: Duration,
            stuck: &AtomicU32,
        ) -> impl Future<Output = (u64, Finding)> + Send
        where
            Self: Backend;
    }
}
