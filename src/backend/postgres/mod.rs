//! Postgres: never pinned to a server that does not take writes.
//!
//! How it fails: after a failover the old primary restarts as a hot
//! standby, and connections that survive or reconnect through a stale
//! endpoint land on a server in recovery; every write gets `25006` (or
//! `0A000` for `BEGIN READ WRITE`). A primary made read-only in place
//! (`default_transaction_read_only`, a read-only role or database) gives
//! the same codes, and so does an application's own read-only transaction.
//!
//! How it is checked: every new connection of a pool meant for writes once
//! when it is opened (`after_connect`: `pg_is_in_recovery()` and the
//! server's `default_transaction_read_only`); a write's `25006`/`0A000`,
//! confirmed by the same check (one at a time), a background check on an
//! idle connection and the health probe. In recovery: fatal for the
//! generation. Read-only in place: degraded, not dead (the pool is kept,
//! reads served, writes 503) until the server takes writes again.
//!
//! How it is replaced: the pinned pool is closed, the heal waits for a
//! primary with single direct connections and jittered back-off (no
//! deadline unless one is set), and a new gated pool is swapped in.

mod classify;
mod writable;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::oneshot;

use writable::{
    ATTEMPT_BOUND, Primary, Writability, gated, jitter, spread, wait_for_primary, writability,
};

use super::SingleCheck;
use crate::shared::{
    Backend, Code, Detail, ErrorClass, Fault, Finding, Generation, GiveUpReason, Outcome, Policy,
    PolicyRef, PoolStatus, Sealed, Triage, class, deadline_after,
};

/// What a Postgres [`LivePool`](crate::LivePool) expects of the server behind it; see
/// [`LivePoolBuilder::expect`](crate::LivePoolBuilder::expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Expect {
    /// The pool is for writes (a primary's endpoint): a server that does
    /// not take writes is never connected to, and finding one under the
    /// pool is fatal for its generation.
    #[default]
    Writable,
    /// Any server (a read replica's endpoint): read-only is never fatal,
    /// and new connections are not checked.
    Any,
}

/// What only a Postgres builder sets.
#[derive(Debug, Clone, Copy)]
pub struct PgSettings {
    pub(crate) expect: Expect,
    pub(crate) check_interval: Option<Duration>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            expect: Expect::Writable,
            check_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// What the heals of a Postgres `LivePool` share: how to reach the server.
pub struct PgState {
    connect: PgConnectOptions,
    pool: PgPoolOptions,
    settings: PgSettings,
    /// The policy, for the gates of every generation's pool (set once the
    /// policy exists, right after the first pool is opened).
    policy: PolicyCell,
    /// The confirmation of a read-only error in flight, if any: one per
    /// generation at a time, which every report joins (a bound on the
    /// direct connections the crate opens however many writes fail).
    checks: SingleCheck,
}

/// Where a gate finds the policy to report to.
pub(crate) type PolicyCell = Arc<OnceLock<Weak<dyn Policy<Postgres>>>>;

impl Backend for Postgres {}

impl Sealed for Postgres {
    type Extra = ();
    type State = PgState;
    type Settings = PgSettings;
    const NAME: &'static str = "postgres";
    const CHECK_KEY: &'static str = "postgres:responseTime";

    fn code(db: &dyn sqlx::error::DatabaseError) -> Code {
        classify::code(db)
    }

    fn class(code: Code) -> ErrorClass {
        classify::class(code)
    }

    fn triage(
        inner: &PolicyRef<Self>,
        generation: u64,
        code: Code,
        err: &dyn fmt::Display,
    ) -> Triage {
        let Code::Sqlstate(sqlstate) = code else {
            // `WorkerCrashed`: nothing Postgres-specific about it.
            return Triage::Fatal(Fault::from_error(err, code));
        };
        if inner.state().settings.expect == Expect::Any {
            // A read-only answer is what a replica gives: the write was the bug.
            return Triage::Ignored(ErrorClass::Other);
        }
        if inner.is_read_only(generation) {
            // Known: the primary is read-only in place. The background
            // check and the probe follow it; nothing to confirm per write.
            return Triage::Ignored(ErrorClass::Transient);
        }
        let sqlstate = String::from_utf8_lossy(&sqlstate).into_owned();
        let (policy, message) = (Arc::clone(inner), err.to_string());
        Triage::Wait(inner.state().checks.join_or_start(generation, move || {
            confirm(policy, generation, sqlstate, message)
        }))
    }

