//! A hung `stat` (a dead NFS or FUSE mount) must not stall the service:
//! `/health` keeps answering, `warn` and then `fail`, and the number of
//! threads stuck on the mount stays fixed however many probes come.
//!
//! The hang is real: strace's fault injection holds every `statx` of a real
//! server process (this test binary, re-run as [`child_server`]) at syscall
//! entry until strace is detached. `std::fs::metadata` uses `statx` on
//! Linux; SQLite's own `fstat` calls use `newfstatat` and are left alone, so
//! only the crate's file identity checks hang. The server runs a real
//! LivePool over a real file, with the watchdog polling it, and the real
//! `HealthService` behind axum on 127.0.0.1.
#![cfg(all(target_os = "linux", feature = "sqlite"))]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tower_db_liveness::{Check, HealthService, LivePool};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A bound on every wait, so a regression is a named failure and not a
/// hung CI. `/health` promises an answer within 500 ms; a hang lasts as long
/// as strace stays attached (minutes).
const WAIT: Duration = Duration::from_secs(10);
/// Probes sent while the mount is hung: many more than the filesystem
/// threads (two) and the stuck probes before `fail` (three).
const PROBES: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_thread_server_answers_health_while_a_stat_hangs() -> TestResult {
    hung_stat("current_thread").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_server_answers_health_while_a_stat_hangs() -> TestResult {
    hung_stat("multi_thread").await
}

async fn hung_stat(flavor: &str) -> TestResult {
    require_strace()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let log = dir.path().join("server.log");
    let server = Server::start(&db, flavor, &log).await?;
    let pid = server.pid;

    // Healthy first; the filesystem threads are started by these probes.
    for _ in 0..3 {
        let answer = server.health().await?;
        assert_eq!(
            (answer.code, answer.status.as_str()),
            (200, "pass"),
            "{answer:?}"
        );
    }
    let before = threads(pid)?;

    let strace = Strace::attach(pid).await?;
    let mut answers = Vec::new();
    for _ in 0..PROBES {
        answers.push(server.health().await.map_err(|err| {
            format!(
                "/health did not answer while a stat hangs ({flavor} runtime): {err}\n{}",
                server.log()
            )
        })?);
    }
    let during = threads(pid)?;

    // A hung mount is nothing a restart fixes (it would hang in open):
    // liveness stays 200 while readiness fails.
    let livez = server.get("/livez").await?;
    assert_eq!(livez.code, 200, "/livez while a stat hangs: {livez:?}");

    let stuck = "the file identity check did not answer within";
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.state, "not_answering", "probe {n}: {answer:?}");
        let expected = if n < 2 { (200, "warn") } else { (503, "fail") };
        assert_eq!(
            (answer.code, answer.status.as_str()),
            expected,
            "probe {n} while the stat hangs: {answers:#?}\n{}",
            server.log()
        );
        assert!(answer.output.starts_with(stuck), "probe {n}: {answer:?}");
        assert!(
            !answer.output.contains(&dir.path().display().to_string()),
            "a path in the output: {answer:?}"
        );
    }
    // However many probes and watchdog ticks met the hung mount, no thread
    // was added for them: the two filesystem threads were there before.
    assert!(
        during <= before,
        "threads grew from {before} to {during} over {PROBES} probes of a hung stat"
    );

    // The mount answers again: the stuck calls return, the threads serve
    // again, and the probe passes.
    drop(strace);
    let mut last = None;
    for _ in 0..50 {
        let answer = server.health().await?;
        if answer.status == "pass" {
            last = None;
            break;
        }
        last = Some(answer);
        // Polling another process's endpoint: its answer is the signal.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "no pass after the hang ended: {last:?}\n{}",
        server.log()
    );
    assert!(threads(pid)? <= before);
    Ok(())
}

