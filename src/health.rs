//! A health endpoint that never lies and never hangs: [`HealthService`].
//!
//! ```no_run
//! use axum::Router;
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::{Check, HealthService, LivePool};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let live = LivePool::connect(
//!     SqliteConnectOptions::new()
//!         .filename("/var/lib/app/app.db")
//!         .create_if_missing(true),
//! )
//! .await?;
//!
//! let health = HealthService::new(live.clone()); // readiness; clones share one probe
//! let app: Router = Router::new()
//!     .route_service("/livez", health.clone().check(Check::Liveness))
//!     .route_service("/readyz", health.clone())
//!     .route_service("/health", health);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! `HealthService` is a plain tower `Service<http::Request<B>>` for any body
//! `B` (it never reads the body), so it mounts the same way in hyper, tonic's
//! router or anything else that takes a tower service.
//!
//! # The probe
//!
//! Each readiness answer comes from a probe of the database that is in
//! service now (a liveness answer never probes):
//!
//! 1. the database file's identity (device and inode) is compared with what
//!    its path leads to: a WAL pool whose directory was deleted reports no
//!    error at all, so no query can tell. The `stat` runs off the async
//!    runtime, on the crate's two filesystem threads, and is given up after
//!    half the timeout: on a hung network or FUSE mount it never returns,
//!    and however long the mount stays hung no more threads are stuck on it;
//! 2. a query reads page 1 (the schema table) through the current pool:
//!    `SELECT 1` succeeds on a dead handle.
//!
//! The answer is bounded by the [timeout](HealthService::timeout) (default
//! 500 ms, inside Kubernetes' default 1 s probe timeout), whatever the
//! database does. Concurrent requests share **one probe in flight**, also
//! across clones of the service, so a flood of health checks runs at most
//! one query at a time. A probe that outlives the answers it was started for
//! (a lock held by another process) keeps running, up to 10 s, and later
//! requests join it instead of starting new queries.
//!
//! The probe is also a detector: a deleted, moved or replaced file, or a
//! fatal error from the read, is reported to the [`LivePool`], which reopens
//! the pool once or gives up and exits. The answer does not wait for that
//! heal.
//!
//! # Two verdicts
//!
//! A supervisor asks two different questions, and a wrong answer to either
//! makes an outage bigger than the fault:
//!
//! - **liveness** ([`Check::Liveness`], `/livez`): would restarting the
//!   process help, and lose nothing? It reads only the policy's state, never
//!   the database, and fails only once the policy has given up (and its exit
//!   has not happened yet). It never fails while the crate heals, waits for a
//!   Postgres primary (a restarted process would wait the same way, and a
//!   whole fleet killed at once would start empty-handed), retries the rescue
//!   of a dead SQLite file (the dead handle holds the only copy of the data),
//!   runs read-only in place, or cannot reach the database;
//! - **readiness** ([`Check::Readiness`], the default; `/readyz` and
//!   `/health`): would a request routed here fail now, for a reason the crate
//!   knows? It probes the database.
//!
//! # States
//!
//! Every state the crate can be in, with both verdicts (`warn` is a 200,
//! `fail` a 503) and what requests get; the body's `state` names it:
//!
//! | `state` | when | liveness | readiness | a write gets | a read gets |
//! |---|---|---|---|---|---|
//! | `healthy` | a verified pool in service; the probe read the database | `pass` | `pass` | served | served |
//! | `transient` | a lock held elsewhere (SQLite BUSY), an exhausted pool, a probe with no answer within the timeout, CANTOPEN with the file in place (a descriptor shortage) | `pass` | `warn` | 503 + `Retry-After` if it fails | 503 + `Retry-After` if it fails |
//! | `healing` | a fatal finding; the pool is being reopened (milliseconds on SQLite) | `warn` | `warn`; `fail` once the heal has run longer than the layer's default hold (2 s: the rescue of a large file) | held by the layer, then served by the new pool (503 past the hold) | held, then served (503 past the hold) |
//! | `awaiting_primary` | Postgres, MySQL: the heal waits for a server that takes writes (a failover in progress) | `warn` | `fail` | 503 + `Retry-After` | 503 + `Retry-After` |
//! | `rescue_pending` | SQLite: the dead file's data is not saved yet, the rescue keeps failing (a full disk), or only a copy in the temporary directory was possible (no trusted place near the database; a restart may lose it); the dead handle is kept | `warn` | `fail` | 503 + `Retry-After` | 503 + `Retry-After` |
//! | `read_only` | read-only in place: a Postgres primary with `default_transaction_read_only`, a read-only role or database; a MySQL server with `read_only` whose endpoint still leads to it; a SQLite file or directory that cannot be written ([`PoolStatus::ReadOnly`]) | `warn` | `warn` (routing reads away would make the outage bigger) | 503 + `Retry-After` | served |
//! | `not_answering` | the probe's check did not answer within half the timeout: a hung mount, a black-holed server | `pass` | `warn`, `fail` from the third probe in a row | waits, then fails | waits, then fails |
//! | `unavailable` | the probe found the database dead or unreadable (its fatal findings start a heal), or the pool in service is closed | `pass` | `fail` | fails | fails |
//! | `gave_up` | the policy gave up; the process is exiting | `fail` | `fail` | 503 + `Retry-After` | 503 + `Retry-After` |
//!
//! The request that discovers a dead database answers `unavailable` even
//! though its report starts a heal: the database it probed is dead.
//! Requests that arrive while the heal runs answer `healing`, and `healthy`
//! once the new pool is in service. [`always_ok`](HealthService::always_ok)
//! answers 200 in every state, for monitors that read the body.
//!
//! A hung file identity check is not reported to the policy: a hung mount
//! is not a proven dead file, and a reopen would hang on it too.
//!
//! `read_only` on SQLite ends when `access(2)` says the file and its
//! directory can be written again (the watchdog and the probe check it);
//! writes on connections that were open all along resume at once. A
//! connection SQLite *opened* while the file itself could not be written is
//! read-only for its whole life (SQLite falls back to a read-only open
//! silently), so its writes keep failing (503, and `read_only` again) until
//! the pool retires it: with `max_lifetime` or `idle_timeout` set, that is
//! their bound. A directory that cannot be written (a DELETE-mode journal
//! cannot be created) leaves no such connection behind.
//!
//! # Body
//!
//! `application/health+json` after the IETF draft
//! [*Health Check Response Format for HTTP APIs*](https://datatracker.ietf.org/doc/html/draft-inadarei-api-health-check)
//! with `Cache-Control: no-store`:
//!
//! ```json
//! {
//!   "status": "warn",
//!   "state": "transient",
//!   "checks": {
//!     "sqlite:responseTime": [{
//!       "componentType": "datastore",
//!       "status": "warn",
//!       "observedValue": 500.412,
//!       "observedUnit": "ms",
//!       "time": "2025-11-27T05:40:12.337Z",
//!       "output": "no answer within 500 ms"
//!     }]
//!   },
//!   "generation": 0,
//!   "heals": 0
//! }
//! ```
//!
//! - `status`: `pass`, `warn` or `fail` for the service's own [`Check`], the
//!   same at the top and in the check;
//! - `state` (extension): the [state](#states) the answer was decided in;
//! - `observedValue` / `observedUnit`: how long the probe took, in
//!   milliseconds (how long it had been running, when the answer timed
//!   out). Absent when no probe ran: for liveness, during a heal and after a give-up the
//!   answer comes from the policy's state;
//! - `time`: when the observation was made, RFC 3339 in UTC;
//! - `output`: the reason: absent for `pass`; otherwise a short text that holds no file
//!   path and no SQLite message (`database file deleted`,
//!   `transient database error (SQLite code 5)`, ...). With
//!   [`verbose`](HealthService::verbose) it holds the full text, paths and
//!   SQLite messages included: turn it on only where the endpoint is private;
//! - `generation` (extension): the pool generation in service, 0 for the
//!   first pool and one more for each heal, so also the number of heals since
//!   the process started;
//! - `heals` (extension): heals within the policy's heal window, the count
//!   that [`LivePoolBuilder::max_heals`](crate::LivePoolBuilder::max_heals)
//!   limits.
//!
//! `HEAD` gets the same status and headers without the body; any other
//! method gets `405 Method Not Allowed` with `Allow: GET, HEAD`. The path and
//! the query string are ignored.
//!
//! # Kubernetes
//!
//! Point the liveness probe at a liveness service and the readiness probe at
//! a readiness service; the crate exits by itself when the database is dead
//! for good (status 1 by default), and the kubelet restarts the container.
//!
//! ```yaml
//! containers:
//!   - name: app
//!     livenessProbe:             # restart only when a restart helps
//!       httpGet: { path: /livez, port: 8080 }
//!       periodSeconds: 10
//!       timeoutSeconds: 1
//!       failureThreshold: 3
//!     readinessProbe:            # route requests elsewhere while they would fail
//!       httpGet: { path: /readyz, port: 8080 }
//!       periodSeconds: 5
//!       timeoutSeconds: 1        # the probe answers within its 500 ms timeout
//!       failureThreshold: 1
//! ```
//!
//! ```no_run
//! # use tower_db_liveness::{Check, HealthService, LivePool};
//! # async fn run(live: LivePool) {
//! let health = HealthService::new(live.clone()); // clones share the probe in flight
//! let app: axum::Router = axum::Router::new()
//!     .route_service("/livez", health.clone().check(Check::Liveness))
//!     .route_service("/readyz", health.clone())
//!     .route_service("/health", health);
//! # }
//! ```
//!
//! A liveness probe at `/health` (readiness) would restart every replica
//! during a Postgres failover longer than its threshold, and kill the dead
//! handle that holds a pending rescue's data. For gRPC services see
//! [`grpc`](crate::health::grpc) (feature `tonic`): Kubernetes' native
//! `grpc:` probe asks for the `liveness` and `readiness` services.
//!
//! # systemd
//!
//! `Restart=on-failure` restarts the service after the policy exits with
//! status 1. With the `systemd` feature,
//! [`systemd::spawn_watchdog`](crate::systemd::spawn_watchdog) runs the
//! readiness probe (it finds a dead database) and sends `WATCHDOG=1` while
//! the liveness verdict is not `fail`, so systemd also restarts a process
//! whose exit did not happen, or whose runtime is wedged.
//!
//! ```ini
//! [Service]
//! Type=notify              # or Type=simple without READY=1; the watchdog works with both
//! NotifyAccess=main
//! ExecStart=/usr/local/bin/app
//! Restart=on-failure
//! RestartSec=1s
//! WatchdogSec=30s          # well above the probe timeout
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tower_service::Service;

use crate::live_pool::{AnyLive, LivePool, WeakAnyLive};
use crate::shared::{Backend, Fault, GiveUpReason, PoolStatus};

pub(crate) use crate::shared::{Detail, Finding, STUCK_PROBES};

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;

const HEALTH_JSON: &str = "application/health+json";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a probe may run on after the answers it was started for timed
/// out, so that later requests join it instead of queueing more queries
/// behind a lock.
const FLIGHT_LIMIT: Duration = Duration::from_secs(10);
/// How long the layer holds a request during a heal by default: a heal that
/// runs longer fails readiness (its held requests reach the closed pool).
const HEAL_HELD: Duration = Duration::from_secs(2);

/// A tower service that answers health checks from a probe of the database.
///
/// Cheap to clone; clones share the probe in flight. See the
/// [module documentation](self) for the probe, the states and the body.
///
/// ```
/// use std::time::Duration;
/// use tower_db_liveness::{HealthService, LivePool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sqlx::Error> {
/// # let live = LivePool::connect("sqlite::memory:".parse()?).await?;
/// let health = HealthService::new(live)
///     .timeout(Duration::from_millis(800))
///     .always_ok(false)
///     .verbose(false);
/// # let _ = health;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HealthService {
    live: AnyLive,
    config: Config,
    flight: Arc<Flight>,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    check: Check,
    timeout: Duration,
    always_ok: bool,
    verbose: bool,
}

