//! Shared by the per-stack layer tests: a LivePool over a real file whose
//! reopen can be held shut, and a probe that tells when a request has
//! passed the layer's `call`.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{Notify, mpsc};
use tower::{Layer, Service};
use tower_db_liveness::{LivePool, LivePoolBuilder};

use crate::common::Exits;

/// The server side of a test: the LivePool and what its policy did.
pub struct Live {
    pub live: LivePool,
    /// How many times the reopen ran.
    pub reopens: Arc<AtomicUsize>,
    /// Give-ups, through the injected exit action.
    pub exits: Exits,
    /// Lets a held reopen proceed (see [`open`]).
    pub gate: Arc<Notify>,
}

impl Live {
    pub fn reopens(&self) -> usize {
        self.reopens.load(Ordering::SeqCst)
    }
}

/// Opens a LivePool over `db` with the example's own `open_pool` (which
/// creates the table), as the initial pool and as the reopen.
///
/// The watchdog is off: in these tests the layer must be the detector.
/// With `gated`, the reopen waits for `gate.notify_one()` before it opens
/// the real pool: a real reopen, made slow on purpose so a test can send
/// requests while the heal is in flight.
pub async fn open<F, Fut>(
    options: SqliteConnectOptions,
    open_pool: F,
    gated: bool,
    configure: impl FnOnce(LivePoolBuilder) -> LivePoolBuilder,
) -> Result<Live, Box<dyn std::error::Error + Send + Sync>>
where
    F: Fn(SqliteConnectOptions) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = sqlx::Result<SqlitePool>> + Send + 'static,
{
    let pool = open_pool(options.clone()).await?;
    let reopens = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let reopen = {
        let (reopens, gate) = (Arc::clone(&reopens), Arc::clone(&gate));
        move || {
            reopens.fetch_add(1, Ordering::SeqCst);
            let (gate, options, open_pool) =
                (Arc::clone(&gate), options.clone(), open_pool.clone());
            async move {
                if gated {
                    gate.notified().await;
                }
                open_pool(options).await
            }
        }
    };
    let builder = LivePool::builder_with_pool(pool, reopen).watchdog_interval(None);
    let (builder, exits) = Exits::install(configure(builder));
    let live = builder.open().await?;
    Ok(Live {
        live,
        reopens,
        exits,
        gate,
    })
}

/// A layer that reports each request once the service inside it has
/// returned from `call`: placed outside `DbLivenessLayer`, a report means
/// the layer has decided (hold or call) for that request.
#[derive(Clone)]
pub struct PassedLayer {
    tx: mpsc::UnboundedSender<()>,
}

pub fn passed() -> (PassedLayer, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (PassedLayer { tx }, rx)
}

impl<S> Layer<S> for PassedLayer {
    type Service = Passed<S>;

    fn layer(&self, inner: S) -> Passed<S> {
        Passed {
            inner,
            tx: self.tx.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Passed<S> {
    inner: S,
    tx: mpsc::UnboundedSender<()>,
}

impl<S: Service<R>, R> Service<R> for Passed<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        let future = self.inner.call(request);
        let _ = self.tx.send(());
        future
    }
}

/// Holds the write lock of `path` from a second pool (`BEGIN IMMEDIATE`)
/// until dropped or released.
pub struct WriteLock {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    pool: SqlitePool,
}

impl WriteLock {
    pub async fn take(options: SqliteConnectOptions) -> sqlx::Result<Self> {
        let pool = SqlitePool::connect_with(options).await?;
        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(WriteLock { conn, pool })
    }

    pub async fn release(mut self) -> sqlx::Result<()> {
        sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
        drop(self.conn);
        self.pool.close().await;
        Ok(())
    }
}

/// A plain HTTP/1 client (hyper-util's) for one server.
pub struct Http {
    base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

/// Status, headers and body text of a response.
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.status, self.body)
    }
}

impl Http {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Http {
            base: format!("http://{addr}"),
            client,
        }
    }

    pub async fn post(&self, path: &str, body: impl Into<bytes::Bytes>) -> Result<Reply, BoxError> {
        self.send(http::Method::POST, path, body.into()).await
    }

    pub async fn get(&self, path: &str) -> Result<Reply, BoxError> {
        self.get_with(path, &[]).await
    }

    /// `GET path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, BoxError> {
        self.send_with(http::Method::GET, path, bytes::Bytes::new(), headers)
            .await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<Reply, BoxError> {
        self.send_with(method, path, body, &[]).await
    }

    async fn send_with(
        &self,
        method: http::Method,
        path: &str,
        body: bytes::Bytes,
        headers: &[(&str, &str)],
    ) -> Result<Reply, BoxError> {
        use http_body_util::BodyExt;

        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Full::new(body))?;
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(bytes.to_vec())?,
        })
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The fault recorded by the last heal, as published by the policy.
pub fn last_heal(live: &LivePool) -> Option<tower_db_liveness::Healed> {
    match &live.status() {
        tower_db_liveness::PoolStatus::Live { last_heal, .. } => last_heal.clone(),
        _ => None,
    }
}

#[allow(unused_imports)] // not every test binary that includes this waits
pub use crate::common::within;

/// Connections to a second database whose file was unlinked after they
/// opened it (DELETE journal mode): a write on any of them fails with a real
/// SQLITE_READONLY_DBMOVED (1032, fatal).
///
/// For tests that need a real fatal error while the LivePool's own file
/// stays in place, so that its reopen verifies whatever the policy's rules
/// for a missing file are: the layer only sees the error, not which file it
/// came from.
pub struct Elsewhere {
    _db: crate::common::TestDb,
    pub conns: Vec<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
}

pub async fn elsewhere(n: u32) -> Result<Elsewhere, BoxError> {
    let db = crate::common::TestDb::new(sqlx::sqlite::SqliteJournalMode::Delete)?;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(n)
        .connect_with(db.options())
        .await?;
    crate::common::create_table(&pool).await?;
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut conn = pool.acquire().await?;
        // Opens the file on this connection before the fault.
        sqlx::query("SELECT count(*) FROM notes")
            .execute(&mut *conn)
            .await?;
        conns.push(conn);
    }
    db.unlink_files()?;
    Ok(Elsewhere { _db: db, conns })
}
