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
//! | the database | gRPC status |
//! |---|---|
//! | live, and the last probe did not fail | `SERVING` |
//! | the last probe of the live pool failed (its fatal findings also start a heal) | `NOT_SERVING` |
//! | a heal in flight | `NOT_SERVING` |
//! | healed: a verified new pool is live | `SERVING` |
//! | the policy gave up | `NOT_SERVING`, set **before** the exit action runs |
//!
//! A heal only starts on a fatal finding, so while it runs the database
//! cannot serve: `NOT_SERVING` lets a load balancer route around the
//! process for those milliseconds, and `SERVING` comes back with the new
//! pool. A `warn` of the [probe](super#the-probe) (a lock held elsewhere, a
//! timeout) stays `SERVING`: the database is not dead.
//!
//! The bridge follows [`LivePool::subscribe`](crate::LivePool::subscribe),
//! which sees every finding of the layer, the file watchdog and
//! [`Lease::report`](crate::Lease::report). It also runs the
//! [`HealthService`] probe itself every
//! [`probe_interval`](GrpcHealthBridge::probe_interval) (sharing the single
//! flight with the HTTP endpoint), because the watchdog only compares file
//! identity: the probe also reads a page, so a corrupt or unreadable
//! database flips the status even when no request fails, and with the
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

use super::{HealthService, HealthStatus, WeakHealth};
use crate::live_pool::{PoolStatus, StatusWatch};

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

    /// Adds a service name whose status follows the database. Default (when
    /// none is added): `""`, the server as a whole.
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
        let services: Arc<[String]> = if self.services.is_empty() {
            Arc::from([String::new()])
        } else {
            self.services.into()
        };
        let bridge = Arc::new(Bridge {
            reporter: self.reporter,
            services,
            last: Mutex::new(None),
        });
        let live = self.health.live();
        let hook = Arc::clone(&bridge);
        live.before_exit(Box::new(move |_gave_up| {
            let bridge = Arc::clone(&hook);
            Box::pin(async move { bridge.set(|| ServingStatus::NotServing).await })
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

struct Bridge {
    reporter: HealthReporter,
    services: Arc<[String]>,
    /// The status last set; the lock also orders the task's updates with the
    /// give-up step.
    last: Mutex<Option<ServingStatus>>,
}

impl Bridge {
    /// Sets every service to what `decide` says, deciding under the lock so
    /// that an update decided before a give-up cannot land after it.
    async fn set(&self, decide: impl FnOnce() -> ServingStatus) {
        let mut last = self.last.lock().await;
        let status = decide();
        if *last == Some(status) {
            return;
        }
        for service in self.services.iter() {
            self.reporter.set_service_status(service, status).await;
        }
        tracing::info!(services = ?self.services, %status, "gRPC health status set");
        *last = Some(status);
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
    // The generation whose last probe failed.
    let mut failed: Option<u64> = None;
    loop {
        bridge
            .set(|| match &status.latest() {
                PoolStatus::Live { generation, .. } if failed != Some(*generation) => {
                    ServingStatus::Serving
                }
                _ => ServingStatus::NotServing,
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
                let report = health.check().await;
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
