//! MySQL / MariaDB: never pinned to a demoted primary that stayed up.
//!
//! How it fails: a switchover leaves the old primary up and only flips its
//! `read_only`; no connection breaks, so a plain pool stays on it, and a
//! ping passes. Every write gets 1290. A primary made read-only in place
//! looks the same from the pool's side: what tells them apart is where the
//! endpoint leads now.
//!
//! How it is checked: every new connection once (`after_connect`), with
//! `SELECT @@global.read_only, @@innodb_read_only, @@server_id`; a write's
//! 1290/1792/1836/1036, the background check (an idle connection) and the
//! health probe run the same query on the pool's server, and, when it does
//! not take writes, once on a fresh direct connection through the endpoint
//! (bounded, one at a time). Another server there that takes writes: the
//! pool is pinned, fatal for its generation. The same server: read-only in
//! place, degraded (reads served, writes 503, no heal however long).
//!
//! How it is replaced: the pinned pool is closed, the heal waits for a
//! writable primary with single direct connections and jittered back-off
//! (no deadline unless one is set), and a new gated pool is swapped in.

mod classify;
mod writable;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use sqlx::MySql;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use tokio::sync::{Semaphore, oneshot};

use writable::{
    ATTEMPT_BOUND, Observed, direct_within, gated, observe, server_cell, wait_for_writable,
};

use super::SingleCheck;
use super::jitter;
use crate::shared::{
    Backend, Code, Detail, ErrorClass, Fault, Finding, Generation, GiveUpReason, Outcome, Policy,
    PolicyRef, Sealed, Triage, class, deadline_after,
};

/// What only a MySQL builder sets.
#[derive(Debug, Clone, Copy)]
pub struct MySqlSettings {
    pub(crate) check_interval: Option<Duration>,
}

