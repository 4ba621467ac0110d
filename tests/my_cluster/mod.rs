//! A real MariaDB primary and GTID replica behind a TCP proxy, for tests and
//! examples: the topology of `mysql-failure-modes.md` §0.
//!
//! ```text
//!   pool ──► proxy 127.0.0.1:<proxy> ──► m1 127.0.0.1:<port>  primary (server_id 1)
//!            (the VIP / endpoint)     └─► m2 127.0.0.1:<port>  replica, read_only (server_id 2)
//! ```
//!
//! Tests: `mod my_cluster;`. Examples: `#[path = "../tests/my_cluster/mod.rs"]`.
//!
//! * **Blocking API**, as `tests/pg_cluster`: every call returns once the
//!   cluster is in its new state, from any thread; admin SQL runs on a
//!   short-lived thread with its own runtime, the proxy on a thread with its
//!   own runtime. Admin operations are serialized.
//! * **Server binaries:** `mariadbd` and `mariadb-install-db` from `MARIADB_BIN`
//!   if set, else `/usr/sbin` and `/usr/bin` (Debian's `mariadb-server`).
//!   None found is an error that says what to install: tests fail, they never
//!   skip.
//! * **Root.** When the effective uid is 0, every server binary runs as the
//!   `mysql` system user that Debian's `mariadb-server` creates (`mariadbd`
//!   refuses root without `--user`), and the cluster's directory is chowned to
//!   it. The system's own MariaDB service is never started or touched: each
//!   node is `mariadbd --no-defaults` on a free port of 127.0.0.1.
//! * **Where.** `TMPDIR` if set; else `/dev/shm` if it is a tmpfs of at least
//!   1 GiB; else the system's temporary directory.
//! * **Speed.** `mariadb-install-db` runs once per process, into a template;
//!   each node copies it (`cp -a`). Each start runs an `--init-file` that
//!   creates the users and the `probe` database (not binlogged), so the two
//!   nodes begin with the same data and no GTIDs.
//! * **Users.** `admin`/`admin` (everything, `READ_ONLY ADMIN` included: it
//!   writes through `read_only`, and runs replication) and `app`/`app` (`ALL ON
//!   probe.*`, no `READ_ONLY ADMIN`, no `SUPER`: `read_only` binds it, as it
//!   binds an application).
//! * **Cleanup.** Dropping the `Cluster` stops the proxy, kills both servers
//!   and removes the directory, also when a test panics. A killed process runs
//!   no `Drop`, so each cluster (and the template) also has a watchdog: a `sh`
//!   child that ignores SIGHUP, SIGINT and SIGTERM and blocks reading a pipe
//!   only this process holds. When the process exits for any reason, even
//!   SIGKILL, the pipe closes and the watchdog kills the servers (from their
//!   pid files) and removes the directory. `Drop` uses that same path.
//! * **Logs.** Each node logs to `<dir>/<node>/error.log`; errors carry its
//!   tail, and a `Cluster` dropped during a panic prints both tails.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, MySqlConnection, Row as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

pub const ADMIN: &str = "admin";
pub const APP: &str = "app";
pub const DATABASE: &str = "probe";

/// How long a node may take to accept connections.
const READY_BOUND: Duration = Duration::from_secs(60);
const ATTEMPT_BOUND: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
const ADMIN_BOUND: Duration = Duration::from_secs(90);
const LOG_TAIL: usize = 40;

const NOT_FOUND: &str = "MariaDB server binaries not found: install Debian's `mariadb-server` \
     (apt-get install -y mariadb-server; the system service need not run) or set MARIADB_BIN \
     to a directory holding mariadbd and mariadb-install-db";

/// Run at every start of a node, before it accepts connections; not binlogged,
/// so both nodes hold the same users and no GTID of their own.
const INIT: &str = "SET sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'admin'@'%' IDENTIFIED BY 'admin';
GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app';
GRANT ALL ON probe.* TO 'app'@'%';
CREATE DATABASE IF NOT EXISTS probe;
";

