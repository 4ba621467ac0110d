//! A real PostgreSQL primary and streaming hot standby behind a TCP proxy, for
//! tests, examples and benches: the topology of
//! `postgres-failure-modes.md` §0.
//!
//! ```text
//!   pool ──► proxy 127.0.0.1:<proxy> ──► n1 127.0.0.1:<port>  primary
//!            (the k8s Service / VIP)  └─► n2 127.0.0.1:<port>  hot standby
//! ```
//!
//! Tests: `mod pg_cluster;`. Examples and benches:
//! `#[path = "../tests/pg_cluster/mod.rs"] mod pg_cluster;`.
//!
//! * **Blocking API.** Every call returns once the cluster is in its new state,
//!   and works from any thread, inside a tokio runtime or outside one: admin
//!   SQL runs on a short-lived thread with its own runtime, and the proxy on a
//!   thread with its own runtime. Async code that must keep running while a
//!   fault is injected calls it through `spawn_blocking` (`Cluster` is
//!   `Send + Sync`; share it in an `Arc`). Admin operations are serialized.
//! * **Server binaries:** `PG_BIN` if set, else the highest
//!   `/usr/lib/postgresql/<ver>/bin` that has `initdb`, else
//!   `pg_config --bindir`. PostgreSQL 14 or newer. None found is an error that
//!   says what to install: tests fail, they never skip.
//! * **Root.** The postmaster refuses to run as root, so when the effective
//!   uid is 0 every server binary (and `cp` of a data directory) runs as the
//!   `postgres` system user that Debian's `postgresql` package creates, and
//!   the cluster's directory is chowned to it. Every directory above it must
//!   be searchable by that user (`/dev/shm` and `/tmp` are).
//! * **Where.** `TMPDIR` if set; else `/dev/shm` if it is a tmpfs of at least
//!   1 GiB; else the system's temporary directory. A data directory is ~1300
//!   small files, and creating them is what a start costs on a disk.
//! * **Speed.** `initdb` runs once per process, into a template that already
//!   holds the settings, `pg_hba.conf`, the role and the database; each cluster
//!   copies it (`cp -a`), starts it, and `pg_basebackup`s the standby. Measured
//!   on 2 cores with PostgreSQL 15: a start takes ~0.4 s on tmpfs (the first
//!   in a process ~1.05 s, with the template), of which `pg_ctl start -w` is
//!   2 x ~0.11 s (it polls every 100 ms); copying instead of `initdb` saves
//!   ~0.5 s per cluster (`initdb` 0.43 s + creating the role and database, vs
//!   `cp -a` 0.035 s). On an ext4 disk: ~1.1 s (`cp -a` 0.43 s, `initdb`
//!   0.9 s). 1 MB WAL segments and a `FILE_COPY` database keep the template at
//!   35 MB. A switchover takes ~0.3 s, a drop ~0.2 s.
//! * **Cleanup.** Dropping the `Cluster` stops the proxy, stops both
//!   postmasters (`pg_ctl stop -m immediate`) and removes the directory, also
//!   when a test panics. A killed process runs no `Drop`, so each cluster (and
//!   the template) also has a watchdog: a `sh` child that ignores SIGHUP,
//!   SIGINT and SIGTERM and blocks reading a pipe only this process holds.
//!   When the process exits for any reason, even SIGKILL, the pipe closes and
//!   the watchdog stops the postmasters and removes the directory. `Drop` uses
//!   that same path, so every test exercises it.
//! * **Logs.** Each node logs to `<dir>/<node>/postgres.log`. Every error
//!   carries the tail of the relevant log, and a `Cluster` dropped during a
//!   panic prints both tails (libtest shows them with the failure).
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The superuser `initdb` creates (`-U`), used for admin SQL and replication.
pub const SUPERUSER: &str = "postgres";
/// The application's role (LOGIN, member of `pg_monitor`, not a superuser)
/// and its database, which it owns.
pub const APP: &str = "app";

/// Bound on `pg_ctl -w` (seconds, passed as `-t`).
const PG_CTL_TIMEOUT: &str = "60";
/// Bound on waiting for a node to accept connections, reach a role, stream.
const READY_BOUND: Duration = Duration::from_secs(30);
/// Bound on one connect-and-query attempt while polling.
const ATTEMPT_BOUND: Duration = Duration::from_secs(5);
/// Between two attempts while polling a server for a state it signals no other way.
const POLL: Duration = Duration::from_millis(20);
/// Bound on any admin SQL call as a whole.
const ADMIN_BOUND: Duration = Duration::from_secs(90);
/// Lines of a server log quoted in an error.
const LOG_TAIL: usize = 40;
const MIN_MAJOR: u32 = 14;

const NOT_FOUND: &str = "PostgreSQL server binaries not found: install Debian's `postgresql` \
     package (apt-get install -y postgresql) or set PG_BIN";

/// Appended to the template's `postgresql.conf`; copied into every node.
const SETTINGS: &str = "
# tests/pg_cluster: a throwaway primary + hot standby on loopback
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 100
wal_level = replica
hot_standby = on
wal_log_hints = on
max_wal_senders = 10
wal_keep_size = '128MB'
# 1 MB WAL segments (initdb --wal-segsize=1): recycle only a few
min_wal_size = '4MB'
fsync = off
synchronous_commit = off
log_line_prefix = '%m [%p] '
";