    async fn replace(
        inner: &PolicyRef<Self>,
        old: &Arc<Generation<Self>>,
        fault: &Fault,
    ) -> (Result<Generation<Self>, GiveUpReason>, Option<PathBuf>) {
        if let Some(reason) = super::begin_server_heal(inner, old, fault) {
            return (Err(reason), None);
        }
        (reopen(inner, old.number + 1, fault).await, None)
    }

    fn retire(inner: &PolicyRef<Self>, old: Arc<Generation<Self>>) {
        super::retire_server_pool(inner, old);
    }

    async fn probe(policy: &PolicyRef<Self>, bound: Duration, stuck: &AtomicU32) -> (u64, Finding) {
        probe(policy, bound, stuck).await
    }
}

/// A `25006`/`0A000` is fatal only if the server is in recovery: the
/// application's own read-only transaction gets `25006` too, and a primary
/// read-only in place is degraded, not dead.
async fn confirm(
    inner: PolicyRef<Postgres>,
    generation: u64,
    sqlstate: String,
    message: String,
) -> Outcome {
    let current = inner.current();
    if current.number != generation {
        return Outcome::Stale {
            reported: generation,
            current: current.number,
        };
    }
    // An idle connection of the pool, else a direct one to the same
    // endpoint: a saturated pool must not hide its server's state (its
    // connections cannot be on another server than the endpoint's: a
    // demotion restarts the server, and the gate refuses new connections).
    let checked = match current.pool.try_acquire() {
        Some(mut conn) => tokio::time::timeout(ATTEMPT_BOUND, writability(&mut *conn)).await,
        None => tokio::time::timeout(ATTEMPT_BOUND, writable::direct(&inner.state().connect)).await,
    };
    match checked {
        Ok(Ok(Writability::InRecovery(why))) => {
            let fault = Fault::NotWritable {
                sqlstate: Some(sqlstate),
                message: format!("{message}: {why}"),
            };
            inner.fatal(generation, fault).await
        }
        Ok(Ok(Writability::ReadOnly(why))) => {
            inner.set_read_only(generation, &why);
            // Retry later: the layer answers 503 with Retry-After.
            Outcome::Ignored(ErrorClass::Transient)
        }
        Ok(Ok(Writability::Writable)) => {
            inner.clear_read_only(generation);
            tracing::info!(
                sqlstate,
                error = message,
                "a read-only error from a server that takes writes: the application's own read-only transaction, not a fault"
            );
            Outcome::Ignored(ErrorClass::Other)
        }
        Ok(Err(err)) => {
            tracing::warn!(sqlstate, error = %err, "a read-only error, and the writability check failed; not fatal");
            Outcome::Ignored(class::read::<Postgres>(&err).0)
        }
        Err(_) => {
            tracing::warn!(
                sqlstate,
                "a read-only error, and the writability check did not answer; not fatal"
            );
            Outcome::Ignored(ErrorClass::Transient)
        }
    }
}

/// Waits for a primary (until the reopen timeout, stretched per process;
/// none by default), then builds and verifies a new gated pool.
async fn reopen(
    inner: &PolicyRef<Postgres>,
    number: u64,
    fault: &Fault,
) -> Result<Generation<Postgres>, GiveUpReason> {
    let state = inner.state();
    let deadline = deadline_after(spread(inner.config().reopen_timeout));
    let awaiting = super::AwaitingPrimary {
        policy: inner,
        generation: number - 1,
        fault,
    };
    loop {
        if state.settings.expect == Expect::Writable {
            let failed = |attempts, last: &str| awaiting.failed(attempts, last);
            wait_for_primary(&state.connect, deadline, || inner.is_closed(), failed)
                .await
                .map_err(|why| awaiting.gave_up(why))?;
        }
        if inner.is_closed() {
            return Err(GiveUpReason::ReopenFailed("the LivePool was closed".into()));
        }
        match open_generation(state, number, Some(Instant::now())).await {
            Ok((new, read_only)) => {
                if let Some(why) = read_only {
                    mark_read_only_once_live(inner, number, why);
                }
                return Ok(new);
            }
            // The server stopped taking writes between the two checks
            // (another failover): wait again, within the same deadline.
            Err(why) if Instant::now() < deadline => {
                tracing::warn!(why, "the new pool failed verification; waiting again");
            }
            Err(why) => return Err(GiveUpReason::VerifyFailed(why)),
        }
    }
}

/// A generation healed onto a primary read-only in place is marked so as
/// soon as it is in service (the status is published by the swap).
fn mark_read_only_once_live(inner: &PolicyRef<Postgres>, number: u64, why: String) {
    let weak = Arc::downgrade(inner);
    let mut status = inner.subscribe();
    tokio::spawn(async move {
        // Ends with the heal (or with the LivePool, when the sender goes).
        let swapped = status
            .wait_for(|s| {
                !matches!(
                    s,
                    PoolStatus::Healing { .. } | PoolStatus::AwaitingPrimary { .. }
                )
            })
            .await
            .is_ok();
        drop(status);
        if let (true, Some(inner)) = (swapped, weak.upgrade()) {
            inner.set_read_only(number, &why);
        }
    });
}

/// Builds a pool (gated for writes) and verifies its first connection: a
/// primary, which may be read-only in place (`Some` with why).
async fn open_generation(
    state: &PgState,
    number: u64,
    healed_at: Option<Instant>,
) -> Result<(Generation<Postgres>, Primary), String> {
    let options = match state.settings.expect {
        Expect::Writable => gated(state.pool.clone(), Arc::clone(&state.policy), number),
        Expect::Any => state.pool.clone(),
    };
    let pool = options.connect_lazy_with(state.connect.clone());
    let verified = tokio::time::timeout(ATTEMPT_BOUND, async {
        let mut conn = pool.acquire().await?;
        writability(&mut *conn).await
    })
    .await;
    let found = match verified {
        Ok(Ok(Writability::Writable)) => Ok(None),
        Ok(Ok(_)) if state.settings.expect == Expect::Any => Ok(None),
        Ok(Ok(Writability::ReadOnly(why))) => Ok(Some(why)),
        Ok(Ok(Writability::InRecovery(why))) => Err(why),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {ATTEMPT_BOUND:?}")),
    };
    match found {
        Ok(read_only) => Ok((
            Generation {
                number,
                pool,
                healed_at,
                extra: (),
            },
            read_only,
        )),
        Err(why) => {
            tokio::spawn(async move { pool.close().await });
            Err(why)
        }
    }
}

/// What the probe's query got, within its bound.
enum Asked {
    Found(Result<Writability, sqlx::Error>),
    /// Every connection busy: an exhausted pool, not a silent server.
    Exhausted,
    /// The server did not answer.
    Silent,
}

/// The writability query on `pool`, bounded: on an idle connection first (a
/// probe must not grow a busy pool); if the server had ended that idle
/// session (`idle_session_timeout`, a restart, a terminated backend), once
/// more on a connection the pool checks or opens.
async fn ask(pool: &sqlx::PgPool, bound: Duration) -> Asked {
    let started = Instant::now();
    let left = || bound.saturating_sub(started.elapsed());
    if let Some(mut conn) = pool.try_acquire() {
        match tokio::time::timeout(left(), writability(&mut *conn)).await {
            Err(_) => return Asked::Silent,
            Ok(Err(err)) if session_ended(&err) => {
                tracing::debug!(error = %err, "the probe's idle connection was ended by the server; asking on another");
                conn.close_on_drop();
            }
            Ok(found) => return Asked::Found(found),
        }
    }
    let mut conn = match tokio::time::timeout(left(), pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => return Asked::Found(Err(err)),
        Err(_) if pool.size() >= pool.options().get_max_connections() => return Asked::Exhausted,
        // A new connection did not answer: counted like a silent query.
        Err(_) => return Asked::Silent,
    };
    match tokio::time::timeout(left(), writability(&mut *conn)).await {
        Ok(found) => Asked::Found(found),
        Err(_) => Asked::Silent,
    }
}

/// `true` for an error that says the session is gone, not the server.
fn session_ended(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        _ => err
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| {
                matches!(&*code, "57P01" | "57P02" | "57P05" | "25P03") || code.starts_with("08")
            }),
    }
}

