//! Real servers on 127.0.0.1, real clients, and a reopen the test can hold.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tower_db_liveness::{LivePool, LivePoolBuilder};

use crate::common::{Exits, PoolFuture, TestDb, create_table};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An axum server on 127.0.0.1:0; shut down gracefully on drop.
pub struct Server {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn serve(app: axum::Router) -> std::io::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Server { addr, _stop: stop })
}

/// What a real HTTP client received.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<Value, BoxError> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request through hyper-util's client.
pub async fn fetch(addr: SocketAddr, method: Method, path: &str) -> Result<Answer, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::default())?;
    let response = client.request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Writes `request` as is on a fresh TCP connection and reads until the
/// server closes it; the request should say `Connection: close`.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Result<RawAnswer, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await?;
    RawAnswer::parse(&bytes)
}

/// A parsed HTTP/1.1 response, checked to be well-formed.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    fn parse(bytes: &[u8]) -> Result<Self, BoxError> {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no end of head in {:?}", String::from_utf8_lossy(bytes)))?;
        let head = std::str::from_utf8(&bytes[..split])?;
        let body = bytes[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or("empty response")?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}").into());
        }
        let status: u16 = parts.next().unwrap_or_default().parse()?;
        if !(100..600).contains(&status) {
            return Err(format!("bad status {status}").into());
        }
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let answer = RawAnswer {
            status,
            headers,
            body,
        };
        if let Some(len) = answer.header("content-length") {
            let len: usize = len.parse()?;
            if answer.body.len() != len {
                return Err(
                    format!("content-length {len} but {} body bytes", answer.body.len()).into(),
                );
            }
        }
        Ok(answer)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks a health body against the documented shape and returns its
/// `status`.
pub fn check_shape(body: &Value) -> Result<String, BoxError> {
    let status = body["status"].as_str().ok_or("no status")?.to_owned();
    if !["pass", "warn", "fail"].contains(&status.as_str()) {
        return Err(format!("status {status}").into());
    }
    body["generation"].as_u64().ok_or("no generation")?;
    body["heals"].as_u64().ok_or("no heals")?;
    let checks = body["checks"]["sqlite:responseTime"]
        .as_array()
        .ok_or("no sqlite:responseTime check")?;
    if checks.len() != 1 {
        return Err("one check expected".into());
    }
    let check = &checks[0];
    if check["componentType"] != "datastore" || check["status"] != status.as_str() {
        return Err(format!("check {check}").into());
    }
    let time = check["time"].as_str().ok_or("no time")?;
    // RFC 3339 in UTC: 2025-11-27T05:40:12.337Z
    let b = time.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || b[13] != b':' || !time.ends_with('Z') {
        return Err(format!("time {time}").into());
    }
    if let Some(value) = check.get("observedValue") {
        value.as_f64().ok_or("observedValue not a number")?;
        if check["observedUnit"] != "ms" {
            return Err("observedUnit".into());
        }
    }
    match (status.as_str(), check.get("output")) {
        ("pass", Some(output)) => return Err(format!("pass with output {output}").into()),
        ("warn" | "fail", None) => return Err(format!("{status} without output").into()),
        _ => {}
    }
    Ok(status)
}

/// A reopen that waits for the test to open its gate (a real reopen, held).
pub struct Gate {
    pub open: Arc<Notify>,
    pub calls: Arc<AtomicUsize>,
}

pub fn gated_reopen(
    options: SqliteConnectOptions,
) -> (Gate, impl Fn() -> PoolFuture + Send + Sync + 'static) {
    let open = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, counter) = (Arc::clone(&open), Arc::clone(&calls));
    let reopen = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let (gate, options) = (Arc::clone(&gate), options.clone());
        Box::pin(async move {
            gate.notified().await;
            let pool = TestDb::pool_options().connect_with(options).await?;
            create_table(&pool).await?;
            Ok(pool)
        }) as PoolFuture
    };
    (Gate { open, calls }, reopen)
}

/// A LivePool over `db` whose reopen waits for the gate; no watchdog, the
/// exit action injected.
pub async fn open_gated(
    db: &TestDb,
    configure: impl FnOnce(LivePoolBuilder) -> LivePoolBuilder,
) -> Result<(LivePool, Gate, Exits), BoxError> {
    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    create_table(&pool).await?;
    let (gate, reopen) = gated_reopen(db.options());
    let builder = LivePool::builder_with_pool(pool, reopen).watchdog_interval(None);
    let (builder, exits) = Exits::install(configure(builder));
    Ok((builder.open().await?, gate, exits))
}

/// Prints a state's answer for the record (`--nocapture`).
pub fn show(state: &str, status: StatusCode, body: &[u8]) {
    println!(
        "[{state}] HTTP {} {}",
        status.as_u16(),
        String::from_utf8_lossy(body)
    );
}

#[allow(unused_imports)] // not every test binary that includes this waits
pub use crate::common::within;

/// Rewrites bytes of the database file in place (same inode, so the file
/// identity holds) and bumps the file change counter (offset 24), so that
/// connections which cached page 1 read it again.
pub fn patch_file(path: &std::path::Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut counter = [0; 4];
    file.seek(SeekFrom::Start(24))?;
    file.read_exact(&mut counter)?;
    let bumped = u32::from_be_bytes(counter).wrapping_add(1).to_be_bytes();
    file.seek(SeekFrom::Start(24))?;
    file.write_all(&bumped)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)?;
    file.sync_all()
}
