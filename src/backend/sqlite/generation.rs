//! What is verified and recorded about an opened SQLite pool.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool};

use super::identity::{DbFile, OpenFiles};
use crate::blocking;
use crate::shared::Generation;

/// How long the filesystem calls of a verification may take.
pub(crate) const FS_BOUND: Duration = Duration::from_secs(2);

/// What was recorded about an opened SQLite pool.
pub struct SqliteGeneration {
    /// `None` for in-memory and temporary databases.
    pub(crate) file: Option<DbFile>,
    /// What makes it this application's database (see [`Schema::reattaches`]).
    pub(crate) schema: Schema,
    /// A connection kept aside from the pool, opened before any fault: the
    /// only kind that still reaches a deleted file (for the rescue), and the
    /// one that seals the generation once it is dead.
    pub(crate) sentinel: tokio::sync::Mutex<Option<SqliteConnection>>,
}

/// The application's fingerprint of a database: enough to refuse a reopen
/// onto an empty file, another application's file or a file from another
/// schema version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Schema {
    tables: BTreeSet<String>,
    user_version: i64,
    application_id: i64,
}

impl Schema {
    async fn read(conn: &mut SqliteConnection) -> Result<Self, sqlx::Error> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(&mut *conn)
        .await?;
        let user_version = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *conn)
            .await?;
        let application_id = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut *conn)
            .await?;
        Ok(Schema {
            tables: tables.into_iter().collect(),
            user_version,
            application_id,
        })
    }

    /// Whether a reopened database is the same application's as the one
    /// `old` described: the same `application_id` and `user_version`, and
    /// every table `old` had (a reopen that runs migrations may add tables).
    pub(crate) fn reattaches(&self, old: &Schema) -> Result<(), String> {
        if self.application_id != old.application_id {
            return Err(format!(
                "application_id is {}, was {}",
                self.application_id, old.application_id
            ));
        }
        if self.user_version != old.user_version {
            return Err(format!(
                "user_version is {}, was {}",
                self.user_version, old.user_version
            ));
        }
        let missing: Vec<&str> = old
            .tables
            .difference(&self.tables)
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!("tables missing: {}", missing.join(", ")));
        }
        Ok(())
    }
}

/// Verifies `pool` and records its file and schema. On error the pool is
/// closed in the background.
pub(crate) async fn open(
    pool: SqlitePool,
    number: u64,
    configured: Option<PathBuf>,
    before: OpenFiles,
    healed_at: Option<Instant>,
    fs_bound: Duration,
) -> Result<Generation<Sqlite>, sqlx::Error> {
    match verify(&pool, configured, before, fs_bound).await {
        Ok((file, schema, sentinel)) => Ok(Generation {
            number,
            pool,
            healed_at,
            extra: SqliteGeneration {
                file,
                schema,
                sentinel: tokio::sync::Mutex::new(sentinel),
            },
        }),
        Err(err) => {
            tokio::spawn(async move { pool.close().await });
            Err(err)
        }
    }
}

/// `pool` taken as it is, with nothing verified or recorded: no file, no
/// sentinel, an empty schema. Only for [`LivePool::fixed`](crate::LivePool::fixed),
/// whose policy never heals (there is nothing to rescue or compare).
pub(crate) fn unverified(pool: SqlitePool) -> Generation<Sqlite> {
    Generation {
        number: 0,
        pool,
        healed_at: None,
        extra: SqliteGeneration {
            file: None,
            schema: Schema::default(),
            sentinel: tokio::sync::Mutex::new(None),
        },
    }
}

impl SqliteGeneration {
    /// The schema the generation has now, read through the sentinel (which
    /// still reaches a dead file); what was recorded at open otherwise.
    /// Read at heal time, because an application usually creates its tables
    /// after the pool is open.
    pub(crate) async fn schema_now(&self) -> Schema {
        let mut sentinel = self.sentinel.lock().await;
        let Some(conn) = sentinel.as_mut() else {
            return self.schema.clone();
        };
        // Bounded: a read on a hung mount must not hold the heal for ever.
        match tokio::time::timeout(FS_BOUND, Schema::read(conn)).await {
            Ok(Ok(schema)) => schema,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "the dead database's schema could not be read; using the one recorded at open");
                self.schema.clone()
            }
            Err(_) => {
                tracing::warn!(
                    "the dead database's schema did not answer; using the one recorded at open"
                );
                self.schema.clone()
            }
        }
    }
}

