//! Whether the server behind a connection takes writes, which server it is,
//! and the wait for one that takes writes.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, Row};

use super::{MySqlPolicyCell, ServerCell};
use crate::backend::jitter;
use crate::shared::Fault;

/// One round trip, about the cost of `SELECT 1`, that needs no privilege and
/// exists on MySQL, MariaDB and Aurora MySQL alike. `@@global.read_only` is
/// forced on by MySQL's `super_read_only`; `@@innodb_read_only` catches an
/// Aurora reader or a `--innodb-read-only` server, where `read_only` is off;
/// `@@server_id` tells which server answered (a switchover leaves the old
/// primary up, read-only, with every connection). Not `@@super_read_only`
/// or `@@transaction_read_only`: MariaDB has neither (error 1193). Sent with
/// the text protocol (`raw_sql`): no prepared statement.
const WRITABLE_QUERY: &str = "SELECT @@global.read_only, @@innodb_read_only, @@server_id";

/// How long one attempt (connect and query) may take: a black-holed
/// address must not stall a check or the wait for a primary.
pub(crate) const ATTEMPT_BOUND: Duration = Duration::from_secs(2);
/// The longest pause between two attempts while waiting for a primary.
const BACKOFF_MAX: Duration = Duration::from_millis(800);
const BACKOFF_FIRST: Duration = Duration::from_millis(25);

/// What the writability query found on one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) read_only: bool,
    pub(crate) innodb_read_only: bool,
    pub(crate) server_id: u64,
}

impl Observed {
    pub(crate) fn writable(&self) -> bool {
        !self.read_only && !self.innodb_read_only
    }

    /// Why it does not take writes, in words (no server message).
    pub(crate) fn why(&self) -> String {
        let what = match (self.read_only, self.innodb_read_only) {
            (true, true) => "read_only and innodb_read_only are on",
            (true, false) => "read_only is on",
            (false, true) => "innodb_read_only is on",
            (false, false) => "it takes writes",
        };
        format!("server_id {}: {what}", self.server_id)
    }
}

/// A system variable as the text protocol sends it: `1`/`0` (MariaDB,
/// MySQL), `ON`/`OFF` when a server sends the name.
fn flag(row: &MySqlRow, index: usize) -> Result<bool, sqlx::Error> {
    let text: Option<&str> = row.try_get_unchecked(index)?;
    match text.map(str::trim) {
        Some("1") => Ok(true),
        Some(t) if t.eq_ignore_ascii_case("on") => Ok(true),
        Some("0") | None => Ok(false),
        Some(t) if t.eq_ignore_ascii_case("off") => Ok(false),
        Some(other) => Err(sqlx::Error::Protocol(format!(
            "the writability query answered {other:?} for a flag"
        ))),
    }
}

/// Runs the writability query on `conn`.
pub(crate) async fn observe(conn: &mut MySqlConnection) -> Result<Observed, sqlx::Error> {
    let row = sqlx::raw_sql(WRITABLE_QUERY).fetch_one(&mut *conn).await?;
    let server_id: Option<&str> = row.try_get_unchecked(2)?;
    let server_id = server_id
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "the writability query answered {server_id:?} for @@server_id"
            ))
        })?;
    Ok(Observed {
        read_only: flag(&row, 0)?,
        innodb_read_only: flag(&row, 1)?,
        server_id,
    })
}

/// Connects once, directly through the endpoint (not through a pool: sqlx
/// would retry a refused connection inside its own loop), asks, and closes.
pub(crate) async fn direct(options: &MySqlConnectOptions) -> Result<Observed, sqlx::Error> {
    let mut conn = MySqlConnection::connect_with(options).await?;
    let found = observe(&mut conn).await;
    let _ = conn.close().await;
    found
}

/// [`direct`], bounded by `bound`.
pub(crate) async fn direct_within(
    options: &MySqlConnectOptions,
    bound: Duration,
) -> Result<Observed, String> {
    match tokio::time::timeout(bound, direct(options)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {bound:?}")),
    }
}