/// Run by the watchdog: `sh -c WATCHDOG watchdog <dir> <pid file>...`.
/// `read` returns only at EOF: nothing is ever written to the pipe.
const WATCHDOG: &str = r#"trap '' HUP INT TERM
read -r _
dir=$1; shift
for pidfile in "$@"; do
  [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
done
sleep 0.2
rm -rf "$dir"
"#;

// ---------------------------------------------------------------- public types

/// One of the two nodes. `M1` starts as the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    M1,
    M2,
}

impl Node {
    pub const ALL: [Node; 2] = [Node::M1, Node::M2];

    pub fn other(self) -> Node {
        match self {
            Node::M1 => Node::M2,
            Node::M2 => Node::M1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Node::M1 => "m1",
            Node::M2 => "m2",
        }
    }

    /// Its `@@server_id`.
    pub fn server_id(self) -> u64 {
        self.index() as u64 + 1
    }

    fn index(self) -> usize {
        match self {
            Node::M1 => 0,
            Node::M2 => 1,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a cluster operation failed, with the relevant server log's tail.
pub struct ClusterError(pub String);

impl ClusterError {
    fn new(message: impl Into<String>) -> Self {
        ClusterError(message.into())
    }

    fn with_log(message: impl Into<String>, log: &Path) -> Self {
        ClusterError(format!(
            "{}\n--- last {LOG_TAIL} lines of {} ---\n{}",
            message.into(),
            log.display(),
            tail(log, LOG_TAIL)
        ))
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

/// A primary, its GTID replica and the proxy in front of them.
pub struct Cluster {
    // Fields drop in this order: the proxy's sockets close first, then the
    // servers are killed and the directory goes, then the ports are released.
    proxy: Proxy,
    server: &'static Server,
    nodes: [NodeDirs; 2],
    children: Mutex<[Option<Child>; 2]>,
    primary: AtomicUsize,
    running: [AtomicBool; 2],
    /// Serializes admin operations (not the proxy's controls).
    admin: Mutex<()>,
    teardown: Teardown,
    /// A node whose port was taken before it bound it moves to another.
    ports: Mutex<[PortLease; 2]>,
}

impl Cluster {
    /// Builds and starts the cluster; returns once m1 accepts connections as
    /// the primary, m2 as a read-only replica that has applied m1's binlog.
    /// The proxy points at m1.
    pub fn start() -> Result<Cluster, ClusterError> {
        let server = server()?;
        let template = template()?;
        let dir = tempfile::Builder::new()
            .prefix("my-cluster-")
            .tempdir_in(base_dir())
            .map_err(io_error("create the cluster's temporary directory"))?
            .keep();
        let nodes = Node::ALL.map(|node| NodeDirs::new(&dir, node));
        let teardown = Teardown::spawn(server, dir.clone(), &nodes)?;
        server.write_file(&dir.join("init.sql"), INIT)?;
        for n in &nodes {
            std::fs::create_dir(&n.dir).map_err(io_error("create a node directory"))?;
            server.chown(&n.dir)?;
            server.run(
                server
                    .tool("cp", &n.dir)
                    .arg("-a")
                    .arg(&template.data)
                    .arg(&n.data),
            )?;
        }
        let ports = [PortLease::new()?, PortLease::new()?];
        let cluster = Cluster {
            proxy: Proxy::start([ports[0].0, ports[1].0], Node::M1)
                .map_err(io_error("start the proxy (its thread and runtime)"))?,
            server,
            nodes,
            children: Mutex::new([None, None]),
            primary: AtomicUsize::new(Node::M1.index()),
            running: [AtomicBool::new(false), AtomicBool::new(false)],
            admin: Mutex::new(()),
            teardown,
            ports: Mutex::new(ports),
        };
        cluster.spawn_node(Node::M1)?;
        cluster.spawn_node(Node::M2)?;
        let m1 = cluster.admin_url(Node::M1);
        let (m1_port, m2) = (cluster.port(Node::M1), cluster.admin_url(Node::M2));
        cluster.sql(Node::M2, "replicate from m1", async move {
            execute(&m1, &["CREATE DATABASE IF NOT EXISTS harness"]).await?;
            let change = format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={m1_port}, \
                 MASTER_USER='{ADMIN}', MASTER_PASSWORD='{ADMIN}', MASTER_USE_GTID=slave_pos"
            );
            execute_owned(&m2, &[change, "START SLAVE".into()]).await?;
            catch_up(&m1, &m2).await
        })?;
        Ok(cluster)
    }

    // ------------------------------------------------------------ addresses

    /// The application's URL, through the proxy.
    pub fn url(&self) -> String {
        app_url_at(self.proxy.port)
    }

    /// The application's URL straight to one node, bypassing the proxy.
    pub fn direct_url(&self, node: Node) -> String {
        app_url_at(self.port(node))
    }

    /// The admin's URL straight to one node.
    pub fn admin_url(&self, node: Node) -> String {
        format!(
            "mysql://{ADMIN}:{ADMIN}@127.0.0.1:{}/{DATABASE}?ssl-mode=disabled",
            self.port(node)
        )
    }

    pub fn port(&self, node: Node) -> u16 {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())[node.index()].0
    }

    pub fn proxy_port(&self) -> u16 {
        self.proxy.port
    }

    pub fn dir(&self) -> &Path {
        &self.teardown.dir
    }

    pub fn log_tail(&self, node: Node, lines: usize) -> String {
        tail(&self.nodes[node.index()].log, lines)
    }

    // ------------------------------------------------------------ roles

    /// The node that is primary now (changed only by [`Cluster::switchover`]).
    pub fn primary(&self) -> Node {
        Node::ALL[self.primary.load(Ordering::SeqCst)]
    }

    pub fn replica(&self) -> Node {
        self.primary().other()
    }

    // ------------------------------------------------------------ proxy

    /// New connections go to `node` from now on; existing ones keep theirs.
    pub fn repoint(&self, node: Node) {
        self.proxy
            .shared
            .target
            .store(node.index(), Ordering::SeqCst);
    }

    pub fn target(&self) -> Node {
        Node::ALL[self.proxy.shared.target.load(Ordering::SeqCst)]
    }

    /// `true`: the proxy forwards nothing in either direction and keeps every
    /// socket open. `false`: the held bytes flow on.
    pub fn black_hole(&self, on: bool) {
        self.proxy.shared.black_hole.send_replace(on);
    }

    /// Connections the proxy accepted while pointing at `node`.
    pub fn accepted(&self, node: Node) -> u64 {
        self.proxy.shared.accepted[node.index()].load(Ordering::SeqCst)
    }

    // ------------------------------------------------------------ faults

    /// The realistic switchover, where the old primary stays up (S2 of the
    /// measurements): old `SET GLOBAL read_only=ON`; the replica catches up
    /// (`MASTER_GTID_WAIT`); the replica `STOP SLAVE; RESET SLAVE ALL;
    /// SET GLOBAL read_only=OFF`; the old primary becomes its replica
    /// (`MASTER_USE_GTID=current_pos`). No connection is broken. The proxy
    /// is NOT repointed. Returns the new primary.
    pub fn switchover(&self) -> Result<Node, ClusterError> {
        let _admin = self.lock();
        let old = self.primary();
        let new = old.other();
        let (old_url, new_url) = (self.admin_url(old), self.admin_url(new));
        let new_port = self.port(new);
        self.sql(new, "switchover", async move {
            execute(&old_url, &["SET GLOBAL read_only = ON"]).await?;
            catch_up(&old_url, &new_url).await?;
            execute(
                &new_url,
                &[
                    "STOP SLAVE",
                    "RESET SLAVE ALL",
                    "SET GLOBAL read_only = OFF",
                ],
            )
            .await?;
            let change = format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={new_port}, \
                 MASTER_USER='{ADMIN}', MASTER_PASSWORD='{ADMIN}', MASTER_USE_GTID=current_pos"
            );
            execute_owned(&old_url, &[change, "START SLAVE".into()]).await
        })?;
        self.primary.store(new.index(), Ordering::SeqCst);
        Ok(new)
    }

    /// `SET GLOBAL read_only = ON|OFF` on `node`.
    pub fn set_read_only(&self, node: Node, on: bool) -> Result<(), ClusterError> {
        let _admin = self.lock();
        let url = self.admin_url(node);
        let sql = if on {
            "SET GLOBAL read_only = ON"
        } else {
            "SET GLOBAL read_only = OFF"
        };
        self.sql(node, sql, async move { execute(&url, &[sql]).await })
    }

    /// `SET GLOBAL max_connections = n` on `node`.
    pub fn set_max_connections(&self, node: Node, n: u32) -> Result<(), ClusterError> {
        let _admin = self.lock();
        let url = self.admin_url(node);
        let sql = format!("SET GLOBAL max_connections = {n}");
        self.sql(node, "max_connections", async move {
            execute_owned(&url, &[sql]).await
        })
    }

    /// `KILL` every connection of user `app` on `node`; returns how many.
    pub fn kill_app_connections(&self, node: Node) -> Result<usize, ClusterError> {
        let _admin = self.lock();
        let url = self.admin_url(node);
        self.sql(node, "kill app connections", async move {
            let mut conn = MySqlConnection::connect(&url).await?;
            let ids: Vec<u64> = sqlx::query_scalar(
                "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist WHERE user = 'app'",
            )
            .fetch_all(&mut conn)
            .await?;
            for id in &ids {
                // Gone meanwhile (1094 unknown thread) is fine.
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                    .execute(&mut conn)
                    .await;
            }
            conn.close().await?;
            Ok(ids.len())
        })
    }

    /// Connections of user `app` on `node` (`information_schema.processlist`).
    pub fn app_connections(&self, node: Node) -> Result<usize, ClusterError> {
        let url = self.admin_url(node);
        self.sql(node, "count app connections", async move {
            let n: i64 = fetch(
                &url,
                "SELECT count(*) FROM information_schema.processlist WHERE user = 'app'",
            )
            .await?;
            Ok(n as usize)
        })
    }

    /// Rows of `probe.<table>` on `node`, by `id` (read as the admin, directly).
    pub fn ids(&self, node: Node, table: &str) -> Result<HashSet<i64>, ClusterError> {
        let url = self.admin_url(node);
        let sql = format!("SELECT CAST(id AS SIGNED) FROM probe.{table}");
        self.sql(node, "read ids", async move {
            let mut conn = MySqlConnection::connect(&url).await?;
            let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await?;
            conn.close().await?;
            Ok(ids.into_iter().collect())
        })
    }

    /// Until `node` (a replica) has applied everything the primary wrote.
    pub fn catch_up(&self, node: Node) -> Result<(), ClusterError> {
        let primary = self.admin_url(self.primary());
        let url = self.admin_url(node);
        self.sql(
            node,
            "catch up",
            async move { catch_up(&primary, &url).await },
        )
    }

    /// Asks `node` directly, as the app: (`@@global.read_only`, `@@server_id`).
    pub fn read_only(&self, node: Node) -> Result<bool, ClusterError> {
        let url = self.direct_url(node);
        self.sql(node, "@@global.read_only", async move {
            let v: i64 = fetch(&url, "SELECT @@global.read_only").await?;
            Ok(v != 0)
        })
    }

    /// A clean shutdown (`SHUTDOWN`) of `node`, waiting for the process to exit.
    pub fn stop_node(&self, node: Node) -> Result<(), ClusterError> {
        let _admin = self.lock();
        let url = self.admin_url(node);
        // The server closes the connection while answering.
        let _ = block_on(async move {
            let mut conn = MySqlConnection::connect(&url).await?;
            sqlx::raw_sql("SHUTDOWN").execute(&mut conn).await.map(drop)
        });
        self.reap(node)
    }

    /// Starts a stopped `node` again on its port, in the role it had.
    pub fn start_node(&self, node: Node) -> Result<(), ClusterError> {
        let _admin = self.lock();
        self.spawn_node(node)
    }

    // ------------------------------------------------------------ internals

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn children(&self) -> MutexGuard<'_, [Option<Child>; 2]> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `mariadbd --no-defaults` for `node`, then waits until the admin can
    /// connect. A port found free can be taken by someone else before the
    /// server binds it (an accepted race): a start that fails on "Address
    /// already in use" is retried on another port, which the proxy follows.
    fn spawn_node(&self, node: Node) -> Result<(), ClusterError> {
        let log = &self.nodes[node.index()].log;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let logged = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
            match self.spawn_once(node) {
                Ok(()) => return Ok(()),
                Err(e) if attempts < 5 && log_since(log, logged).contains("already in use") => {
                    drop(e);
                    let lease = PortLease::new()?;
                    self.proxy.shared.upstream[node.index()].store(lease.0, Ordering::SeqCst);
                    self.ports.lock().unwrap_or_else(|e| e.into_inner())[node.index()] = lease;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn_once(&self, node: Node) -> Result<(), ClusterError> {
        let n = &self.nodes[node.index()];
        let port = self.port(node);
        let mut cmd = self.server.tool("mariadbd", &n.dir);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", n.data.display()))
            .arg(format!("--socket={}", n.dir.join("sock").display()))
            .arg(format!("--pid-file={}", n.pid.display()))
            .arg(format!("--log-error={}", n.log.display()))
            .arg(format!(
                "--init-file={}",
                self.dir().join("init.sql").display()
            ))
            .arg(format!("--port={port}"))
            .arg(format!("--server-id={}", node.server_id()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--log-bin=binlog",
                "--binlog-format=ROW",
                "--log-slave-updates",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--sync-binlog=0",
                "--max-connections=100",
            ]);
        if node != self.primary() {
            cmd.arg("--read-only=1");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("spawn mariadbd"))?;
        self.children()[node.index()] = Some(child);
        self.running[node.index()].store(true, Ordering::SeqCst);
        // Until the admin can connect; a server that exited is an error at
        // once (with its log), not a wait for the bound.
        let url = self.admin_url(node);
        let deadline = Instant::now() + READY_BOUND;
        loop {
            let exited = self.children()[node.index()]
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.children()[node.index()] = None;
                self.running[node.index()].store(false, Ordering::SeqCst);
                return Err(ClusterError::with_log(
                    format!("{node}: mariadbd exited at start ({status})"),
                    &n.log,
                ));
            }
            // Ours, not another server that holds the port (one of another
            // test's clusters, when this one could not bind it and is about
            // to exit on "Address already in use"): its pid file says.
            let url = url.clone();
            let ours = n.pid.display().to_string();
            let last = match block_on(async move {
                tokio::time::timeout(ATTEMPT_BOUND, fetch::<String>(&url, "SELECT @@pid_file"))
                    .await
            }) {
                Ok(Ok(Ok(pid_file))) if pid_file == ours => return Ok(()),
                Ok(Ok(Ok(other))) => format!("another server answers on the port ({other})"),
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(_)) => format!("one attempt took over {ATTEMPT_BOUND:?}"),
                Err(e) => e.0,
            };
            if Instant::now() >= deadline {
                return Err(ClusterError::with_log(
                    format!(
                        "{node}: not accepting connections after {READY_BOUND:?} (last: {last})"
                    ),
                    &n.log,
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) for `node`'s process to exit.
    fn reap(&self, node: Node) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_BOUND;
        let mut children = self.children();
        if let Some(child) = children[node.index()].as_mut() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                    Ok(None) => {
                        return Err(ClusterError::with_log(
                            format!("{node} did not exit within {READY_BOUND:?}"),
                            &self.nodes[node.index()].log,
                        ));
                    }
                    Err(e) => return Err(ClusterError::new(format!("wait for {node}: {e}"))),
                }
            }
        }
        children[node.index()] = None;
        self.running[node.index()].store(false, Ordering::SeqCst);
        Ok(())
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in Node::ALL {
                eprintln!(
                    "--- my_cluster: last {LOG_TAIL} lines of {} ---\n{}",
                    self.nodes[node.index()].log.display(),
                    self.log_tail(node, LOG_TAIL)
                );
            }
        }
        // The teardown kills the servers; reap them here so no zombie stays.
        let mut children = self.children();
        for child in children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------- nodes

struct NodeDirs {
    /// `<cluster>/<node>`: owned by the server user; holds the log.
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pid: PathBuf,
}

impl NodeDirs {
    fn new(cluster: &Path, node: Node) -> Self {
        let dir = cluster.join(node.name());
        NodeDirs {
            data: dir.join("data"),
            log: dir.join("error.log"),
            pid: dir.join("mariadbd.pid"),
            dir,
        }
    }
}

/// Ports handed to nodes of live clusters in this process.
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

/// Owns a directory and the servers in it. Dropping it (or this process
/// dying) closes the watchdog's pipe; the watchdog then kills the servers and
/// removes the directory.
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
                .arg("my-cluster-watchdog")
                .arg(&dir)
                .args(nodes.iter().map(|n| &n.pid))
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- the server binaries and user

struct Server {
    sbin: PathBuf,
    bin: PathBuf,
    /// (uid, gid) to run server binaries as: `mysql` when this process is
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
        let (sbin, bin) = match std::env::var_os("MARIADB_BIN") {
            Some(dir) => (PathBuf::from(&dir), PathBuf::from(dir)),
            None => (PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")),
        };
        if !sbin.join("mariadbd").is_file() || !bin.join("mariadb-install-db").is_file() {
            return Err(NOT_FOUND.to_string());
        }
        let user = if effective_uid()? == 0 {
            let (uid, gid) = passwd_entry("mysql").ok_or_else(|| {
                "running as root, where mariadbd refuses to run without --user, and there is no \
                 `mysql` user in /etc/passwd to run it as: install Debian's `mariadb-server` \
                 package, which creates it, or run as an unprivileged user"
                    .to_string()
            })?;
            Some((uid, gid))
        } else {
            None
        };
        Ok(Server { sbin, bin, user })
    }

    /// A server binary (or a plain tool from PATH), run as the server user
    /// with a clean environment.
    fn tool(&self, program: &str, cwd: &Path) -> Command {
        let path = [self.sbin.join(program), self.bin.join(program)]
            .into_iter()
            .find(|p| p.is_file());
        let mut cmd = match path {
            Some(path) => Command::new(path),
            None => Command::new(program),
        };
        self.prepare(&mut cmd, cwd);
        cmd
    }

    fn prepare(&self, cmd: &mut Command, cwd: &Path) {
        // MYSQL_HOST, MYSQL_PWD, ... of the caller must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MYSQL") {
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
            "\n(this ran as the `mysql` user: every directory above the cluster's must be \
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
                .map_err(io_error(&format!("chown {} to mysql", path.display()))),
            None => Ok(()),
        }
    }

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        std::fs::write(path, contents).map_err(io_error(&format!("write {}", path.display())))?;
        self.chown(path)
    }
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

/// `TMPDIR` if it is set; else `/dev/shm` if it is a tmpfs of at least
/// 1 GiB; else the system's temporary directory.
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

/// A data directory made by `mariadb-install-db` once per process; removed
/// by its watchdog when the process exits.
struct Template {
    data: PathBuf,
    _teardown: Teardown,
}

fn template() -> Result<&'static Template, ClusterError> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| Template::create().map_err(|e| e.0))
        .as_ref()
        .map_err(|e| ClusterError::new(format!("building the template data directory: {e}")))
}

impl Template {
    fn create() -> Result<Template, ClusterError> {
        let server = server()?;
        let dir = tempfile::Builder::new()
            .prefix("my-cluster-template-")
            .tempdir_in(base_dir())
            .map_err(io_error("create the template's temporary directory"))?
            .keep();
        let teardown = Teardown::spawn(server, dir.clone(), &[])?;
        let data = dir.join("data");
        server.run(
            server
                .tool("mariadb-install-db", &dir)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    "--innodb-log-file-size=16M",
                ]),
        )?;
        Ok(Template {
            data,
            _teardown: teardown,
        })
    }
}