/// The health probe: the writability query on the pool in service, bounded.
/// A primary read-only in place passes (it serves reads; the policy's
/// status carries the degradation); a server in recovery is dead for this
/// generation.
async fn probe(policy: &PolicyRef<Postgres>, bound: Duration, stuck: &AtomicU32) -> (u64, Finding) {
    let current = policy.current();
    let generation = current.number;
    let inner = policy;
    let expect = inner.state().settings.expect;
    let found = match ask(&current.pool, bound).await {
        Asked::Found(found) => found,
        Asked::Exhausted => {
            let text = format!("no pool connection free within {} ms", bound.as_millis());
            return (generation, Finding::Transient(Detail::same(text)));
        }
        Asked::Silent => return (generation, silent(stuck, bound)),
    };
    stuck.store(0, Ordering::Relaxed);
    match found {
        Ok(_) if expect == Expect::Any => (generation, Finding::Pass),
        Ok(Writability::Writable) => {
            inner.clear_read_only(generation);
            (generation, Finding::Pass)
        }
        Ok(Writability::ReadOnly(why)) => {
            inner.set_read_only(generation, &why);
            (generation, Finding::Pass)
        }
        Ok(Writability::InRecovery(why)) => {
            drop(Arc::clone(inner).fatal(
                generation,
                Fault::NotWritable {
                    sqlstate: None,
                    message: why.clone(),
                },
            ));
            (
                generation,
                Finding::Dead(Detail::same(format!(
                    "the database server does not take writes: {why}"
                ))),
            )
        }
        Err(err) => (generation, Finding::from_error(policy, generation, &err)),
    }
}

