//! Real SQLite files, real pools, real faults.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::mpsc;
use tower_db_liveness::{GaveUp, LivePool, LivePoolBuilder};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type PoolFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = sqlx::Result<SqlitePool>> + Send>>;

/// A database file in its own directory inside a temporary root, so the
/// directory can be deleted while the root (where rescues land) stays.
pub struct TestDb {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    pub path: PathBuf,
    pub journal: SqliteJournalMode,
}

impl TestDb {
    pub fn new(journal: SqliteJournalMode) -> std::io::Result<Self> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("data");
        std::fs::create_dir(&dir)?;
        let path = dir.join("app.db");
        Ok(TestDb {
            root,
            dir,
            path,
            journal,
        })
    }

    pub fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(self.journal)
            .busy_timeout(std::time::Duration::from_millis(1000))
    }

    /// Pool options that keep old connections around, as a busy service does,
    /// and start no maintenance task.
    pub fn pool_options() -> SqlitePoolOptions {
        SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(std::time::Duration::from_secs(3))
    }

    pub fn rm_rf_dir(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }

    /// Unlinks the database file and its -wal, -shm and -journal companions.
    pub fn unlink_files(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let companion = companion(&self.path, suffix);
            if companion.exists() {
                std::fs::remove_file(companion)?;
            }
        }
        Ok(())
    }

    pub fn rename_file(&self) -> std::io::Result<()> {
        std::fs::rename(&self.path, self.dir.join("app.db.moved"))
    }

    pub fn rename_dir(&self) -> std::io::Result<()> {
        std::fs::rename(&self.dir, self.root.path().join("data.moved"))
    }

    /// A database of the same application with `rows` rows, written beside
    /// the live one (a backup to restore); its rows read `<name> <i>`.
    pub async fn backup(
        &self,
        name: &str,
        rows: usize,
    ) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
        let path = self.root.path().join(name);
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete),
        )
        .await?;
        create_table(&pool).await?;
        for i in 0..rows {
            insert(&pool, &format!("{name} {i}")).await?;
        }
        pool.close().await;
        Ok(path)
    }

    /// Puts a different, valid (empty) database of the same application at
    /// the path, as an operator's restore does: written beside it, then
    /// renamed over it, leaving whatever `-wal`/`-shm` sit next to the path
    /// in place.
    pub async fn replace_file(&self) -> TestResult {
        let other = self.backup("other.db", 0).await?;
        std::fs::rename(&other, &self.path)?;
        Ok(())
    }
}

/// The crate's private rescue directory for an `app.db` under `parent`, a
/// place other than the database's own directory (an ancestor, a
/// `rescue_dir`), where its name carries a hash of the database's path:
/// `app.db.<hash>.rescues`, the only one there.
pub fn shared_rescues_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let parent = std::fs::canonicalize(parent)?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(&parent)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with("app.db.") && n.ends_with(".rescues"))
        })
        .collect();
    match (found.pop(), found.is_empty()) {
        (Some(dir), true) => Ok(dir),
        _ => Err(std::io::Error::other(format!(
            "not exactly one app.db.<hash>.rescues in {}",
            parent.display()
        ))),
    }
}

pub fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub async fn create_table<'c, E: sqlx::SqliteExecutor<'c>>(executor: E) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE)",
    )
    .execute(executor)
    .await
    .map(drop)
}

pub async fn insert(pool: &SqlitePool, body: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO notes(body) VALUES (?)")
        .bind(body)
        .execute(pool)
        .await
        .map(drop)
}

pub async fn count(pool: &SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(pool)
        .await
}

/// The notes' bodies in a database file, in order, through a fresh
/// connection of its own.
pub async fn bodies_in_file(path: &Path) -> sqlx::Result<Vec<String>> {
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await?;
    let bodies = sqlx::query_scalar("SELECT body FROM notes ORDER BY id")
        .fetch_all(&pool)
        .await;
    pool.close().await;
    bodies
}

/// Counts the rows of a database file through a fresh connection of its own.
pub async fn count_in_file(path: &Path) -> sqlx::Result<i64> {
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await?;
    let rows = count(&pool).await;
    pool.close().await;
    rows
}

/// Applies `fault` while a connection of `pool` is open on the file, then
/// writes on that connection and returns the error the write gets (1032 in
/// DELETE journal mode after a deletion or a move).
pub async fn fail_write_after(
    pool: &SqlitePool,
    fault: impl FnOnce() -> std::io::Result<()>,
) -> Result<sqlx::Error, Box<dyn std::error::Error + Send + Sync>> {
    let mut old = pool.acquire().await?;
    sqlx::query("SELECT count(*) FROM notes")
        .execute(&mut *old)
        .await?;
    fault()?;
    match sqlx::query("INSERT INTO notes(body) VALUES ('after the fault')")
        .execute(&mut *old)
        .await
    {
        Ok(_) => Err("a write after the fault succeeded".into()),
        Err(err) => Ok(err),
    }
}

/// Makes every connection of the pool open (and idle) on the current file,
/// as in a busy service: the pool is full, so a request after a fault gets a
/// connection opened before it.
pub async fn warm(pool: &SqlitePool) -> sqlx::Result<()> {
    let mut held = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        held.push(pool.acquire().await?);
    }
    for conn in &mut held {
        sqlx::query("SELECT count(*) FROM notes")
            .execute(&mut **conn)
            .await?;
    }
    Ok(())
}

/// The injected exit action: records each give-up instead of exiting.
pub struct Exits {
    rx: mpsc::UnboundedReceiver<GaveUp>,
}

