//! Whether the server behind a connection takes writes, and the wait for
//! one that does.

use std::sync::Weak;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgExecutor};

use super::PolicyCell;
use crate::live_pool::Fault;

/// One round trip, about the cost of `SELECT 1`, that needs no privilege.
/// `pg_is_in_recovery()` catches a standby (a demoted primary);
/// `transaction_read_only` also catches a primary made read-only
/// (`default_transaction_read_only`), where `pg_is_in_recovery()` is false.
const WRITABLE_QUERY: &str =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'";

/// How long one attempt (connect and query) may take while waiting for a
/// writable primary: a black-holed address must not stall the wait.
pub(crate) const ATTEMPT_BOUND: Duration = Duration::from_secs(2);
/// The longest pause between two attempts: a primary is found within about
/// this long of becoming reachable.
const BACKOFF_MAX: Duration = Duration::from_millis(800);
const BACKOFF_FIRST: Duration = Duration::from_millis(25);

/// What the writability query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Writability {
    Writable,
    /// Why not, in words for logs and `/health`.
    NotWritable(String),
}

/// Runs the writability query on `executor`.
pub(crate) async fn writability<'c, E>(executor: E) -> Result<Writability, sqlx::Error>
where
    E: PgExecutor<'c>,
{
    let (in_recovery, read_only): (bool, bool) =
        sqlx::query_as(WRITABLE_QUERY).fetch_one(executor).await?;
    Ok(if in_recovery {
        Writability::NotWritable(
            "the server is in recovery (pg_is_in_recovery() is true): a hot standby, \
             or a primary demoted by a failover"
                .into(),
        )
    } else if read_only {
        Writability::NotWritable("the server is read-only (transaction_read_only is on)".into())
    } else {
        Writability::Writable
    })
}

/// Connects once, directly (not through a pool: sqlx would retry a refused
/// connection inside its own loop, unjittered), asks, and closes.
pub(crate) async fn direct(options: &PgConnectOptions) -> Result<Writability, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let found = writability(&mut conn).await;
    let _ = conn.close().await;
    found
}

/// Why an attempt failed, and whether waiting can help.
struct Failed {
    why: String,
    /// No database of that name, or the role is refused: no failover fixes
    /// that, so the wait ends at once.
    permanent: bool,
}

async fn attempt(options: &PgConnectOptions) -> Result<Writability, Failed> {
    match tokio::time::timeout(ATTEMPT_BOUND, direct(options)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(err)) => {
            let permanent = err
                .as_database_error()
                .and_then(|db| db.code())
                .is_some_and(|code| matches!(&*code, "3D000" | "28000" | "28P01"));
            Err(Failed {
                why: err.to_string(),
                permanent,
            })
        }
        Err(_) => Err(Failed {
            why: format!("no answer within {ATTEMPT_BOUND:?}"),
            permanent: false,
        }),
    }
}

/// Waits for the server at `options` to take writes, until `deadline`, with
/// jittered exponential back-off capped at [`BACKOFF_MAX`]: a primary is
/// found within about a second of becoming reachable, and a fleet of
/// instances that lost their primary at the same moment does not reach the
/// new one in one burst. `stop` ends the wait early (the `LivePool` was
/// closed). Returns why not, at the deadline.
pub(crate) async fn wait_for_writable(
    options: &PgConnectOptions,
    deadline: Instant,
    stop: impl Fn() -> bool,
    failed: impl Fn(u32, &str),
) -> Result<(), String> {
    let mut cap = BACKOFF_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let why = match attempt(options).await {
            Ok(Writability::Writable) => {
                tracing::info!(attempts, "a writable primary answers");
                return Ok(());
            }
            Ok(Writability::NotWritable(why)) => why,
            Err(Failed {
                why,
                permanent: true,
            }) => {
                return Err(format!("{why} (no failover changes that)"));
            }
            Err(Failed { why, .. }) => why,
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

/// A pause in `[max / 2, max]`: spread, and never much shorter than the
/// back-off asks for.
pub(crate) fn jitter(max: Duration) -> Duration {
    let half = max / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(crate::backend::random_u64() % nanos)
}

/// `options` with the check every new connection of a pool meant for writes
/// passes before sqlx hands it out (`after_connect`): a connection to a
/// server that does not take writes is refused, and the refusal is a fatal
/// finding about `generation`. One round trip per connection, none per
/// request or checkout.
pub(crate) fn gated(options: PgPoolOptions, policy: PolicyCell, generation: u64) -> PgPoolOptions {
    options.after_connect(move |conn, _meta| {
        let inner = policy.get().and_then(Weak::upgrade);
        // This generation is being replaced (or was, or the LivePool is
        // closed). A refusal would not end the request that opened this
        // connection: sqlx retries it inside `acquire` until its
        // acquire_timeout, whatever the error, and closing the pool does not
        // stop that loop. So the connection is handed out unusable: the
        // session ends itself, and the request's statement fails at once on
        // the closed connection (a transient error, a 503) — no read can be
        // answered by a standby and no write committed on a server that does
        // not take writes. Its retry reaches the new pool.
        let retired = inner.as_ref().is_some_and(|inner| {
            let (current, healing, gave_up) = inner.load_state();
            current > generation
                || (current == generation && healing)
                || gave_up
                || inner.is_closed()
        });
        Box::pin(async move {
            if retired {
                return end_session(conn).await;
            }
            match writability(&mut *conn).await? {
                Writability::Writable => Ok(()),
                Writability::NotWritable(why) => {
                    tracing::warn!(
                        generation,
                        why,
                        "a new connection reached a server that does not take writes; refused"
                    );
                    if let Some(inner) = inner {
                        // Decided now; the heal does not wait for this connection.
                        drop(inner.fatal(
                            generation,
                            Fault::NotWritable {
                                sqlstate: None,
                                message: why.clone(),
                            },
                        ));
                    }
                    Err(sqlx::Error::Protocol(format!(
                        "refused a connection to a server that does not take writes: {why}"
                    )))
                }
            }
        })
    })
}

/// Ends the server session behind `conn` (its own backend may always be
/// terminated by its role). `Ok` once the server ended it; otherwise the
/// connection would still serve, and is refused instead.
async fn end_session(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let ended = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut *conn)
        .await;
    match ended {
        // The backend ended itself while answering: FATAL 57P01, or the
        // connection is gone.
        Err(sqlx::Error::Io(_)) => Ok(()),
        Err(err)
            if err.as_database_error().and_then(|db| db.code()).as_deref() == Some("57P01") =>
        {
            Ok(())
        }
        Ok(_) | Err(_) => Err(sqlx::Error::Protocol(
            "a replaced generation's connection could not be ended; refused".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds() {
        let max = Duration::from_millis(800);
        let pauses: Vec<Duration> = (0..200).map(|_| jitter(max)).collect();
        assert!(pauses.iter().all(|p| *p >= max / 2 && *p <= max));
        // Spread, not one value for every instance.
        let first = pauses[0];
        assert!(pauses.iter().any(|p| *p != first));
    }
}