/// The server, run by [`hung_stat`] as a child process (`--ignored --exact
/// child_server`): a LivePool on `HUNG_FS_DB` with the watchdog polling
/// every 200 ms, and `HealthService` at `/health`, on the runtime flavour in
/// `HUNG_FS_FLAVOR`. It prints `listening on ADDR`.
#[test]
#[ignore = "the server process of hung_stat; run by it"]
fn child_server() -> TestResult {
    let db = std::env::var("HUNG_FS_DB")?;
    // To stderr, which the parent keeps in a file and shows on failure.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "tower_db_liveness=debug",
        ))
        .try_init();
    let runtime = match std::env::var("HUNG_FS_FLAVOR")?.as_str() {
        "current_thread" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let builder = LivePool::builder(
            SqliteConnectOptions::new()
                .filename(&db)
                .create_if_missing(true),
        )
        .watchdog_interval(Some(Duration::from_millis(200)));
        // The watch thread would start at the first tick, racing the
        // thread count taken before the hang.
        #[cfg(feature = "fs-watch")]
        let builder = builder.fs_watch(false);
        let live = builder.open().await?;
        let health = HealthService::new(live);
        let app = axum::Router::new()
            .route_service("/livez", health.clone().check(Check::Liveness))
            .route_service("/health", health);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        // An orphan never outlives its parent's test for long.
        let _ = tokio::time::timeout(Duration::from_secs(120), axum::serve(listener, app)).await;
        Ok(())
    })
}

fn require_strace() -> TestResult {
    match std::process::Command::new("strace").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("strace is needed to hang a stat for real: install it \
                  (apt-get install strace); .ci/run does"
            .into()),
    }
}

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Server {
    async fn start(db: &Path, flavor: &str, log: &Path) -> TestResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--ignored", "--exact", "child_server", "--nocapture"])
            .env("HUNG_FS_DB", db)
            .env("HUNG_FS_FLAVOR", flavor)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("the server exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(addr.parse()?);
                }
            }
            Err("the server ended before it was listening".into())
        })
        .await
        .map_err(|_| "the server did not start listening")??;
        Ok(Server {
            child,
            pid,
            addr,
            log: log.to_owned(),
        })
    }

    /// `GET /health`, bounded.
    async fn health(&self) -> TestResult<Answer> {
        self.get("/health").await
    }

    /// `GET path`, bounded.
    async fn get(&self, path: &str) -> TestResult<Answer> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(WAIT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", WAIT.as_secs()))??;
        let text = String::from_utf8(raw)?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
        let code = head
            .split(' ')
            .nth(1)
            .ok_or("no status line")?
            .parse::<u16>()?;
        let json: serde_json::Value = serde_json::from_str(body)?;
        let check = &json["checks"]["sqlite:responseTime"][0];
        Ok(Answer {
            code,
            state: json["state"].as_str().unwrap_or_default().to_owned(),
            status: json["status"].as_str().unwrap_or_default().to_owned(),
            output: check["output"].as_str().unwrap_or_default().to_owned(),
        })
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("server log:\n{log}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[derive(Debug)]
#[allow(dead_code)] // Read through Debug in failure messages.
struct Answer {
    code: u16,
    state: String,
    status: String,
    output: String,
}

/// strace attached to every thread of a process, holding each `statx` at
/// syscall entry for five minutes: a hung mount. Dropping it detaches
/// strace, and the held calls go on.
struct Strace {
    child: Child,
}

impl Strace {
    async fn attach(pid: u32) -> TestResult<Self> {
        let mut child = Command::new("strace")
            .args(["-f", "-p", &pid.to_string(), "-o", "/dev/null"])
            .args(["-e", "trace=statx", "-e", "inject=statx:delay_enter=300s"])
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no strace stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        // strace says so once it has attached to all the threads.
        let attached = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("attached") {
                    return Ok(());
                }
            }
            Err(std::io::Error::other("strace ended"))
        })
        .await;
        // Keep reading: strace reports every new thread there, and a closed
        // pipe would kill it (SIGPIPE), ending the hang early.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match attached {
            Ok(Ok(())) => Ok(Strace { child }),
            Ok(Err(err)) => Err(format!("strace could not attach: {err}").into()),
            Err(_) => Err("strace did not attach".into()),
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        // SIGTERM lets strace detach cleanly, releasing the held calls.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.start_kill();
    }
}

/// The process's thread count, from `/proc/PID/status`.
fn threads(pid: u32) -> TestResult<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .ok_or("no Threads: line")?;
    Ok(line.trim().parse()?)
}
