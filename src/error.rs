//! Handler errors that carry a `sqlx::Error` to the layer.
//!
//! A framework turns a handler's error into a response before any tower
//! layer sees it, and the `sqlx::Error` is lost on the way. [`DbError`] (with
//! the `axum` feature), [`ErrorMark`] (your own error type),
//! [`mark_response`] (any `http::Response`) and
//! `status_from_sqlx` (with the `tonic` feature) keep what the
//! [`DbLivenessLayer`](crate::DbLivenessLayer) needs: the error's class, its
//! SQLite result code and its text.
//!
//! ```
//! use tower_db_liveness::{DbError, ErrorClass};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sqlx::Error> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//!
//! async fn count(pool: &sqlx::SqlitePool) -> Result<i64, DbError> {
//!     // `?` wraps the `sqlx::Error`.
//!     Ok(sqlx::query_scalar("SELECT count(*) FROM missing").fetch_one(pool).await?)
//! }
//!
//! let err = count(&pool).await.unwrap_err();
//! assert_eq!(err.class(), ErrorClass::Other); // no such table: not a liveness concern
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;

use crate::classify::{Code, ErrorClass, classify, find_in_chain};

/// A handler error wrapping a `sqlx::Error`.
///
/// Return it from handlers (`?` converts a `sqlx::Error`). With the `axum`
/// feature it is a response: `500 Internal Server Error` for
/// [`ErrorClass::Other`], `503 Service Unavailable` with `Retry-After: 1` for
/// [`Fatal`](ErrorClass::Fatal) and [`Transient`](ErrorClass::Transient)
/// (a `PoolClosed` from a pool a heal replaced is transient), a
/// short plain-text body that never contains SQLite's own message, and the
/// error recorded in the response's extensions for the layer.
///
/// `Display` names the class only; the `sqlx::Error` is the
/// [`source`](StdError::source).
///
/// An application with its own error enum (`RowNotFound` → 404, a unique
/// violation → 409, …) keeps an [`ErrorMark`] in its database variant
/// instead; see "Your own error enum" in the [guide](crate::guide).
#[derive(Debug)]
pub struct DbError {
    inner: sqlx::Error,
}

impl DbError {
    /// How the liveness policy treats the wrapped error.
    pub fn class(&self) -> ErrorClass {
        classify(&self.inner)
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &sqlx::Error {
        &self.inner
    }

    /// Unwraps the `sqlx::Error`.
    pub fn into_inner(self) -> sqlx::Error {
        self.inner
    }

    /// The HTTP status a response for this error should have: `503` for
    /// fatal and transient errors (retrying soon is expected to work), `500`
    /// otherwise.
    pub fn status(&self) -> http::StatusCode {
        status_for(self.class())
    }
}

impl From<sqlx::Error> for DbError {
    fn from(inner: sqlx::Error) -> Self {
        DbError { inner }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class() {
            ErrorClass::Fatal => f.write_str("fatal database error"),
            ErrorClass::Transient => f.write_str("transient database error"),
            ErrorClass::Other => f.write_str("database error"),
        }
    }
}

impl StdError for DbError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.inner)
    }
}

/// Records `err` in `response`'s extensions, where the
/// [`DbLivenessLayer`](crate::DbLivenessLayer) finds it.
///
/// For handlers that build their own `http::Response` (hyper, or any
/// framework without a `DbError` integration). The status and body are left
/// to you; [`DbError::status`] suggests one.
///
/// ```
/// use tower_db_liveness::mark_response;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sqlx::Error> {
/// # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let err = sqlx::query("SELECT * FROM missing").execute(&pool).await.unwrap_err();
/// let mut response = http::Response::new(String::from("internal error"));
/// *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
/// mark_response(&mut response, &err);
/// # Ok(())
/// # }
/// ```
pub fn mark_response<B>(response: &mut http::Response<B>, err: &sqlx::Error) {
    ErrorMark::new(err).attach(response);
}

