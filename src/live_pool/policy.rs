//! The reopen-once-or-exit policy, the same for every backend: single
//! flight, generations, the heal's frame (the backend replaces the dead
//! generation), the swap and the give-up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{GiveUpHook, LivePool};
use crate::shared::{
    Backend, BoxFuture, Code, Config, ErrorClass, Fault, GaveUp, Generation, GiveUpReason, Healed,
    Outcome, Policy, PolicyRef, PoolStatus,
};

/// How long the give-up hooks together may delay the exit action.
const GIVE_UP_HOOKS_LIMIT: Duration = Duration::from_secs(2);

const HEALING: u64 = 0b01;
const GAVE_UP: u64 = 0b10;
const FLAG_BITS: u32 = 2;

pub struct Inner<DB: Backend> {
    pub(crate) current: ArcSwap<Generation<DB>>,
    /// `generation << 2 | GAVE_UP | HEALING`: one load answers the hot path.
    state: AtomicU64,
    policy: Mutex<PolicyState>,
    pub(crate) status: watch::Sender<PoolStatus>,
    /// What the backend keeps for its heals (how to reopen, say).
    pub(crate) backend: DB::State,
    pub(crate) config: Config,
    give_up_hooks: Mutex<Vec<GiveUpHook>>,
    /// Dead generations being sealed in the background (a write
    /// transaction was still open): what `close` waits for.
    retiring: Mutex<Vec<JoinHandle<()>>>,
    /// Set by [`LivePool::close`](super::LivePool::close): closing the last
    /// connections deletes the `-wal`/`-shm` (SQLite's own clean-up), which
    /// must not read as a fault.
    closed: std::sync::atomic::AtomicBool,
    /// Dropped with the last handle, which stops the background checks at once.
    _stop_checks: Option<oneshot::Sender<()>>,
}

struct PolicyState {
    phase: Phase,
    heals: VecDeque<Instant>,
}

/// What [`Inner::begin_fatal`] decided.
enum Joined {
    /// Nothing to wait for.
    Done(Outcome),
    /// A heal is in flight (just started or joined); its outcome arrives here.
    Heal(watch::Receiver<Option<Outcome>>),
}

impl PolicyState {
    /// Forgets heals older than `window` and counts the rest.
    fn heals_within(&mut self, window: Duration) -> usize {
        while self.heals.front().is_some_and(|t| t.elapsed() > window) {
            self.heals.pop_front();
        }
        self.heals.len()
    }
}

enum Phase {
    Live,
    Healing {
        done: watch::Receiver<Option<Outcome>>,
        since: Instant,
    },
    GaveUp(GaveUp),
}

