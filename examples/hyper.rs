//! hyper 1 with hyper-util: a `service_fn` whose error type
//! (`Box<dyn Error + Send + Sync>`) carries the `sqlx::Error`.
//!
//! ```text
//! cargo run --example hyper -- [IP:PORT]     (default 127.0.0.1:3001)
//! curl -d 'hello' localhost:3001/notes; curl localhost:3001/notes
//! ```
//!
//! The handler returns its errors as the service's `Err`, the layer finds the
//! `sqlx::Error` in the box (`find_errors::<BoxedErrors>()`), and an outer
//! `map_result` turns errors into responses after the layer has seen them.
//!
//! SIGTERM or ctrl-c stops it gracefully (exit 0); when the policy gives up
//! it stops the same way and exits with status 1 once the requests in
//! flight are answered.
//!
//! `tests/layer_hyper.rs` serves this service in-process.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::string::FromUtf8Error;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tower::{Layer, Service, ServiceBuilder, service_fn};
use tower_db_liveness::{BoxedErrors, DbLivenessLayer, ErrorClass, LivePool, classify_chain};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens a pool on `options` and creates the table (at start and on reopen).
pub async fn open_pool(options: SqliteConnectOptions) -> sqlx::Result<SqlitePool> {
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    Ok(pool)
}

async fn handle<B>(live: LivePool, request: Request<B>) -> Result<Response<Full<Bytes>>, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/notes") => {
            let bytes = request.into_body().collect().await.map_err(Into::into)?;
            // Not UTF-8: an error, but not a database one.
            let body = String::from_utf8(bytes.to_bytes().to_vec())?;
            if body.trim().is_empty() {
                return Ok(text(StatusCode::BAD_REQUEST, "empty note\n"));
            }
            // `?` boxes the sqlx::Error; the layer finds it in the box.
            // `execute` reports a failed commit; `fetch_one` on `INSERT …
            // RETURNING` would drop it (a full disk) and return an id.
            let done = sqlx::query("INSERT INTO notes(body) VALUES (?)")
                .bind(&body)
                .execute(&live.pool())
                .await?;
            let id = done.last_insert_rowid();
            Ok(json(StatusCode::CREATED, serde_json::json!({ "id": id })))
        }
        (&Method::GET, "/notes") => {
            let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
                .fetch_all(&live.pool())
                .await?;
            let notes = rows
                .into_iter()
                .map(|(id, body)| serde_json::json!({ "id": id, "body": body }))
                .collect();
            Ok(json(StatusCode::OK, serde_json::Value::Array(notes)))
        }
        _ => Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    }
}

/// The handler behind the layer. Its errors come out unchanged, as `Err`.
pub fn notes_service<B>(
    live: LivePool,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let layer = DbLivenessLayer::new(live.clone()).find_errors::<BoxedErrors>();
    layer.layer(notes_handler(live))
}

/// The handler alone, as a service.
pub fn notes_handler<B>(
    live: LivePool,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    service_fn(move |request| handle(live.clone(), request))
}

/// Turns the service's errors into responses, outside the layer. (Always
/// `Ok`; the error type stays `BoxError` because `map_result` also maps
/// `poll_ready` errors with `From`.)
pub fn error_response(
    result: Result<Response<Full<Bytes>>, BoxError>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let err = match result {
        Ok(response) => return Ok(response),
        Err(err) => err,
    };
    let response = match classify_chain(err.as_ref()) {
        Some(ErrorClass::Fatal | ErrorClass::Transient) => {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "database temporarily unavailable\n",
            );
            let retry = header::HeaderValue::from_static("1");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
            response
        }
        None if err.is::<FromUtf8Error>() => {
            text(StatusCode::BAD_REQUEST, "the body is not UTF-8\n")
        }
        Some(ErrorClass::Other) | None => {
            eprintln!("request failed: {err}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
    };
    Ok(response)
}

/// Accepts connections and serves `service` on each (HTTP/1 and HTTP/2).
pub async fn serve<S>(listener: tokio::net::TcpListener, service: S) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_with_shutdown(listener, service, std::future::pending()).await
}

/// [`serve`] until `signal` resolves, then stops accepting and waits for
/// the connections in flight to finish their requests.
pub async fn serve_with_shutdown<S>(
    listener: tokio::net::TcpListener,
    service: S,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut signal => break,
        };
        let service = TowerToHyperService::new(service.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("connection error: {err}");
            }
        });
    }
    // New connections are refused from here on.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let plain = header::HeaderValue::from_static("text/plain; charset=utf-8");
    response.headers_mut().insert(header::CONTENT_TYPE, plain);
    response
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    let json = header::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        None => SocketAddr::from(([127, 0, 0, 1], 3001)),
        Some(text) => match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                eprintln!("error: `{text}` is not IP:PORT\nusage: hyper [IP:PORT]");
                std::process::exit(2);
            }
        },
    };
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("notes.db"))
        .create_if_missing(true);
    let pool = open_pool(options.clone()).await?;
    // A reopen reattaches the database that was open; it never creates one.
    let reopen = options.create_if_missing(false);
    let live = LivePool::builder_with_pool(pool, move || open_pool(reopen.clone()))
        // On a give-up, the requests in flight get this long before the exit.
        .shutdown_grace(Duration::from_secs(10))
        .open()
        .await?;

    let stop = stop_signal()?;
    let given_up = live.given_up();
    let shutdown = async move {
        tokio::select! {
            () = given_up => {}
            () = stop => {}
        }
    };
    let service = ServiceBuilder::new()
        .map_result(error_response)
        .service(notes_service(live.clone()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    serve_with_shutdown(listener, service, shutdown).await?;

    // Every request in flight has had its answer. Wait (bounded) until any
    // replaced database is sealed and rescued, then exit with the give-up's
    // code, if the policy gave up.
    live.close().await;
    if let Some(gave_up) = live.gave_up() {
        std::process::exit(gave_up.exit_code);
    }
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c; the handlers are installed at the call,
/// before the server is announced.
fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}