/// What the [`DbLivenessLayer`](crate::DbLivenessLayer) needs from a
/// `sqlx::Error` (its class, SQLite result code and text), taken early and
/// attached to the response later: for an application with its own error
/// enum, whose `IntoResponse` no longer has the `sqlx::Error`.
///
/// Take it where the `sqlx::Error` is converted (`ErrorMark::from(&err)`),
/// keep it in your error variant (it is `Clone`, `Send` and `Sync`) and
/// attach it to the response: [`attach`](Self::attach), or, with the `axum`
/// feature, as a response part (`(status, mark, body).into_response()`).
/// See "Your own error enum" in the [guide](crate::guide).
///
/// ```
/// use tower_db_liveness::{ErrorClass, ErrorMark};
///
/// let mark = ErrorMark::from(&sqlx::Error::PoolTimedOut);
/// assert_eq!(mark.class(), ErrorClass::Transient);
/// assert_eq!(mark.status(), http::StatusCode::SERVICE_UNAVAILABLE);
/// let mut response = http::Response::new("try again later");
/// *response.status_mut() = mark.status();
/// mark.attach(&mut response); // the layer reads it from the extensions
/// ```
#[derive(Clone, Debug)]
pub struct ErrorMark(Marked);

impl ErrorMark {
    /// Takes the mark of `err`.
    pub fn new(err: &sqlx::Error) -> Self {
        ErrorMark(Marked {
            class: classify(err),
            code: Code::of(err),
            message: err.to_string(),
        })
    }

    /// The mark of the first database error in `err`'s
    /// [`source`](StdError::source) chain, `err` itself first: for an error
    /// type that holds a `sqlx::Error` somewhere inside, boxed or nested in
    /// other error types. `None` when the chain holds none.
    ///
    /// One call in the `IntoResponse` of the application's top-level error
    /// finds every database error, however deep, as long as each wrapper
    /// returns its inner error from `source()` (`thiserror`'s `#[source]` and
    /// `#[from]` do). A wrapper that is not a `std::error::Error` (a boxed
    /// trait object of the application's own trait) hands over what it
    /// wraps: `ErrorMark::find(inner.as_error())`, with a method of that
    /// trait that returns the inner error.
    ///
    /// ```
    /// use tower_db_liveness::{ErrorClass, ErrorMark};
    ///
    /// #[derive(Debug)]
    /// enum AuthError { Database(sqlx::Error) }
    /// impl std::fmt::Display for AuthError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("authentication failed")
    ///     }
    /// }
    /// impl std::error::Error for AuthError {
    ///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
    ///         match self { AuthError::Database(err) => Some(err) }
    ///     }
    /// }
    ///
    /// let boxed: Box<dyn std::error::Error + Send + Sync> =
    ///     Box::new(AuthError::Database(sqlx::Error::PoolTimedOut));
    /// let mark = ErrorMark::find(&*boxed).expect("a database error inside");
    /// assert_eq!(mark.class(), ErrorClass::Transient);
    /// assert!(ErrorMark::find(&std::fmt::Error).is_none());
    /// ```
    pub fn find(err: &(dyn StdError + 'static)) -> Option<Self> {
        find_in_chain(err).map(|found| {
            ErrorMark(Marked {
                class: found.class(),
                code: found.code(),
                message: found.to_string(),
            })
        })
    }

    /// How the liveness policy treats the error.
    pub fn class(&self) -> ErrorClass {
        self.0.class
    }

    /// The status [`DbError`] would answer with: `503` for fatal and
    /// transient errors, `500` otherwise. Whatever error status a marked
    /// response has, the [layer](crate::DbLivenessLayer) sends it as `503`
    /// with `Retry-After` when the error is transient, or fatal and the
    /// policy acted on it (a heal, a give-up).
    pub fn status(&self) -> http::StatusCode {
        status_for(self.0.class)
    }

    /// Records the mark in `response`'s extensions, where the layer finds it.
    pub fn attach<B>(&self, response: &mut http::Response<B>) {
        response.extensions_mut().insert(self.0.clone());
    }
}

impl From<&sqlx::Error> for ErrorMark {
    fn from(err: &sqlx::Error) -> Self {
        ErrorMark::new(err)
    }
}

/// `(status, mark, body).into_response()`: the mark goes into the
/// response's extensions.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponseParts for ErrorMark {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut parts: axum_core::response::ResponseParts,
    ) -> Result<axum_core::response::ResponseParts, Self::Error> {
        use http::header::{HeaderValue, RETRY_AFTER};
        if self.0.class != ErrorClass::Other {
            // Retrying soon is expected to work (the layer also makes the
            // status 503).
            parts
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        parts.extensions_mut().insert(self.0);
        Ok(parts)
    }
}