/// The whole `pg_hba.conf`: trust on 127.0.0.1, replication for the superuser.
/// No `local` lines: the unix socket is off.
const HBA: &str = "\
# TYPE  DATABASE     USER      ADDRESS        METHOD
host    all          all       127.0.0.1/32   trust
host    replication  postgres  127.0.0.1/32   trust
";

/// Run by the watchdog: `sh -c WATCHDOG watchdog <pg_ctl> <dir> <data dir>...`.
/// `read` returns only at EOF: nothing is ever written to the pipe.
const WATCHDOG: &str = r#"trap '' HUP INT TERM
read -r _
pg_ctl=$1; dir=$2; shift 2
for data in "$@"; do
  [ -f "$data/postmaster.pid" ] && "$pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
done
rm -rf "$dir"
"#;

// ---------------------------------------------------------------- public types

/// One of the two nodes. `N1` starts as the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    N1,
    N2,
}

impl Node {
    pub const ALL: [Node; 2] = [Node::N1, Node::N2];

    pub fn other(self) -> Node {
        match self {
            Node::N1 => Node::N2,
            Node::N2 => Node::N1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Node::N1 => "n1",
            Node::N2 => "n2",
        }
    }

    fn index(self) -> usize {
        match self {
            Node::N1 => 0,
            Node::N2 => 1,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `pg_ctl stop -m <mode>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Rolls back open transactions, sends FATAL 57P01 to sessions, writes a
    /// shutdown checkpoint (and streams it to the standby).
    Fast,
    /// SIGQUIT: no FATAL, no checkpoint; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What went wrong, with the command's output and the server log's tail.
/// `Debug` prints the same multi-line text as `Display`, so `unwrap()` and
/// `expect()` show it readably.
pub struct ClusterError(String);

impl ClusterError {
    fn new(message: impl Into<String>) -> Self {
        ClusterError(message.into())
    }

    fn with_log(message: impl Into<String>, log: &Path) -> Self {
        let mut message = message.into();
        message.push_str(&format!(
            "\n--- last {LOG_TAIL} lines of {} ---\n{}",
            log.display(),
            tail(log, LOG_TAIL)
        ));
        ClusterError(message)
    }
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |e| ClusterError::new(format!("{what}: {e}"))
}

// ---------------------------------------------------------------- the cluster

/// A primary, its streaming hot standby and the proxy in front of them.
pub struct Cluster {
    // Fields drop in this order: the proxy's sockets close first, then the
    // postmasters stop and the directory goes, then the ports are released.
    proxy: Proxy,
    server: &'static Server,
    nodes: [NodeDirs; 2],
    primary: AtomicUsize,
    running: [AtomicBool; 2],
    /// Serializes admin operations (not the proxy's controls).
    admin: Mutex<()>,
    teardown: Teardown,
    ports: [PortLease; 2],
}

impl Cluster {
    /// Builds and starts the cluster; returns once n1 accepts connections as
    /// a primary, n2 as a hot standby, and n2 streams from n1. The proxy
    /// points at n1.
    pub fn start() -> Result<Cluster, ClusterError> {
        let server = server()?;
        let template = template()?;
        let dir = tempfile::Builder::new()
            .prefix("pg-cluster-")
            .tempdir_in(base_dir())
            .map_err(io_error("create the cluster's temporary directory"))?
            .keep();
        let nodes = Node::ALL.map(|node| NodeDirs::new(&dir, node));
        let teardown = Teardown::spawn(server, dir, &nodes)?;
        for n in &nodes {
            std::fs::create_dir(&n.dir).map_err(io_error("create a node directory"))?;
            server.chown(&n.dir)?;
        }

        let [n1, n2] = &nodes;
        server.run(
            server
                .tool("cp", &n1.dir)
                .arg("-a")
                .arg(&template.data)
                .arg(&n1.data),
        )?;
        let p1 = start_on_free_port(server, n1)?;
        block_on(wait_role(superuser_url_at(p1.0, APP), false))?
            .map_err(|e| ClusterError::with_log(format!("n1: {e}"), &n1.log))?;

        server
            .run(
                server
                    .tool("pg_basebackup", &n2.dir)
                    .args(["-h", "127.0.0.1", "-p", &p1.0.to_string(), "-U", SUPERUSER])
                    .arg("-D")
                    .arg(&n2.data)
                    .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            )
            .map_err(|e| ClusterError::with_log(e.0, &n1.log))?;
        let p2 = start_on_free_port(server, n2)?;
        block_on(wait_role(superuser_url_at(p2.0, APP), true))?
            .map_err(|e| ClusterError::with_log(format!("n2: {e}"), &n2.log))?;
        block_on(wait_streaming(superuser_url_at(p1.0, APP)))?
            .map_err(|e| ClusterError::with_log(format!("n2 streaming from n1: {e}"), &n2.log))?;

        let proxy = Proxy::start([p1.0, p2.0], Node::N1)
            .map_err(io_error("start the proxy (its thread and runtime)"))?;
        Ok(Cluster {
            proxy,
            server,
            nodes,
            primary: AtomicUsize::new(Node::N1.index()),
            running: [AtomicBool::new(true), AtomicBool::new(true)],
            admin: Mutex::new(()),
            teardown,
            ports: [p1, p2],
        })
    }

    // ------------------------------------------------------------ addresses

    /// `postgres://app@127.0.0.1:<proxy>/app`: the application's URL, through
    /// the proxy.
    pub fn url(&self) -> String {
        format!("postgres://{APP}@127.0.0.1:{}/{APP}", self.proxy.port)
    }

    /// The application's URL straight to one node, bypassing the proxy.
    pub fn direct_url(&self, node: Node) -> String {
        format!("postgres://{APP}@127.0.0.1:{}/{APP}", self.port(node))
    }

    /// The superuser's URL straight to one node (database `app`).
    pub fn superuser_url(&self, node: Node) -> String {
        superuser_url_at(self.port(node), APP)
    }

    pub fn port(&self, node: Node) -> u16 {
        self.ports[node.index()].0
    }

    pub fn proxy_port(&self) -> u16 {
        self.proxy.port
    }

    /// The cluster's directory: `<node>/data`, `<node>/postgres.log`.
    pub fn dir(&self) -> &Path {
        &self.teardown.dir
    }

    /// The last `lines` lines of a node's server log.
    pub fn log_tail(&self, node: Node, lines: usize) -> String {
        tail(&self.nodes[node.index()].log, lines)
    }

    // ------------------------------------------------------------ roles

    /// The node that is primary now (changed only by [`Cluster::switchover`]).
    pub fn primary(&self) -> Node {
        Node::ALL[self.primary.load(Ordering::SeqCst)]
    }

    pub fn standby(&self) -> Node {
        self.primary().other()
    }

    /// Asks the node itself: `SELECT pg_is_in_recovery()`.
    pub fn in_recovery(&self, node: Node) -> Result<bool, ClusterError> {
        let url = self.superuser_url(node);
        self.sql(node, "SELECT pg_is_in_recovery()", async move {
            fetch::<bool>(&url, "SELECT pg_is_in_recovery()").await
        })
    }

    // ------------------------------------------------------------ proxy

    /// New connections go to `node` from now on; existing ones keep theirs.
    pub fn repoint(&self, node: Node) {
        self.proxy
            .shared
            .target
            .store(node.index(), Ordering::SeqCst);
    }

    /// The node new proxy connections go to.
    pub fn target(&self) -> Node {
        Node::ALL[self.proxy.shared.target.load(Ordering::SeqCst)]
    }

    /// `true`: the proxy forwards nothing in either direction (not even a
    /// close) and keeps every socket open; it still accepts connections.
    /// `false`: the held bytes flow on.
    pub fn black_hole(&self, on: bool) {
        self.proxy.shared.black_hole.send_replace(on);
    }

    /// Chunks read by the proxy and held at the black hole right now: a
    /// signal that a client's bytes reached the hole.
    pub fn held(&self) -> usize {
        *self.proxy.shared.held.borrow()
    }

    /// Resolves once at least `chunks` chunks are held at the black hole.
    /// Bound it with `tokio::time::timeout`.
    pub async fn until_held(&self, chunks: usize) {
        let mut held = self.proxy.shared.held.subscribe();
        // The sender lives as long as `self`.
        let _ = held.wait_for(|held| *held >= chunks).await;
    }

    /// Connections the proxy accepted while pointing at `node`.
    pub fn accepted(&self, node: Node) -> u64 {
        self.proxy.shared.accepted[node.index()].load(Ordering::SeqCst)
    }

    /// Connections the proxy reset because it could not reach their node.
    pub fn resets(&self) -> u64 {
        self.proxy.shared.resets.load(Ordering::SeqCst)
    }

    // ------------------------------------------------------------ faults

    /// The realistic switchover (S1): `pg_ctl stop -m fast` the primary,
    /// `pg_ctl promote -w` the standby, `CHECKPOINT` it (so `pg_rewind` reads
    /// the new timeline from its control file), `pg_rewind` the old primary
    /// (it rewinds only if the old primary diverged; after a fast stop it
    /// reports "no rewind required"), restart the old primary as a standby of
    /// the new one, and wait until it streams. The proxy is NOT repointed.
    /// Returns the new primary.
    pub fn switchover(&self) -> Result<Node, ClusterError> {
        let _admin = self.lock();
        let old = self.primary();
        let new = old.other();
        if self.running[old.index()].load(Ordering::SeqCst) {
            self.pg_ctl_stop(old, StopMode::Fast)?;
        }
        self.pg_ctl(
            new,
            self.server
                .tool("pg_ctl", &self.nodes[new.index()].dir)
                .arg("-D")
                .arg(&self.nodes[new.index()].data)
                .args(["-w", "-t", PG_CTL_TIMEOUT, "promote"]),
        )?;
        let url = self.superuser_url(new);
        self.sql(
            new,
            "wait for the promoted node to leave recovery",
            async move {
                wait_role(url.clone(), false)
                    .await
                    .map_err(sqlx::Error::Protocol)?;
                execute(&url, &["CHECKPOINT"]).await
            },
        )?;
        self.primary.store(new.index(), Ordering::SeqCst);

        let source = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
            self.port(new)
        );
        let old_dirs = &self.nodes[old.index()];
        self.server
            .run(
                self.server
                    .tool("pg_rewind", &old_dirs.dir)
                    .arg("--target-pgdata")
                    .arg(&old_dirs.data)
                    .arg("--source-server")
                    .arg(&source)
                    .arg("--no-sync"),
            )
            .map_err(|e| ClusterError::with_log(e.0, &old_dirs.log))?;
        self.follow(old, new)?;
        self.pg_ctl_start(old)?;
        let old_url = self.superuser_url(old);
        let new_url = self.superuser_url(new);
        self.sql(
            old,
            "wait for the old primary to stream as a standby",
            async move {
                wait_role(old_url, true)
                    .await
                    .map_err(sqlx::Error::Protocol)?;
                wait_streaming(new_url).await.map_err(sqlx::Error::Protocol)
            },
        )?;
        Ok(new)
    }

    /// `pg_ctl stop -m fast|immediate -w` one node.
    pub fn stop_node(&self, node: Node, mode: StopMode) -> Result<(), ClusterError> {
        let _admin = self.lock();
        self.pg_ctl_stop(node, mode)
    }

    /// `pg_ctl start -w` one node (in the role it had), then waits until it
    /// accepts connections in that role.
    pub fn start_node(&self, node: Node) -> Result<(), ClusterError> {
        let _admin = self.lock();
        self.pg_ctl_start(node)?;
        let url = self.superuser_url(node);
        let standby = node != self.primary();
        self.sql(
            node,
            "wait for the node to accept connections",
            async move { wait_role(url, standby).await.map_err(sqlx::Error::Protocol) },
        )
    }

    /// `ALTER SYSTEM SET default_transaction_read_only = on` (or `RESET`) +
    /// `pg_reload_conf()` on the current primary, then waits until a new
    /// session sees the value. The postmaster has then signalled every
    /// existing backend, which applies it before its next statement. The
    /// setting lives in that node's `postgresql.auto.conf`: it stays with the
    /// node across a switchover.
    pub fn set_read_only(&self, on: bool) -> Result<(), ClusterError> {
        let _admin = self.lock();
        let node = self.primary();
        let url = self.superuser_url(node);
        self.sql(node, "default_transaction_read_only", async move {
            let set = if on {
                "ALTER SYSTEM SET default_transaction_read_only = on"
            } else {
                "ALTER SYSTEM RESET default_transaction_read_only"
            };
            execute(&url, &[set, "SELECT pg_reload_conf()"]).await?;
            let want = if on { "on" } else { "off" };
            poll("default_transaction_read_only in a new session", || {
                let url = url.clone();
                async move {
                    let seen: String = fetch(&url, "SHOW default_transaction_read_only").await?;
                    Ok(seen == want)
                }
            })
            .await
            .map_err(sqlx::Error::Protocol)
        })
    }

    /// `pg_terminate_backend` of every backend of role `app` on every running
    /// node, waiting (up to 10 s each) until each has exited. Returns how
    /// many were terminated.
    pub fn terminate_app_backends(&self) -> Result<usize, ClusterError> {
        let _admin = self.lock();
        let mut terminated = 0;
        for node in Node::ALL {
            if !self.running[node.index()].load(Ordering::SeqCst) {
                continue;
            }
            let url = self.superuser_url(node);
            let n = self.sql(node, "pg_terminate_backend", async move {
                fetch::<i64>(
                    &url,
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) \
                     FROM pg_stat_activity WHERE usename = 'app'",
                )
                .await
            })?;
            terminated += n as usize;
        }
        Ok(terminated)
    }

