//! [`DbLivenessLayer`]: reports the database errors a service produces to its
//! [`LivePool`], and holds requests while the pool is being reopened.
//!
//! ```
//! use std::convert::Infallible;
//! use std::str::FromStr;
//!
//! use sqlx::sqlite::SqliteConnectOptions;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_db_liveness::{DbLivenessLayer, LivePool, mark_response};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let live = LivePool::connect(SqliteConnectOptions::from_str("sqlite::memory:")?).await?;
//!
//! let handler_live = live.clone();
//! let service = ServiceBuilder::new()
//!     .layer(DbLivenessLayer::new(live))
//!     .service_fn(move |_request: http::Request<()>| {
//!         let live = handler_live.clone();
//!         async move {
//!             let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sqlite_schema")
//!                 .fetch_one(&live.pool())
//!                 .await;
//!             let response = match count {
//!                 Ok(n) => http::Response::new(n.to_string()),
//!                 Err(err) => {
//!                     let mut response = http::Response::new("unavailable".to_owned());
//!                     *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
//!                     mark_response(&mut response, &err); // the layer reports it
//!                     response
//!                 }
//!             };
//!             Ok::<_, Infallible>(response)
//!         }
//!     });
//!
//! let response = service.oneshot(http::Request::new(())).await?;
//! assert_eq!(response.into_body(), "0");
//! # Ok(())
//! # }
//! ```
//!
//! The design (generation tags, holding, where errors are found, why the
//! heal runs beside the response) is documented on [`DbLivenessLayer`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::Code;
use crate::classify::{ErrorClass, Found, find_in_chain};
use crate::error::Marked;
use crate::live_pool::{AnyLive, LivePool};
use crate::shared::Backend;

mod registry;
use registry::Key;

/// The tower layer: `.layer(DbLivenessLayer::new(live))` in any stack whose
/// responses are `http::Response`s (axum, hyper, tonic, tower-http).
///
/// # What it does per request
///
/// 1. **Tags the request** with the [`LivePool`] generation at its start, so
///    that a failure is reported against the pool it used: a failure from a
///    pool that was already replaced is stale and never reopens again.
/// 2. **Holds the request while a heal is in flight**, until the heal has
///    finished or [`hold_timeout`](Self::hold_timeout) (default 2 s) has
///    passed, then calls the inner service, so the request runs on the new
///    pool instead of failing on the dead one. The tag is taken after the
///    hold. The service that was `poll_ready`'d is the one called (the inner
///    service must be `Clone`; the clone stays in the layer).
/// 3. **Finds the database error** when the inner service has finished, in
///    three places:
///    - the response's extensions, where [`DbError`](crate::DbError)'s
///      `IntoResponse` (feature `axum`) and [`mark_response`](crate::mark_response)
///      record it;
///    - the inner service's `Err(e)`: `e` and its `source()` chain (see
///      [`FindError`] for which error types);
///    - with the `tonic` feature, a `tonic::Status` in the response's
///      extensions (tonic puts it there for every handler error) and its
///      `source()` chain, as built by `status_from_sqlx`.
///
///    and reports it to the `LivePool` with the request's tag. The error is
///    returned unchanged, and so is the response, but for one thing: an
///    error response (4xx or 5xx) whose extensions carry a transient
///    database error, or a fatal one that the policy acted on (a heal in
///    flight, a give-up), leaves as `503 Service Unavailable` with
///    `Retry-After: 1` (kept if it has one), whatever status the code that
///    marked it chose. A fatal class the policy still checks (another
///    file's damage, an application's own read-only transaction) and a
///    success keep their status.
///    An error status to a request whose pool was found dead while it ran
///    (a heal in flight or a give-up now, or its generation replaced since
///    it started) leaves as 503 with `Retry-After` too, marked or not:
///    whatever the application made of the dead pool's error, the retry is
///    held and lands on the healed pool (or the restarted process), and a
///    request that failed for its own reasons gets the same answer then.
///    A middleware that swallows a database error into its own status (a
///    session lookup answering 401 for every error) marks its response
///    (`(StatusCode::UNAUTHORIZED, ErrorMark::from(&err)).into_response()`
///    with the `axum` feature, or [`mark_response`](crate::mark_response)),
///    keeps its signature, its state and its unit tests, and its clients
///    are asked to retry instead of being logged out during a heal. The
///    body is left as it is.
///
/// # The heal runs beside the response
///
/// A fatal error starts (or joins) a heal and the failed request's response
/// is returned at once; it is never held for the heal. Holding it would
/// add the reopen time (up to the reopen timeout) to a response that has
/// already failed and cannot be retried on the server side, and tie up a
/// connection for it. The healing flag is set before the response leaves the
/// layer, so the client's retry is held (step 2) and lands on the new pool.
///
/// # Cost
///
/// With no heal in flight a request costs one atomic load (the generation
/// and the healing flag share one word), a look at the status and, when
/// the response has extensions or an error status, a lookup of the
/// extension type: no allocation, no lock, no
/// system call, no reference count. The response future carries the
/// generation and a key, not a `LivePool` clone; the pool is found by its
/// key (a read lock on a small table of weak handles) only when there is a
/// database error to report. Holding a request allocates its wait; finding
/// an error allocates its message.
///
/// # Errors of the inner service
///
/// `Error = S::Error`, unchanged. How the layer looks into it is chosen by
/// the type parameter `F` ([`FindError`]): by default any
/// `std::error::Error + 'static` (which covers `Infallible` of axum and
/// tonic, `hyper::Error` and your own error types);
/// [`find_errors::<BoxedErrors>()`](Self::find_errors) for
/// `Box<dyn Error + Send + Sync>` (tower's `BoxError`) and `anyhow::Error`.
pub struct DbLivenessLayer<F = ErrorSources> {
    live: AnyLive,
    key: Key,
    hold_timeout: Duration,
    _find: PhantomData<fn() -> F>,
}