impl Default for MySqlSettings {
    fn default() -> Self {
        MySqlSettings {
            check_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// What the heals of a MySQL `LivePool` share: how to reach the server.
pub struct MySqlState {
    connect: MySqlConnectOptions,
    pool: MySqlPoolOptions,
    settings: MySqlSettings,
    /// The policy, for the gates of every generation's pool.
    policy: MySqlPolicyCell,
    /// One direct connection through the endpoint at a time (the checks of
    /// a pool whose server does not take writes).
    direct: Semaphore,
    /// One confirmation of a write's read-only error at a time.
    checks: SingleCheck,
}

/// Where a gate finds the policy to report to.
pub(crate) type MySqlPolicyCell = Arc<OnceLock<Weak<dyn Policy<MySql>>>>;
/// The `@@server_id` a generation's connections are on.
pub(crate) type ServerCell = Arc<AtomicU64>;

/// What is recorded per generation: the server its connections are on.
pub struct MySqlGeneration {
    server: ServerCell,
}

impl Backend for MySql {}

impl Sealed for MySql {
    type Extra = MySqlGeneration;
    type State = MySqlState;
    type Settings = MySqlSettings;
    const NAME: &'static str = "mysql";
    const CHECK_KEY: &'static str = "mysql:responseTime";

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
        let Code::MySql { number, read_only } = code else {
            // `WorkerCrashed`: nothing MySQL-specific about it.
            return Triage::Fatal(Fault::from_error(err, code));
        };
        if inner.is_read_only(generation) {
            // Already known: the background check and the probe keep
            // looking where the endpoint leads. No check per failed write.
            return Triage::Ignored(ErrorClass::Transient);
        }
        // 1290 with --read-only is the server's own word; 1792 and 1036
        // also come from an application's READ ONLY transaction or table.
        let proof = number == 1290 && read_only;
        let (policy, message) = (Arc::clone(inner), err.to_string());
        Triage::Wait(inner.state().checks.join_or_start(generation, move || {
            confirm(policy, generation, number, proof, message)
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

/// Where the pool stands, once its server was found not to take writes.
enum Verdict {
    /// It takes writes (again).
    Writable,
    /// The endpoint leads to the same server (or to another one that does
    /// not take writes either): degraded, in place.
    InPlace(String),
    /// The endpoint leads to another server that takes writes: the pool is
    /// pinned to a demoted node; fatal for the generation.
    Pinned(String),
    /// The endpoint could not be asked (no answer, another check under way).
    Unknown(String),
}

/// `pool`: what the pool's server answered (`None`: no idle connection to
/// ask). Asks the endpoint once, directly, and decides.
async fn assess(
    inner: &dyn Policy<MySql>,
    current: &Generation<MySql>,
    pool: Option<Observed>,
    bound: Duration,
) -> Verdict {
    if let Some(pool) = pool.filter(Observed::writable) {
        current.server.store(pool.server_id, Ordering::Release);
        return Verdict::Writable;
    }
    let Ok(_one) = inner.state().direct.try_acquire() else {
        return Verdict::Unknown("another check of the endpoint is under way".into());
    };
    let endpoint = match direct_within(&inner.state().connect, bound).await {
        Ok(endpoint) => endpoint,
        Err(why) => return Verdict::Unknown(format!("the endpoint did not answer: {why}")),
    };
    let ours = pool.map_or(current.server.load(Ordering::Acquire), |p| p.server_id);
    let pool = match pool {
        Some(pool) => pool,
        // No pool connection asked: the endpoint's answer is the pool's
        // server's only if it is the same server.
        None if endpoint.server_id == ours => endpoint,
        None => {
            return Verdict::Unknown(format!(
                "the endpoint leads to server_id {} (the pool's is {ours})",
                endpoint.server_id
            ));
        }
    };
    match (endpoint.server_id == pool.server_id, endpoint.writable()) {
        (true, true) => Verdict::Writable,
        (true, false) => {
            Verdict::InPlace(format!("the server does not take writes ({})", pool.why()))
        }
        (false, true) => Verdict::Pinned(format!(
            "the pool's server does not take writes ({}), and the endpoint now leads to \
             server_id {}, which does: pinned to a demoted primary",
            pool.why(),
            endpoint.server_id
        )),
        (false, false) => Verdict::InPlace(format!(
            "the server does not take writes ({}), nor does the one the endpoint leads to ({})",
            pool.why(),
            endpoint.why()
        )),
    }
}

/// Acts on a verdict about `generation`: clears or sets the read-only state,
/// or hands a pinned pool to the policy (which decides now; the future only
/// waits for the heal).
fn act(
    inner: &PolicyRef<MySql>,
    generation: u64,
    verdict: &Verdict,
) -> Option<impl Future<Output = Outcome> + Send + 'static> {
    match verdict {
        Verdict::Writable => {
            inner.clear_read_only(generation);
            None
        }
        Verdict::InPlace(reason) => {
            inner.set_read_only(generation, reason);
            None
        }
        Verdict::Pinned(why) => {
            tracing::error!(
                generation,
                why,
                "the pool is pinned to a server that does not take writes"
            );
            Some(Arc::clone(inner).fatal(
                generation,
                Fault::NotWritable {
                    sqlstate: None,
                    message: why.clone(),
                },
            ))
        }
        Verdict::Unknown(why) => {
            tracing::debug!(
                generation,
                why,
                "the pool's server does not take writes; not decided"
            );
            None
        }
    }
}

/// A write's 1290/1792/1836/1036 is acted on only once the server's state
/// confirms it: an application's own `READ ONLY` transaction gets 1792 on a
/// primary that takes writes.
async fn confirm(
    inner: PolicyRef<MySql>,
    generation: u64,
    number: u16,
    proof: bool,
    message: String,
) -> Outcome {
    let current = inner.current();
    if current.number != generation {
        return Outcome::Stale {
            reported: generation,
            current: current.number,
        };
    }
    // An idle connection of the pool first: its server is the pool's.
    let pool = match current.pool.try_acquire() {
        Some(mut conn) => match tokio::time::timeout(ATTEMPT_BOUND, observe(&mut conn)).await {
            Ok(Ok(found)) => Some(found),
            Ok(Err(err)) => {
                tracing::warn!(number, error = %err, "a read-only error, and the writability check failed; not fatal");
                return Outcome::Ignored(class::read::<MySql>(&err).0);
            }
            Err(_) => return Outcome::Ignored(ErrorClass::Transient),
        },
        None => None,
    };
    if pool.is_some_and(|found| found.writable()) && !proof {
        tracing::info!(
            number,
            error = message,
            "a read-only error from a server that takes writes: the application's own read-only \
             transaction or table, not a fault"
        );
        return Outcome::Ignored(ErrorClass::Other);
    }
    let verdict = match assess(&*inner, &current, pool, ATTEMPT_BOUND).await {
        Verdict::Pinned(why) => Verdict::Pinned(format!("{message}: {why}")),
        other => other,
    };
    if matches!(verdict, Verdict::Writable) && !proof {
        // No idle connection to ask, and the endpoint's server (the pool's)
        // takes writes: the same answer as above.
        inner.clear_read_only(generation);
        tracing::info!(
            number,
            error = message,
            "a read-only error from a server that takes writes: the application's own read-only \
             transaction or table, not a fault"
        );
        return Outcome::Ignored(ErrorClass::Other);
    }
    match act(&inner, generation, &verdict) {
        Some(heal) => heal.await,
        None => Outcome::Ignored(ErrorClass::Transient),
    }
}

/// Waits for a server that takes writes (until the reopen timeout, by
/// default none), then builds and verifies a new gated pool.
async fn reopen(
    inner: &PolicyRef<MySql>,
    number: u64,
    fault: &Fault,
) -> Result<Generation<MySql>, GiveUpReason> {
    let state = inner.state();
    let deadline = deadline_after(inner.config().reopen_timeout);
    let awaiting = super::AwaitingPrimary {
        policy: inner,
        generation: number - 1,
        fault,
    };
    loop {
        let failed = |attempts, last: &str| awaiting.failed(attempts, last);
        wait_for_writable(&state.connect, deadline, || inner.is_closed(), failed)
            .await
            .map_err(|why| awaiting.gave_up(why))?;
        if inner.is_closed() {
            return Err(GiveUpReason::ReopenFailed("the LivePool was closed".into()));
        }
        match open_generation(state, number, Some(Instant::now())).await {
            Ok(new) => return Ok(new),
            // The server stopped taking writes between the two checks.
            Err(why) if Instant::now() < deadline => {
                tracing::warn!(why, "the new pool failed verification; waiting again");
            }
            Err(why) => return Err(GiveUpReason::VerifyFailed(why)),
        }
    }
}

/// Builds a gated pool and verifies its first connection: a server that
/// takes writes, whose `@@server_id` the generation records.
async fn open_generation(
    state: &MySqlState,
    number: u64,
    healed_at: Option<Instant>,
) -> Result<Generation<MySql>, String> {
    let server = server_cell();
    let options = gated(
        state.pool.clone(),
        Arc::clone(&state.policy),
        number,
        Arc::clone(&server),
    );
    let pool = options.connect_lazy_with(state.connect.clone());
    let verified = tokio::time::timeout(ATTEMPT_BOUND, async {
        let mut conn = pool.acquire().await?;
        observe(&mut conn).await
    })
    .await;
    let why = match verified {
        Ok(Ok(found)) if found.writable() => {
            server.store(found.server_id, Ordering::Release);
            None
        }
        Ok(Ok(found)) => Some(format!("the server does not take writes ({})", found.why())),
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!("no answer within {ATTEMPT_BOUND:?}")),
    };
    match why {
        None => Ok(Generation {
            number,
            pool,
            healed_at,
            extra: MySqlGeneration { server },
        }),
        Some(why) => {
            tokio::spawn(async move { pool.close().await });
            Err(why)
        }
    }
}

/// The health probe: the writability query on the pool in service, and,
/// when its server does not take writes, where the endpoint leads (both
/// bounded). Never `pass` for a pool whose server does not take writes:
/// read-only in place answers through the policy's state (`read_only`, a
/// `warn`), a pinned pool is a fatal finding (`fail`, and the heal starts).
async fn probe(policy: &PolicyRef<MySql>, bound: Duration, stuck: &AtomicU32) -> (u64, Finding) {
    let current = policy.current();
    let generation = current.number;
    let inner = policy;
    let started = Instant::now();
    // An idle connection first: a probe must not grow a busy pool.
    let mut conn = match current.pool.try_acquire() {
        Some(conn) => conn,
        None => match tokio::time::timeout(bound, current.pool.acquire()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return (generation, Finding::from_error(policy, generation, &err)),
            Err(_) if current.pool.size() >= current.pool.options().get_max_connections() => {
                let text = format!("no pool connection free within {} ms", bound.as_millis());
                return (generation, Finding::Transient(Detail::same(text)));
            }
            Err(_) => return (generation, silent(stuck, bound)),
        },
    };
    let left = bound.saturating_sub(started.elapsed());
    let checked = tokio::time::timeout(left, observe(&mut conn)).await;
    drop(conn);
    let Ok(checked) = checked else {
        return (generation, silent(stuck, bound));
    };
    stuck.store(0, Ordering::Relaxed);
    let found = match checked {
        Ok(found) => found,
        Err(err) => return (generation, Finding::from_error(policy, generation, &err)),
    };
    let left = bound.saturating_sub(started.elapsed());
    let verdict = assess(&**inner, &current, Some(found), left).await;
    let heal = act(inner, generation, &verdict);
    let finding = match verdict {
        Verdict::Writable | Verdict::InPlace(_) => Finding::Pass,
        Verdict::Pinned(why) => Finding::Dead(Detail::same(why)),
        // Already read-only: the policy's state answers (`warn`).
        Verdict::Unknown(_) if inner.is_read_only(generation) => Finding::Pass,
        Verdict::Unknown(why) => Finding::Transient(Detail::same(format!(
            "the database server does not take writes ({}); {why}",
            found.why()
        ))),
    };
    drop(heal);
    (generation, finding)
}

/// A probe the server did not answer: `warn`, and `fail` from the third in
/// a row.
fn silent(stuck: &AtomicU32, bound: Duration) -> Finding {
    let in_a_row = stuck.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    let text = format!(
        "the database did not answer within {} ms",
        bound.as_millis()
    );
    Finding::silent(in_a_row, Detail::same(text))
}

/// The background check: every interval (jittered between half and twice
/// it; while read-only, between half and once it), the writability query
/// on an idle connection of the pool in service, never opening one; while
/// its server does not take writes, also one direct connection through the
/// endpoint. Holds only a weak reference, so it ends with the last
/// `LivePool` handle.
pub(crate) fn spawn_checks(inner: &PolicyRef<MySql>, mut stop: oneshot::Receiver<()>) {
    let Some(interval) = inner.state().settings.check_interval else {
        return;
    };
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut read_only = false;
        loop {
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
            read_only = inner.is_read_only(current.number);
            if current.pool.is_closed() {
                continue; // a heal is replacing it
            }
            let found = match current.pool.try_acquire() {
                Some(mut conn) => {
                    let checked = tokio::time::timeout(ATTEMPT_BOUND, observe(&mut conn)).await;
                    drop(conn);
                    let Ok(Ok(found)) = checked else { continue };
                    if found.writable() && !read_only {
                        continue;
                    }
                    Some(found)
                }
                // Every connection busy (a saturated pool): while read-only,
                // the endpoint alone tells whether the server takes writes
                // again, so readiness does not wait for the load to drop.
                None if read_only => None,
                None => continue,
            };
            let verdict = assess(&*inner, &current, found, ATTEMPT_BOUND).await;
            if let Some(heal) = act(&inner, current.number, &verdict) {
                drop(heal);
            }
            read_only = inner.is_read_only(current.number);
        }
    });
}

/// Waits for a server that takes writes, then opens and verifies the
/// first generation: what `LivePoolBuilder::<MySql>::open` needs of the
/// backend.
pub(crate) async fn open_first(
    connect: MySqlConnectOptions,
    pool: MySqlPoolOptions,
    settings: MySqlSettings,
    reopen_timeout: Duration,
) -> Result<(Generation<MySql>, MySqlState), sqlx::Error> {
    let state = MySqlState {
        connect,
        pool,
        settings,
        policy: MySqlPolicyCell::default(),
        direct: Semaphore::new(1),
        checks: SingleCheck::default(),
    };
    let deadline = deadline_after(reopen_timeout);
    wait_for_writable(&state.connect, deadline, || false, |_, _| {})
        .await
        .map_err(|why| {
            sqlx::Error::Protocol(format!(
                "no writable MySQL server within {:?}: {why}",
                reopen_timeout
            ))
        })?;
    let first = open_generation(&state, 0, None)
        .await
        .map_err(sqlx::Error::Protocol)?;
    Ok((first, state))
}

/// The policy started around the first generation: from now on the gates
/// report to it.
pub(crate) fn attach(policy: &PolicyRef<MySql>) {
    let _ = policy.state().policy.set(Arc::downgrade(policy));
}
