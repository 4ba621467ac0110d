//! gRPC health checking (`grpc.health.v1.Health`) kept in step with the
//! database: [`GrpcHealthBridge`].
//!
//! ```no_run
//! use std::time::Duration;
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::health::grpc::GrpcHealthBridge;
//! use tower_db_liveness::{HealthService, LivePool};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let live = LivePool::connect(
//!     SqliteConnectOptions::new().filename("/var/lib/app/app.db"),
//! )
//! .await?;
//! let (reporter, health_server) = tonic_health::server::health_reporter();
//! GrpcHealthBridge::new(&HealthService::new(live.clone()), reporter)
//!     .service("") // the whole server (the default)
//!     .service("notes.v1.Notes")
//!     .probe_interval(Some(Duration::from_secs(5)))
//!     .spawn();
//!
//! tonic::transport::Server::builder()
//!     .add_service(health_server)
//!     // .add_service(your services)
//!     .serve("0.0.0.0:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # States
//!
//! The bridge publishes the two verdicts of the [state
//! table](super#states) under service names a Kubernetes `grpc:` probe
//! asks for:
//!
//! | service name | follows | `NOT_SERVING` when |
//! |---|---|---|
//! | `liveness` | the liveness verdict | the policy gave up (set **before** the exit action runs) |
//! | `readiness`, `""` (the server as a whole) and every name added with [`service`](GrpcHealthBridge::service) | the readiness verdict | the last probe of the pool in service failed; a Postgres heal waits for a primary; a rescue of a dead SQLite file keeps failing; the policy gave up |
//!
//! A `warn` (a lock held elsewhere, a heal in flight whose requests the
//! layer holds, the database read-only in place) stays `SERVING`.
//!
//! ```yaml
//! livenessProbe:
//!   grpc: { port: 50051, service: liveness }
//! readinessProbe:
//!   grpc: { port: 50051, service: readiness }
//! ```
//!
//! The bridge follows [`LivePool::subscribe`](crate::LivePool::subscribe),
//! which sees every finding of the layer, the file watchdog and
//! [`Lease::report`](crate::Lease::report). It also runs the
//! [`HealthService`] readiness probe itself every
//! [`probe_interval`](GrpcHealthBridge::probe_interval) (sharing the single
//! flight with the HTTP endpoint), because the watchdog only compares file
//! identity: the probe also reads a page, so a corrupt or unreadable
//! database flips readiness even when no request fails, and with the
//! watchdog turned off a deleted file does too.
//!
//! The give-up is published to subscribers before the exit action, but a
//! subscriber's task may not get to run before the process exits. So the
//! bridge also registers a step that the policy awaits (at most 2 s, for
//! all such steps together) between publishing the give-up and running
//! the exit action: it sets `NOT_SERVING`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::{HealthService, HealthStatus, State, WeakHealth};
use crate::live_pool::StatusWatch;
use crate::shared::PoolStatus;

/// Keeps a tonic-health [`HealthReporter`] in step with a [`LivePool`](crate::LivePool).
///
/// See the [module documentation](self) for the states.
#[must_use = "the bridge does nothing until `spawn` is called"]
pub struct GrpcHealthBridge {
    health: HealthService,
    reporter: HealthReporter,
    services: Vec<String>,
    probe_interval: Option<Duration>,
}

impl GrpcHealthBridge {
    /// A bridge that probes with `health` (and shares its probe in flight)
    /// and sets the statuses of `reporter`.
    pub fn new(health: &HealthService, reporter: HealthReporter) -> Self {
        GrpcHealthBridge {
            health: health.clone(),
            reporter,
            services: Vec::new(),
            probe_interval: Some(Duration::from_secs(5)),
        }
    }

