//! Runs a real example binary (`examples/axum` unless named): built on demand, started on
//! 127.0.0.1:0, its stdout read for `listening on <addr>` and its stderr
//! (the crate's logs) collected line by line. Every wait is bounded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[allow(unused_imports)] // not every test binary that includes this waits
pub use crate::common::within;

/// A running `examples/axum` process.
pub struct Example {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<String>>,
}

impl Example {
    /// Starts the example with `args` (plus `--addr 127.0.0.1:0`) and waits
    /// until it says where it listens.
    pub async fn start(args: &[&str]) -> Result<Self, BoxError> {
        Self::start_named("axum", args).await
    }

    /// [`start`](Self::start) for the example called `name`.
    pub async fn start_named(name: &str, args: &[&str]) -> Result<Self, BoxError> {
        Self::spawn(
            tokio::process::Command::new(example_binary(name).await?),
            args,
        )
        .await
    }

    /// [`start`](Self::start) as the user `uid` (group `gid`), through
    /// `setpriv` when this process is root, for faults root does not see
    /// (file permissions); as this process's own user otherwise.
    pub async fn start_as_user(uid: u32, gid: u32, args: &[&str]) -> Result<Self, BoxError> {
        let binary = example_binary("axum").await?;
        if !is_root() {
            return Self::spawn(tokio::process::Command::new(binary), args).await;
        }
        let mut command = tokio::process::Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(binary);
        Self::spawn(command, args).await
    }

    /// [`start`](Self::start) with the example run by another program
    /// (`program` and its `wrapper_args`, then the example's path), e.g.
    /// strace injecting faults.
    pub async fn start_wrapped(
        program: &str,
        wrapper_args: &[&str],
        args: &[&str],
    ) -> Result<Self, BoxError> {
        let binary = example_binary("axum").await?;
        let mut command = tokio::process::Command::new(program);
        command.args(wrapper_args).arg(binary);
        Self::spawn(command, args).await
    }