impl Exits {
    pub fn install(builder: LivePoolBuilder) -> (LivePoolBuilder, Exits) {
        let (tx, rx) = mpsc::unbounded_channel();
        let builder = builder.on_give_up(move |gave_up| {
            let _ = tx.send(gave_up.clone());
        });
        (builder, Exits { rx })
    }

    /// The next give-up, waiting at most 30 s: `None` (with a message) when
    /// none came, so a missing give-up fails the test instead of hanging it.
    pub async fn next(&mut self) -> Option<GaveUp> {
        match tokio::time::timeout(std::time::Duration::from_secs(30), self.rx.recv()).await {
            Ok(gave_up) => gave_up,
            Err(_) => {
                eprintln!("Exits::next: no give-up within 30 s");
                None
            }
        }
    }

    pub fn count_now(&mut self) -> usize {
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }
}

/// A reopen that counts its calls and creates the table, as an app's
/// migrations would.
pub fn counting_reopen(
    options: SqliteConnectOptions,
) -> (
    Arc<AtomicUsize>,
    impl Fn() -> PoolFuture + Send + Sync + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let reopen = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let options = options.clone();
        Box::pin(async move {
            let pool = TestDb::pool_options().connect_with(options).await?;
            create_table(&pool).await?;
            Ok(pool)
        }) as PoolFuture
    };
    (calls, reopen)
}

/// Opens a LivePool over `db` with a counting reopen, no watchdog (tests of
/// the watchdog turn it on themselves) and an injected exit action.
pub async fn open_live(
    db: &TestDb,
    configure: impl FnOnce(LivePoolBuilder) -> LivePoolBuilder,
) -> Result<(LivePool, Arc<AtomicUsize>, Exits), Box<dyn std::error::Error + Send + Sync>> {
    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    create_table(&pool).await?;
    let (calls, reopen) = counting_reopen(db.options());
    let builder = LivePool::builder_with_pool(pool, reopen).watchdog_interval(None);
    let (builder, exits) = Exits::install(configure(builder));
    let live = builder.open().await?;
    Ok((live, calls, exits))
}

/// Waits for `future`, failing the test instead of hanging it when what it
/// waits for never happens. A bound on a hang, not a timing assertion.
pub async fn within<T>(
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    const BOUND: std::time::Duration = std::time::Duration::from_secs(30);
    tokio::time::timeout(BOUND, future)
        .await
        .map_err(|_| format!("{what}: did not happen within {BOUND:?}").into())
}

/// A small real filesystem (a tmpfs; where mounting one is not permitted,
/// a loop-mounted ext2 image), for full-disk faults. Tests fail, never
/// skip, when neither can be mounted.
/// Writes `path` until the filesystem refuses with ENOSPC, and keeps it.
/// Returns how many bytes it holds.
pub fn fill(path: &Path) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    // Large chunks, then smaller ones, down to a byte: the filesystem ends up
    // with no room left for even one more block.
    for chunk in [64 * 1024, 4096, 512, 1] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match file.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
                Err(err) => return Err(err.into()),
            }
        }
    }
    match file.sync_all() {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(28) => {}
        Err(err) => return Err(err.into()),
    }
    // Proof that the disk is full now: not one more byte is taken.
    let probe = file.write(&[0]);
    if !matches!(&probe, Err(err) if err.raw_os_error() == Some(28)) {
        return Err(format!("the filesystem is not full: one more byte gave {probe:?}").into());
    }
    Ok(written)
}

/// A small filesystem mounted on a temporary directory, unmounted on drop.
pub struct SmallDisk {
    mount_point: PathBuf,
    // Dropped after the unmount (fields drop after `Drop::drop`).
    _root: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size_kib: u32) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let root = tempfile::tempdir()?;
        let mount_point = root.path().join("disk");
        std::fs::create_dir(&mount_point)?;
        let tmpfs = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k,mode=0700"))
            .arg("tmpfs")
            .arg(&mount_point)
            .output()?;
        if tmpfs.status.success() {
            return Ok(SmallDisk {
                mount_point,
                _root: root,
            });
        }
        // No tmpfs (e.g. an unprivileged container): an ext2 image on a loop device.
        let image = root.path().join("disk.img");
        std::fs::File::create(&image)?.set_len(u64::from(size_kib) * 1024)?;
        let mkfs = std::process::Command::new("mkfs.ext2")
            .arg("-q")
            .arg("-F")
            .arg(&image)
            .output()?;
        let looped = mkfs.status.success().then(|| {
            std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount_point)
                .output()
        });
        match looped {
            Some(Ok(out)) if out.status.success() => Ok(SmallDisk {
                mount_point,
                _root: root,
            }),
            other => Err(format!(
                "this test needs a small real filesystem and could mount neither a tmpfs ({}) \
                 nor a loop-mounted ext2 image (mkfs: {}; mount: {:?})",
                String::from_utf8_lossy(&tmpfs.stderr).trim(),
                String::from_utf8_lossy(&mkfs.stderr).trim(),
                other.map(|r| r.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())),
            )
            .into()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a test failed with a process or connection on it): detach it.
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&self.mount_point)
                .status();
        }
    }
}

/// A directory for a database that must not live in the temporary
/// directory (a rescue there would count as durable): under the cargo
/// target's, unless the checkout itself is in the temporary directory (a
/// CI clone in `/tmp`), then under `/var/tmp`.
pub fn outside_temporary_dir() -> std::io::Result<tempfile::TempDir> {
    let temp = std::fs::canonicalize(std::env::temp_dir())?;
    let target = std::fs::canonicalize(env!("CARGO_TARGET_TMPDIR"))?;
    let base = if target.starts_with(&temp) {
        PathBuf::from("/var/tmp")
    } else {
        target
    };
    tempfile::tempdir_in(base)
}
