//! The store interface: one [`Store`] for the commit cycle, backed by
//! PostgreSQL ([`PostgresStore`]) or by an embedded SQLite file
//! ([`SqliteStore`]), chosen by the database URL's scheme.
//!
//! Guarantees, the same on both backends (the store test suite runs every
//! case against each):
//! - one partition batch is one database transaction: its events, spend,
//!   dead letters and stored offset commit together or not at all;
//! - an event id is stored once and counted in `campaign_spend` only by the
//!   transaction that stored it;
//! - a conflict at the same source position (consumer group, topic,
//!   partition and offset) is our own replay (its output is still owed if
//!   Kafka did not commit it); anywhere else, another group's copy of the
//!   same position included, it is an upstream repeat (no output, counted as
//!   a duplicate);
//! - the stored offset never moves backwards, and only a writer holding the
//!   partition's current owner epoch can move it ([`StoreError::Fenced`]);
//! - parallel writers do not deadlock each other (PostgreSQL: keys touched
//!   in one fixed order; SQLite: the write lock taken up front).

use std::time::Duration;

use uuid::Uuid;

use crate::partition_batch::PartitionBatch;
pub use crate::postgres_store::PostgresStore;
pub use crate::sqlite_store::SqliteStore;
use crate::store_error::StoreError;

/// What the store holds for one partition of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPartition {
    /// first offset not yet committed in the database, if any batch was
    pub next_offset: Option<i64>,
    /// first offset the group ever fetched in this partition
    pub start_offset: Option<i64>,
    /// highest offset onceflow saw committed to Kafka (after the commit)
    pub kafka_committed_offset: Option<i64>,
    /// the current owner epoch
    pub owner_epoch: i64,
}

/// Who holds a partition's claim in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    /// the current owner epoch
    pub owner_epoch: i64,
    /// the instance that made the current claim
    pub owner_instance: Option<String>,
}

/// A partition's end offset confirmed committed in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaCommitConfirmation {
    /// input partition
    pub partition: i32,
    /// the committed end offset
    pub end_offset: i64,
    /// the owner epoch the commit was made under
    pub owner_epoch: i64,
}

/// The outcome of one committed partition batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchWriteOutcome {
    /// indexes into the batch's records whose Kafka record is owed: new
    /// events, own replays and dead letters, at or past `outputs_from`
    pub owed_records: Vec<usize>,
    /// events stored for the first time
    pub new_events: u64,
    /// events that were our own replay of an already stored record
    pub replayed_events: u64,
    /// upstream repeats of an event stored at another position
    pub duplicates: u64,
    /// dead letters in the batch
    pub dead_letters: u64,
}

/// The database behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    /// `postgres://` or `postgresql://`
    Postgres,
    /// `sqlite:` naming a file
    Sqlite,
}

/// Why a database URL cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedDatabaseUrl {
    /// neither PostgreSQL nor SQLite
    #[error(
        "must be a postgres://, postgresql:// or sqlite: URL (e.g. sqlite:///var/lib/onceflow/onceflow.db)"
    )]
    Scheme,
    /// a SQLite database that lives only in memory or in a temporary file
    #[error(
        "must name a SQLite file: an in-memory or temporary database loses every stored event and offset on exit"
    )]
    NotAFile,
}

impl StoreBackend {
    /// The backend `url` names, by its scheme.
    pub fn of_url(url: &str) -> Result<StoreBackend, UnsupportedDatabaseUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreBackend::Postgres)
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let path = path.trim_start_matches('/');
            let not_a_file = path.is_empty()
                || path.starts_with(":memory:")
                || query.split('&').any(|pair| pair == "mode=memory");
            if not_a_file {
                Err(UnsupportedDatabaseUrl::NotAFile)
            } else {
                Ok(StoreBackend::Sqlite)
            }
        } else {
            Err(UnsupportedDatabaseUrl::Scheme)
        }
    }

    /// The OpenTelemetry `db.system.name` of the backend.
    pub fn system_name(self) -> &'static str {
        match self {
            StoreBackend::Postgres => "postgresql",
            StoreBackend::Sqlite => "sqlite",
        }
    }
}

/// The store of the commit cycle.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL
    Postgres(PostgresStore),
    /// an embedded SQLite file
    Sqlite(SqliteStore),
}

impl From<PostgresStore> for Store {
    fn from(store: PostgresStore) -> Self {
        Store::Postgres(store)
    }
}

impl From<SqliteStore> for Store {
    fn from(store: SqliteStore) -> Self {
        Store::Sqlite(store)
    }
}

