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

use crate::model::batch::PartitionBatch;

pub mod confirmed_offsets;
pub mod error;
pub(crate) mod plan;
pub mod postgres;
pub mod sqlite;
pub mod types;
pub mod url;

pub use confirmed_offsets::ConfirmedOffsets;
pub use error::StoreError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{BatchWriteOutcome, KafkaCommitConfirmation, PartitionOwner, StoredPartition};
pub use url::{StoreBackend, UnsupportedDatabaseUrl};

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