    /// Backends of role `app` on `node`, from `pg_stat_activity`.
    pub fn app_backends(&self, node: Node) -> Result<usize, ClusterError> {
        let url = self.superuser_url(node);
        let n = self.sql(node, "count app backends", async move {
            fetch::<i64>(
                &url,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
            )
            .await
        })?;
        Ok(n as usize)
    }

    // ------------------------------------------------------------ internals

    fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic in another admin call leaves nothing half-locked worth refusing.
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs admin SQL against `node` to completion (bounded), with the node's
    /// log in the error.
    fn sql<T, F>(&self, node: Node, what: &str, fut: F) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let log = &self.nodes[node.index()].log;
        match block_on(fut) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClusterError::with_log(
                format!("{what} on {node} failed: {e}"),
                log,
            )),
            Err(e) => Err(ClusterError::with_log(
                format!("{what} on {node}: {e}"),
                log,
            )),
        }
    }

    fn pg_ctl(&self, node: Node, cmd: &mut Command) -> Result<String, ClusterError> {
        self.server
            .run(cmd)
            .map_err(|e| ClusterError::with_log(e.0, &self.nodes[node.index()].log))
    }

    fn pg_ctl_start(&self, node: Node) -> Result<(), ClusterError> {
        pg_ctl_start(self.server, &self.nodes[node.index()], self.port(node))?;
        self.running[node.index()].store(true, Ordering::SeqCst);
        Ok(())
    }

    fn pg_ctl_stop(&self, node: Node, mode: StopMode) -> Result<(), ClusterError> {
        let n = &self.nodes[node.index()];
        self.pg_ctl(
            node,
            self.server
                .tool("pg_ctl", &n.dir)
                .arg("-D")
                .arg(&n.data)
                .args(["-m", mode.arg(), "-w", "-t", PG_CTL_TIMEOUT, "stop"]),
        )?;
        self.running[node.index()].store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Makes a stopped `node` a standby of `primary` at its next start:
    /// `standby.signal`, and `primary_conninfo` in `postgresql.auto.conf`
    /// (replacing any earlier one; `pg_rewind` may have copied the source's).
    fn follow(&self, node: Node, primary: Node) -> Result<(), ClusterError> {
        let data = &self.nodes[node.index()].data;
        let auto = data.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        let mut conf: String = old
            .lines()
            .filter(|l| !l.trim_start().starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        conf.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user={SUPERUSER} application_name={node}'\n",
            self.port(primary)
        ));
        self.server.write_file(&auto, &conf)?;
        self.server.write_file(&data.join("standby.signal"), "")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in Node::ALL {
                eprintln!(
                    "--- pg_cluster: last {LOG_TAIL} lines of {} ---\n{}",
                    self.nodes[node.index()].log.display(),
                    self.log_tail(node, LOG_TAIL)
                );
            }
        }
        // Then the fields drop: the proxy, then the teardown (postmasters, directory).
    }
}

