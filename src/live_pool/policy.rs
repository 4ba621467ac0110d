//! The reopen-once-or-exit policy: single flight, generations, the heal
//! (drain, rescue, seal, reattach, verify, swap) and the give-up.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::builder::Config;
use super::generation::{FS_BOUND, Generation, Schema, open_files};
use super::{
    BoxFuture, Fault, GaveUp, GiveUpHook, GiveUpReason, Healed, Outcome, PoolStatus, ReopenFn,
};
use crate::blocking;
use crate::classify::ErrorClass;
use crate::identity::{DbFile, FileFault};
use crate::rescue;

/// How long the give-up hooks together may delay the exit action.
const GIVE_UP_HOOKS_LIMIT: Duration = Duration::from_secs(2);
/// The longest pause between two rescue attempts.
const RESCUE_BACKOFF_MAX: Duration = Duration::from_secs(5);

const HEALING: u64 = 0b01;
const GAVE_UP: u64 = 0b10;
const FLAG_BITS: u32 = 2;

pub(crate) struct Inner {
    pub(super) current: ArcSwap<Generation>,
    /// `generation << 2 | GAVE_UP | HEALING`: one load answers the hot path.
    state: AtomicU64,
    policy: Mutex<Policy>,
    pub(super) status: watch::Sender<PoolStatus>,
    reopen: ReopenFn,
    pub(crate) config: Config,
    give_up_hooks: Mutex<Vec<GiveUpHook>>,
    /// Dead generations being sealed in the background (a write
    /// transaction was still open): what `close` waits for.
    retiring: Mutex<Vec<JoinHandle<()>>>,
    /// Set by [`LivePool::close`](super::LivePool::close): closing the last
    /// connections deletes the `-wal`/`-shm` (SQLite's own clean-up), which
    /// must not read as a fault.
    closed: std::sync::atomic::AtomicBool,
    /// Dropped with the last handle, which stops the watchdog at once.
    _stop_watchdog: Option<oneshot::Sender<()>>,
}

struct Policy {
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

impl Policy {
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
    },
    GaveUp(GaveUp),
}

/// How a seal attempt ended.
enum Seal {
    /// The sentinel holds the write lock and nothing was committed since
    /// the last rescue: no write can be acknowledged on this file again.
    Sealed,
    /// A write was committed after the rescue started: rescue again.
    Changed,
    /// A write transaction is still open on the dead file.
    Busy,
}