/// Waits for the server at `options` to take writes, until `deadline` (by
/// default none: a MySQL pool waits for its primary for as long as it
/// takes), with jittered exponential back-off capped at [`BACKOFF_MAX`]. A
/// refused user or an unknown database ends the wait at once: no failover
/// fixes those. `stop` ends the wait early (the `LivePool` was closed).
pub(crate) async fn wait_for_writable(
    options: &MySqlConnectOptions,
    deadline: Instant,
    stop: impl Fn() -> bool,
    failed: impl Fn(u32, &str),
) -> Result<(), String> {
    let mut cap = BACKOFF_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let why = match tokio::time::timeout(ATTEMPT_BOUND, direct(options)).await {
            Ok(Ok(found)) if found.writable() => {
                tracing::info!(
                    attempts,
                    server_id = found.server_id,
                    "a writable primary answers"
                );
                return Ok(());
            }
            Ok(Ok(found)) => format!("the server does not take writes ({})", found.why()),
            Ok(Err(err)) => {
                let number = err
                    .as_database_error()
                    .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
                    .map(|my| my.number());
                // Access denied (user, password, database), unknown database.
                if matches!(number, Some(1044 | 1045 | 1049)) {
                    return Err(format!("{err} (no failover changes that)"));
                }
                err.to_string()
            }
            Err(_) => format!("no answer within {ATTEMPT_BOUND:?}"),
        };
        let now = Instant::now();
        if now >= deadline || stop() {
            return Err(format!("{why} (after {attempts} attempts)"));
        }
        failed(attempts, &why);
        if attempts == 1 {
            tracing::warn!(why, "waiting for a writable primary");
        } else {
            tracing::debug!(attempts, why, "waiting for a writable primary");
        }
        let pause = jitter(cap).min(deadline - now);
        tokio::time::sleep(pause).await;
        cap = (cap * 2).min(BACKOFF_MAX);
    }
}

/// `options` with the check every new connection of a generation passes
/// before sqlx hands it out (`after_connect`), one round trip per
/// connection and none per request or checkout. `server` is the server the
/// generation's connections are on.
///
/// - takes writes: accepted. If it is another server than the generation's
///   while the generation is read-only, the endpoint moved to a writable
///   primary and the pool is pinned to the old one: a fatal finding;
/// - does not take writes, the generation's own server: read-only in place
///   (degraded: reads are served); accepted;
/// - does not take writes, another server: the endpoint leads somewhere the
///   pool does not belong; handed out with its session ended (see below).
///
/// A refusal would not end the request that opened the connection: sqlx
/// retries an `after_connect` error inside `acquire` until its
/// acquire_timeout. So a connection that must not serve is handed out with
/// its session ended (`KILL CONNECTION_ID()`): the request's statement fails
/// at once (a transient error, a 503), and its retry reaches the new pool.
/// The same for every new connection of a generation being replaced.
pub(crate) fn gated(
    options: MySqlPoolOptions,
    policy: MySqlPolicyCell,
    generation: u64,
    server: ServerCell,
) -> MySqlPoolOptions {
    options.after_connect(move |conn, _meta| {
        let inner = policy.get().and_then(Weak::upgrade);
        let retired = inner.as_ref().is_some_and(|inner| {
            let (current, healing, gave_up) = inner.load_state();
            current > generation
                || (current == generation && healing)
                || gave_up
                || inner.is_closed()
        });
        let server = std::sync::Arc::clone(&server);
        Box::pin(async move {
            if retired {
                return end_session(conn).await;
            }
            let found = observe(&mut *conn).await?;
            let ours = server.load(Ordering::Acquire);
            let Some(inner) = inner.filter(|_| ours != UNKNOWN) else {
                // The generation's first connection (before the policy exists,
                // for the first one): its verification reads the server.
                return Ok(());
            };
            match (found.writable(), found.server_id == ours) {
                (true, true) => Ok(()),
                (true, false) => {
                    if inner.is_read_only(generation) {
                        let why = format!(
                            "the pool's server (server_id {ours}) does not take writes, and the \
                             endpoint now leads to server_id {}, which does",
                            found.server_id
                        );
                        tracing::warn!(
                            generation,
                            why,
                            "a new connection found the endpoint moved"
                        );
                        drop(inner.fatal(
                            generation,
                            Fault::NotWritable {
                                sqlstate: None,
                                message: why,
                            },
                        ));
                    } else {
                        // The old server is gone (or still takes writes):
                        // the pool follows the endpoint.
                        server.store(found.server_id, Ordering::Release);
                    }
                    Ok(())
                }
                (false, true) => {
                    inner.set_read_only(
                        generation,
                        &format!("the server does not take writes ({})", found.why()),
                    );
                    Ok(())
                }
                (false, false) => {
                    tracing::warn!(
                        generation,
                        pool_server = ours,
                        found = found.why(),
                        "a new connection reached another server that does not take writes; ended"
                    );
                    end_session(conn).await
                }
            }
        })
    })
}

/// Ends the server session behind `conn` (a session may always kill
/// itself). `Ok` once the server ended it; otherwise the connection would
/// still serve, and is refused instead.
async fn end_session(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    let _ = sqlx::raw_sql("KILL CONNECTION_ID()")
        .execute(&mut *conn)
        .await;
    match sqlx::raw_sql("SELECT 1").execute(&mut *conn).await {
        Err(_) => Ok(()),
        Ok(_) => Err(sqlx::Error::Protocol(
            "a connection that must not serve could not be ended; refused".into(),
        )),
    }
}

/// A generation's server before its verification read it.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// A shared cell for the server a generation's connections are on.
pub(crate) fn server_cell() -> ServerCell {
    std::sync::Arc::new(AtomicU64::new(UNKNOWN))
}
