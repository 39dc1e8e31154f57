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
use onceflow_actors::store::Store;
use onceflow_chaos::harness::Tables;

/// File name of the SQLite store inside the demo directory.
const SQLITE_FILE: &str = "onceflow-demo.db";

/// Statement timeout (SQLite: lock wait) of the demo's own connections.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the demo's data lives.
#[derive(Debug)]
enum Location {
    /// a SQLite file; the directory is removed at the end unless kept
    Sqlite {
        directory: tempfile::TempDir,
        file: PathBuf,
    },
    /// a schema of its own in the user's PostgreSQL database
    Postgres { schema: String },
}

/// The demo's store, as the demo sees it from outside the pipeline.
#[derive(Debug)]
pub struct DemoStore {
    /// the URL the pipeline is given
    pub pipeline_url: String,
    /// the demo's own connections to it (progress, ledger, the outage)
    pub store: Store,
    location: Location,
}

/// The demo's own connections to `url`, through the pipeline's store type.
fn demo_connections(url: &str) -> anyhow::Result<Store> {
    Ok(Store::connect_lazy(
        url,
        2,
        STATEMENT_TIMEOUT,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )?)
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
        let pipeline_url = format!("sqlite://{}", file.display());
        Ok(DemoStore {
            store: demo_connections(&pipeline_url)?,
            pipeline_url,
            location: Location::Sqlite { directory, file },
        })
    }

    /// A fresh schema in the database of `url`; the pipeline is pointed at
    /// it through `search_path`.
    pub async fn postgres(url: &str, run_id: &str) -> anyhow::Result<DemoStore> {
        let schema = format!("onceflow_demo_{run_id}");
        let separator = if url.contains('?') { '&' } else { '?' };
        let pipeline_url = format!("{url}{separator}options[search_path]={schema}");
        let store = demo_connections(&pipeline_url)?;
        let Store::Postgres(postgres) = &store else {
            anyhow::bail!("ONCEFLOW_DATABASE_URL: not a PostgreSQL URL");
        };
        postgres
            .ping()
            .await
            .context("ONCEFLOW_DATABASE_URL: cannot connect to PostgreSQL")?;
        // `schema` is `onceflow_demo_` and eight hex digits, made here.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(postgres.pool())
            .await
            .with_context(|| {
                format!("ONCEFLOW_DATABASE_URL: cannot create the demo's schema {schema}")
            })?;
        Ok(DemoStore {
            pipeline_url,
            store,
            location: Location::Postgres { schema },
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

    /// The store's tables, for the verdict's own SQL.
    pub fn tables(&self) -> Tables<'_> {
        match &self.store {
            Store::Sqlite(sqlite) => Tables::Sqlite(sqlite.pool()),
            Store::Postgres(postgres) => Tables::Postgres(postgres.pool()),
        }
    }

    /// Makes the store refuse the pipeline's writes for `duration`: another
    /// connection holds the write lock (SQLite: an exclusive transaction on
    /// the file; PostgreSQL: an ACCESS EXCLUSIVE lock on the pipeline's
    /// tables), longer than the pipeline's statement timeout, then rolls back.
    pub async fn refuse_writes_for(&self, duration: Duration) -> anyhow::Result<()> {
        match &self.store {
            Store::Sqlite(sqlite) => {
                let mut connection = sqlite.pool().acquire().await?;
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut *connection)
                    .await
                    .context("cannot lock the SQLite file")?;
                tokio::time::sleep(duration).await;
                sqlx::query("ROLLBACK").execute(&mut *connection).await?;
            }
            Store::Postgres(postgres) => {
                let mut transaction = postgres.pool().begin().await?;
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
        let DemoStore {
            store, location, ..
        } = self;
        if let (Location::Postgres { schema }, Store::Postgres(postgres), false) =
            (&location, &store, keep)
        {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(postgres.pool())
                .await
                .with_context(|| format!("cannot drop the demo's schema {schema}"))?;
        }
        match &store {
            Store::Sqlite(sqlite) => sqlite.pool().close().await,
            Store::Postgres(postgres) => postgres.pool().close().await,
        }
        match location {
            Location::Sqlite { directory, file } => {
                if keep {
                    let _kept = directory.keep();
                    Ok(Some(file.display().to_string()))
                } else {
                    directory
                        .close()
                        .context("cannot remove the demo's SQLite store")?;
                    Ok(None)
                }
            }
            Location::Postgres { schema } => {
                Ok(keep.then(|| format!("schema {schema} of ONCEFLOW_DATABASE_URL")))
            }
        }
    }
}