/// The question a [`HealthService`] answers; see [the state
/// table](self#states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Check {
    /// Would a request routed here fail now, for a reason the crate knows?
    /// Probes the database (single flight, bounded). For a readiness probe
    /// (`/readyz`) and for `/health`. The default.
    #[default]
    Readiness,
    /// Would restarting the process help, and lose nothing? Reads only the
    /// policy's state, never the database: `fail` only once the policy has
    /// given up (and its exit has not happened yet). Never `fail` while the
    /// crate heals, waits for a primary, retries a rescue or runs degraded.
    /// For a liveness probe (`/livez`) and the systemd watchdog.
    Liveness,
}

impl HealthService {
    /// A health service probing `live`'s current pool.
    pub fn new<DB: Backend>(live: LivePool<DB>) -> Self {
        HealthService {
            live: live.erase(),
            config: Config {
                check: Check::Readiness,
                timeout: DEFAULT_TIMEOUT,
                always_ok: false,
                verbose: false,
            },
            flight: Arc::new(Flight::default()),
        }
    }

    /// Which question this service answers. Default:
    /// [`Check::Readiness`]. Clones share the probe in flight, so
    /// `health.clone().check(Check::Liveness)` mounted at `/livez` next to
    /// `health` at `/readyz` costs nothing extra.
    pub fn check(mut self, check: Check) -> Self {
        self.config.check = check;
        self
    }