/// The default hold bound.
const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(2);

impl DbLivenessLayer {
    /// A layer reporting to `live`.
    pub fn new<DB: Backend>(live: LivePool<DB>) -> Self {
        let live = live.erase();
        DbLivenessLayer {
            key: registry::register(&live),
            live,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            _find: PhantomData,
        }
    }
}

impl<F> DbLivenessLayer<F> {
    /// How long a request arriving during a heal is held before it is let
    /// through anyway. Default: 2 s.
    pub fn hold_timeout(mut self, timeout: Duration) -> Self {
        self.hold_timeout = timeout;
        self
    }

    /// Chooses how the layer looks into the inner service's `Err`.
    ///
    /// ```
    /// use tower_db_liveness::{BoxedErrors, DbLivenessLayer, LivePool};
    ///
    /// fn layer(live: LivePool) -> DbLivenessLayer<BoxedErrors> {
    ///     // For a service whose error is `Box<dyn Error + Send + Sync>`.
    ///     DbLivenessLayer::new(live).find_errors::<BoxedErrors>()
    /// }
    /// ```
    pub fn find_errors<G>(self) -> DbLivenessLayer<G> {
        DbLivenessLayer {
            live: self.live,
            key: self.key,
            hold_timeout: self.hold_timeout,
            _find: PhantomData,
        }
    }
}

impl<F> Clone for DbLivenessLayer<F> {
    fn clone(&self) -> Self {
        DbLivenessLayer {
            live: self.live.clone(),
            key: self.key,
            hold_timeout: self.hold_timeout,
            _find: PhantomData,
        }
    }
}

impl<F> fmt::Debug for DbLivenessLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbLivenessLayer")
            .field("live", &self.live)
            .field("hold_timeout", &self.hold_timeout)
            .finish()
    }
}

impl<S, F> Layer<S> for DbLivenessLayer<F> {
    type Service = DbLiveness<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        DbLiveness {
            inner,
            live: self.live.clone(),
            key: self.key,
            hold_timeout: self.hold_timeout,
            _find: PhantomData,
        }
    }
}

