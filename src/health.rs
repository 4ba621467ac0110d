//! A health endpoint that never lies and never hangs: [`HealthService`].
//!
//! ```no_run
//! use axum::Router;
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower_db_liveness::{HealthService, LivePool};
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
//! let app: Router = Router::new().route_service("/health", HealthService::new(live.clone()));
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
//! Each answer comes from a probe of the database that is in service now:
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
//! # States
//!
//! | status | when | HTTP |
//! |---|---|---|
//! | `pass` | the file is in place and the read succeeded | 200 |
//! | `warn` | a heal is in flight; or a transient failure: a lock held elsewhere (SQLite BUSY), an exhausted pool, CANTOPEN while the file is in place (a descriptor shortage), no answer within the timeout; or the file identity check did not answer within half the timeout (a hung mount), for the first two probes in a row | 200 |
//! | `fail` | the probe found the database dead (file deleted, moved or replaced, its `-wal`/`-shm` gone; a fatal error from the read; any other error from reading the schema; the pool in service closed); or a heal is held up because the rescue of the dead file's data keeps failing (a full disk); or the file identity check did not answer for the third probe in a row and every one after; or the policy gave up | 503 |
//!
//! A hung file identity check is not reported to the policy: a hung mount
//! is not a proven dead file, and a reopen would hang on it too. The `fail`
//! lets the supervisor restart the process; the first answer whose check
//! completes resets the count.
//!
//! The request that discovers a dead database answers `fail` even though its
//! report starts a heal: the database it probed is dead. Requests that
//! arrive while the heal runs answer `warn`, and `pass` once the new pool is
//! in service. [`always_ok`](HealthService::always_ok) answers 200 in every
//! state, for monitors that read the body.
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
//! - `status`: `pass`, `warn` or `fail`, the same at the top and in the check;
//! - `observedValue` / `observedUnit`: how long the probe took, in
//!   milliseconds (how long it had been running, when the answer timed
//!   out). Absent when no probe ran: during a heal and after a give-up the
//!   answer comes from the policy's state;
//! - `time`: when the observation was made, RFC 3339 in UTC;
//! - `output`: absent for `pass`; otherwise a short text that holds no file
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
//! Point the liveness probe at the health route. When the policy gives up it
//! exits the process (status 1 by default) and the kubelet restarts the
//! container; the probe restarts a pod whose process is still running but
//! whose database stays dead. `failureThreshold` keeps a single `fail` (the
//! request that discovers a fault and starts the heal) from restarting a
//! pod that heals itself.
//!
//! ```yaml
//! containers:
//!   - name: app
//!     image: registry.example.com/app:1.4.2
//!     volumeMounts:
//!       - { name: data, mountPath: /var/lib/app }
//!     livenessProbe:
//!       httpGet: { path: /health, port: 8080 }
//!       periodSeconds: 10
//!       timeoutSeconds: 1      # the probe answers within its 500 ms timeout
//!       failureThreshold: 3
//! ```
//!
//! A `warn` is a 200, so a lock held by another process never restarts the
//! pod. For gRPC services see [`grpc`](crate::health::grpc) (feature
//! `tonic`): Kubernetes' native `grpc:` probe reads the same state.
//!
//! # systemd
//!
//! `Restart=on-failure` restarts the service after the policy exits with
//! status 1. With the `systemd` feature,
//! [`systemd::spawn_watchdog`](crate::systemd::spawn_watchdog) sends
//! `WATCHDOG=1` every half `WatchdogSec=` while the probe does not fail, so
//! systemd also restarts a process whose database stays dead without the
//! policy exiting, or whose runtime is wedged.
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

use crate::backend::Backend;
use crate::live_pool::{AnyLive, Fault, GiveUpReason, LivePool, PoolStatus, WeakAnyLive};

mod finding;
pub(crate) use finding::{Detail, Finding};

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;

const HEALTH_JSON: &str = "application/health+json";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a probe may run on after the answers it was started for timed
/// out, so that later requests join it instead of queueing more queries
/// behind a lock.
const FLIGHT_LIMIT: Duration = Duration::from_secs(10);
/// Consecutive probes whose file identity check was stuck (a hung mount)
/// before the answer is `fail`; the ones before it are `warn`.
pub(crate) const STUCK_PROBES: u32 = 3;

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
    timeout: Duration,
    always_ok: bool,
    verbose: bool,
}

