//! Filesystem calls kept off the async runtime, each with a bound, on a
//! fixed number of threads.
//!
//! A `stat` on a hung network or FUSE mount blocks its thread for as long as
//! the mount stays hung. Such a call never runs on a runtime worker, and not
//! on tokio's blocking pool either: every stuck call there strands one more
//! thread, up to 512. The crate's filesystem calls run on [`WORKERS`]
//! threads of their own, started on first use and shared by the whole
//! process, fed by a queue of at most [`QUEUE`] calls. The caller stops
//! waiting after its bound, whether its call is running, queued, or waiting
//! for room in a full queue (the workers are stuck); a call whose caller
//! has stopped waiting is skipped, not run late. When a hung call returns,
//! its worker serves again.
//!
//! One consequence: a hung mount under one database makes the filesystem
//! checks of every other database in the process stuck too. The alternative,
//! a thread per stuck call, is the unbounded growth this module prevents.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

/// The process's filesystem threads: two, so that one call stuck for a
/// moment does not hold up every other.
const WORKERS: usize = 2;
/// Calls waiting for a worker; past it a new call waits for room, within
/// its bound.
const QUEUE: usize = 8;

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

/// Runs `job` on the process's filesystem threads and waits for it at most
/// `bound`.
pub(crate) async fn run<T, F>(bound: Duration, job: F) -> Result<T, Stuck>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    static EXECUTOR: OnceLock<Executor> = OnceLock::new();
    EXECUTOR
        .get_or_init(|| Executor::start(WORKERS, QUEUE))
        .run(bound, job)
        .await
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads fed by a bounded queue. The threads end once the
/// executor is dropped and their current call has returned.
pub(crate) struct Executor {
    queue: Sender<Job>,
    /// One per call running or queued: the queue's bound.
    room: Arc<Semaphore>,
}

impl Executor {
    pub(crate) fn start(workers: usize, queue: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                // Linux shows 15 bytes of a thread's name.
                .name(format!("db-liveness-fs{n}"))
                .spawn(move || work(&rx));
            if let Err(err) = spawned {
                // With no worker at all the queue is disconnected and every
                // call is `Stuck`: a clear finding, not a panic.
                tracing::error!(error = %err, "could not start a filesystem thread");
            }
        }
        Executor {
            queue: tx,
            room: Arc::new(Semaphore::new(workers + queue)),
        }
    }

    pub(crate) async fn run<T, F>(&self, bound: Duration, job: F) -> Result<T, Stuck>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let call = async {
            // `Err` only if the semaphore were closed, which it never is.
            let room = Arc::clone(&self.room).acquire_owned().await.ok()?;
            let (tx, rx) = oneshot::channel();
            let job: Job = Box::new(move || {
                // The caller stopped waiting: a call it no longer wants would
                // only keep the worker from the next one.
                if !tx.is_closed() {
                    let _ = tx.send(job());
                }
                drop(room);
            });
            self.queue.send(job).ok()?;
            // `Err`: a panic in the call. Treat it like a call that never answered.
            rx.await.ok()
        };
        match tokio::time::timeout(bound, call).await {
            Ok(Some(value)) => Ok(value),
            Ok(None) | Err(_) => Err(Stuck { bound }),
        }
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for a job, never while running one.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return;
        };
        // A panicking call drops its sender (its caller sees `Stuck`); the
        // worker lives on.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    //! A job that blocks on a channel the test holds stands in for a hung
    //! `stat`: a unit test cannot hang a mount (`tests/hung_fs.rs` does, with
    //! strace's fault injection).

    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread::ThreadId;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(20);

    /// Submits a call that blocks until `release` is sent to; returns once
    /// a worker has started it.
    async fn hang(executor: &Executor) -> (mpsc::Sender<()>, ThreadId) {
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let call = executor.run(SHORT, move || {
            let _ = started_tx.send(std::thread::current().id());
            let _ = held.recv();
        });
        // The call's own wait ends after SHORT; the job keeps the worker.
        assert_eq!(call.await, Err(Stuck { bound: SHORT }));
        let worker = tokio::time::timeout(LONG, started)
            .await
            .expect("the hung call never started")
            .expect("the hung call was dropped");
        (release, worker)
    }

    #[tokio::test]
    async fn a_call_answers_within_its_bound() {
        let executor = Executor::start(1, 1);
        assert_eq!(executor.run(LONG, || 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_hung_call_makes_later_calls_stuck_without_new_threads() {
        let executor = Executor::start(1, 1);
        let (release, worker) = hang(&executor).await;

        // Queued behind the hung call: stuck after its bound, and skipped.
        let ran = Arc::new(AtomicUsize::new(0));
        let (counted, counted_too) = (Arc::clone(&ran), Arc::clone(&ran));
        let queued = executor.run(SHORT, move || counted.fetch_add(1, Ordering::SeqCst));
        assert_eq!(queued.await, Err(Stuck { bound: SHORT }));

        // The queue is full: stuck after its bound, and never run either.
        let full = executor.run(SHORT, move || counted_too.fetch_add(1, Ordering::SeqCst));
        assert_eq!(full.await, Err(Stuck { bound: SHORT }));

        // The hung call returns: the worker serves again, on the same thread.
        release.send(()).expect("the hung call is gone");
        let after = executor
            .run(LONG, || std::thread::current().id())
            .await
            .expect("the worker did not serve again");
        assert_eq!(
            after, worker,
            "a call ran on a thread other than the worker"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 0, "an abandoned call ran late");
    }

    #[tokio::test]
    async fn calls_run_on_the_fixed_workers_only() {
        let executor = Executor::start(2, 4);
        let (release_a, a) = hang(&executor).await;
        let (release_b, b) = hang(&executor).await;
        assert_ne!(a, b);
        // Both workers are stuck: nothing else runs, on any thread.
        for _ in 0..8 {
            assert!(executor.run(SHORT, || ()).await.is_err());
        }
        release_a.send(()).expect("the hung call is gone");
        release_b.send(()).expect("the hung call is gone");
        let mut seen = HashSet::new();
        for _ in 0..8 {
            let id = executor
                .run(LONG, || std::thread::current().id())
                .await
                .expect("the workers did not serve again");
            seen.insert(id);
        }
        assert!(
            seen.is_subset(&HashSet::from([a, b])),
            "calls ran outside the two workers"
        );
    }

    #[tokio::test]
    async fn a_panicking_call_is_stuck_and_the_worker_lives_on() {
        let executor = Executor::start(1, 1);
        let panicked = executor.run(LONG, || -> () { panic!("a filesystem call panicked") });
        assert_eq!(panicked.await, Err(Stuck { bound: LONG }));
        assert_eq!(executor.run(LONG, || 1).await, Ok(1));
    }
}