    /// The longest a request waits for the probe; past it the answer is
    /// `warn` ("no answer within ..."). Default: 500 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Answer HTTP 200 in every state, `fail` included, for monitors that
    /// read the body's `status`. Default: off (503 for `fail`).
    pub fn always_ok(mut self, on: bool) -> Self {
        self.config.always_ok = on;
        self
    }

    /// Put the full text of a finding in `output`: file paths and SQLite's
    /// messages. Default: off, so the endpoint is safe to expose.
    pub fn verbose(mut self, on: bool) -> Self {
        self.config.verbose = on;
        self
    }

    /// Decides the answer: from the policy's state alone for liveness (and
    /// for readiness when the policy's state decides it), else from a probe
    /// (or the probe in flight), within the timeout.
    pub(crate) async fn answer(&self) -> Report {
        let policy = self.policy_view();
        if self.config.check == Check::Liveness || policy.decides_readiness() {
            let status = match self.config.check {
                Check::Liveness => policy.state.liveness(),
                Check::Readiness => policy.ready,
            };
            return self.report(status, policy.state, None, now_utc(), policy.detail);
        }
        let limit = self.config.timeout.max(FLIGHT_LIMIT);
        // Half the answer's timeout: a stuck check still leaves time to answer.
        let check_bound = self.config.timeout / 2;
        let flight = self.flight.join_or_start(&self.live, limit, check_bound);
        let mut done = flight.done.clone();
        let waited = tokio::time::timeout(self.config.timeout, async move {
            done.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|probed| probed.clone())
        })
        .await;
        let probed = match waited {
            Ok(Some(probed)) => probed,
            // The probe task is gone without an answer (the runtime is shutting down).
            Ok(None) => Probed {
                generation: self.live.generation(),
                finding: Finding::Dead(Detail::same("the probe ended without an answer")),
                latency: flight.started.elapsed(),
                at: now_utc(),
            },
            Err(_) => Probed {
                generation: self.live.generation(),
                finding: Finding::Transient(Detail::same(format!(
                    "no answer within {} ms",
                    self.config.timeout.as_millis()
                ))),
                latency: flight.started.elapsed(),
                at: now_utc(),
            },
        };
        self.decide(probed)
    }

    /// The readiness answer (probing), whatever this service's own
    /// [`Check`]: the gRPC bridge and the systemd watchdog read both
    /// verdicts from it.
    #[cfg_attr(not(any(feature = "tonic", feature = "systemd")), allow(dead_code))]
    pub(crate) async fn probe_readiness(&self) -> Report {
        let mut readiness = self.clone();
        readiness.config.check = Check::Readiness;
        readiness.answer().await
    }

    /// What the policy's state alone says.
    fn policy_view(&self) -> PolicyView {
        let (state, detail) = match &self.live.status() {
            PoolStatus::Live { .. } => (State::Healthy, None),
            PoolStatus::ReadOnly { reason, .. } => (
                State::ReadOnly,
                Some(Detail::same(format!("read-only: {reason}"))),
            ),
            PoolStatus::Healing { fault, .. } => (
                State::Healing,
                Some(Detail {
                    safe: format!("reopening the database after: {}", safe_fault(fault)),
                    full: format!("reopening the database after: {fault}"),
                }),
            ),
            PoolStatus::RescueFailing {
                fault,
                attempts,
                code,
                temporary_copy,
                ..
            } => {
                let why = match code {
                    Some(13) => " (disk full)".to_owned(),
                    Some(code) => format!(" (SQLite code {code})"),
                    None => String::new(),
                };
                let text = |fault: String, copy: Option<String>| match &copy {
                    // Saved, but where a restart may lose it: what to do.
                    Some(copy) => format!(
                        "the dead database's data is not saved durably yet: no place near the database can be trusted, \
                         a copy is only in the temporary directory{copy}, which a restart may lose; {attempts} rescue attempts, \
                         retrying (after: {fault}). Copy it somewhere safe; set rescue_dir to a persistent directory of this user"
                    ),
                    None => format!(
                        "the dead database's data is not saved yet: {attempts} rescue attempts failed{why}; \
                         retrying (after: {fault}); a restart would lose it"
                    ),
                };
                let (safe_copy, full_copy) = match temporary_copy {
                    Some(path) => (Some(String::new()), Some(format!(" ({})", path.display()))),
                    None => (None, None),
                };
                (
                    State::RescuePending,
                    Some(Detail {
                        safe: text(safe_fault(fault), safe_copy),
                        full: text(fault.to_string(), full_copy),
                    }),
                )
            }
            PoolStatus::AwaitingPrimary {
                fault,
                attempts,
                last,
                ..
            } => {
                let text = |fault: String, last: Option<&str>| {
                    let found = last.map(|l| format!(" (last: {l})")).unwrap_or_default();
                    format!(
                        "no database server that takes writes yet: {attempts} attempts{found}; \
                         waiting for the failover (after: {fault})"
                    )
                };
                (
                    State::AwaitingPrimary,
                    Some(Detail {
                        safe: text(safe_fault(fault), None),
                        full: text(fault.to_string(), Some(last)),
                    }),
                )
            }
            PoolStatus::GaveUp(gave_up) => (
                State::GaveUp,
                Some(Detail {
                    safe: format!(
                        "gave up ({}) after: {}; the process is exiting",
                        safe_reason(&gave_up.reason),
                        safe_fault(&gave_up.fault)
                    ),
                    full: format!(
                        "gave up ({}) after: {}; the process is exiting",
                        gave_up.reason, gave_up.fault
                    ),
                }),
            ),
        };
        // A heal that outlasts the layer's hold (a rescue of a large file):
        // requests held that long are let through to the closed pool and
        // fail, so readiness says so.
        let ready = match self.live.healing_for() {
            Some(running) if state == State::Healing && running > HEAL_HELD => HealthStatus::Fail,
            _ => state.readiness(),
        };
        PolicyView {
            state,
            detail,
            ready,
        }
    }

    /// Combines the probe's finding with the policy's state now. A
    /// readiness `fail` of the policy wins (gave up, rescue pending,
    /// waiting for a primary); then the probe's own dead finding (it saw the
    /// dead database); then a heal in flight; then what the probe found.
    fn decide(&self, probed: Probed) -> Report {
        let Probed {
            generation,
            finding,
            latency,
            at,
        } = probed;
        // The pool probed was replaced meanwhile, by a heal that verified
        // its successor by reading the same page.
        let stale = generation < self.live.generation();
        let policy = self.policy_view();
        let (state, status, detail) = match finding {
            _ if policy.ready == HealthStatus::Fail => (policy.state, policy.ready, policy.detail),
            Finding::Dead(detail) if !stale => {
                (State::Unavailable, HealthStatus::Fail, Some(detail))
            }
            _ if policy.state == State::Healing => {
                (State::Healing, HealthStatus::Warn, policy.detail)
            }
            _ if stale => (policy.state, policy.ready, policy.detail),
            Finding::Pass | Finding::Dead(_) => (policy.state, policy.ready, policy.detail),
            Finding::Transient(detail) => (State::Transient, HealthStatus::Warn, Some(detail)),
            Finding::Silent(in_a_row, detail) => {
                let status = if in_a_row < STUCK_PROBES {
                    HealthStatus::Warn
                } else {
                    HealthStatus::Fail
                };
                (State::NotAnswering, status, Some(detail))
            }
        };
        self.report(status, state, Some(latency), at, detail)
    }

    fn report(
        &self,
        status: HealthStatus,
        state: State,
        observed: Option<Duration>,
        time: OffsetDateTime,
        detail: Option<Detail>,
    ) -> Report {
        // Every readiness answer is decided here, the policy's own and the probe's.
        if self.config.check == Check::Readiness {
            crate::metrics::probe_answered(status.as_str());
        }
        Report {
            status,
            state,
            liveness: self.live_status_for(state),
            observed,
            time,
            output: detail.map(|d| if self.config.verbose { d.full } else { d.safe }),
            generation: self.live.generation(),
            heals: self.live.recent_heals(),
            check_key: self.live.check_key(),
        }
    }

    /// The liveness verdict that goes with an answer in `state`: the
    /// policy's, since a liveness check never reads the database.
    fn live_status_for(&self, state: State) -> HealthStatus {
        match state {
            // Found by the probe, under a policy that is live.
            State::Transient | State::NotAnswering | State::Unavailable => HealthStatus::Pass,
            _ => state.liveness(),
        }
    }

    /// A handle for background tasks that does not keep the pool alive.
    #[cfg_attr(not(any(feature = "tonic", feature = "systemd")), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakHealth {
        WeakHealth {
            live: self.live.downgrade(),
            config: self.config,
            flight: Arc::clone(&self.flight),
        }
    }

    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    pub(crate) fn live(&self) -> &AnyLive {
        &self.live
    }
}