impl HealthService {
    /// A health service probing `live`'s current pool.
    pub fn new<DB: Backend>(live: LivePool<DB>) -> Self {
        HealthService {
            live: live.erase(),
            config: Config {
                timeout: DEFAULT_TIMEOUT,
                always_ok: false,
                verbose: false,
            },
            flight: Arc::new(Flight::default()),
        }
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

    /// Probes (or joins the probe in flight) and decides the state, within
    /// the timeout.
    pub(crate) async fn check(&self) -> Report {
        if let Some((status, detail)) = self.policy_state() {
            return self.report(status, None, now_utc(), Some(detail));
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

    /// What the policy's state alone says: a give-up fails, a heal in
    /// flight warns; `None` while a verified pool is live.
    fn policy_state(&self) -> Option<(HealthStatus, Detail)> {
        match &self.live.status() {
            PoolStatus::Live { .. } | PoolStatus::ReadOnly { .. } => None,
            PoolStatus::Healing { fault, .. } => Some((
                HealthStatus::Warn,
                Detail {
                    safe: format!("reopening the database after: {}", safe_fault(fault)),
                    full: format!("reopening the database after: {fault}"),
                },
            )),
            PoolStatus::RescueFailing {
                fault,
                attempts,
                code,
                ..
            } => {
                let why = match code {
                    Some(13) => " (disk full)".to_owned(),
                    Some(code) => format!(" (SQLite code {code})"),
                    None => String::new(),
                };
                let text = |fault: String| {
                    format!(
                        "the dead database's data is not saved yet: {attempts} rescue attempts failed{why}; \
                         retrying (after: {fault})"
                    )
                };
                Some((
                    HealthStatus::Fail,
                    Detail {
                        safe: text(safe_fault(fault)),
                        full: text(fault.to_string()),
                    },
                ))
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
                Some((
                    HealthStatus::Fail,
                    Detail {
                        safe: text(safe_fault(fault), None),
                        full: text(fault.to_string(), Some(last)),
                    },
                ))
            }
            PoolStatus::GaveUp(gave_up) => Some((
                HealthStatus::Fail,
                Detail {
                    safe: format!(
                        "gave up ({}) after: {}; the process is exiting",
                        safe_reason(&gave_up.reason),
                        safe_fault(&gave_up.fault)
                    ),
                    full: format!(
                        "gave up ({}) after: {}; the process is exiting",
                        gave_up.reason, gave_up.fault
                    ),
                },
            )),
        }
    }

    /// Combines the probe's finding with the policy's state now. A give-up
    /// wins; then the probe's own fatal finding (it saw the dead database);
    /// then a heal in flight.
    fn decide(&self, probed: Probed) -> Report {
        let Probed {
            generation,
            finding,
            latency,
            at,
        } = probed;
        let stale = generation < self.live.generation();
        let (status, detail) = match (self.policy_state(), finding) {
            (Some((HealthStatus::Fail, detail)), _) => (HealthStatus::Fail, Some(detail)),
            (_, Finding::Dead(detail)) if !stale => (HealthStatus::Fail, Some(detail)),
            (Some((status, detail)), _) => (status, Some(detail)),
            // The pool probed was replaced meanwhile, by a heal that verified
            // its successor by reading the same page.
            (None, _) if stale => (HealthStatus::Pass, None),
            (None, Finding::Pass) => (HealthStatus::Pass, None),
            (None, Finding::Transient(detail)) => (HealthStatus::Warn, Some(detail)),
            (None, Finding::Dead(detail)) => (HealthStatus::Fail, Some(detail)),
        };
        self.report(status, Some(latency), at, detail)
    }

    fn report(
        &self,
        status: HealthStatus,
        observed: Option<Duration>,
        time: OffsetDateTime,
        detail: Option<Detail>,
    ) -> Report {
        // Every answer is decided here, the policy's own and the probe's.
        crate::metrics::probe_answered(status);
        Report {
            status,
            observed,
            time,
            output: detail.map(|d| if self.config.verbose { d.full } else { d.safe }),
            generation: self.live.generation(),
            heals: self.live.recent_heals(),
            check_key: self.live.check_key(),
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
                let report = this.check().await;
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

/// One decided answer.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) status: HealthStatus,
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
