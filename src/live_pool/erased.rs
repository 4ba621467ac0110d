//! One handle type for every backend: what the layer and the health service
//! need of a [`LivePool`], behind a trait object, so that neither is generic
//! over the database.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{GiveUpHook, Inner, LivePool, StatusWatch};
use crate::shared::{Backend, BoxFuture, Code, ErrorClass, Finding, Outcome, PoolStatus};

/// What the layer and the health service ask of a pool, whatever its backend.
trait Watched: Send + Sync + 'static {
    fn load_state(&self) -> (u64, bool);
    fn healing_or_gave_up(&self) -> bool;
    fn healing_for(&self) -> Option<std::time::Duration>;
    fn generation(&self) -> u64;
    fn status(&self) -> PoolStatus;
    fn subscribe(&self) -> watch::Receiver<PoolStatus>;
    fn recent_heals(&self) -> usize;
    fn heal_in_flight(&self) -> Option<watch::Receiver<Option<Outcome>>>;
    fn before_exit(&self, hook: GiveUpHook);
    fn check_key(&self) -> &'static str;
    fn report(
        self: Arc<Self>,
        generation: u64,
        class: ErrorClass,
        code: Code,
        err: &dyn fmt::Display,
    ) -> BoxFuture<Outcome>;
    fn probe(self: Arc<Self>, bound: Duration, stuck: Arc<AtomicU32>) -> BoxFuture<(u64, Finding)>;
}

impl<DB: Backend> Watched for Inner<DB> {
    #[inline]
    fn load_state(&self) -> (u64, bool) {
        let (generation, healing, _) = Inner::load_state(self);
        (generation, healing)
    }

    fn healing_or_gave_up(&self) -> bool {
        let (_, healing, gave_up) = Inner::load_state(self);
        healing || gave_up
    }

    fn generation(&self) -> u64 {
        Inner::generation(self)
    }

    fn healing_for(&self) -> Option<std::time::Duration> {
        Inner::healing_for(self)
    }

    fn status(&self) -> PoolStatus {
        self.status.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<PoolStatus> {
        self.status.subscribe()
    }

    fn recent_heals(&self) -> usize {
        Inner::recent_heals(self)
    }

    fn heal_in_flight(&self) -> Option<watch::Receiver<Option<Outcome>>> {
        Inner::heal_in_flight(self)
    }

    fn before_exit(&self, hook: GiveUpHook) {
        self.push_give_up_hook(hook);
    }

    fn check_key(&self) -> &'static str {
        DB::CHECK_KEY
    }

    fn report(
        self: Arc<Self>,
        generation: u64,
        class: ErrorClass,
        code: Code,
        err: &dyn fmt::Display,
    ) -> BoxFuture<Outcome> {
        Box::pin(LivePool::from_inner(self).report_classified(generation, class, code, err))
    }

    fn probe(self: Arc<Self>, bound: Duration, stuck: Arc<AtomicU32>) -> BoxFuture<(u64, Finding)> {
        let policy = LivePool::from_inner(self).policy();
        Box::pin(async move { DB::probe(&policy, bound, &stuck).await })
    }
}

/// A [`LivePool`] of any backend.
#[derive(Clone)]
pub(crate) struct AnyLive(Arc<dyn Watched>);

impl AnyLive {
    pub(super) fn new<DB: Backend>(inner: Arc<Inner<DB>>) -> Self {
        AnyLive(inner)
    }

    /// The generation and whether a heal is in flight, from one atomic load
    /// (the layer's per-request cost).
    #[inline]
    pub(crate) fn load_state(&self) -> (u64, bool) {
        self.0.load_state()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.0.generation()
    }

    /// How long the heal in flight has been running, if one is.
    pub(crate) fn healing_for(&self) -> Option<std::time::Duration> {
        self.0.healing_for()
    }

    /// `true` while a heal is in flight or after a give-up: the pool in
    /// service cannot serve now.
    pub(crate) fn healing_or_gave_up(&self) -> bool {
        self.0.healing_or_gave_up()
    }

    /// `true` when a request that started on `generation` overlapped a
    /// fatal fault: a heal in flight or a give-up now, or its generation
    /// replaced since.
    pub(crate) fn overlaps_a_fault(&self, generation: u64) -> bool {
        self.healing_or_gave_up() || self.generation() != generation
    }

    pub(crate) fn status(&self) -> PoolStatus {
        self.0.status()
    }

    #[cfg_attr(not(feature = "tonic"), allow(dead_code))] // used by the gRPC bridge
    pub(crate) fn subscribe(&self) -> StatusWatch {
        StatusWatch(self.0.subscribe())
    }

    pub(crate) fn recent_heals(&self) -> usize {
        self.0.recent_heals()
    }

    /// Waits until the heal in flight, if any, has finished.
    pub(crate) async fn healed(&self) {
        if let Some(mut done) = self.0.heal_in_flight() {
            let _ = done.wait_for(Option::is_some).await;
        }
    }

    /// Runs `hook` after a give-up has been published and before the exit
    /// action, awaited (all hooks together at most 2 s).
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))] // used by the gRPC bridge
    pub(crate) fn before_exit(&self, hook: GiveUpHook) {
        self.0.before_exit(hook);
    }

    /// The key of the database's entry in the health body's `checks`.
    pub(crate) fn check_key(&self) -> &'static str {
        self.0.check_key()
    }

    /// [`LivePool::report_classified`]: decided now, the future only waits.
    pub(crate) fn report_classified(
        &self,
        generation: u64,
        class: ErrorClass,
        code: Code,
        err: &dyn fmt::Display,
    ) -> BoxFuture<Outcome> {
        Arc::clone(&self.0).report(generation, class, code, err)
    }

    /// The backend's probe of the generation in service.
    pub(crate) fn probe(
        &self,
        bound: Duration,
        stuck: Arc<AtomicU32>,
    ) -> BoxFuture<(u64, Finding)> {
        Arc::clone(&self.0).probe(bound, stuck)
    }

    /// A handle for background tasks that must not keep the pool alive.
    pub(crate) fn downgrade(&self) -> WeakAnyLive {
        WeakAnyLive(Arc::downgrade(&self.0))
    }
}

impl fmt::Debug for AnyLive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (generation, healing) = self.load_state();
        f.debug_struct("LivePool")
            .field("generation", &generation)
            .field("healing", &healing)
            .finish_non_exhaustive()
    }
}

/// An [`AnyLive`] that does not keep the pool alive.
#[derive(Clone)]
pub(crate) struct WeakAnyLive(Weak<dyn Watched>);

impl WeakAnyLive {
    pub(crate) fn upgrade(&self) -> Option<AnyLive> {
        self.0.upgrade().map(AnyLive)
    }

    /// `false` once every [`AnyLive`] and `LivePool` of the pool is gone.
    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// Whether this is a handle to the same pool as `live`.
    pub(crate) fn points_to(&self, live: &AnyLive) -> bool {
        std::ptr::addr_eq(self.0.as_ptr(), Arc::as_ptr(&live.0))
    }
}