impl<DB: Backend> Inner<DB> {
    pub(super) fn new(
        first: Generation<DB>,
        backend: DB::State,
        config: Config,
        stop_checks: Option<oneshot::Sender<()>>,
    ) -> Self {
        crate::metrics::describe();
        crate::metrics::generation(0);
        Inner {
            current: ArcSwap::from_pointee(first),
            state: AtomicU64::new(0),
            policy: Mutex::new(PolicyState {
                phase: Phase::Live,
                heals: VecDeque::new(),
            }),
            status: watch::Sender::new(PoolStatus::Live {
                generation: 0,
                last_heal: None,
            }),
            backend,
            config,
            give_up_hooks: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            _stop_checks: stop_checks,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> FLAG_BITS
    }

    /// The generation and whether a heal is in flight, from one atomic load.
    #[inline]
    pub(crate) fn load_state(&self) -> (u64, bool, bool) {
        let state = self.state.load(Ordering::Acquire);
        (
            state >> FLAG_BITS,
            state & HEALING != 0,
            state & GAVE_UP != 0,
        )
    }

    pub(crate) fn current(&self) -> Arc<Generation<DB>> {
        self.current.load_full()
    }

    pub(crate) fn gave_up(&self) -> bool {
        self.state.load(Ordering::Acquire) & GAVE_UP != 0
    }

    /// `true` once the application has closed the `LivePool`.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn policy(&self) -> MutexGuard<'_, PolicyState> {
        // Nothing under this lock can panic half-way through an update.
        self.policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn recent_heals(&self) -> usize {
        self.policy().heals_within(self.config.heal_window)
    }

    pub(super) fn push_give_up_hook(&self, hook: GiveUpHook) {
        self.give_up_hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(hook);
    }

    pub(super) fn heal_in_flight(&self) -> Option<watch::Receiver<Option<Outcome>>> {
        match &self.policy().phase {
            Phase::Healing { done, .. } => Some(done.clone()),
            _ => None,
        }
    }

    /// How long the heal in flight has been running, if one is.
    pub(crate) fn healing_for(&self) -> Option<Duration> {
        match &self.policy().phase {
            Phase::Healing { since, .. } => Some(since.elapsed()),
            _ => None,
        }
    }

    /// The background seals of dead generations (and their last rescues),
    /// handed over for [`LivePool::close`](super::LivePool::close) to wait on.
    pub(super) fn take_retiring(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(
            &mut *self
                .retiring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(crate) fn retire(&self, task: JoinHandle<()>) {
        let mut retiring = self
            .retiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        retiring.retain(|task| !task.is_finished());
        retiring.push(task);
    }

    /// Marks `generation` read-only in place (degraded, not dead): published
    /// only over a [`PoolStatus::Live`] of that generation, so a heal or a
    /// give-up is never hidden. `true` when this entered the state.
    pub(crate) fn set_read_only(&self, generation: u64, reason: &str) -> bool {
        let entered = self.status.send_if_modified(|status| match status {
            PoolStatus::Live { generation: g, .. } if *g == generation => {
                *status = PoolStatus::ReadOnly {
                    generation,
                    reason: reason.to_owned(),
                };
                true
            }
            PoolStatus::ReadOnly {
                generation: g,
                reason: was,
            } if *g == generation && was != reason => {
                reason.clone_into(was);
                true
            }
            _ => false,
        });
        if entered {
            tracing::warn!(
                generation,
                reason,
                "the database does not take writes: serving reads, answering writes 503 until it does"
            );
        }
        entered
    }

    /// Leaves the read-only state of `generation`: the database takes
    /// writes again. `true` when it was read-only.
    pub(crate) fn clear_read_only(&self, generation: u64) -> bool {
        let left = self.status.send_if_modified(|status| match status {
            PoolStatus::ReadOnly { generation: g, .. } if *g == generation => {
                *status = PoolStatus::Live {
                    generation,
                    last_heal: None,
                };
                true
            }
            _ => false,
        });
        if left {
            tracing::info!(generation, "the database takes writes again");
        }
        left
    }

    /// `true` while `generation` is marked read-only in place.
    pub(crate) fn is_read_only(&self, generation: u64) -> bool {
        matches!(&*self.status.borrow(), PoolStatus::ReadOnly { generation: g, .. } if *g == generation)
    }

    /// The policy's entry point for a fatal finding about `generation`.
    ///
    /// The decision (stale, join, start a heal and mark it in flight) is taken
    /// when this is called, not when the future is first polled: the layer and
    /// the health probe drop the future and must still have started the heal.
    /// The future only waits for the outcome.
    pub(crate) fn fatal(
        self: &Arc<Self>,
        generation: u64,
        fault: Fault,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let joined = self.begin_fatal(generation, fault);
        let inner = Arc::clone(self);
        async move { inner.outcome(generation, joined).await }
    }

    /// The synchronous half of [`fatal`](Self::fatal): decides between
    /// gave-up, stale, joining the heal in flight and starting one (which
    /// sets the healing flag and spawns the heal) before it returns.
    fn begin_fatal(self: &Arc<Self>, generation: u64, fault: Fault) -> Joined {
        if self.config.fixed {
            tracing::error!(class = "fatal", code = fault.code(), generation, %fault, action = "none", "fatal database fault on a fixed LivePool: never healed");
            return Joined::Done(Outcome::Ignored(ErrorClass::Fatal));
        }
        let mut policy = self.policy();
        let current = self.generation();
        match &policy.phase {
            Phase::GaveUp(gave_up) => Joined::Done(Outcome::GaveUp(gave_up.clone())),
            _ if self.is_closed() => {
                tracing::debug!(class = "fatal", code = fault.code(), generation, %fault, action = "none", "the LivePool is closed: no heal");
                Joined::Done(Outcome::Ignored(ErrorClass::Fatal))
            }
            _ if generation < current => {
                tracing::debug!(class = "fatal", code = fault.code(), generation, current, %fault, action = "stale", "fatal error from a replaced pool");
                Joined::Done(Outcome::Stale {
                    reported: generation,
                    current,
                })
            }
            Phase::Healing { done, .. } => Joined::Heal(done.clone()),
            Phase::Live => {
                if self.config.max_heals == 0 {
                    tracing::error!(class = "fatal", code = fault.code(), generation = current, %fault, action = "exit", "fatal database fault: heals are off (restart_to_heal); saving the dead handle's data where needed, then exiting so the restart reopens");
                } else {
                    tracing::error!(class = "fatal", code = fault.code(), generation = current, %fault, action = "reopen", "fatal database fault: reopening the pool once");
                }
                let (tx, rx) = watch::channel(None);
                policy.phase = Phase::Healing {
                    done: rx.clone(),
                    since: Instant::now(),
                };
                self.state.fetch_or(HEALING, Ordering::AcqRel);
                self.status.send_replace(PoolStatus::Healing {
                    generation: current,
                    fault: fault.clone(),
                });
                let guard = HealGuard {
                    inner: Arc::clone(self),
                    done: Some(tx),
                    fault: fault.clone(),
                };
                tokio::spawn(Arc::clone(self).heal(fault, guard));
                Joined::Heal(rx)
            }
        }
    }

    /// The asynchronous half of [`fatal`](Self::fatal): waits for the heal
    /// that was joined, if any.
    async fn outcome(&self, generation: u64, joined: Joined) -> Outcome {
        let mut done = match joined {
            Joined::Done(outcome) => return outcome,
            Joined::Heal(done) => done,
        };
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Outcome::Stale {
                reported: generation,
                current: self.generation(),
            }),
            // The heal task vanished (runtime shutting down): report what is known.
            Err(_) => Outcome::Stale {
                reported: generation,
                current: self.generation(),
            },
        }
    }

    /// Replace the dead generation, then swap or give up.
    async fn heal(self: Arc<Self>, fault: Fault, mut guard: HealGuard<DB>) {
        let started = Instant::now();
        let old = self.current();
        let policy: PolicyRef<DB> = Arc::clone(&self) as PolicyRef<DB>;
        let (result, rescue) = DB::replace(&policy, &old, &fault).await;
        let Some(done) = guard.done.take() else {
            return;
        };
        if self.is_closed() {
            // The application closed the LivePool while the dead generation
            // was being rescued: no swap, no exit; `close` waits for this.
            if let Ok(new) = result {
                DB::discard(new);
            }
            let generation = old.number;
            {
                let mut policy = self.policy();
                policy.phase = Phase::Live;
                self.state.fetch_and(!HEALING, Ordering::AcqRel);
            }
            self.status.send_replace(PoolStatus::Live {
                generation,
                last_heal: None,
            });
            tracing::warn!(generation, %fault, rescue = ?rescue, "the LivePool was closed during the heal: rescued, not reopened");
            DB::retire(&policy, old);
            let _ = done.send(Some(Outcome::Ignored(ErrorClass::Fatal)));
            return;
        }
        // Recorded before the outcome is published, so whoever sees it sees this.
        crate::metrics::heal_ended(result.is_ok(), started);
        let outcome = match result {
            Ok(new) => Outcome::Healed(self.swap(old, new, fault, rescue)),
            Err(reason) => Outcome::GaveUp(self.publish_give_up(GaveUp {
                reason,
                fault,
                exit_code: self.config.exit_code,
                rescue,
            })),
        };
        let _ = done.send(Some(outcome.clone()));
        if let Outcome::GaveUp(gave_up) = &outcome {
            self.run_give_up_hooks(gave_up).await;
            self.run_exit_action(gave_up);
        }
    }

    /// The recurrence window and the heal budget: `Some` when this heal
    /// must not reopen.
    pub(crate) fn budget_exceeded(
        &self,
        old: &Generation<DB>,
        recurrence: bool,
    ) -> Option<GiveUpReason> {
        if let Some(healed_at) = old.healed_at.filter(|_| recurrence) {
            let after = healed_at.elapsed();
            if after < self.config.recurrence_window {
                return Some(GiveUpReason::Recurred { after });
            }
        }
        if self.config.max_heals == 0 {
            return Some(GiveUpReason::HealsOff);
        }
        let window = self.config.heal_window;
        let heals = self.policy().heals_within(window);
        (heals >= self.config.max_heals).then_some(GiveUpReason::TooManyHeals {
            heals,
            within: window,
        })
    }

    fn swap(
        self: &Arc<Self>,
        old: Arc<Generation<DB>>,
        new: Generation<DB>,
        fault: Fault,
        rescue: Option<std::path::PathBuf>,
    ) -> Healed {
        let generation = new.number;
        let healed = Healed {
            generation,
            fault,
            rescue,
        };
        {
            let mut policy = self.policy();
            policy.heals.push_back(Instant::now());
            self.current.store(Arc::new(new));
            policy.phase = Phase::Live;
            self.state.store(generation << FLAG_BITS, Ordering::Release);
            // Under the lock: a fatal finding about the new generation,
            // which takes the same lock, publishes its Healing after this.
            self.status.send_replace(PoolStatus::Live {
                generation,
                last_heal: Some(healed.clone()),
            });
        }
        crate::metrics::healed(&healed.fault, generation);
        tracing::warn!(class = "fatal", code = healed.fault.code(), generation, fault = %healed.fault, rescue = ?healed.rescue, action = "healed", "database pool reopened and swapped in");
        DB::retire(&(Arc::clone(self) as PolicyRef<DB>), old);
        healed
    }

    fn publish_give_up(&self, gave_up: GaveUp) -> GaveUp {
        {
            let mut policy = self.policy();
            policy.phase = Phase::GaveUp(gave_up.clone());
            self.state.fetch_or(GAVE_UP, Ordering::AcqRel);
            self.state.fetch_and(!HEALING, Ordering::AcqRel);
        }
        crate::metrics::gave_up(&gave_up.reason);
        self.status
            .send_replace(PoolStatus::GaveUp(gave_up.clone()));
        tracing::error!(
            class = "fatal",
            code = gave_up.fault.code(),
            generation = self.generation(),
            fault = %gave_up.fault,
            reason = %gave_up.reason,
            rescue = ?gave_up.rescue,
            exit_code = gave_up.exit_code,
            action = "exit",
            "database is dead and cannot be reopened: exiting so the supervisor restarts the process"
        );
        gave_up
    }

    /// Runs the exit action. A panic in a user's action is caught and the
    /// process exits anyway: a give-up must end the process.
    pub(crate) fn run_exit_action(&self, gave_up: &GaveUp) {
        if let Some(action) = &self.config.on_give_up {
            let run = std::panic::AssertUnwindSafe(|| action(gave_up));
            if std::panic::catch_unwind(run).is_ok() {
                return;
            }
            tracing::error!("the on_give_up action panicked: exiting the process instead");
            std::process::exit(gave_up.exit_code);
        }
        exit_after(self.config.shutdown_grace, gave_up.exit_code);
    }

    async fn run_give_up_hooks(&self, gave_up: &GaveUp) {
        let hooks: Vec<BoxFuture<()>> = self
            .give_up_hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|hook| hook(gave_up))
            .collect();
        if hooks.is_empty() {
            return;
        }
        // On a task of its own: a panicking hook must not stop the exit.
        let all = tokio::spawn(async {
            for hook in hooks {
                hook.await;
            }
        });
        if tokio::time::timeout(GIVE_UP_HOOKS_LIMIT, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "give-up hooks did not finish within {GIVE_UP_HOOKS_LIMIT:?}; running the exit action"
            );
        }
    }
}