impl fmt::Debug for HealthService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthService")
            .field("live", &self.live)
            .field("check", &self.config.check)
            .field("timeout", &self.config.timeout)
            .field("always_ok", &self.config.always_ok)
            .field("verbose", &self.config.verbose)
            .finish()
    }
}

/// A [`HealthService`] that does not keep its [`LivePool`] alive.
#[derive(Clone)]
#[cfg_attr(not(any(feature = "tonic", feature = "systemd")), allow(dead_code))]
pub(crate) struct WeakHealth {
    live: WeakAnyLive,
    config: Config,
    flight: Arc<Flight>,
}

#[cfg_attr(not(any(feature = "tonic", feature = "systemd")), allow(dead_code))]
impl WeakHealth {
    pub(crate) fn upgrade(&self) -> Option<HealthService> {
        Some(HealthService {
            live: self.live.upgrade()?,
            config: self.config,
            flight: Arc::clone(&self.flight),
        })
    }
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return ResponseFuture::ready(method_not_allowed()),
        };
        // The body is never read: dropping the request here keeps `B` out
        // of the future.
        drop(req);
        let this = self.clone();
        ResponseFuture {
            kind: Kind::Check(Box::pin(async move {
                let report = this.answer().await;
                report.into_response(this.config.always_ok, head)
            })),
        }
    }
}