// ---------------------------------------------------------------- nodes

struct NodeDirs {
    /// `<cluster>/<node>`: owned by the server user; holds the log.
    dir: PathBuf,
    /// `<cluster>/<node>/data`: PGDATA. The log stays outside it, so
    /// `pg_basebackup` does not copy it.
    data: PathBuf,
    log: PathBuf,
}

impl NodeDirs {
    fn new(cluster: &Path, node: Node) -> Self {
        let dir = cluster.join(node.name());
        NodeDirs {
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            dir,
        }
    }
}

/// `pg_ctl start -w` with the port on the command line: command-line options
/// beat the config files, which `pg_rewind` may overwrite with the source's.
fn pg_ctl_start(server: &Server, node: &NodeDirs, port: u16) -> Result<(), ClusterError> {
    server
        .run(
            server
                .tool("pg_ctl", &node.dir)
                .arg("-D")
                .arg(&node.data)
                .arg("-l")
                .arg(&node.log)
                .args(["-o", &format!("-p {port}")])
                .args(["-w", "-t", PG_CTL_TIMEOUT, "start"]),
        )
        .map(drop)
        .map_err(|e| ClusterError::with_log(e.0, &node.log))
}

/// Starts a node on a free port. A port found free can be taken by someone
/// else before the postmaster binds it (an accepted race); a start that fails
/// on "Address already in use" is retried on another port.
fn start_on_free_port(server: &Server, node: &NodeDirs) -> Result<PortLease, ClusterError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = PortLease::new()?;
        let logged = std::fs::metadata(&node.log).map(|m| m.len()).unwrap_or(0);
        match pg_ctl_start(server, node, port.0) {
            Ok(()) => return Ok(port),
            Err(e) if attempts < 5 && log_since(&node.log, logged).contains("already in use") => {
                drop(e);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Ports handed to nodes of live clusters in this process, so two clusters
/// never share one (a stopped node's port is not free to take).
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

struct PortLease(u16);

impl PortLease {
    /// Binds 127.0.0.1:0, reads the port the OS chose, and closes it again.
    fn new() -> Result<PortLease, ClusterError> {
        let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        let ports = ports.get_or_insert_with(HashSet::new);
        for _ in 0..100 {
            let port = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(io_error("find a free port on 127.0.0.1"))?
                .port();
            if ports.insert(port) {
                return Ok(PortLease(port));
            }
        }
        Err(ClusterError::new("no free port on 127.0.0.1"))
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ports) = ports.as_mut() {
            ports.remove(&self.0);
        }
    }
}

// ---------------------------------------------------------------- teardown / watchdog

/// Owns a directory and the postmasters in it. Dropping it (or this process
/// dying) closes the watchdog's pipe; the watchdog then stops the postmasters
/// and removes the directory.
struct Teardown {
    dir: PathBuf,
    watchdog: Child,
}

impl Teardown {
    fn spawn(server: &Server, dir: PathBuf, nodes: &[NodeDirs]) -> Result<Teardown, ClusterError> {
        let spawned = server.chown(&dir).and_then(|()| {
            let mut cmd = Command::new("sh");
            server.prepare(&mut cmd, Path::new("/"));
            cmd.arg("-c")
                .arg(WATCHDOG)
                .arg("pg-cluster-watchdog")
                .arg(server.bin.join("pg_ctl"))
                .arg(&dir)
                .args(nodes.iter().map(|n| &n.data))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io_error("spawn the cluster's watchdog (sh)"))
        });
        match spawned {
            Ok(watchdog) => Ok(Teardown { dir, watchdog }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
        // In case the watchdog could not (it runs as the server user).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- the server binaries and user

struct Server {
    bin: PathBuf,
    /// (uid, gid) to run server binaries as: `postgres` when this process is
    /// root, `None` (this user) otherwise.
    user: Option<(u32, u32)>,
}

fn server() -> Result<&'static Server, ClusterError> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER
        .get_or_init(Server::find)
        .as_ref()
        .map_err(|e| ClusterError::new(e.clone()))
}

impl Server {
    fn find() -> Result<Server, String> {
        let bin = find_bin()?;
        let out = Command::new(bin.join("pg_ctl"))
            .arg("--version")
            .output()
            .map_err(|e| format!("{}/pg_ctl --version: {e}", bin.display()))?;
        // "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let version = String::from_utf8_lossy(&out.stdout).to_string();
        let major: u32 = version
            .split(") ")
            .nth(1)
            .map(|v| {
                v.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("cannot read the version from `{}`", version.trim()))?;
        if major < MIN_MAJOR {
            return Err(format!(
                "{} is PostgreSQL {major}; tests/pg_cluster needs {MIN_MAJOR} or newer: install \
                 Debian's `postgresql` package (apt-get install -y postgresql) or set PG_BIN",
                bin.display()
            ));
        }
        let user = if effective_uid()? == 0 {
            let (uid, gid) = passwd_entry("postgres").ok_or_else(|| {
                "running as root, where the PostgreSQL server refuses to run, and there is no \
                 `postgres` user in /etc/passwd to run it as: install Debian's `postgresql` \
                 package (apt-get install -y postgresql), which creates it, or run as an \
                 unprivileged user"
                    .to_string()
            })?;
            Some((uid, gid))
        } else {
            None
        };
        Ok(Server { bin, user })
    }

    /// A server binary (or, for `cp`, a plain tool from PATH), run as the
    /// server user with a clean environment.
    fn tool(&self, program: &str, cwd: &Path) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if path.is_file() {
            Command::new(path)
        } else {
            Command::new(program)
        };
        self.prepare(&mut cmd, cwd);
        cmd
    }

    fn prepare(&self, cmd: &mut Command, cwd: &Path) {
        // PGHOST, PGPORT, PGDATA, PGOPTIONS ... of the caller must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LC_ALL", "C").current_dir(cwd).stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Runs to completion; the error holds the command, its status and output.
    fn run(&self, cmd: &mut Command) -> Result<String, ClusterError> {
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let out = cmd
            .output()
            .map_err(|e| ClusterError::new(format!("cannot run `{line}`: {e}")))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            return Ok(text);
        }
        let hint = if self.user.is_some() && text.contains("ermission denied") {
            "\n(this ran as the `postgres` user: every directory above the cluster's must be \
             searchable by it; set TMPDIR to one that is)"
        } else {
            ""
        };
        Err(ClusterError::new(format!(
            "`{line}` failed ({}):\n{}{hint}",
            out.status,
            text.trim_end()
        )))
    }

    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        match self.user {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_error(&format!("chown {} to postgres", path.display()))),
            None => Ok(()),
        }
    }

    /// Writes a file inside a data directory, owned by the server user.
    fn write_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        std::fs::write(path, contents).map_err(io_error(&format!("write {}", path.display())))?;
        self.chown(path)
    }
}

fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(format!(
            "PG_BIN={} has no initdb: {NOT_FOUND}",
            dir.display()
        ));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    Err(NOT_FOUND.to_string())
}

/// The effective uid, from the second field of `Uid:` in /proc/self/status.
fn effective_uid() -> Result<u32, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| "no effective uid in /proc/self/status".to_string())
}

/// (uid, gid) of a user in /etc/passwd.
fn passwd_entry(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == user {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Where clusters live: `TMPDIR` if it is set; else `/dev/shm` if it is a
/// tmpfs of at least 1 GiB; else the system's temporary directory. A data
/// directory is ~1300 small files: creating them on a tmpfs is ~10x faster
/// than on an ext4 disk (measured: `cp -a` of the template 35 ms vs 430 ms),
/// and the data is throwaway anyway (fsync is off).
fn base_dir() -> PathBuf {
    if std::env::var_os("TMPDIR").is_some() {
        return std::env::temp_dir();
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let roomy_tmpfs = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 4
            && fields[1] == "/dev/shm"
            && fields[2] == "tmpfs"
            // No size= means the default, half of the RAM.
            && fields[3]
                .split(',')
                .find_map(|o| o.strip_prefix("size="))
                .is_none_or(|size| bytes(size).is_some_and(|b| b >= 1 << 30))
    });
    if roomy_tmpfs {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// "24684092k" → bytes.
fn bytes(size: &str) -> Option<u64> {
    let digits: String = size.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = match &size[digits.len()..] {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return None,
    };
    Some(n * unit)
}

// ---------------------------------------------------------------- the template

/// A stopped, configured primary: `initdb`, settings, `pg_hba.conf`, role and
/// database `app`. Made once per process; removed by its watchdog when the
/// process exits.
struct Template {
    data: PathBuf,
    _teardown: Teardown,
}

fn template() -> Result<&'static Template, ClusterError> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| Template::create().map_err(|e| e.0))
        .as_ref()
        .map_err(|e| ClusterError::new(format!("building the template cluster: {e}")))
}

impl Template {
    fn create() -> Result<Template, ClusterError> {
        let server = server()?;
        let dir = tempfile::Builder::new()
            .prefix("pg-cluster-template-")
            .tempdir_in(base_dir())
            .map_err(io_error("create the template's temporary directory"))?
            .keep();
        let node = NodeDirs {
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            dir: dir.clone(),
        };
        let teardown = Teardown::spawn(server, dir, std::slice::from_ref(&node))?;
        server.run(
            server
                .tool("initdb", &node.dir)
                .arg("-D")
                .arg(&node.data)
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
                .args(["--wal-segsize=1", "--no-sync"]),
        )?;
        let conf = node.data.join("postgresql.conf");
        let mut settings =
            std::fs::read_to_string(&conf).map_err(io_error("read postgresql.conf"))?;
        settings.push_str(SETTINGS);
        server.write_file(&conf, &settings)?;
        server.write_file(&node.data.join("pg_hba.conf"), HBA)?;

        let port = start_on_free_port(server, &node)?;
        let url = superuser_url_at(port.0, "postgres");
        let created = block_on(async move {
            wait_role(url.clone(), false)
                .await
                .map_err(sqlx::Error::Protocol)?;
            // One statement each: CREATE DATABASE refuses a transaction block.
            execute(
                &url,
                &[
                    "CREATE ROLE app LOGIN",
                    "GRANT pg_monitor TO app",
                    "CREATE DATABASE app OWNER app STRATEGY = FILE_COPY",
                ],
            )
            .await
        });
        let created = match created {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.0),
        };
        created.map_err(|e| {
            ClusterError::with_log(format!("create role and database app: {e}"), &node.log)
        })?;
        server
            .run(
                server
                    .tool("pg_ctl", &node.dir)
                    .arg("-D")
                    .arg(&node.data)
                    .args(["-m", "fast", "-w", "-t", PG_CTL_TIMEOUT, "stop"]),
            )
            .map_err(|e| ClusterError::with_log(e.0, &node.log))?;
        Ok(Template {
            data: node.data,
            _teardown: teardown,
        })
    }
}

// ---------------------------------------------------------------- admin SQL

fn superuser_url_at(port: u16, database: &str) -> String {
    format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{database}")
}

/// Runs `fut` to completion on a thread of its own with its own runtime, so
/// it works from any thread, in a runtime or not. Bounded by `ADMIN_BOUND`.
fn block_on<F>(fut: F) -> Result<F::Output, ClusterError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("pg-cluster-admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // The timer is made inside the runtime: it needs its context.
            let bounded = async move { tokio::time::timeout(ADMIN_BOUND, fut).await };
            Ok::<_, std::io::Error>(rt.block_on(bounded))
        })
        .map_err(io_error("spawn an admin thread"))?;
    match thread.join() {
        Ok(Ok(Ok(out))) => Ok(out),
        Ok(Ok(Err(_))) => Err(ClusterError::new(format!(
            "admin SQL did not finish within {ADMIN_BOUND:?}"
        ))),
        Ok(Err(e)) => Err(ClusterError::new(format!("admin runtime: {e}"))),
        Err(_) => Err(ClusterError::new("the admin thread panicked")),
    }
}