    /// Runs the example with `args` expecting it to stop before it listens
    /// (a refused start): its exit status and stderr. An example that
    /// starts listening instead is an error (it is killed).
    pub async fn refused_start(args: &[&str]) -> Result<(ExitStatus, String), BoxError> {
        let binary = example_binary("axum").await?;
        let output = within(
            "the example's refused start",
            tokio::process::Command::new(binary)
                .args(args)
                .args(["--addr", "127.0.0.1:0"])
                .env("RUST_LOG", "tower_db_liveness=info")
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.contains("listening on") {
            return Err(format!("the example started:\n{stdout}").into());
        }
        Ok((
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    async fn spawn(mut command: tokio::process::Command, args: &[&str]) -> Result<Self, BoxError> {
        let mut child = command
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            // The example's default filter, whatever the caller's environment says.
            .env("RUST_LOG", "tower_db_liveness=info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut stderr = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = stderr.next_line().await {
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stdout = tokio::io::BufReader::new(stdout).lines();
        let addr = within("the example's `listening on` line", async {
            loop {
                let Some(line) = stdout.next_line().await? else {
                    return Err::<SocketAddr, BoxError>(
                        "the example ended before it was listening".into(),
                    );
                };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(addr.parse()?);
                }
            }
        })
        .await??;
        Ok(Example {
            child,
            addr,
            lines,
            log,
        })
    }

    /// Everything the example wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Waits for a stderr line containing `needle`.
    pub async fn logged(&mut self, needle: &str) -> Result<String, BoxError> {
        let lines = &mut self.lines;
        let found = within(&format!("a log line with `{needle}`"), async {
            while let Some(line) = lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await?;
        found.ok_or_else(|| format!("stderr ended without `{needle}`:\n{}", self.log()).into())
    }

    pub fn pid(&self) -> Result<u32, BoxError> {
        self.child
            .id()
            .ok_or_else(|| "the example has already exited".into())
    }

    /// Sends SIGTERM, as a supervisor stopping the service does.
    pub async fn terminate(&self) -> Result<(), BoxError> {
        let pid = self.pid()?.to_string();
        let status = within(
            "kill -TERM",
            tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status(),
        )
        .await??;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -TERM {pid}: {status}").into())
        }
    }

    pub async fn wait(&mut self) -> Result<ExitStatus, BoxError> {
        Ok(within("the example's exit", self.child.wait()).await??)
    }

    /// Kills the process and waits for it, so its files are closed.
    pub async fn kill(&mut self) -> Result<(), BoxError> {
        let _ = self.child.start_kill();
        self.wait().await?;
        Ok(())
    }
}

/// Waits until connecting to `addr` is refused: the listener is closed. A
/// poll (every 10 ms, bounded): nothing else signals a closed listener.
pub async fn refused(addr: SocketAddr) -> Result<(), BoxError> {
    within("new connections being refused", async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => return,
                // Still listening (or an accept racing the shutdown): try again.
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
}

/// An HTTP/1.1 request written by hand, so the test can stop between the
/// headers and the body: with `Expect: 100-continue`, hyper answers
/// `100 Continue` when the handler starts reading the body, which proves
/// the request is in the server.
pub struct RawRequest {
    stream: tokio::net::TcpStream,
    body: String,
}

impl RawRequest {
    /// Sends the headers of `POST path` and waits for `100 Continue`.
    pub async fn post_started(addr: SocketAddr, path: &str, body: &str) -> Result<Self, BoxError> {
        let mut stream = within("connecting", tokio::net::TcpStream::connect(addr)).await??;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        let interim = within("100 Continue", read_head(&mut stream)).await??;
        if !interim.starts_with("HTTP/1.1 100") {
            return Err(format!("expected 100 Continue, got {interim:?}").into());
        }
        Ok(RawRequest {
            stream,
            body: body.to_owned(),
        })
    }

    /// Sends the body and reads the whole response (the server closes the
    /// connection after it during a graceful shutdown).
    pub async fn finish(mut self) -> Result<String, BoxError> {
        self.stream.write_all(self.body.as_bytes()).await?;
        let mut response = Vec::new();
        within("the response", self.stream.read_to_end(&mut response)).await??;
        Ok(String::from_utf8(response)?)
    }
}

/// Reads up to the blank line that ends a response head.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `target/<profile>/examples/<name>`. `cargo test` builds the examples, but
/// not when only one test target is selected, so it is (re)built here with
/// this test's features: a no-op when it is fresh, and never a stale binary.
pub async fn example_binary(name: &str) -> Result<PathBuf, BoxError> {
    let mut features = vec!["axum"];
    for (on, feature) in [
        (cfg!(feature = "migrate"), "migrate"),
        (cfg!(feature = "fs-watch"), "fs-watch"),
        (cfg!(feature = "tonic"), "tonic"),
        (cfg!(feature = "systemd"), "systemd"),
        (cfg!(feature = "metrics"), "metrics"),
        (cfg!(feature = "postgres"), "postgres"),
        (cfg!(feature = "mysql"), "mysql"),
    ] {
        if on {
            features.push(feature);
        }
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected test binary location")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("unexpected test binary location")?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = tokio::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", name, "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--features")
        .arg(features.join(","))
        .kill_on_drop(true)
        .status();
    // Generous: the build may wait for other builds' lock on the target dir.
    let build = tokio::time::timeout(Duration::from_secs(900), build)
        .await
        .map_err(|_| format!("building the {name} example did not finish within 15 minutes"))??;
    if !build.success() {
        return Err(format!("building the {name} example failed: {build}").into());
    }
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!("{} is missing after the build", binary.display()).into())
    }
}

/// `true` when this process runs as root (permissions do not stop it).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| {
        use std::os::unix::fs::MetadataExt;
        meta.uid() == 0
    })
}
