//! Errors of the database store, each saying whether a retry can help.

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
    /// Whether the database refused the data itself (SQLSTATE class 22,
    /// data exception, or 23, integrity constraint): a row that can never be
    /// stored, which retrying cannot mend but isolating can.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Permanent(sqlx::Error::Database(error)) => error
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            _ => false,
        }
    }

    /// Whether retrying the same operation can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Injected(_))
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

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let transient = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(database_error) => database_error
                .code()
                .is_some_and(|code| is_transient_sqlstate(&code)),
            _ => false,
        };
        if transient {
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
}