/// One value from one query on a fresh connection.
async fn fetch<T>(url: &str, sql: &'static str) -> Result<T, sqlx::Error>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut conn = PgConnection::connect(url).await?;
    let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(value)
}

/// Statements, one at a time, on a fresh connection.
async fn execute(url: &str, statements: &[&'static str]) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    for sql in statements {
        sqlx::raw_sql(*sql).execute(&mut conn).await?;
    }
    conn.close().await
}

/// Re-checks a server state every `POLL` until it holds, at most `READY_BOUND`:
/// the server has no way to signal it.
async fn poll<F, Fut>(what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, sqlx::Error>>,
{
    let deadline = Instant::now() + READY_BOUND;
    loop {
        let last = match tokio::time::timeout(ATTEMPT_BOUND, check()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => "not yet".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("one attempt took over {ATTEMPT_BOUND:?}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("{what}: not after {READY_BOUND:?} (last: {last})"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Until the node accepts connections and `pg_is_in_recovery()` is `standby`.
async fn wait_role(url: String, standby: bool) -> Result<(), String> {
    let want = if standby {
        "a hot standby"
    } else {
        "a primary"
    };
    poll(&format!("accepting connections as {want}"), || {
        let url = url.clone();
        async move { Ok(fetch::<bool>(&url, "SELECT pg_is_in_recovery()").await? == standby) }
    })
    .await
}

/// Until the primary at `url` has a standby streaming from it.
async fn wait_streaming(url: String) -> Result<(), String> {
    poll("a standby streaming (pg_stat_replication)", || {
        let url = url.clone();
        async move {
            let n: i64 = fetch(
                &url,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .await?;
            Ok(n > 0)
        }
    })
    .await
}

// ---------------------------------------------------------------- the proxy

/// The k8s Service / VIP: a TCP proxy on its own thread and runtime. A new
/// connection goes to the node it points at when it accepts; existing ones
/// keep theirs. If that node does not answer, the client gets an RST (as
/// from a Service whose endpoint is gone), not a refusal.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ProxyShared {
    upstream: [u16; 2],
    target: AtomicUsize,
    black_hole: watch::Sender<bool>,
    /// Chunks read and parked at the black hole right now.
    held: watch::Sender<usize>,
    accepted: [AtomicU64; 2],
    resets: AtomicU64,
}

impl Proxy {
    fn start(upstream: [u16; 2], target: Node) -> std::io::Result<Proxy> {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _enter = rt.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(ProxyShared {
            upstream,
            target: AtomicUsize::new(target.index()),
            black_hole: watch::Sender::new(false),
            held: watch::Sender::new(0),
            accepted: [AtomicU64::new(0), AtomicU64::new(0)],
            resets: AtomicU64::new(0),
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pg-cluster-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = stop => {}
                        () = accept_loop(listener, accepting) => {}
                    }
                });
                // The runtime drops here, on its own thread: every proxied socket closes.
            })?;
        Ok(Proxy {
            port,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                eprintln!("pg_cluster proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let node = shared.target.load(Ordering::SeqCst);
        shared.accepted[node].fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve(client, shared.upstream[node], shared.clone()));
    }
}

async fn serve(client: TcpStream, port: u16, shared: Arc<ProxyShared>) {
    let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    let upstream = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(upstream)) => upstream,
        _ => {
            // SO_LINGER 0: the close is an RST. (Deprecated because a non-zero
            // linger blocks on drop; zero never does. `set_zero_linger` needs
            // tokio 1.50, above this crate's floor.)
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            shared.resets.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        pump(client_read, upstream_write, &shared),
        pump(upstream_read, client_write, &shared),
    );
}

/// One direction. A read error or EOF becomes a FIN on the other side (as in
/// the measured probe). While the black hole is on, whatever was read (data
/// or the close) waits.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &ProxyShared) {
    let mut hole = shared.black_hole.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if *hole.borrow_and_update() {
            shared.held.send_modify(|held| *held += 1);
            let lifted = hole.wait_for(|on| !*on).await.is_ok();
            shared.held.send_modify(|held| *held -= 1);
            if !lifted {
                return;
            }
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- PgBouncer

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// A server connection per transaction: a client's statements outside
    /// a transaction may each land on another server connection.
    Transaction,
}

impl PoolMode {
    fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// Run by the PgBouncer wrapper: `sh -c BOUNCER bouncer <pgbouncer> <ini>`.
/// PgBouncer runs in the foreground under this shell, which stops it when
/// this process closes the pipe (a `Drop`, or this process dying).
const BOUNCER: &str = r#"trap '' HUP INT TERM
"$1" "$2" &
pid=$!
read -r _
kill -KILL "$pid" 2>/dev/null
wait "$pid"
"#;

/// A PgBouncer (Debian's `pgbouncer`, 1.18 on bookworm) in front of the
/// cluster's proxy, so it follows a repoint for its new server connections.
/// Its ini, userlist and log live in the cluster's directory; it listens on
/// 127.0.0.1 at a free port, runs as the server user when this process is
/// root (PgBouncer refuses root, like the postmaster), and trusts every
/// user in its userlist (`app`, `postgres`). Dropping it stops it.
pub struct Bouncer {
    port: PortLease,
    wrapper: Child,
    log: PathBuf,
}

const BOUNCER_NOT_FOUND: &str = "pgbouncer not found: install Debian's `pgbouncer` package \
     (apt-get install -y pgbouncer) or set PGBOUNCER to its path";

fn find_pgbouncer() -> Result<PathBuf, ClusterError> {
    if let Some(path) = std::env::var_os("PGBOUNCER") {
        return Ok(PathBuf::from(path));
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join("pgbouncer");
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(ClusterError::new(BOUNCER_NOT_FOUND))
}

impl Cluster {
    /// Starts a PgBouncer in `mode` in front of the proxy; returns once it
    /// answers a query as `app`.
    pub fn pgbouncer(&self, mode: PoolMode) -> Result<Bouncer, ClusterError> {
        let bin = find_pgbouncer()?;
        let dir = self.dir().join(format!("pgbouncer-{}", mode.name()));
        std::fs::create_dir_all(&dir).map_err(io_error("create PgBouncer's directory"))?;
        self.server.chown(&dir)?;
        let port = PortLease::new()?;
        let log = dir.join("pgbouncer.log");
        let users = dir.join("userlist.txt");
        self.server
            .write_file(&users, &format!("\"{APP}\" \"\"\n\"{SUPERUSER}\" \"\"\n"))?;
        let ini = dir.join("pgbouncer.ini");
        self.server.write_file(
            &ini,
            &format!(
                "[databases]\n\
                 {APP} = host=127.0.0.1 port={proxy} dbname={APP}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = {mode}\n\
                 default_pool_size = 20\n\
                 max_client_conn = 500\n\
                 logfile = {log}\n\
                 admin_users = {SUPERUSER}\n\
                 ignore_startup_parameters = extra_float_digits,search_path,options\n",
                proxy = self.proxy.port,
                port = port.0,
                users = users.display(),
                mode = mode.name(),
                log = log.display(),
            ),
        )?;
        let mut cmd = Command::new("sh");
        self.server.prepare(&mut cmd, &dir);
        let wrapper = cmd
            .arg("-c")
            .arg(BOUNCER)
            .arg("pgbouncer")
            .arg(&bin)
            .arg(&ini)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("spawn pgbouncer"))?;
        let bouncer = Bouncer { port, wrapper, log };
        let url = bouncer.url();
        let ready = block_on(poll("PgBouncer answering", move || {
            let url = url.clone();
            async move {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::raw_sql("SELECT 1").execute(&mut conn).await?;
                conn.close().await?;
                Ok(true)
            }
        }))?;
        ready.map_err(|e| ClusterError::with_log(e, &bouncer.log))?;
        Ok(bouncer)
    }
}

impl Bouncer {
    /// `postgres://app@127.0.0.1:<port>/app`, through PgBouncer.
    pub fn url(&self) -> String {
        format!("postgres://{APP}@127.0.0.1:{}/{APP}", self.port.0)
    }

    pub fn port(&self) -> u16 {
        self.port.0
    }

    /// The last `lines` lines of PgBouncer's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- pg_cluster: last {LOG_TAIL} lines of {} ---\n{}",
                self.log.display(),
                self.log_tail(LOG_TAIL)
            );
        }
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
    }
}

// ---------------------------------------------------------------- logs

/// The last `lines` lines of a file (or why there are none).
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({e})"),
    }
}

/// What a log gained after byte `offset`.
fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
