//! Whether the server behind a connection takes writes, and the wait for
//! one that does.

use std::sync::Weak;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgExecutor, Row};

use super::PolicyCell;
use crate::shared::Fault;

/// One round trip, about the cost of `SELECT 1`, that needs no privilege.
/// Only the server's state counts, never the session's own settings (a
/// handler's `SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY` on a
/// pooled connection must not look like a read-only server):
/// `pg_is_in_recovery()` catches a standby (a demoted primary), and the
/// `reset_val` of `default_transaction_read_only` is what a fresh session
/// gets (`ALTER SYSTEM` + reload, the database's or the role's setting),
/// where `pg_is_in_recovery()` is false. Sent with the simple query
/// protocol: no named prepared statement, so it survives `DISCARD ALL`,
/// `DEALLOCATE ALL` and PgBouncer in transaction mode.
const WRITABLE_QUERY: &str = "SELECT pg_is_in_recovery(), \
     (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on'";

/// How long one attempt (connect and query) may take while waiting for a
/// writable primary: a black-holed address must not stall the wait.
pub(crate) const ATTEMPT_BOUND: Duration = Duration::from_secs(2);

/// What the writability query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Writability {
    Writable,
    /// A standby, or a primary demoted by a failover: what a heal is for.
    /// Why, in words for logs and `/health`.
    InRecovery(String),
    /// A primary that refuses writes in place (`default_transaction_read_only`
    /// for the server, the database or the role): degraded, not dead; no
    /// heal or restart changes it.
    ReadOnly(String),
}

/// Runs the writability query on `executor`.
pub(crate) async fn writability<'c, E>(executor: E) -> Result<Writability, sqlx::Error>
where
    E: PgExecutor<'c>,
{
    let row = sqlx::raw_sql(WRITABLE_QUERY).fetch_one(executor).await?;
    let in_recovery: bool = row.try_get(0)?;
    // NULL only if the setting vanished from pg_settings: not read-only.
    let read_only: Option<bool> = row.try_get(1)?;
    Ok(if in_recovery {
        Writability::InRecovery(
            "the server is in recovery (pg_is_in_recovery() is true): a hot standby, \
             or a primary demoted by a failover"
                .into(),
        )
    } else if read_only == Some(true) {
        Writability::ReadOnly(
            "the primary is read-only in place (default_transaction_read_only is on for new sessions)"
                .into(),
        )
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
    /// `53300`: the server has no connection slot left; back off further.
    too_many: bool,
}

async fn attempt(options: &PgConnectOptions) -> Result<Writability, Failed> {
    match tokio::time::timeout(ATTEMPT_BOUND, direct(options)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(err)) => {
            let code = err.as_database_error().and_then(|db| db.code());
            let code = code.as_deref();
            Err(Failed {
                why: err.to_string(),
                permanent: matches!(code, Some("3D000" | "28000" | "28P01")),
                too_many: code == Some("53300"),
            })
        }
        Err(_) => Err(Failed {
            why: format!("no answer within {ATTEMPT_BOUND:?}"),
            permanent: false,
            too_many: false,
        }),
    }
}

/// What a wait found: a primary, which may be read-only in place (`Some`
/// with why): it still serves reads, so the pool opens degraded.
pub(crate) type Primary = Option<String>;

/// Waits for a primary (a server not in recovery) at `options`, until
/// `deadline`, with [`Backoff`]'s pauses. `stop` ends the wait early (the
/// `LivePool` was closed); `failed` hears of every attempt that found none.
/// Returns why not, at the deadline.
pub(crate) async fn wait_for_primary(
    options: &PgConnectOptions,
    deadline: Instant,
    stop: impl Fn() -> bool,
    failed: impl Fn(u32, &str),
) -> Result<Primary, String> {
    let mut backoff = Backoff::default();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let (why, too_many) = match attempt(options).await {
            Ok(Writability::Writable) => {
                tracing::info!(attempts, "a writable primary answers");
                return Ok(None);
            }
            Ok(Writability::ReadOnly(why)) => {
                tracing::warn!(attempts, why, "a primary answers, read-only in place");
                return Ok(Some(why));
            }
            Ok(Writability::InRecovery(why)) => (why, false),
            Err(Failed {
                why,
                permanent: true,
                ..
            }) => {
                return Err(format!("{why} (no failover changes that)"));
            }
            Err(Failed { why, too_many, .. }) => (why, too_many),
        };
        let now = Instant::now();
        if now >= deadline || stop() {
            return Err(format!("{why} (after {attempts} attempts)"));
        }
        failed(attempts, &why);
        if attempts == 1 {
            tracing::warn!(why, "waiting for a primary");
        } else {
            tracing::debug!(attempts, why, "waiting for a primary");
        }
        tokio::time::sleep(backoff.next(too_many).min(deadline - now)).await;
    }
}

/// The first pause of a wait.
const BACKOFF_FIRST: Duration = Duration::from_millis(25);
/// The longest pause between two attempts: the first attempt after the
/// endpoint moves to a primary comes within this long.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_millis(500);
/// The longest pause while the server answers `53300` (no connection slot
/// left): a fleet that backs off further frees the slots it competes for.
pub(crate) const BACKOFF_CAP_TOO_MANY: Duration = Duration::from_secs(5);

/// The pauses of a wait for a primary: doubling from [`BACKOFF_FIRST`] up
/// to a cap ([`BACKOFF_CAP`], or [`BACKOFF_CAP_TOO_MANY`] after a `53300`),
/// each one drawn from `[ceiling / 2, ceiling]` so a fleet that lost its
/// primary at the same moment does not reach the new one in one burst.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// The current ceiling; zero before the first pause.
    ceiling: Duration,
}