impl Inner {
    pub(super) fn new(
        first: Generation,
        reopen: ReopenFn,
        config: Config,
        stop_watchdog: Option<oneshot::Sender<()>>,
    ) -> Self {
        crate::metrics::describe();
        crate::metrics::generation(0);
        Inner {
            current: ArcSwap::from_pointee(first),
            state: AtomicU64::new(0),
            policy: Mutex::new(Policy {
                phase: Phase::Live,
                heals: VecDeque::new(),
            }),
            status: watch::Sender::new(PoolStatus::Live {
                generation: 0,
                last_heal: None,
            }),
            reopen,
            config,
            give_up_hooks: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            _stop_watchdog: stop_watchdog,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> FLAG_BITS
    }

    /// The generation and whether a heal is in flight, from one atomic load.
    #[inline]
    pub(super) fn load_state(&self) -> (u64, bool, bool) {
        let state = self.state.load(Ordering::Acquire);
        (
            state >> FLAG_BITS,
            state & HEALING != 0,
            state & GAVE_UP != 0,
        )
    }

    pub(crate) fn current(&self) -> Arc<Generation> {
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

    fn policy(&self) -> MutexGuard<'_, Policy> {
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
            Phase::Healing { done } => Some(done.clone()),
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

    fn retire(&self, task: JoinHandle<()>) {
        let mut retiring = self
            .retiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        retiring.retain(|task| !task.is_finished());
        retiring.push(task);
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

    /// A CANTOPEN (14) names no file: it may be another file (`ATTACH`,
    /// `VACUUM INTO` to a bad path) or a descriptor shortage. It is fatal only
    /// when the database's own file is affected, which the file identity
    /// tells; otherwise it is transient.
    pub(super) async fn cantopen(self: Arc<Self>, generation: u64, fault: Fault) -> Outcome {
        let current = self.current();
        let Some(file) = current.file.clone() else {
            return Outcome::Ignored(ErrorClass::Transient);
        };
        let checked = blocking::run(FS_BOUND, move || (file.check(), out_of_descriptors())).await;
        match checked {
            Ok((Err(file_fault), _)) => self.fatal(generation, Fault::File(file_fault)).await,
            Ok((Ok(()), true)) => {
                tracing::warn!(
                    class = "transient", code = fault.code(), %fault, action = "none",
                    "out of file descriptors: a new database connection could not be opened"
                );
                Outcome::Ignored(ErrorClass::Transient)
            }
            Ok((Ok(()), false)) => {
                tracing::warn!(
                    class = "transient", code = fault.code(), %fault, action = "none",
                    "CANTOPEN while the database file is intact: another file, or a descriptor shortage"
                );
                Outcome::Ignored(ErrorClass::Transient)
            }
            Err(stuck) => {
                tracing::warn!(code = fault.code(), %fault, error = %stuck, "CANTOPEN: the file identity could not be checked; not fatal");
                Outcome::Ignored(ErrorClass::Transient)
            }
        }
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
            Phase::Healing { done } => Joined::Heal(done.clone()),
            Phase::Live => {
                tracing::error!(class = "fatal", code = fault.code(), generation = current, %fault, action = "reopen", "fatal database fault: reopening the pool once");
                let (tx, rx) = watch::channel(None);
                policy.phase = Phase::Healing { done: rx.clone() };
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
    async fn heal(self: Arc<Self>, fault: Fault, mut guard: HealGuard) {
        let started = Instant::now();
        let old = self.current();
        let (result, rescue) = self.replace(&old, &fault).await;
        let Some(done) = guard.done.take() else {
            return;
        };
        if self.is_closed() {
            // The application closed the LivePool while the dead generation
            // was being rescued: no swap, no exit; `close` waits for this.
            if let Ok(new) = result {
                discard(new);
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
            self.close_in_background(old);
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

    /// Everything between a fatal finding and a verified new generation:
    /// stop the dead pool, rescue and seal its file, set stale companions
    /// aside, check the budget, reopen and verify.
    async fn replace(
        &self,
        old: &Arc<Generation>,
        fault: &Fault,
    ) -> (Result<Generation, GiveUpReason>, Option<PathBuf>) {
        // Read while the sentinel is free: a seal that goes on in the
        // background keeps it until the last straggler has committed.
        let schema = old.schema_now().await;
        let file_fault = match fault {
            Fault::File(file) => Some(*file),
            Fault::Error { .. } => match old.file.clone() {
                Some(file) => blocking::run(FS_BOUND, move || file.check().err())
                    .await
                    .unwrap_or(None),
                None => None,
            },
        };
        // The old pool is dead: stop it from acknowledging more writes into a
        // file nobody will read again. `close` refuses new acquires at once.
        let draining = old.pool.close();
        let mut rescue = None;
        if file_fault.is_some() && self.config.rescue.enabled {
            // Let writes already in flight finish first, so the rescue's
            // snapshot holds every write the old pool acknowledged.
            if tokio::time::timeout(self.config.drain_timeout, draining)
                .await
                .is_err()
            {
                tracing::warn!(
                    generation = old.number,
                    "connections still checked out after {:?}; the generation is sealed before it is let go",
                    self.config.drain_timeout
                );
            }
            rescue = self.rescue_and_seal(old, fault).await;
        } else {
            drop(draining);
        }

        match file_fault {
            Some(companion) if companion.is_companion() => {
                return (
                    Err(GiveUpReason::ReopenFailed(format!(
                        "the {} file the pool had open is gone from its path: \
                         restart the process so that one connection set reattaches the database",
                        if companion == FileFault::CompanionDeleted {
                            "-wal or -shm"
                        } else {
                            "replaced -wal or -shm"
                        }
                    ))),
                    rescue,
                );
            }
            // The file at the path is not the one the companions belong to
            // (or there is none): a restore, or a restart's new file, must
            // never be opened with them.
            Some(FileFault::Replaced | FileFault::Deleted | FileFault::Moved) => {
                if let Some(file) = old.file.clone()
                    && let Err(why) = set_stale_companions_aside(file).await
                {
                    // Opening the file at the path now would replay them.
                    return (Err(GiveUpReason::ReopenFailed(why)), rescue);
                }
            }
            _ => {}
        }
        if self.is_closed() {
            // Closed meanwhile: rescued and sealed is all that is owed.
            return (
                Err(GiveUpReason::ReopenFailed("the LivePool was closed".into())),
                rescue,
            );
        }
        if let Some(reason) = self.budget_exceeded(old) {
            return (Err(reason), rescue);
        }
        (self.reopen(old, &schema).await, rescue)
    }

    /// Rescues what the dead handle sees, retrying until a rescue is saved,
    /// then seals the generation: the sentinel takes the write lock once no
    /// write has been committed since the last rescue, so every write ever
    /// acknowledged on this file is in a rescue. When a write transaction
    /// stays open past the drain timeout, the sealing goes on in the
    /// background and rescues again after that transaction commits.
    async fn rescue_and_seal(&self, old: &Arc<Generation>, fault: &Fault) -> Option<PathBuf> {
        let file = old.file.as_ref()?;
        let mut sentinel = old.sentinel.lock().await;
        let conn = sentinel.as_mut()?;
        // The sentinel waits on locks itself, in short steps.
        let _ = sqlx::query("PRAGMA busy_timeout = 50")
            .execute(&mut *conn)
            .await;
        let rescue = self.config.rescue.clone();
        let ctx = SealContext {
            file,
            config: &rescue,
            generation: old.number,
            fault,
        };
        let before = data_version(conn).await;
        let first = rescue_with_retries(conn, &ctx, Some(&self.status)).await;
        let deadline = Instant::now() + self.config.drain_timeout;
        let Err(before) = seal_loop(conn, &ctx, before, Some(deadline)).await else {
            return Some(first);
        };
        drop(sentinel);
        tracing::warn!(
            generation = old.number,
            "a write transaction is still open on the dead database; sealing it in the background"
        );
        let (old, fault) = (Arc::clone(old), fault.clone());
        let task = tokio::spawn(async move {
            let mut sentinel = old.sentinel.lock().await;
            let (Some(conn), Some(file)) = (sentinel.as_mut(), old.file.as_ref()) else {
                return;
            };
            let ctx = SealContext {
                file,
                config: &rescue,
                generation: old.number,
                fault: &fault,
            };
            let _ = seal_loop(conn, &ctx, before, None).await;
        });
        self.retire(task);
        Some(first)
    }

    fn budget_exceeded(&self, old: &Generation) -> Option<GiveUpReason> {
        if let Some(healed_at) = old.healed_at {
            let after = healed_at.elapsed();
            if after < self.config.recurrence_window {
                return Some(GiveUpReason::Recurred { after });
            }
        }
        let window = self.config.heal_window;
        let heals = self.policy().heals_within(window);
        (heals >= self.config.max_heals).then_some(GiveUpReason::TooManyHeals {
            heals,
            within: window,
        })
    }

    /// Reattaches the database that was open: never creates one (unless
    /// allowed), and verifies that the new pool opened the same path and
    /// the same application's schema.
    async fn reopen(&self, old: &Generation, schema: &Schema) -> Result<Generation, GiveUpReason> {
        let configured = old.file.as_ref().map(|f| f.configured().to_path_buf());
        let attempt = async {
            let expected = match &configured {
                Some(path) => Some(self.expected_file(path).await?),
                None => None,
            };
            if let Some(file) = &old.file {
                crate::identity::retire(file);
            }
            // What was open before the new pool: its own descriptors are the others.
            let before = open_files().await;
            let reopen = Arc::clone(&self.reopen);
            // The user's reopen runs on a task of its own: a panic in it is a
            // failed reopen, not a heal in flight for ever.
            let pool = tokio::spawn(async move { reopen().await })
                .await
                .map_err(|join| GiveUpReason::ReopenFailed(panic_text(join)))?
                .map_err(|err| GiveUpReason::ReopenFailed(err.to_string()))?;
            let new = Generation::open(
                pool,
                old.number + 1,
                configured.clone(),
                before,
                Some(Instant::now()),
            )
            .await
            .map_err(|err| GiveUpReason::VerifyFailed(err.to_string()))?;
            if let (Some(expected), Some(file)) = (&expected, &new.file)
                && file.path() != expected
            {
                let why = format!(
                    "the reopened pool opened {} instead of {}",
                    file.path().display(),
                    expected.display()
                );
                discard(new);
                return Err(GiveUpReason::VerifyFailed(why));
            }
            if let Err(why) = new.schema.reattaches(schema) {
                discard(new);
                return Err(GiveUpReason::VerifyFailed(format!(
                    "the reopened database is not the one that was open ({why})"
                )));
            }
            Ok(new)
        };
        tokio::time::timeout(self.config.reopen_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(GiveUpReason::ReopenFailed(format!(
                    "no verified pool within {:?}",
                    self.config.reopen_timeout
                )))
            })
    }

    /// The file a reopen must land on: what the configured path leads to
    /// now. A missing file is an error unless reopens may create it.
    async fn expected_file(&self, configured: &std::path::Path) -> Result<PathBuf, GiveUpReason> {
        let path = configured.to_path_buf();
        let creates = self.config.reopen_creates;
        let found = blocking::run(FS_BOUND, move || match std::fs::canonicalize(&path) {
            Ok(resolved) => Ok(resolved),
            Err(err) if creates && err.kind() == std::io::ErrorKind::NotFound => {
                // To be created by the reopen: where it will be, if its
                // directory exists (if not, the reopen fails on its own).
                Ok(
                    match (path.parent().map(std::fs::canonicalize), path.file_name()) {
                        (Some(Ok(dir)), Some(name)) => dir.join(name),
                        _ => path,
                    },
                )
            }
            Err(err) => Err(err),
        })
        .await
        .map_err(|stuck| GiveUpReason::ReopenFailed(stuck.to_string()))?;
        found.map_err(|err| {
            GiveUpReason::ReopenFailed(format!(
                "no database file at {} ({err}): a reopen reattaches the database that was open and never creates one",
                configured.display()
            ))
        })
    }

    fn swap(
        &self,
        old: Arc<Generation>,
        new: Generation,
        fault: Fault,
        rescue: Option<PathBuf>,
    ) -> Healed {
        let generation = new.number;
        {
            let mut policy = self.policy();
            policy.heals.push_back(Instant::now());
            self.current.store(Arc::new(new));
            policy.phase = Phase::Live;
            self.state.store(generation << FLAG_BITS, Ordering::Release);
        }
        let healed = Healed {
            generation,
            fault,
            rescue,
        };
        crate::metrics::healed(&healed.fault, generation);
        self.status.send_replace(PoolStatus::Live {
            generation,
            last_heal: Some(healed.clone()),
        });
        tracing::warn!(class = "fatal", code = healed.fault.code(), generation, fault = %healed.fault, rescue = ?healed.rescue, action = "healed", "database pool reopened and swapped in");
        self.close_in_background(old);
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
    fn run_exit_action(&self, gave_up: &GaveUp) {
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

    /// `Pool::close` waits for checked-out connections, so it never runs on
    /// a request path. The sentinel goes last: it keeps the dead file
    /// reachable, and sealed, until every straggler is back.
    fn close_in_background(&self, old: Arc<Generation>) {
        let limit = self.config.close_timeout;
        let task = tokio::spawn(async move {
            let close = old.pool.close();
            tokio::pin!(close);
            if tokio::time::timeout(limit, &mut close).await.is_err() {
                tracing::warn!(
                    generation = old.number,
                    "replaced pool still has connections checked out after {limit:?}; waiting for them"
                );
                close.await;
            }
            if let Some(conn) = old.sentinel.lock().await.take() {
                let _ = tokio::time::timeout(limit, conn.close()).await;
            }
        });
        // Not waited for by `close`: the file is sealed already, and a
        // straggler may hold its connection for as long as it likes.
        drop(task);
    }
}

/// Gives up if the heal task panics: without it, the policy would stay
/// "healing" for ever, with `/health` answering `warn` and no exit.
struct HealGuard {
    inner: Arc<Inner>,
    done: Option<watch::Sender<Option<Outcome>>>,
    fault: Fault,
}

impl Drop for HealGuard {
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

/// A restored file (or the one a restarted process creates) must never be
/// opened with the write-ahead log of the file it replaced: SQLite would
/// replay the old frames into it. Sets the old file's `-wal`/`-shm` aside;
/// the error says what the operator must do when that fails.
async fn set_stale_companions_aside(file: DbFile) -> Result<(), String> {
    let path = file.path().display().to_string();
    let failed = |err: &dyn std::fmt::Display| {
        tracing::error!(error = %err, "could not set the old database's -wal/-shm aside");
        format!(
            "the old database's -wal/-shm could not be set aside ({err}): \
             move {path}-wal and {path}-shm away before the database is opened again"
        )
    };
    match blocking::run(FS_BOUND, move || file.move_aside_stale_companions()).await {
        Ok(Ok(moved)) => {
            for aside in moved {
                tracing::warn!(moved_to = %aside.display(), "the old database's -wal/-shm were set aside, so the file at the path is opened without them");
            }
            Ok(())
        }
        Ok(Err(err)) => Err(failed(&err)),
        Err(stuck) => Err(failed(&stuck)),
    }
}

/// What a rescue and a seal work on.
struct SealContext<'a> {
    file: &'a DbFile,
    config: &'a rescue::RescueConfig,
    generation: u64,
    fault: &'a Fault,
}

/// Rescues with back-off until a rescue is saved: the dead handle may hold
/// the only copy of acknowledged writes, so it is never let go unsaved.
/// Each failure is published, so `/health` answers `fail` meanwhile.
async fn rescue_with_retries(
    conn: &mut SqliteConnection,
    ctx: &SealContext<'_>,
    status: Option<&watch::Sender<PoolStatus>>,
) -> PathBuf {
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        match rescue::rescue(conn, ctx.file.path(), ctx.config).await {
            Ok(path) => {
                crate::metrics::rescue_saved(&path).await;
                tracing::error!(rescue = %path.display(), database = %ctx.file.path().display(), attempts = attempts + 1, "rescued the dead handle's data with VACUUM INTO");
                if attempts > 0
                    && let Some(status) = status
                {
                    status.send_replace(PoolStatus::Healing {
                        generation: ctx.generation,
                        fault: ctx.fault.clone(),
                    });
                }
                return path;
            }
            Err(err) => {
                crate::metrics::rescue_failed();
                attempts += 1;
                tracing::error!(database = %ctx.file.path().display(), attempts, code = err.code, error = %err, retry_in = ?backoff, "rescue of the dead handle's data failed; the handle is kept open and the rescue retried");
                if let Some(status) = status {
                    status.send_replace(PoolStatus::RescueFailing {
                        generation: ctx.generation,
                        fault: ctx.fault.clone(),
                        attempts,
                        code: err.code,
                    });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESCUE_BACKOFF_MAX);
            }
        }
    }
}

/// Seals the dead generation. `before` is the `data_version` the last rescue
/// covers; a commit that slipped in after it is rescued again. Waits for an
/// open write transaction until `deadline` (`None`: as long as it stays
/// open), and hands back the version the last rescue covers if it is not
/// sealed by then.
async fn seal_loop(
    conn: &mut SqliteConnection,
    ctx: &SealContext<'_>,
    mut before: Option<i64>,
    deadline: Option<Instant>,
) -> Result<(), Option<i64>> {
    loop {
        match seal(conn, before).await {
            Seal::Sealed => return Ok(()),
            Seal::Changed => {
                before = data_version(conn).await;
                let saved = rescue_with_retries(conn, ctx, None).await;
                tracing::error!(rescue = %saved.display(), generation = ctx.generation, "rescued again: a write was committed on the dead database after the last rescue");
            }
            Seal::Busy if deadline.is_some_and(|d| Instant::now() >= d) => return Err(before),
            Seal::Busy => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `PRAGMA data_version`: changes when another connection commits.
async fn data_version(conn: &mut SqliteConnection) -> Option<i64> {
    let read = sqlx::query_scalar("PRAGMA data_version").fetch_one(&mut *conn);
    tokio::time::timeout(FS_BOUND, read).await.ok()?.ok()
}

/// Takes the write lock on the sentinel and keeps it if nothing was
/// committed since `before` was read.
async fn seal(conn: &mut SqliteConnection, before: Option<i64>) -> Seal {
    // Bounded: on a hung mount the lock attempt itself may not return.
    let begin = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn);
    let Ok(begun) = tokio::time::timeout(FS_BOUND, begin).await else {
        return Seal::Busy;
    };
    match begun {
        Ok(_) => {}
        Err(err) if crate::classify::classify(&err) == ErrorClass::Transient => return Seal::Busy,
        // Writes fail on this handle anyway (1032 after a move in DELETE mode).
        Err(_) => return Seal::Sealed,
    }
    // Unreadable versions (`None`) compare equal: there is nothing better to
    // go on, and an endless loop of rescues would be worse.
    let after = data_version(conn).await;
    if after == before {
        // Holding the write lock until the sentinel closes: no write can be
        // acknowledged on the dead file any more.
        return Seal::Sealed;
    }
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    Seal::Changed
}

/// Closes a pool that failed verification, with its sentinel.
fn discard(generation: Generation) {
    tokio::spawn(async move {
        generation.pool.close().await;
        if let Some(conn) = generation.sentinel.into_inner() {
            let _ = conn.close().await;
        }
    });
}

fn panic_text(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return "the reopen was cancelled".to_owned();
    }
    let payload = join.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("the reopen panicked: {text}")
}

/// Whether the process is out of (or nearly out of) file descriptors, where
/// `/proc` tells (Linux). Reading `/proc` needs a descriptor itself, so
/// EMFILE from that read is the answer too.
fn out_of_descriptors() -> bool {
    const EMFILE: i32 = 24;
    let emfile = |err: &std::io::Error| err.raw_os_error() == Some(EMFILE);
    let open = match std::fs::read_dir("/proc/self/fd") {
        Ok(fds) => fds.count() as u64,
        Err(err) => return emfile(&err),
    };
    let limits = match std::fs::read_to_string("/proc/self/limits") {
        Ok(limits) => limits,
        Err(err) => return emfile(&err),
    };
    let limit = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            l.trim_start_matches("Max open files")
                .split_whitespace()
                .next()
        })
        .and_then(|n| n.parse::<u64>().ok());
    limit.is_some_and(|limit| open + 16 >= limit)
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
