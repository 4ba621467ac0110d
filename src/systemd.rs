//! The systemd watchdog, fed only while the database is alive:
//! [`spawn_watchdog`].
//!
//! ```no_run
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::{HealthService, LivePool, systemd};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let live = LivePool::connect(
//!     SqliteConnectOptions::new().filename("/var/lib/app/app.db"),
//! )
//! .await?;
//! let health = HealthService::new(live);
//! // `None` when not started by systemd with `WatchdogSec=`: nothing to do.
//! let _watchdog = systemd::spawn_watchdog(&health);
//! # Ok(())
//! # }
//! ```
//!
//! With `WatchdogSec=` set, systemd passes `WATCHDOG_USEC` (and
//! `NOTIFY_SOCKET`) to the service and restarts it (with `Restart=` set)
//! when no `WATCHDOG=1` arrives within that time. The task runs the
//! [`HealthService`]'s readiness probe every half `WATCHDOG_USEC` (it finds
//! a dead database and starts the heal, as `/readyz` does) and sends
//! `WATCHDOG=1` after every probe whose **liveness** verdict is not `fail`
//! (the [state table](crate::health#states)):
//!
//! - fed while the database is healthy, while a heal runs, while a Postgres
//!   heal waits for a primary, while a rescue of a dead SQLite file keeps
//!   failing (the dead handle holds the only copy: a restart would lose
//!   it), while the database is read-only in place or does not answer: a
//!   restart would not help with any of these;
//! - not fed once the policy has given up, so a process whose exit did not
//!   happen (a custom `on_give_up`, a wedged shutdown) is restarted, and so
//!   is a process whose runtime is wedged (no probe, no ping).
//!
//! On each change of state (or of its text) it also sends `STATUS=` with
//! the probe's short, path-free text, which `systemctl status` shows.
//!
//! Keep `WatchdogSec=` well above the probe's
//! [timeout](HealthService::timeout) (500 ms by default): each ping waits
//! for one probe. See the [health module](crate::health#systemd) for a unit
//! file.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::health::{HealthService, HealthStatus, WeakHealth};

/// Starts the watchdog task when systemd asked for one.
///
/// Returns `None`, and starts nothing, unless `WATCHDOG_USEC` is set (and
/// `WATCHDOG_PID`, if set, is this process). The task holds no strong
/// reference: it ends when the last [`LivePool`](crate::LivePool) handle is
/// dropped, and systemd, no longer fed, restarts the service.
///
/// Must be called within a Tokio runtime.
pub fn spawn_watchdog(health: &HealthService) -> Option<JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled().filter(|d| !d.is_zero())?;
    tracing::info!(
        ?period,
        "systemd watchdog enabled: feeding it while the database probe does not fail"
    );
    Some(tokio::spawn(run(health.downgrade(), period / 2)))
}

async fn run(health: WeakHealth, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The state last told to systemd, as `STATUS=`.
    let mut last: Option<(HealthStatus, Option<String>)> = None;
    loop {
        ticker.tick().await;
        let Some(service) = health.upgrade() else {
            return;
        };
        // Never the verbose text: `systemctl status` is readable by every user.
        // The readiness probe: it also finds a dead database and starts the
        // heal; the watchdog itself follows the liveness verdict.
        let report = service.verbose(false).probe_readiness().await;
        let state = (report.status, report.output.clone());
        let status_line = (last.as_ref() != Some(&state)).then(|| {
            let mut line = format!("database {}", report.status.as_str());
            if let Some(output) = &report.output {
                line.push_str(": ");
                line.push_str(output);
            }
            // One line per state: STATUS= ends at the newline.
            line.replace('\n', " ")
        });
        last = Some(state);
        let mut states = Vec::with_capacity(2);
        if let Some(line) = &status_line {
            states.push(NotifyState::Status(line));
        }
        if report.liveness != HealthStatus::Fail {
            states.push(NotifyState::Watchdog);
        }
        if states.is_empty() {
            continue;
        }
        if let Err(err) = sd_notify::notify(&states) {
            tracing::warn!(error = %err, "could not notify systemd");
        }
    }
}
