//! tonic 0.14: a unary gRPC service backed by SQLite, behind the layer.
//!
//! ```text
//! cargo run --example tonic --features tonic -- [IP:PORT]     (default 127.0.0.1:50051)
//! ```
//!
//! The service `notes.Notes` has two unary methods, `Add(AddNote) -> NoteId`
//! and `List(ListNotes) -> Notes`. The messages are written by hand with
//! `prost` (no `.proto`, no protoc, no build script); the equivalent proto:
//!
//! ```proto
//! syntax = "proto3";
//! package notes;
//! service Notes {
//!   rpc Add(AddNote) returns (NoteId);
//!   rpc List(ListNotes) returns (Notes);
//! }
//! message AddNote { string body = 1; }
//! message NoteId { int64 id = 1; }
//! message ListNotes {}
//! message Note { int64 id = 1; string body = 2; }
//! message Notes { repeated Note notes = 1; }
//! ```
//!
//! Handlers turn a `sqlx::Error` into a status with `status_from_sqlx`
//! (`Unavailable` or `Internal`, the error kept as its source); tonic puts
//! the status in the response's extensions, where the layer finds it.
//!
//! SIGTERM or ctrl-c stops it gracefully (exit 0); when the policy gives up
//! it stops the same way and exits with status 1 once the calls in flight
//! are answered.
//!
//! Health: a real service adds `tonic-health` with
//! `GrpcHealthBridge` (see the crate docs' tonic quickstart) and points
//! Kubernetes' liveness probe at the `liveness` service and its readiness
//! probe at `readiness`; the liveness service fails only once the policy
//! has given up.
//!
//! `tests/layer_tonic.rs` serves `NotesServer` in-process and calls it with
//! `NotesClient` over a real channel.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Status, body::Body};
use tonic_prost::ProstCodec;
use tower::Service;
use tower_db_liveness::{DbLivenessLayer, LivePool, status_from_sqlx};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

#[derive(Clone, PartialEq, prost::Message)]
pub struct AddNote {
    #[prost(string, tag = "1")]
    pub body: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NoteId {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListNotes {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Note {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub body: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Notes {
    #[prost(message, repeated, tag = "1")]
    pub notes: Vec<Note>,
}

const ADD: &str = "/notes.Notes/Add";
const LIST: &str = "/notes.Notes/List";

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

async fn add(live: LivePool, note: AddNote) -> Result<NoteId, Status> {
    if note.body.trim().is_empty() {
        // Not a database error: the layer lets it through untouched.
        return Err(Status::invalid_argument("empty note"));
    }
    // `execute` reports a failed commit; `fetch_one` on `INSERT … RETURNING`
    // would drop it (a full disk) and return an id for a row never stored.
    let done = sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(&note.body)
        .execute(&live.pool())
        .await
        .map_err(status_from_sqlx)?;
    Ok(NoteId {
        id: done.last_insert_rowid(),
    })
}

async fn list(live: LivePool) -> Result<Notes, Status> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, body FROM notes ORDER BY id")
        .fetch_all(&live.pool())
        .await
        .map_err(status_from_sqlx)?;
    let notes = rows
        .into_iter()
        .map(|(id, body)| Note { id, body })
        .collect();
    Ok(Notes { notes })
}

/// The hand-written server of `notes.Notes` (what tonic's codegen would write).
#[derive(Clone)]
pub struct NotesServer {
    live: LivePool,
}

impl NotesServer {
    pub fn new(live: LivePool) -> Self {
        NotesServer { live }
    }
}

impl NamedService for NotesServer {
    const NAME: &'static str = "notes.Notes";
}

/// One unary method: an async fn from the request message to the reply.
struct Unary<F>(LivePool, F);

impl<M, R, F, Fut> UnaryService<M> for Unary<F>
where
    F: Fn(LivePool, M) -> Fut,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
{
    type Response = R;
    type Future = BoxFuture<tonic::Response<R>, Status>;

    fn call(&mut self, request: tonic::Request<M>) -> Self::Future {
        let reply = (self.1)(self.0.clone(), request.into_inner());
        Box::pin(async move { reply.await.map(tonic::Response::new) })
    }
}

impl<B> Service<http::Request<B>> for NotesServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let live = self.live.clone();
        match request.uri().path() {
            ADD => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<NoteId, AddNote>::default());
                Ok(grpc.unary(Unary(live, add), request).await)
            }),
            LIST => Box::pin(async move {
                let method = Unary(live, |live, _: ListNotes| list(live));
                let mut grpc = Grpc::new(ProstCodec::<Notes, ListNotes>::default());
                Ok(grpc.unary(method, request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A client for `notes.Notes` over a tonic channel.
#[derive(Clone)]
pub struct NotesClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl NotesClient {
    pub fn new(channel: Channel) -> Self {
        NotesClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    pub async fn add(&mut self, body: &str) -> Result<i64, Status> {
        let note = AddNote {
            body: body.to_owned(),
        };
        let reply: NoteId = self.unary(ADD, note).await?;
        Ok(reply.id)
    }

    pub async fn list(&mut self) -> Result<Vec<Note>, Status> {
        let reply: Notes = self.unary(LIST, ListNotes {}).await?;
        Ok(reply.notes)
    }

    async fn unary<M, R>(&mut self, path: &'static str, message: M) -> Result<R, Status>
    where
        M: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))?;
        let path = PathAndQuery::from_static(path);
        let codec = ProstCodec::<M, R>::default();
        let reply = self
            .grpc
            .unary(tonic::Request::new(message), path, codec)
            .await?;
        Ok(reply.into_inner())
    }
}

/// Serves `NotesServer` behind the layer on `listener`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    live: LivePool,
) -> Result<(), tonic::transport::Error> {
    serve_with_shutdown(listener, live, std::future::pending()).await
}

/// [`serve`] until `signal` resolves, then stops accepting and lets the
/// calls in flight finish.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    live: LivePool,
    signal: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(DbLivenessLayer::new(live.clone()))
        .add_service(NotesServer::new(live))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), signal)
        .await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        None => SocketAddr::from(([127, 0, 0, 1], 50051)),
        Some(text) => match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                eprintln!("error: `{text}` is not IP:PORT\nusage: tonic [IP:PORT]");
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
        // On a give-up, the calls in flight get this long before the exit.
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    serve_with_shutdown(listener, live.clone(), shutdown).await?;

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
