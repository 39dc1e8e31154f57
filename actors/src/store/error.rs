//! Errors of the database store, each saying whether a retry can help.
//!
//! Guarantees: whichever backend raised it (PostgreSQL or SQLite), an error
//! is classified the same way: lock contention, lost connections and
//! timeouts are [`StoreError::Transient`]; a row the database refuses on its
//! own ([`StoreError::is_data_error`]) and everything else are
//! [`StoreError::Permanent`]. PostgreSQL errors are classified by SQLSTATE,
//! SQLite errors by their primary result code.

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another claim took the partition: this writer is a zombie. Retrying
    /// never helps; the partition belongs to someone else now.
    #[error("partition {partition} of {topic} is owned by a newer claim (epoch {epoch} is stale)")]
    Fenced {
        /// input topic
        topic: String,
        /// input partition
        partition: i32,
        /// the stale epoch this writer held
        epoch: i64,
    },
    /// Connection lost, pool exhausted, serialization failure, deadlock,
    /// statement timeout, server shutting down: a retry may succeed.
    #[error("transient database error: {0}")]
    Transient(#[source] sqlx::Error),
    /// A fault injected at a kill point (tests and chaos only): transient.
    #[error("{0}")]
    Injected(#[from] crate::failpoints::InjectedFault),
    /// Anything else (a constraint we did not expect, a bad query, a failed
    /// migration): retrying the same thing fails the same way.
    #[error("database error: {0}")]
    Permanent(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether the database refused the data itself (PostgreSQL: SQLSTATE
    /// class 22, data exception, or 23, integrity constraint; SQLite:
    /// `SQLITE_CONSTRAINT`, `SQLITE_TOOBIG` or `SQLITE_MISMATCH`): a row that
    /// can never be stored, which retrying cannot mend but isolating can.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Permanent(sqlx::Error::Database(error)) => {
                classify_database_error(error.as_ref()) == ErrorClass::Data
            }
            _ => false,
        }
    }

    /// Whether retrying the same operation can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Injected(_))
    }
}

/// What a database error means to the caller, whichever backend raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    /// a retry can succeed
    Transient,
    /// the database refuses the row itself
    Data,
    /// anything else
    Other,
}

/// Classifies an error the database server or engine reported.
fn classify_database_error(error: &dyn sqlx::error::DatabaseError) -> ErrorClass {
    if let Some(sqlite) = error.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // SQLite reports its extended result code as a decimal string.
        return sqlx::error::DatabaseError::code(sqlite)
            .and_then(|code| code.parse::<i32>().ok())
            .map_or(ErrorClass::Other, classify_sqlite_code);
    }
    match error.code() {
        Some(code) if is_transient_sqlstate(&code) => ErrorClass::Transient,
        Some(code) if code.starts_with("22") || code.starts_with("23") => ErrorClass::Data,
        _ => ErrorClass::Other,
    }
}

/// SQLite result codes (<https://www.sqlite.org/rescode.html>): the primary
/// code is the low byte of the extended one.
mod sqlite_code {
    pub const BUSY: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const TOOBIG: i32 = 18;
    pub const CONSTRAINT: i32 = 19;
    pub const MISMATCH: i32 = 20;
}

/// Classifies a SQLite (extended) result code: the database is busy or a
/// table is locked (every extended variant, `SQLITE_BUSY_SNAPSHOT`
/// included) is transient; a constraint, an oversized value or a type
/// mismatch is the row's own fault; anything else is permanent.
fn classify_sqlite_code(extended_code: i32) -> ErrorClass {
    match extended_code & 0xff {
        sqlite_code::BUSY | sqlite_code::LOCKED => ErrorClass::Transient,
        sqlite_code::TOOBIG | sqlite_code::CONSTRAINT | sqlite_code::MISMATCH => ErrorClass::Data,
        _ => ErrorClass::Other,
    }
}

/// SQLSTATE classes and codes after which a retry can succeed.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, …)
        || code.starts_with("57") // operator intervention: admin shutdown, statement timeout (57014)
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available
        || code == "55000" // object not in prerequisite state: "database is not currently accepting connections"
}