/// A response of its own: the status of [`ErrorMark::status`] (with
/// `Retry-After` for a fatal or transient error), a short plain-text body
/// without the database's message, and the mark. With a status before it,
/// `(StatusCode::UNAUTHORIZED, mark).into_response()`, a middleware keeps
/// its own status where the error is not the database's being unavailable.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for ErrorMark {
    fn into_response(self) -> axum_core::response::Response {
        let body = match self.class() {
            ErrorClass::Fatal | ErrorClass::Transient => "database temporarily unavailable\n",
            ErrorClass::Other => "internal server error\n",
        };
        (self.status(), self, body).into_response()
    }
}

/// What [`ErrorMark`] leaves for the layer. Crate-private so that only a
/// real `sqlx::Error` can produce one.
#[derive(Clone, Debug)]
pub(crate) struct Marked {
    pub(crate) class: ErrorClass,
    pub(crate) code: Code,
    pub(crate) message: String,
}

fn status_for(class: ErrorClass) -> http::StatusCode {
    match class {
        ErrorClass::Fatal | ErrorClass::Transient => http::StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Other => http::StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for DbError {
    fn into_response(self) -> axum_core::response::Response {
        use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

        let status = self.status();
        // Safe to expose: no SQL, no path, no SQLite message.
        let body = match self.class() {
            ErrorClass::Fatal | ErrorClass::Transient => "database temporarily unavailable\n",
            ErrorClass::Other => "internal server error\n",
        };
        let mut response = axum_core::response::Response::new(axum_core::body::Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        mark_response(&mut response, &self.inner);
        response
    }
}

/// Builds the `tonic::Status` a handler returns for a `sqlx::Error`.
///
/// `Unavailable` for fatal and transient errors, `PoolClosed` included
/// (gRPC clients treat it as retryable), `Internal` otherwise. The message is generic; the
/// `sqlx::Error` is kept as the status's [`source`](StdError::source), where
/// the [`DbLivenessLayer`](crate::DbLivenessLayer) finds it (tonic puts the
/// status in the response's extensions). The source never goes on the wire.
///
/// ```
/// use tower_db_liveness::status_from_sqlx;
///
/// let status = status_from_sqlx(sqlx::Error::PoolTimedOut);
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// ```
#[cfg(feature = "tonic")]
pub fn status_from_sqlx(err: sqlx::Error) -> tonic::Status {
    let mut status = match classify(&err) {
        ErrorClass::Fatal | ErrorClass::Transient => {
            tonic::Status::unavailable("database temporarily unavailable")
        }
        ErrorClass::Other => tonic::Status::internal("database error"),
    };
    status.set_source(std::sync::Arc::new(err));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_class() {
        assert_eq!(
            DbError::from(sqlx::Error::PoolTimedOut).status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            DbError::from(sqlx::Error::WorkerCrashed).status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            DbError::from(sqlx::Error::RowNotFound).status(),
            http::StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn display_hides_the_database_message() {
        let err = DbError::from(sqlx::Error::Protocol("secret detail".into()));
        assert_eq!(err.to_string(), "database error");
        // The source is the very error that was wrapped, detail and all.
        let Some(source) = err.source().and_then(|s| s.downcast_ref::<sqlx::Error>()) else {
            panic!("the source is not the sqlx::Error: {:?}", err.source());
        };
        assert!(std::ptr::eq(source, err.get_ref()));
        assert!(
            matches!(source, sqlx::Error::Protocol(detail) if detail == "secret detail"),
            "{source:?}"
        );
    }

    #[test]
    fn a_closed_pool_is_unavailable() {
        // A heal closes the dead pool; a request that reached it late is
        // asked to retry, not told the server is broken.
        let err = DbError::from(sqlx::Error::PoolClosed);
        assert_eq!(err.class(), ErrorClass::Transient);
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.to_string(), "transient database error");
    }

    #[test]
    fn mark_records_class_code_and_message() {
        let mut response = http::Response::new(());
        mark_response(&mut response, &sqlx::Error::PoolTimedOut);
        let marked = response.extensions().get::<Marked>();
        assert!(matches!(
            marked,
            Some(Marked {
                class: ErrorClass::Transient,
                code: Code::None,
                ..
            })
        ));
    }
}