async fn verify(
    pool: &SqlitePool,
    configured: Option<PathBuf>,
    before: OpenFiles,
    fs_bound: Duration,
) -> Result<(Option<DbFile>, Schema, Option<SqliteConnection>), sqlx::Error> {
    // An exclusive-mode connection keeps its lock for ever: the sentinel
    // could never read, and a rescue never run.
    let locking: String = sqlx::query_scalar("PRAGMA locking_mode")
        .fetch_one(pool)
        .await?;
    if locking.eq_ignore_ascii_case("exclusive") {
        return Err(sqlx::Error::Configuration(
            "LivePool does not support locking_mode(Exclusive): its rescue connection \
                 could never read the database; use SqliteLockingMode::Normal"
                .into(),
        ));
    }
    // `SELECT 1` succeeds on a dead handle; reading the schema reads page 1.
    read_page(pool).await?;
    let mut sentinel = SqliteConnection::connect_with(&pool.connect_options()).await?;
    read_page(&mut sentinel).await?;
    let schema = Schema::read(&mut sentinel).await?;
    let path: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_optional(&mut sentinel)
            .await?
            .unwrap_or_default();
    if path.is_empty() {
        // In-memory or temporary: no file to watch, nothing to rescue.
        sentinel.close().await?;
        return Ok((None, schema, None));
    }
    let path = PathBuf::from(path);
    let configured = configured.unwrap_or_else(|| path.clone());
    let shown = path.display().to_string();
    let file = blocking::run(fs_bound, move || DbFile::record(configured, path, &before))
        .await
        .map_err(|stuck| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the filesystem of {shown} did not answer: {stuck} (a hung mount? \
                     LivePoolBuilder::startup_timeout sets the bound)"
                ),
            ))
        })??;
    Ok((Some(file), schema, Some(sentinel)))
}

/// The absolute form of the file name a pool was configured with, without
/// resolving symlinks (so a repointed link is seen); `None` for in-memory
/// databases.
pub(crate) fn configured_path(options: &sqlx::sqlite::SqliteConnectOptions) -> Option<PathBuf> {
    let name = options.get_filename();
    // sqlx names an in-memory database `file:sqlx-in-memory-<n>` (a URI);
    // `:memory:` and an empty name are SQLite's own.
    let uri_or_memory = name.to_str().is_some_and(|n| n.starts_with("file:"));
    if name.as_os_str().is_empty() || name == Path::new(":memory:") || uri_or_memory {
        return None;
    }
    std::path::absolute(name).ok()
}

/// The process's open files now, off the runtime (`None`: unknown).
pub(crate) async fn open_files(bound: Duration) -> OpenFiles {
    blocking::run(bound, OpenFiles::now)
        .await
        .unwrap_or_default()
}

/// Reads the schema table, which needs page 1 of the file.
pub(crate) async fn read_page<'c, E>(executor: E) -> Result<(), sqlx::Error>
where
    E: sqlx::SqliteExecutor<'c>,
{
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sqlite_schema")
        .fetch_one(executor)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(tables: &[&str], user_version: i64, application_id: i64) -> Schema {
        Schema {
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            user_version,
            application_id,
        }
    }

    #[test]
    fn a_reopen_reattaches_only_the_same_application() {
        let old = schema(&["notes", "users"], 3, 7);
        assert_eq!(old.reattaches(&old), Ok(()));
        // Migrations on reopen may add tables.
        assert_eq!(
            schema(&["notes", "users", "new"], 3, 7).reattaches(&old),
            Ok(())
        );
        assert!(schema(&[], 0, 0).reattaches(&old).is_err(), "an empty file");
        assert!(schema(&["notes"], 3, 7).reattaches(&old).is_err());
        assert!(schema(&["notes", "users"], 2, 7).reattaches(&old).is_err());
        assert!(schema(&["notes", "users"], 3, 8).reattaches(&old).is_err());
    }
}