/// Gives up if the heal task panics: without it, the policy would stay
/// "healing" for ever, with `/health` answering `warn` and no exit.
struct HealGuard<DB: Backend> {
    inner: Arc<Inner<DB>>,
    done: Option<watch::Sender<Option<Outcome>>>,
    fault: Fault,
}

impl<DB: Backend> Drop for HealGuard<DB> {
    fn drop(&mut self) {
        // Only a panic: a heal dropped by a runtime that shuts down is not a give-up.
        let Some(done) = self.done.take() else { return };
        if !std::thread::panicking() {
            return;
        }
        let gave_up = self.inner.publish_give_up(GaveUp {
            reason: GiveUpReason::ReopenFailed("the heal panicked".into()),
            fault: self.fault.clone(),
            exit_code: self.inner.config.exit_code,
            rescue: None,
        });
        let _ = done.send(Some(Outcome::GaveUp(gave_up.clone())));
        self.inner.run_exit_action(&gave_up);
    }
}

/// The policy as its backend sees it.
impl<DB: Backend> Policy<DB> for Inner<DB> {
    fn config(&self) -> &Config {
        &self.config
    }

    fn state(&self) -> &DB::State {
        &self.backend
    }

    fn current(&self) -> Arc<Generation<DB>> {
        Inner::current(self)
    }