// ---------------------------------------------------------------- admin SQL

fn app_url_at(port: u16) -> String {
    format!("mysql://{APP}:{APP}@127.0.0.1:{port}/{DATABASE}?ssl-mode=disabled")
}

/// Runs `fut` to completion on a thread of its own with its own runtime, so
/// it works from any thread, in a runtime or not. Bounded by `ADMIN_BOUND`.
fn block_on<F>(fut: F) -> Result<F::Output, ClusterError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("my-cluster-admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
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
    T: for<'r> sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql> + Send + Unpin,
{
    let mut conn = MySqlConnection::connect(url).await?;
    let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(value)
}

/// Statements, one at a time, on a fresh connection.
async fn execute(url: &str, statements: &[&'static str]) -> Result<(), sqlx::Error> {
    let owned: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
    execute_owned(url, &owned).await
}

async fn execute_owned(url: &str, statements: &[String]) -> Result<(), sqlx::Error> {
    let mut conn = MySqlConnection::connect(url).await?;
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await
}

/// Until the replica at `replica` has applied the primary's binlog position
/// (`MASTER_GTID_WAIT`, which the server signals: no polling).
async fn catch_up(primary: &str, replica: &str) -> Result<(), sqlx::Error> {
    let mut conn = MySqlConnection::connect(primary).await?;
    let row = sqlx::raw_sql("SELECT @@gtid_binlog_pos")
        .fetch_one(&mut conn)
        .await?;
    let pos: String = row
        .try_get_unchecked::<Option<String>, _>(0)?
        .unwrap_or_default();
    conn.close().await?;
    let mut conn = MySqlConnection::connect(replica).await?;
    let wait = format!("SELECT MASTER_GTID_WAIT('{pos}', 30)");
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(wait))
        .fetch_one(&mut conn)
        .await?;
    let waited: Option<String> = row.try_get_unchecked(0)?;
    conn.close().await?;
    if waited.as_deref() != Some("0") {
        return Err(sqlx::Error::Protocol(format!(
            "the replica did not reach {pos} within 30 s (MASTER_GTID_WAIT: {waited:?})"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- the proxy

/// The VIP: a TCP proxy on its own thread and runtime. A new connection goes
/// to the node it points at when it accepts; existing ones keep theirs. If
/// that node does not answer, the client gets an RST.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ProxyShared {
    upstream: [AtomicU16; 2],
    target: AtomicUsize,
    black_hole: watch::Sender<bool>,
    accepted: [AtomicU64; 2],
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
            upstream: upstream.map(AtomicU16::new),
            target: AtomicUsize::new(target.index()),
            black_hole: watch::Sender::new(false),
            accepted: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("my-cluster-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = stop => {}
                        () = accept_loop(listener, accepting) => {}
                    }
                });
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
                eprintln!("my_cluster proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let node = shared.target.load(Ordering::SeqCst);
        shared.accepted[node].fetch_add(1, Ordering::SeqCst);
        let port = shared.upstream[node].load(Ordering::SeqCst);
        tokio::spawn(serve(client, port, shared.clone()));
    }
}

async fn serve(client: TcpStream, port: u16, shared: Arc<ProxyShared>) {
    let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    let upstream = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(upstream)) => upstream,
        _ => {
            // SO_LINGER 0: the close is an RST.
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
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

/// One direction. A read error or EOF becomes a FIN on the other side. While
/// the black hole is on, whatever was read waits.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &ProxyShared) {
    let mut hole = shared.black_hole.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if *hole.borrow_and_update() && hole.wait_for(|on| !*on).await.is_err() {
            return;
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

// ---------------------------------------------------------------- logs

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