/// How the layer looks into the inner service's error for a database error.
///
/// A service's `Err` is handed back unchanged, so the layer can only borrow
/// it, and no single bound covers both `E: std::error::Error` and
/// `Box<dyn Error + Send + Sync>` (the box does not implement `Error`, and
/// a blanket implementation for both is rejected by coherence). The choice is
/// therefore a type parameter of the layer, resolved at compile time:
///
/// - [`ErrorSources`] (the default): any `E: Error + 'static`;
/// - [`BoxedErrors`]: any `E: AsRef<dyn Error + Send + Sync>`, which is
///   `Box<dyn Error + Send + Sync>` and `anyhow::Error`.
///
/// For anything else, implement this trait for a type of your own and pass it
/// to [`DbLivenessLayer::find_errors`].
#[diagnostic::on_unimplemented(
    message = "the layer cannot look into the service error `{E}` with `{Self}`",
    note = "for `Box<dyn Error + Send + Sync>` or `anyhow::Error`, use `DbLivenessLayer::new(live).find_errors::<BoxedErrors>()`"
)]
pub trait FindError<E> {
    /// The error whose [`source`](StdError::source) chain is searched for a
    /// `sqlx::Error`, or `None` to search nothing.
    fn find(err: &E) -> Option<&(dyn StdError + 'static)>;
}

/// [`FindError`] for service errors that implement `std::error::Error`
/// (the default).
#[derive(Debug)]
pub enum ErrorSources {}

impl<E: StdError + 'static> FindError<E> for ErrorSources {
    fn find(err: &E) -> Option<&(dyn StdError + 'static)> {
        Some(err)
    }
}

/// [`FindError`] for boxed service errors (`Box<dyn Error + Send + Sync>`,
/// `anyhow::Error`).
#[derive(Debug)]
pub enum BoxedErrors {}

impl<E: AsRef<dyn StdError + Send + Sync + 'static>> FindError<E> for BoxedErrors {
    fn find(err: &E) -> Option<&(dyn StdError + 'static)> {
        Some(err.as_ref())
    }
}

/// The service made by [`DbLivenessLayer`].
pub struct DbLiveness<S, F = ErrorSources> {
    inner: S,
    live: AnyLive,
    key: Key,
    hold_timeout: Duration,
    _find: PhantomData<fn() -> F>,
}

impl<S, F> DbLiveness<S, F> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, F> Clone for DbLiveness<S, F> {
    fn clone(&self) -> Self {
        DbLiveness {
            inner: self.inner.clone(),
            live: self.live.clone(),
            key: self.key,
            hold_timeout: self.hold_timeout,
            _find: PhantomData,
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for DbLiveness<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbLiveness")
            .field("inner", &self.inner)
            .field("live", &self.live)
            .field("hold_timeout", &self.hold_timeout)
            .finish()
    }
}

impl<S, F, Req, B> Service<Req> for DbLiveness<S, F>
where
    S: Service<Req, Response = http::Response<B>> + Clone,
    F: FindError<S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let (generation, healing) = self.live.load_state();
        // One construction for both paths: the inner future is built where
        // it stays (a second return path made it a copy per request).
        ResponseFuture {
            state: if healing {
                State::Holding {
                    held: self.hold(request),
                }
            } else {
                State::Calling {
                    fut: self.inner.call(request),
                }
            },
            key: self.key,
            generation,
            _find: PhantomData,
        }
    }
}