    /// Adds a service name whose status follows the readiness verdict,
    /// besides `""` (the server as a whole) and `readiness`; `liveness`
    /// follows the liveness verdict.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.services.push(name.into());
        self
    }

    /// How often the bridge runs the probe; `None` follows the policy's
    /// state only. Default: every 5 s.
    pub fn probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.probe_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Starts the bridge on the current Tokio runtime.
    ///
    /// The task ends when the last handle of the [`LivePool`](crate::LivePool)
    /// (including every [`HealthService`]) is dropped; abort the returned
    /// handle to end it sooner.
    pub fn spawn(self) -> JoinHandle<()> {
        let mut ready = vec![String::new(), READINESS.to_owned()];
        for name in self.services {
            if !ready.contains(&name) && name != LIVENESS {
                ready.push(name);
            }
        }
        let bridge = Arc::new(Bridge {
            reporter: self.reporter,
            ready: ready.into(),
            last: Mutex::new(None),
        });
        let live = self.health.live();
        let hook = Arc::clone(&bridge);
        live.before_exit(Box::new(move |_gave_up| {
            let bridge = Arc::clone(&hook);
            Box::pin(async move {
                bridge
                    .set(|| (ServingStatus::NotServing, ServingStatus::NotServing))
                    .await
            })
        }));
        let status = live.subscribe();
        let health = self.health.downgrade();
        tokio::spawn(run(bridge, health, status, self.probe_interval))
    }
}

impl std::fmt::Debug for GrpcHealthBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcHealthBridge")
            .field("services", &self.services)
            .field("probe_interval", &self.probe_interval)
            .finish_non_exhaustive()
    }
}

/// The service name that follows the liveness verdict.
pub const LIVENESS: &str = "liveness";
/// The service name that follows the readiness verdict (as `""` does).
pub const READINESS: &str = "readiness";

struct Bridge {
    reporter: HealthReporter,
    /// The names that follow readiness.
    ready: Arc<[String]>,
    /// The statuses last set (liveness, readiness); the lock also orders
    /// the task's updates with the give-up step.
    last: Mutex<Option<(ServingStatus, ServingStatus)>>,
}

impl Bridge {
    /// Sets every service to what `decide` says (liveness, readiness),
    /// deciding under the lock so that an update decided before a give-up
    /// cannot land after it.
    async fn set(&self, decide: impl FnOnce() -> (ServingStatus, ServingStatus)) {
        let mut last = self.last.lock().await;
        let (live, ready) = decide();
        let (was_live, was_ready) = match *last {
            Some((live, ready)) => (Some(live), Some(ready)),
            None => (None, None),
        };
        if was_live != Some(live) {
            self.reporter.set_service_status(LIVENESS, live).await;
            tracing::info!(service = LIVENESS, status = %live, "gRPC health status set");
        }
        if was_ready != Some(ready) {
            for service in self.ready.iter() {
                self.reporter.set_service_status(service, ready).await;
            }
            tracing::info!(services = ?self.ready, status = %ready, "gRPC health status set");
        }
        *last = Some((live, ready));
    }
}

fn serving(status: HealthStatus) -> ServingStatus {
    match status {
        HealthStatus::Fail => ServingStatus::NotServing,
        HealthStatus::Pass | HealthStatus::Warn => ServingStatus::Serving,
    }
}

async fn run(
    bridge: Arc<Bridge>,
    health: WeakHealth,
    mut status: StatusWatch,
    probe_interval: Option<Duration>,
) {
    let mut ticker = probe_interval.map(|period| {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    // The generation whose last probe failed readiness.
    let mut failed: Option<u64> = None;
    loop {
        bridge
            .set(|| {
                let latest = status.latest();
                let state = State::of(&latest);
                // The last probe's failure stands until the generation it
                // probed is replaced, or a later probe says otherwise.
                let probed = match &latest {
                    PoolStatus::Live { generation, .. }
                    | PoolStatus::ReadOnly { generation, .. }
                    | PoolStatus::Healing { generation, .. } => Some(*generation),
                    _ => None,
                };
                let ready = if probed.is_some() && probed == failed {
                    HealthStatus::Fail
                } else {
                    state.readiness()
                };
                (serving(state.liveness()), serving(ready))
            })
            .await;
        tokio::select! {
            changed = status.changed() => {
                if changed.is_none() {
                    return; // the LivePool is gone
                }
            }
            () = tick(&mut ticker) => {
                let Some(health) = health.upgrade() else { return };
                let report = health.probe_readiness().await;
                failed = (report.status == HealthStatus::Fail).then_some(report.generation);
            }
        }
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