    fn generation(&self) -> u64 {
        Inner::generation(self)
    }

    fn load_state(&self) -> (u64, bool, bool) {
        Inner::load_state(self)
    }

    fn gave_up(&self) -> bool {
        Inner::gave_up(self)
    }

    fn is_closed(&self) -> bool {
        Inner::is_closed(self)
    }

    fn set_read_only(&self, generation: u64, reason: &str) -> bool {
        Inner::set_read_only(self, generation, reason)
    }

    fn clear_read_only(&self, generation: u64) -> bool {
        Inner::clear_read_only(self, generation)
    }

    fn is_read_only(&self, generation: u64) -> bool {
        Inner::is_read_only(self, generation)
    }

    fn publish(&self, status: PoolStatus) {
        self.status.send_replace(status);
    }

    fn subscribe(&self) -> watch::Receiver<PoolStatus> {
        self.status.subscribe()
    }

    fn budget_exceeded(&self, old: &Generation<DB>, recurrence: bool) -> Option<GiveUpReason> {
        Inner::budget_exceeded(self, old, recurrence)
    }

    fn retire(&self, task: JoinHandle<()>) {
        Inner::retire(self, task);
    }

    fn fatal(self: Arc<Self>, generation: u64, fault: Fault) -> BoxFuture<Outcome> {
        Box::pin(Inner::fatal(&self, generation, fault))
    }

    fn report(
        self: Arc<Self>,
        generation: u64,
        class: ErrorClass,
        code: Code,
        err: &dyn std::fmt::Display,
    ) -> BoxFuture<Outcome> {
        Box::pin(LivePool::from_inner(self).report_classified(generation, class, code, err))
    }
}

/// The default exit action: `exit(code)` after `grace`, on a thread of its
/// own so that neither a wedged runtime nor a slow drain can keep the
/// process alive past the grace period.
fn exit_after(grace: Duration, code: i32) {
    if grace.is_zero() {
        std::process::exit(code);
    }
    let spawned = std::thread::Builder::new()
        .name("db-liveness-exit".into())
        .spawn(move || {
            std::thread::sleep(grace);
            tracing::error!("shutdown grace of {grace:?} is over: exiting");
            std::process::exit(code);
        });
    if spawned.is_err() {
        std::process::exit(code);
    }
}