/// The future returned by [`HealthService`]'s `call`.
pub struct ResponseFuture {
    kind: Kind,
}

enum Kind {
    Ready(Option<Response<Full<Bytes>>>),
    Check(Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>),
}

impl ResponseFuture {
    fn ready(response: Response<Full<Bytes>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready(Some(response)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().kind {
            Kind::Ready(response) => Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                // Polled after completion: answer something well-formed.
                empty(StatusCode::INTERNAL_SERVER_ERROR)
            }))),
            Kind::Check(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// `pass`, `warn` or `fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HealthStatus {
    Pass,
    Warn,
    Fail,
}

impl HealthStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Pass => "pass",
            HealthStatus::Warn => "warn",
            HealthStatus::Fail => "fail",
        }
    }
}

/// Where the crate stands, as the health body's `state` names it; every
/// state has a liveness and a readiness verdict (the [state
/// table](self#states)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// A verified pool is in service (and, for readiness, the probe passed).
    Healthy,
    /// A lock held elsewhere, an exhausted pool, a full disk, a probe that
    /// did not answer within its timeout.
    Transient,
    /// A heal is in flight: requests are held by the layer, then served.
    Healing,
    /// Postgres: the heal waits for a server that takes writes.
    AwaitingPrimary,
    /// SQLite: the dead handle holds data whose rescue keeps failing.
    RescuePending,
    /// The database answers reads but refuses writes, in place.
    ReadOnly,
    /// The probe's check did not answer (a hung mount, a black-holed server).
    NotAnswering,
    /// The probe found the database dead or unreadable, or the pool in
    /// service closed.
    Unavailable,
    /// The policy gave up; the process is exiting.
    GaveUp,
}