impl<S, F> DbLiveness<S, F> {
    /// The rare path, out of line so the common one stays small: holds the
    /// request until the heal in flight has finished.
    #[cold]
    #[inline(never)]
    fn hold<Req>(&mut self, request: Req) -> Box<Held<S, Req>>
    where
        S: Service<Req> + Clone,
    {
        // Take the service that was polled ready; its clone stays here and
        // is polled before the next call.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (live, limit) = (self.live.clone(), self.hold_timeout);
        crate::metrics::held();
        let wait: HoldWait = Box::pin(async move {
            let started = std::time::Instant::now();
            // Past the bound the request goes through anyway; if it fails,
            // it is reported like any other.
            let _ = tokio::time::timeout(limit, live.healed()).await;
            crate::metrics::hold_ended(started.elapsed());
        });
        // Boxed: an inline request would make every response future (and
        // each of its moves) larger.
        Box::new(Held {
            wait,
            live: self.live.clone(),
            service,
            request,
        })
    }
}

type HoldWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request held while a heal is in flight, with the service it will run on.
struct Held<S, Req> {
    wait: HoldWait,
    /// Whose generation the request runs on once the wait is over.
    live: AnyLive,
    service: S,
    request: Req,
}

pin_project! {
    /// The response future of [`DbLiveness`].
    pub struct ResponseFuture<S, Req, F>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        // Not a `LivePool` clone: a reference count round trip per request
        // was most of the layer's cost. The pool is looked up by its key
        // only when there is something to report.
        key: Key,
        generation: u64,
        _find: PhantomData<fn() -> F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateProjReplace]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Holding {
            held: Box<Held<S, Req>>,
        },
        Calling {
            #[pin]
            fut: S::Future,
        },
        // Only for the instant between taking the held service and request
        // out and storing the future their call returns.
        Swapping,
    }
}

impl<S, F, Req, B> Future for ResponseFuture<S, Req, F>
where
    S: Service<Req, Response = http::Response<B>>,
    F: FindError<S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let StateProj::Holding { .. } = this.state.as_mut().project() {
            ready!(wait_then_call(this.state.as_mut(), this.generation, cx));
        }
        let StateProj::Calling { fut } = this.state.project() else {
            unreachable!("the request was called when the hold ended");
        };
        // A success without extensions (the common case) is handed on as
        // it came, checked through a shared borrow; only an error status,
        // one that carries extensions, or an error, goes out of line to be
        // looked into.
        // Lending the response itself to an out-of-line function would make
        // the compiler copy every response twice.
        match fut.poll(cx) {
            Poll::Ready(Ok(response)) if !response.extensions().is_empty() || failed(&response) => {
                Poll::Ready(Ok(inspect_response(*this.key, *this.generation, response)))
            }
            Poll::Ready(Err(err)) => {
                Poll::Ready(Err(inspect_error::<F, _>(*this.key, *this.generation, err)))
            }
            other => other,
        }
    }
}

