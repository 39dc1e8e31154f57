//! The demo's store: a SQLite file in a fresh directory (the default), or a
//! fresh schema in the PostgreSQL database of `ONCEFLOW_DATABASE_URL`.
//!
//! Guarantees: each run starts from an empty store of its own (a new file,
//! or a new schema that the pipeline reaches through `search_path`), so
//! earlier runs never mix into the verdict; the store is removed at the end
//! unless `--keep` asks to keep it; the outage this module injects ends
//! after the given time even if the demo is cancelled (the lock is held by
//! a transaction that is rolled back, never committed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use onceflow_chaos::harness::StoredLedger;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// File name of the SQLite store inside the demo directory.
const SQLITE_FILE: &str = "onceflow-demo.db";

/// Where the demo's data lives.
#[derive(Debug)]
enum Location {
    /// a SQLite file; the directory is removed at the end unless kept
    Sqlite {
        directory: Option<tempfile::TempDir>,
        file: PathBuf,
        pool: SqlitePool,
    },
    /// a schema of its own in the user's PostgreSQL database
    Postgres { schema: String, pool: PgPool },
}

/// The demo's store, as the demo sees it from outside the pipeline.
#[derive(Debug)]
pub struct DemoStore {
    /// the URL the pipeline is given
    pub pipeline_url: String,
    location: Location,
}

impl DemoStore {
    /// A fresh SQLite file under `parent` (a new temporary directory there,
    /// or under the system's temporary directory).
    pub async fn sqlite(parent: Option<&Path>, run_id: &str) -> anyhow::Result<DemoStore> {
        let directory = match parent {
            Some(parent) => {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
                tempfile::Builder::new()
                    .prefix(&format!("onceflow-demo-{run_id}-"))
                    .tempdir_in(parent)
            }
            None => tempfile::Builder::new()
                .prefix(&format!("onceflow-demo-{run_id}-"))
                .tempdir(),
        }
        .context("cannot create a directory for the demo's SQLite store")?;
        let file = directory.path().join(SQLITE_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(options);
        Ok(DemoStore {
            pipeline_url: format!("sqlite://{}", file.display()),
            location: Location::Sqlite {
                directory: Some(directory),
                file,
                pool,
            },
        })
    }

    /// A fresh schema in the database of `url`; the pipeline is pointed at
    /// it through `search_path`.
    pub async fn postgres(url: &str, run_id: &str) -> anyhow::Result<DemoStore> {
        let schema = format!("onceflow_demo_{run_id}");
        let separator = if url.contains('?') { '&' } else { '?' };
        let pipeline_url = format!("{url}{separator}options[search_path]={schema}");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&pipeline_url)
            .await
            .context("ONCEFLOW_DATABASE_URL: cannot connect to PostgreSQL")?;
        // `schema` is `onceflow_demo_` and eight hex digits, made here.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .with_context(|| {
                format!("ONCEFLOW_DATABASE_URL: cannot create the demo's schema {schema}")
            })?;
        Ok(DemoStore {
            pipeline_url,
            location: Location::Postgres { schema, pool },
        })
    }

    /// One line saying which store this is.
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Sqlite { file, .. } => format!("SQLite file {}", file.display()),
            Location::Postgres { schema, .. } => {
                format!("PostgreSQL (ONCEFLOW_DATABASE_URL), schema {schema}")
            }
        }
    }

    /// The store's kind, as in the JSON verdict.
    pub fn kind(&self) -> &'static str {
        match &self.location {
            Location::Sqlite { .. } => "sqlite",
            Location::Postgres { .. } => "postgresql",
        }
    }

    /// What the store holds now.
    pub async fn ledger(&self) -> anyhow::Result<StoredLedger> {
        Ok(match &self.location {
            Location::Sqlite { pool, .. } => StoredLedger::read_sqlite(pool).await?,
            Location::Postgres { pool, .. } => StoredLedger::read_postgres(pool).await?,
        })
    }

    /// Makes the store refuse the pipeline's writes for `duration`: another
    /// connection holds the write lock (SQLite: an exclusive transaction on
    /// the file; PostgreSQL: an ACCESS EXCLUSIVE lock on the pipeline's
    /// tables), longer than the pipeline's statement timeout, then rolls back.
    pub async fn refuse_writes_for(&self, duration: Duration) -> anyhow::Result<()> {
        match &self.location {
            Location::Sqlite { pool, .. } => {
                let mut connection = pool.acquire().await?;
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut *connection)
                    .await
                    .context("cannot lock the SQLite file")?;
                tokio::time::sleep(duration).await;
                sqlx::query("ROLLBACK").execute(&mut *connection).await?;
            }
            Location::Postgres { pool, .. } => {
                let mut transaction = pool.begin().await?;
                sqlx::query(
                    "LOCK TABLE consumer_offsets, ad_events, campaign_spend, dead_letters \
                     IN ACCESS EXCLUSIVE MODE",
                )
                .execute(&mut *transaction)
                .await
                .context("cannot lock the demo's tables")?;
                tokio::time::sleep(duration).await;
                transaction.rollback().await?;
            }
        }
        Ok(())
    }

    /// Removes the store, or keeps it and says where it is.
    pub async fn finish(self, keep: bool) -> anyhow::Result<Option<String>> {
        match self.location {
            Location::Sqlite {
                mut directory,
                file,
                pool,
            } => {
                pool.close().await;
                if keep {
                    if let Some(directory) = directory.take() {
                        let _kept = directory.keep();
                    }
                    Ok(Some(file.display().to_string()))
                } else {
                    if let Some(directory) = directory.take() {
                        directory
                            .close()
                            .context("cannot remove the demo's SQLite store")?;
                    }
                    Ok(None)
                }
            }
            Location::Postgres { schema, pool } => {
                if keep {
                    pool.close().await;
                    return Ok(Some(format!("schema {schema} of ONCEFLOW_DATABASE_URL")));
                }
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&pool)
                    .await
                    .with_context(|| format!("cannot drop the demo's schema {schema}"))?;
                pool.close().await;
                Ok(None)
            }
        }
    }
}
