//! The boundary between the policy and the backends: what a backend
//! implements ([`Sealed`]), and what it may ask of the policy ([`Policy`]).
//! Neither side names the other's types.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use sqlx::error::DatabaseError;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{BoxFuture, Code, Config, ErrorClass, Fault, Finding, Generation, GiveUpReason};
use super::{Outcome, PoolStatus};

/// A database [`LivePool`](crate::LivePool) supports: [`sqlx::Sqlite`],
/// [`sqlx::Postgres`] with the `postgres` feature and [`sqlx::MySql`] with
/// the `mysql` feature.
///
/// Sealed: the crate implements it for the databases it knows how to watch.
pub trait Backend: Sealed {}

/// The policy a backend works for, as the backend sees it.
pub(crate) type PolicyRef<DB> = Arc<dyn Policy<DB>>;

/// What a fatal error is, once the backend has looked at it.
pub enum Triage {
    /// Heal now.
    Fatal(Fault),
    /// Decided off the request path (a check runs first).
    Check(JoinHandle<Outcome>),
    /// Decided off the request path by work already in flight, which this
    /// report joins (no task of its own).
    Wait(BoxFuture<Outcome>),
    /// Not fatal for this pool after all.
    Ignored(ErrorClass),
}

/// The backend's half of the policy. Nominally public so that [`Backend`]
/// can name it; unreachable from outside the crate.
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

    /// The code of a database error, if this backend's driver produced it
    /// (`Code::None` otherwise).
    fn code(db: &dyn DatabaseError) -> Code;

    /// How the crate classifies one of this backend's codes.
    fn class(code: Code) -> ErrorClass;

    /// A fatal error (by class) about `generation`: heal, check first,
    /// or not fatal for this pool.
    fn triage(
        policy: &PolicyRef<Self>,
        generation: u64,
        code: Code,
        err: &dyn fmt::Display,
    ) -> Triage;

    /// A transient error about `generation`: the backend may read a
    /// degraded state from it (SQLite's READONLY: the file or its
    /// directory cannot be written).
    fn transient(_policy: &PolicyRef<Self>, _generation: u64, _code: Code) {}

    /// Everything between a fatal finding and a verified new generation.
    /// Also returns where the dead generation's data was rescued, if it was.
    fn replace(
        policy: &PolicyRef<Self>,
        old: &Arc<Generation<Self>>,
        fault: &Fault,
    ) -> impl Future<Output = (Result<Generation<Self>, GiveUpReason>, Option<PathBuf>)> + Send;

    /// Lets a replaced generation go, in the background.
    fn retire(policy: &PolicyRef<Self>, old: Arc<Generation<Self>>);

    /// Closes a generation that failed verification, in the background.
    fn discard(generation: Generation<Self>) {
        tokio::spawn(async move { generation.pool.close().await });
    }

    /// What else the generation in service holds, closed after its pool
    /// (from `LivePool::close`): nothing, but for SQLite's sentinel.
    fn close(_generation: &Generation<Self>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The health probe's read of the generation in service; a fatal
    /// finding is handed to the policy. `stuck` counts probes in a row
    /// that did not answer within `bound`.
    fn probe(
        policy: &PolicyRef<Self>,
        bound: Duration,
        stuck: &AtomicU32,
    ) -> impl Future<Output = (u64, Finding)> + Send;
}

/// What a backend may ask of the policy it works for: the generation in
/// service, the settings, its own shared state, the degraded (read-only)
/// state, and the doors for what it finds. Implemented by the policy.
pub trait Policy<DB: Sealed>: Send + Sync + 'static {
    /// The policy's settings.
    fn config(&self) -> &Config;
    /// What the backend keeps for its heals (how to reopen, say).
    fn state(&self) -> &DB::State;
    /// The generation in service.
    fn current(&self) -> Arc<Generation<DB>>;
    /// The number of the generation in service.
    fn generation(&self) -> u64;
    /// The generation, whether a heal is in flight and whether the policy
    /// gave up, from one load.
    fn load_state(&self) -> (u64, bool, bool);
    /// `true` once the policy has given up.
    fn gave_up(&self) -> bool;
    /// `true` once the application closed the `LivePool`.
    fn is_closed(&self) -> bool;
    /// Marks `generation` read-only in place (degraded, not dead); `true`
    /// when this entered the state.
    fn set_read_only(&self, generation: u64, reason: &str) -> bool;
    /// `generation` takes writes again; `true` when it was read-only.
    fn clear_read_only(&self, generation: u64) -> bool;
    /// `true` while `generation` is marked read-only in place.
    fn is_read_only(&self, generation: u64) -> bool;
    /// Publishes what a heal in flight is waiting for.
    fn publish(&self, status: PoolStatus);
    /// Follows the published status.
    fn subscribe(&self) -> watch::Receiver<PoolStatus>;
    /// The recurrence window and the heal budget: `Some` when this heal
    /// must not reopen.
    fn budget_exceeded(&self, old: &Generation<DB>, recurrence: bool) -> Option<GiveUpReason>;
    /// Work on a replaced generation that `LivePool::close` waits for.
    fn retire(&self, task: JoinHandle<()>);
    /// A fatal finding about `generation`, decided when called; the future
    /// only waits for the outcome.
    fn fatal(self: Arc<Self>, generation: u64, fault: Fault) -> BoxFuture<Outcome>;
    /// An error already classified, through the same door as a reported
    /// one (the probe's failed read).
    fn report(
        self: Arc<Self>,
        generation: u64,
        class: ErrorClass,
        code: Code,
        err: &dyn fmt::Display,
    ) -> BoxFuture<Outcome>;
}