impl Store {
    /// Builds a store for `url`, the backend chosen by its scheme.
    /// Connections are opened lazily, so a database that is down does not
    /// stop an actor from starting. PostgreSQL ends a statement after
    /// `statement_timeout` and a session idle inside a transaction after
    /// `idle_in_transaction_timeout`; SQLite waits at most
    /// `statement_timeout` for its write lock (its `busy_timeout`) and has no
    /// server-side sessions to end.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        statement_timeout: Duration,
        idle_in_transaction_timeout: Duration,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let backend = StoreBackend::of_url(url)
            .map_err(|error| StoreError::Permanent(sqlx::Error::Configuration(Box::new(error))))?;
        Ok(match backend {
            StoreBackend::Postgres => Store::Postgres(PostgresStore::connect_lazy(
                url,
                max_connections,
                statement_timeout,
                idle_in_transaction_timeout,
                acquire_timeout,
            )?),
            StoreBackend::Sqlite => Store::Sqlite(SqliteStore::connect_lazy(
                url,
                max_connections,
                statement_timeout,
                acquire_timeout,
            )?),
        })
    }

    /// The backend of this store.
    pub fn backend(&self) -> StoreBackend {
        match self {
            Store::Postgres(_) => StoreBackend::Postgres,
            Store::Sqlite(_) => StoreBackend::Sqlite,
        }
    }

    /// The OpenTelemetry `db.system.name` of the backend (`postgresql`,
    /// `sqlite`).
    pub fn system_name(&self) -> &'static str {
        self.backend().system_name()
    }

    /// Whether the database answers (the circuit breaker's probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(store) => store.ping().await,
            Store::Sqlite(store) => store.ping().await,
        }
    }

    /// Applies the backend's migrations embedded in the binary.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(store) => store.migrate().await,
            Store::Sqlite(store) => store.migrate().await,
        }
    }

    /// Claims a partition for `owner`: bumps the owner epoch so that any
    /// earlier owner's writes are fenced, and returns what is stored.
    pub async fn claim_partition(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
        owner: &str,
    ) -> Result<StoredPartition, StoreError> {
        match self {
            Store::Postgres(store) => {
                store
                    .claim_partition(group_id, topic, partition, owner)
                    .await
            }
            Store::Sqlite(store) => {
                store
                    .claim_partition(group_id, topic, partition, owner)
                    .await
            }
        }
    }

    /// Reads what is stored for a partition without claiming it.
    pub async fn read_partition(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredPartition>, StoreError> {
        match self {
            Store::Postgres(store) => store.read_partition(group_id, topic, partition).await,
            Store::Sqlite(store) => store.read_partition(group_id, topic, partition).await,
        }
    }

    /// Who holds the partition's claim (`None`: never claimed).
    pub async fn partition_owner(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<PartitionOwner>, StoreError> {
        match self {
            Store::Postgres(store) => store.partition_owner(group_id, topic, partition).await,
            Store::Sqlite(store) => store.partition_owner(group_id, topic, partition).await,
        }
    }

    /// Records, after a confirmed Kafka commit, the end offset each
    /// partition reached in Kafka (never backwards, only for current owners).
    /// Bookkeeping only: losing it costs duplicate-free replays nothing but
    /// time, since the group's committed offset says the same.
    pub async fn confirm_kafka_commit(
        &self,
        group_id: &str,
        topic: &str,
        partitions: &[KafkaCommitConfirmation],
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(store) => {
                store
                    .confirm_kafka_commit(group_id, topic, partitions)
                    .await
            }
            Store::Sqlite(store) => {
                store
                    .confirm_kafka_commit(group_id, topic, partitions)
                    .await
            }
        }
    }

    /// Commits one partition batch in one database transaction (see the
    /// module guarantees) and says which Kafka records are still owed.
    pub async fn write_batch(
        &self,
        group_id: &str,
        topic: &str,
        owner_epoch: i64,
        txn_id: Uuid,
        batch: &PartitionBatch,
    ) -> Result<BatchWriteOutcome, StoreError> {
        match self {
            Store::Postgres(store) => {
                store
                    .write_batch(group_id, topic, owner_epoch, txn_id, batch)
                    .await
            }
            Store::Sqlite(store) => {
                store
                    .write_batch(group_id, topic, owner_epoch, txn_id, batch)
                    .await
            }
        }
    }

    /// Finds the event records of `batch` (in-batch repeats included) that
    /// the database refuses on their own: each is written alone by the same
    /// statements as a batch write, in a savepoint rolled back, so nothing is
    /// written. Returns their indexes with the database's one-line reason.
    /// An error means the probe itself could not run (the database's
    /// fault, not the records').
    pub async fn find_unstorable_events(
        &self,
        group_id: &str,
        topic: &str,
        txn_id: Uuid,
        batch: &PartitionBatch,
    ) -> Result<Vec<(usize, String)>, StoreError> {
        match self {
            Store::Postgres(store) => {
                store
                    .find_unstorable_events(group_id, topic, txn_id, batch)
                    .await
            }
            Store::Sqlite(store) => {
                store
                    .find_unstorable_events(group_id, topic, txn_id, batch)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_is_chosen_by_the_url_scheme() {
        for url in [
            "postgres://onceflow@db/onceflow",
            "postgresql://u:p@127.0.0.1:5432/x?sslmode=disable",
        ] {
            assert_eq!(
                StoreBackend::of_url(url),
                Ok(StoreBackend::Postgres),
                "{url}"
            );
        }
        for url in [
            "sqlite:///var/lib/onceflow/onceflow.db",
            "sqlite://onceflow.db",
            "sqlite:onceflow.db",
            "sqlite:onceflow.db?mode=rwc",
        ] {
            assert_eq!(StoreBackend::of_url(url), Ok(StoreBackend::Sqlite), "{url}");
        }
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite:x.db?mode=memory",
            "sqlite:",
            "sqlite://",
            "sqlite://?mode=rwc",
        ] {
            assert_eq!(
                StoreBackend::of_url(url),
                Err(UnsupportedDatabaseUrl::NotAFile),
                "{url}"
            );
        }
        for url in ["mysql://db/x", "onceflow.db", "", "file:onceflow.db"] {
            assert_eq!(
                StoreBackend::of_url(url),
                Err(UnsupportedDatabaseUrl::Scheme),
                "{url}"
            );
        }
        assert_eq!(StoreBackend::Postgres.system_name(), "postgresql");
        assert_eq!(StoreBackend::Sqlite.system_name(), "sqlite");
    }

    #[test]
    fn connect_lazy_refuses_other_urls_permanently() {
        let error = Store::connect_lazy(
            "mysql://db/x",
            2,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect_err("not a supported url");
        assert!(!error.is_retriable());
        assert!(error.to_string().contains("sqlite:"), "{error}");
    }
}