/// Whether a retry of the operation that failed with `error` can succeed.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database_error) => {
            classify_database_error(database_error.as_ref()) == ErrorClass::Transient
        }
        // A migration that could not run (no connection, a busy database)
        // is as transient as the error beneath it; a migration the database
        // refused, or one that changed since it was applied, is not.
        sqlx::Error::Migrate(migrate_error) => match migrate_error.as_ref() {
            sqlx::migrate::MigrateError::Execute(inner)
            | sqlx::migrate::MigrateError::ExecuteMigration(inner, _) => is_transient(inner),
            _ => false,
        },
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            StoreError::Transient(error)
        } else {
            StoreError::Permanent(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_retriable_sqlstates() {
        for code in [
            "40001", "40P01", "57014", "57P01", "08006", "53300", "55000",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22003"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_retriable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_retriable());
    }

    #[test]
    fn a_migration_that_could_not_run_is_retried_one_that_changed_is_not() {
        use sqlx::migrate::MigrateError;
        let unreachable = sqlx::Error::from(MigrateError::Execute(sqlx::Error::PoolTimedOut));
        assert!(StoreError::from(unreachable).is_retriable());
        let interrupted =
            sqlx::Error::from(MigrateError::ExecuteMigration(sqlx::Error::PoolTimedOut, 1));
        assert!(StoreError::from(interrupted).is_retriable());
        let refused = sqlx::Error::from(MigrateError::Execute(sqlx::Error::RowNotFound));
        assert!(!StoreError::from(refused).is_retriable());
        assert!(
            !StoreError::from(sqlx::Error::from(MigrateError::VersionMismatch(1))).is_retriable()
        );
    }

    #[test]
    fn classifies_sqlite_result_codes() {
        // SQLITE_BUSY, SQLITE_BUSY_RECOVERY, SQLITE_BUSY_SNAPSHOT,
        // SQLITE_BUSY_TIMEOUT, SQLITE_LOCKED, SQLITE_LOCKED_SHAREDCACHE
        for code in [5, 261, 517, 773, 6, 262] {
            assert_eq!(classify_sqlite_code(code), ErrorClass::Transient, "{code}");
        }
        // SQLITE_CONSTRAINT and its CHECK, NOTNULL, PRIMARYKEY, UNIQUE
        // variants, SQLITE_TOOBIG, SQLITE_MISMATCH
        for code in [19, 275, 1299, 1555, 2067, 18, 20] {
            assert_eq!(classify_sqlite_code(code), ErrorClass::Data, "{code}");
        }
        // SQLITE_ERROR, SQLITE_READONLY, SQLITE_IOERR_WRITE, SQLITE_CORRUPT,
        // SQLITE_FULL, SQLITE_CANTOPEN
        for code in [1, 8, 778, 11, 13, 14] {
            assert_eq!(classify_sqlite_code(code), ErrorClass::Other, "{code}");
        }
    }

    /// Runs `statements` on a fresh in-memory SQLite database and returns
    /// the error of the last one.
    async fn sqlite_error(statements: &[&'static str]) -> StoreError {
        use sqlx::Connection;
        let mut connection = sqlx::sqlite::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory sqlite");
        let mut last = None;
        for statement in statements {
            last = sqlx::raw_sql(*statement)
                .execute(&mut connection)
                .await
                .err();
        }
        StoreError::from(last.expect("the last statement must fail"))
    }

    #[tokio::test]
    async fn sqlite_errors_are_classified_by_their_code() {
        let check = sqlite_error(&[
            "CREATE TABLE t (x INTEGER NOT NULL CHECK (x >= 0))",
            "INSERT INTO t VALUES (-1)",
        ])
        .await;
        assert!(check.is_data_error(), "{check}");
        assert!(!check.is_retriable(), "{check}");

        let strict = sqlite_error(&[
            "CREATE TABLE t (x INTEGER NOT NULL) STRICT",
            "INSERT INTO t VALUES ('not a number')",
        ])
        .await;
        assert!(strict.is_data_error(), "{strict}");

        let missing = sqlite_error(&["SELECT * FROM no_such_table"]).await;
        assert!(!missing.is_data_error(), "{missing}");
        assert!(!missing.is_retriable(), "{missing}");
    }
}