/// The held path: waits for the heal in flight (or the hold bound), then
/// calls the held service and leaves the state `Calling`. Out of line, so
/// the common path stays small.
#[cold]
#[inline(never)]
fn wait_then_call<S, Req>(
    mut state: Pin<&mut State<S, Req>>,
    generation: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<()>
where
    S: Service<Req>,
{
    let StateProj::Holding { held } = state.as_mut().project() else {
        return Poll::Ready(());
    };
    ready!(held.wait.as_mut().poll(cx));
    // The request runs on whatever pool is in service now.
    *generation = held.live.load_state().0;
    let StateProjReplace::Holding { held } = state.as_mut().project_replace(State::Swapping) else {
        unreachable!("the state was Holding a moment ago");
    };
    let Held {
        mut service,
        request,
        ..
    } = *held;
    let fut = service.call(request);
    state.set(State::Calling { fut });
    Poll::Ready(())
}

/// Looks for a database error in a finished response's extensions and
/// reports it; a response marked with a fatal or transient one leaves as 503
/// with `Retry-After`, whatever status the code that marked it chose.
#[inline(never)]
fn inspect_response<B>(
    key: Key,
    generation: u64,
    mut response: http::Response<B>,
) -> http::Response<B> {
    let failed = failed(&response);
    let extensions = response.extensions();
    if let Some(marked) = extensions.get::<Marked>() {
        let live = registry::find(key);
        report(
            live.as_ref(),
            generation,
            "response extension",
            marked.class,
            marked.code,
            &marked.message,
        );
        // The policy has decided by now: a transient error, or a
        // fatal one that started a heal (or a give-up), means the
        // database is unavailable; a fatal class still being
        // checked (another file's damage, an app's own read-only
        // transaction) keeps the status the code chose.
        if failed
            && (marked.class == ErrorClass::Transient
                || (marked.class == ErrorClass::Fatal
                    && live.as_ref().is_some_and(AnyLive::healing_or_gave_up)))
        {
            unavailable(&mut response);
        }
    } else if let Some(found) = tonic_status(extensions) {
        report(
            registry::find(key).as_ref(),
            generation,
            "tonic status",
            found.class(),
            found.code(),
            &found,
        );
    }
    // An error status, marked or not, to a request whose pool was found
    // dead while it ran (a heal or a give-up since it started): whatever the
    // application made of the dead pool's error (a session middleware's
    // 401, a 404 from a read that failed), the client's retry is held and
    // lands on the healed pool; a request that failed for its own reasons
    // gets the same answer on the retry.
    if failed
        && response.status() != http::StatusCode::SERVICE_UNAVAILABLE
        && registry::find(key).is_some_and(|live| live.overlaps_a_fault(generation))
    {
        unavailable(&mut response);
    }
    response
}

/// A 4xx or 5xx.
#[inline]
fn failed<B>(response: &http::Response<B>) -> bool {
    response.status().is_client_error() || response.status().is_server_error()
}

/// Looks for a database error in the inner service's error and reports it;
/// the error is handed back unchanged.
#[cold]
#[inline(never)]
fn inspect_error<F, E>(key: Key, generation: u64, err: E) -> E
where
    F: FindError<E>,
{
    if let Some(found) = F::find(&err).and_then(find_in_chain) {
        report(
            registry::find(key).as_ref(),
            generation,
            "service error",
            found.class(),
            found.code(),
            &found,
        );
    }
    err
}

/// Makes a response whose database was unavailable say so: 503 and
/// `Retry-After` (kept if the response has one). A middleware that turned
/// the error into its own status (a session lookup answering 401) would
/// otherwise send the client away, or log it out, during a heal.
#[cold]
fn unavailable<B>(response: &mut http::Response<B>) {
    use http::header::{HeaderValue, RETRY_AFTER};
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .entry(RETRY_AFTER)
        .or_insert(HeaderValue::from_static("1"));
}

/// The database error behind a `tonic::Status` in the extensions (tonic puts
/// the status there for every handler error).
#[cfg(feature = "tonic")]
fn tonic_status(extensions: &http::Extensions) -> Option<Found<'_>> {
    extensions
        .get::<tonic::Status>()
        .and_then(|status| find_in_chain(status))
}

#[cfg(not(feature = "tonic"))]
fn tonic_status(_: &http::Extensions) -> Option<Found<'_>> {
    None
}

fn report(
    live: Option<&AnyLive>,
    generation: u64,
    via: &'static str,
    class: ErrorClass,
    code: Code,
    err: &dyn fmt::Display,
) {
    tracing::debug!(via, generation, %class, %code, "the layer found a database error");
    let Some(live) = live else {
        // Every handle to the pool (the layer's included) was dropped while
        // the request ran: there is no pool left to heal.
        tracing::debug!(via, generation, "the pool is gone; nothing to report to");
        return;
    };
    // The policy decides and, for a fatal error, starts the heal before this
    // returns; the returned future would only wait for the outcome, which
    // the response does not (see "The heal runs beside the response").
    drop(live.report_classified(generation, class, code, err));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn futures_are_send_for_send_services() {
        type Svc = tower::util::BoxCloneSyncService<
            http::Request<()>,
            http::Response<()>,
            std::convert::Infallible,
        >;
        assert_send::<ResponseFuture<Svc, http::Request<()>, ErrorSources>>();
        assert_send::<DbLiveness<Svc>>();
    }
}