impl State {
    /// The state the policy's status alone stands for.
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))] // the gRPC bridge
    pub(crate) fn of(status: &PoolStatus) -> State {
        match status {
            PoolStatus::Live { .. } => State::Healthy,
            PoolStatus::ReadOnly { .. } => State::ReadOnly,
            PoolStatus::Healing { .. } => State::Healing,
            PoolStatus::RescueFailing { .. } => State::RescuePending,
            PoolStatus::AwaitingPrimary { .. } => State::AwaitingPrimary,
            PoolStatus::GaveUp(_) => State::GaveUp,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Transient => "transient",
            State::Healing => "healing",
            State::AwaitingPrimary => "awaiting_primary",
            State::RescuePending => "rescue_pending",
            State::ReadOnly => "read_only",
            State::NotAnswering => "not_answering",
            State::Unavailable => "unavailable",
            State::GaveUp => "gave_up",
        }
    }

    /// Would a restart help and lose nothing? Only after a give-up. The
    /// states in which the crate works on its own (or data would be lost)
    /// `warn`, which is a 200.
    pub(crate) fn liveness(self) -> HealthStatus {
        match self {
            State::GaveUp => HealthStatus::Fail,
            State::Healing | State::AwaitingPrimary | State::RescuePending | State::ReadOnly => {
                HealthStatus::Warn
            }
            State::Healthy | State::Transient | State::NotAnswering | State::Unavailable => {
                HealthStatus::Pass
            }
        }
    }

    /// Would a request routed here fail now? (`NotAnswering` is `fail` only
    /// from the third probe in a row: decided where the count is known.)
    pub(crate) fn readiness(self) -> HealthStatus {
        match self {
            State::Healthy => HealthStatus::Pass,
            State::Transient | State::Healing | State::ReadOnly | State::NotAnswering => {
                HealthStatus::Warn
            }
            State::AwaitingPrimary | State::RescuePending | State::Unavailable | State::GaveUp => {
                HealthStatus::Fail
            }
        }
    }
}