impl Backoff {
    /// The next pause; `too_many` if the last attempt got `53300`.
    pub(crate) fn next(&mut self, too_many: bool) -> Duration {
        let cap = if too_many {
            BACKOFF_CAP_TOO_MANY
        } else {
            BACKOFF_CAP
        };
        self.ceiling = if self.ceiling.is_zero() {
            BACKOFF_FIRST
        } else {
            self.ceiling.saturating_mul(2)
        }
        .min(cap);
        jitter(self.ceiling)
    }
}

/// A pause in `[max / 2, max]`: spread, and never much shorter than the
/// back-off asks for.
pub(crate) fn jitter(max: Duration) -> Duration {
    let half = max / 2;
    let nanos = u64::try_from((max - half).as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    half + Duration::from_nanos(crate::shared::random_u64() % nanos)
}

/// A deadline the user set, stretched by 0 to 25 % (drawn per wait): a
/// fleet that lost its primary at the same moment does not give up in the
/// same second. `Duration::MAX` (no deadline) stays as it is.
pub(crate) fn spread(timeout: Duration) -> Duration {
    let quarter = u64::try_from((timeout / 4).as_nanos()).unwrap_or(u64::MAX);
    let extra = crate::shared::random_u64() % quarter.saturating_add(1);
    timeout.saturating_add(Duration::from_nanos(extra))
}

/// `options` with the check every new connection of a pool meant for writes
/// passes before sqlx hands it out (`after_connect`): a connection to a
/// server in recovery is refused, and the refusal is a fatal finding about
/// `generation`; one to a primary read-only in place is accepted (reads
/// must work) and marks the generation read-only. One round trip per
/// connection, none per request or checkout.
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
                Writability::Writable => {
                    if let Some(inner) = inner {
                        inner.clear_read_only(generation);
                    }
                    Ok(())
                }
                Writability::ReadOnly(why) => {
                    if let Some(inner) = inner {
                        inner.set_read_only(generation, &why);
                    }
                    Ok(())
                }
                Writability::InRecovery(why) => {
                    tracing::warn!(
                        generation,
                        why,
                        "a new connection reached a server in recovery; refused"
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
    let ended = sqlx::raw_sql("SELECT pg_terminate_backend(pg_backend_pid())")
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
    fn jitter_stays_within_its_bounds_and_spreads() {
        let max = Duration::from_millis(800);
        let pauses: Vec<Duration> = (0..400).map(|_| jitter(max)).collect();
        assert!(
            pauses.iter().all(|p| *p >= max / 2 && *p <= max),
            "{pauses:?}"
        );
        // Spread over the whole range, not one value (or one end) for every instance.
        assert!(pauses.iter().any(|p| *p < max * 6 / 10), "{pauses:?}");
        assert!(pauses.iter().any(|p| *p > max * 9 / 10), "{pauses:?}");
    }

    /// The pauses of a wait that never finds a primary.
    fn schedule(backoff: &mut Backoff, n: usize, too_many: bool) -> Vec<Duration> {
        (0..n).map(|_| backoff.next(too_many)).collect()
    }

    #[test]
    fn backoff_starts_short_and_is_capped_at_half_a_second() {
        let mut backoff = Backoff::default();
        let first = backoff.next(false);
        assert!(
            first <= BACKOFF_FIRST && first >= BACKOFF_FIRST / 2,
            "{first:?}"
        );
        let later = schedule(&mut backoff, 300, false);
        // Never above the cap: the first attempt after the endpoint moves
        // comes within half a second.
        assert!(
            later.iter().all(|p| *p <= Duration::from_millis(500)),
            "{later:?}"
        );
        // Reaches the cap (doubling), and stays jittered in [cap/2, cap].
        let settled = &later[10..];
        assert!(
            settled
                .iter()
                .all(|p| *p >= Duration::from_millis(250) && *p <= Duration::from_millis(500)),
            "{settled:?}"
        );
        assert!(
            settled.iter().any(|p| *p < Duration::from_millis(300)),
            "{settled:?}"
        );
        assert!(
            settled.iter().any(|p| *p > Duration::from_millis(450)),
            "{settled:?}"
        );
    }

    #[test]
    fn backoff_grows_while_the_server_is_full_and_comes_back() {
        let mut backoff = Backoff::default();
        schedule(&mut backoff, 20, false);
        let full = schedule(&mut backoff, 200, true);
        // Backs off further than the normal cap, up to its own.
        assert!(
            full.iter().all(|p| *p <= Duration::from_secs(5)),
            "{full:?}"
        );
        let settled = &full[10..];
        assert!(
            settled.iter().all(|p| *p >= Duration::from_millis(2500)),
            "{settled:?}"
        );
        assert!(
            settled.iter().any(|p| *p < Duration::from_millis(3000)),
            "{settled:?}"
        );
        // Slots free again: back under half a second at the next pause.
        let after = backoff.next(false);
        assert!(after <= Duration::from_millis(500), "{after:?}");
    }

    #[test]
    fn a_deadline_is_stretched_by_up_to_a_quarter_and_spread() {
        let timeout = Duration::from_secs(60);
        let spread: Vec<Duration> = (0..400).map(|_| super::spread(timeout)).collect();
        assert!(
            spread
                .iter()
                .all(|d| *d >= timeout && *d <= Duration::from_secs(75)),
            "{spread:?}"
        );
        // Instances do not give up in the same second.
        assert!(
            spread.iter().any(|d| *d < Duration::from_secs(62)),
            "{spread:?}"
        );
        assert!(
            spread.iter().any(|d| *d > Duration::from_secs(73)),
            "{spread:?}"
        );
        assert_eq!(super::spread(Duration::MAX), Duration::MAX);
        assert_eq!(super::spread(Duration::ZERO), Duration::ZERO);
    }
}