/// A probe the server did not answer: `warn`, and `fail` from the
/// [`STUCK_PROBES`](crate::shared::STUCK_PROBES)th in a row.
fn silent(stuck: &AtomicU32, bound: Duration) -> Finding {
    let in_a_row = stuck.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    let text = format!(
        "the database did not answer within {} ms",
        bound.as_millis()
    );
    Finding::silent(in_a_row, Detail::same(text))
}

/// The background check: every interval (jittered, so a fleet spreads), the
/// writability query on an idle connection of the pool in service. It opens
/// no connection (a busy pool reports its own failures), except one direct
/// connection per check while the pool is marked read-only, so the state
/// clears within about a second of the server taking writes again, busy
/// pool or not. It holds only a weak reference, so it ends with the last
/// `LivePool` handle.
pub(crate) fn spawn_checks(inner: &PolicyRef<Postgres>, mut stop: oneshot::Receiver<()>) {
    let settings = inner.state().settings;
    let (Some(interval), Expect::Writable) = (settings.check_interval, settings.expect) else {
        return;
    };
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut read_only = false;
        loop {
            // Twice as often while read-only: readiness comes back promptly.
            let pause = if read_only {
                jitter(interval)
            } else {
                jitter(interval.saturating_mul(2)).max(interval / 2)
            };
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(pause) => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            if inner.gave_up() || inner.is_closed() {
                return;
            }
            let current = inner.current();
            if current.pool.is_closed() {
                continue; // a heal is replacing it
            }
            read_only = inner.is_read_only(current.number);
            let checked = match current.pool.try_acquire() {
                Some(mut conn) => {
                    tokio::time::timeout(ATTEMPT_BOUND, writability(&mut *conn)).await
                }
                None if read_only => {
                    tokio::time::timeout(ATTEMPT_BOUND, writable::direct(&inner.state().connect))
                        .await
                }
                None => continue,
            };
            match checked {
                Ok(Ok(Writability::Writable)) => {
                    inner.clear_read_only(current.number);
                }
                Ok(Ok(Writability::ReadOnly(why))) => {
                    inner.set_read_only(current.number, &why);
                }
                Ok(Ok(Writability::InRecovery(why))) => {
                    tracing::error!(
                        generation = current.number,
                        why,
                        "background check: the pool's server is in recovery"
                    );
                    drop(Arc::clone(&inner).fatal(
                        current.number,
                        Fault::NotWritable {
                            sqlstate: None,
                            message: why,
                        },
                    ));
                }
                Ok(Err(_)) | Err(_) => {}
            }
            read_only = inner.is_read_only(current.number);
        }
    });
}

/// Waits for a primary (for [`Expect::Writable`]), then opens and verifies
/// the first generation: what `LivePoolBuilder::<Postgres>::open` needs of
/// the backend. The `Option` says why the server is read-only in place.
pub(crate) async fn open_first(
    connect: PgConnectOptions,
    pool: PgPoolOptions,
    settings: PgSettings,
    reopen_timeout: Duration,
) -> Result<(Generation<Postgres>, PgState, Option<String>), sqlx::Error> {
    let state = PgState {
        connect,
        pool,
        settings,
        policy: PolicyCell::default(),
        checks: SingleCheck::default(),
    };
    let deadline = deadline_after(spread(reopen_timeout));
    if state.settings.expect == Expect::Writable {
        wait_for_primary(&state.connect, deadline, || false, |_, _| {})
            .await
            .map_err(|why| {
                sqlx::Error::Protocol(format!(
                    "no Postgres primary within {:?}: {why}",
                    reopen_timeout
                ))
            })?;
    }
    let (first, read_only) = open_generation(&state, 0, None)
        .await
        .map_err(sqlx::Error::Protocol)?;
    Ok((first, state, read_only))
}

/// The policy started around the first generation: from now on the gates
/// report their refusals to it, and a server found read-only in place at
/// open is degraded from the start.
pub(crate) fn attach(policy: &PolicyRef<Postgres>, read_only: Option<String>) {
    let _ = policy.state().policy.set(Arc::downgrade(policy));
    if let Some(why) = read_only {
        policy.set_read_only(0, &why);
    }
}