/// The policy's state, before any probe.
struct PolicyView {
    state: State,
    detail: Option<Detail>,
    /// The readiness verdict of `state`, or `fail` for a heal that has run
    /// longer than the layer holds requests.
    ready: HealthStatus,
}

impl PolicyView {
    /// `true` when readiness needs no probe: the policy's own state already
    /// says `fail` (gave up, rescue pending, waiting for a primary) or a
    /// heal is in flight (the pool in service is being replaced).
    fn decides_readiness(&self) -> bool {
        self.state == State::Healing || self.ready == HealthStatus::Fail
    }
}

/// One decided answer.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The verdict of the service's own [`Check`].
    pub(crate) status: HealthStatus,
    pub(crate) state: State,
    /// The liveness verdict that goes with this answer.
    #[cfg_attr(not(feature = "systemd"), allow(dead_code))] // the systemd watchdog
    pub(crate) liveness: HealthStatus,
    observed: Option<Duration>,
    time: OffsetDateTime,
    /// Already chosen between the safe and the full text.
    pub(crate) output: Option<String>,
    pub(crate) generation: u64,
    heals: usize,
    /// The key of the database's entry in `checks` (`sqlite:responseTime`).
    check_key: &'static str,
}

impl Report {
    fn body(&self) -> serde_json::Value {
        let mut check = json!({
            "componentType": "datastore",
            "status": self.status.as_str(),
        });
        if let Some(observed) = self.observed {
            // Microsecond precision is plenty for a latency in ms.
            let ms = (observed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
            check["observedValue"] = json!(ms);
            check["observedUnit"] = json!("ms");
        }
        if let Ok(time) = self.time.format(&Rfc3339) {
            check["time"] = json!(time);
        }
        if let Some(output) = &self.output {
            check["output"] = json!(output);
        }
        json!({
            "status": self.status.as_str(),
            "state": self.state.as_str(),
            "checks": { self.check_key: [check] },
            "generation": self.generation,
            "heals": self.heals,
        })
    }

    fn into_response(self, always_ok: bool, head: bool) -> Response<Full<Bytes>> {
        let status = match self.status {
            HealthStatus::Fail if !always_ok => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        // Serialising a `Value` cannot fail; an empty body would still be an answer.
        let body = Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_default());
        let len = body.len();
        let mut response = Response::new(if head {
            Full::default()
        } else {
            Full::new(body)
        });
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // HEAD announces the length GET would send.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        response
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn safe_fault(fault: &Fault) -> String {
    match fault {
        Fault::File(file) => format!("database file {}", file.as_str()),
        Fault::Error {
            code: Some(code), ..
        } => format!("fatal database error (SQLite code {code})"),
        Fault::Error { code: None, .. } => "fatal database error".to_owned(),
        Fault::NotWritable {
            sqlstate: Some(code),
            ..
        } => format!("the database server does not take writes (SQLSTATE {code})"),
        Fault::NotWritable { sqlstate: None, .. } => {
            "the database server does not take writes".to_owned()
        }
    }
}

fn safe_reason(reason: &GiveUpReason) -> &'static str {
    match reason {
        GiveUpReason::ReopenFailed(_) => "reopen failed",
        GiveUpReason::VerifyFailed(_) => "the reopened pool failed verification",
        GiveUpReason::Recurred { .. } => "the fault recurred after a heal",
        GiveUpReason::HealsOff => "heals are off: a restart reopens",
        GiveUpReason::TooManyHeals { .. } => "too many heals",
    }
}

#[derive(Debug, Clone)]
struct Probed {
    /// The generation the probe read.
    generation: u64,
    finding: Finding,
    latency: Duration,
    at: OffsetDateTime,
}

/// The single flight: at most one probe runs at a time per service (and its
/// clones); every request in the meantime waits for that probe's answer.
#[derive(Default)]
struct Flight {
    slot: Mutex<Option<InFlight>>,
    /// Probes in a row whose file identity check was stuck.
    stuck: Arc<AtomicU32>,
}

#[derive(Clone)]
struct InFlight {
    started: Instant,
    done: watch::Receiver<Option<Probed>>,
}

impl Flight {
    fn join_or_start(&self, live: &AnyLive, limit: Duration, check_bound: Duration) -> InFlight {
        // Nothing under this lock can panic half-way through an update.
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = slot.as_ref()
            && flight.done.borrow().is_none()
            // `Err` once the probe task is gone without an answer.
            && flight.done.has_changed().is_ok()
        {
            return flight.clone();
        }
        let (tx, rx) = watch::channel(None);
        let flight = InFlight {
            started: Instant::now(),
            done: rx,
        };
        *slot = Some(flight.clone());
        drop(slot);
        let live = live.clone();
        let stuck = Arc::clone(&self.stuck);
        // On its own task: the answer arrives even when every request that
        // waited for it has gone.
        tokio::spawn(async move {
            let started = Instant::now();
            let generation = live.generation();
            let (generation, finding) = tokio::time::timeout(limit, live.probe(check_bound, stuck))
                .await
                .unwrap_or_else(|_| {
                    let text = format!("the probe did not finish within {} ms", limit.as_millis());
                    (generation, Finding::Transient(Detail::same(text)))
                });
            let latency = started.elapsed();
            crate::metrics::probe_ran(latency);
            let _ = tx.send(Some(Probed {
                generation,
                finding,
                latency,
                at: now_utc(),
            }));
        });
        flight
    }
}
