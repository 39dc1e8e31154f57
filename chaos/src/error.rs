//! The chaos crate's error: what went wrong while setting up, injecting or
//! checking, with [`Context`] to say where, as one line.

use std::fmt::Display;

/// A chaos run could not be carried out, or a check could not be made.
/// (A violation of exactly-once is not an error: it is a verdict.)
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// a step failed; the text says which and why
    #[error("{0}")]
    Step(String),
    /// a Kafka client call failed
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// a database call failed
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// a process or file operation failed
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// JSON could not be read or written
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl ChaosError {
    /// Whether running the same step again can help: broker, database and
    /// process hiccups can pass; a failed check or bad input cannot.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ChaosError::Kafka(_) | ChaosError::Database(_) | ChaosError::Io(_)
        )
    }
}

/// The chaos crate's result.
pub type Result<T> = std::result::Result<T, ChaosError>;

/// Adds what was being done to an error, as `what: why`.
pub trait Context<T> {
    /// Wraps the error with a fixed description.
    fn context(self, what: impl Display) -> Result<T>;
    /// Wraps the error with a description made only on failure.
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|error| ChaosError::Step(format!("{what}: {error}")))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|error| ChaosError::Step(format!("{}: {error}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.ok_or_else(|| ChaosError::Step(what.to_string()))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| ChaosError::Step(what().to_string()))
    }
}

/// Returns early with a [`ChaosError::Step`] made from a format string.
#[macro_export]
macro_rules! bail {
    ($($argument:tt)*) => {
        return Err($crate::error::ChaosError::Step(format!($($argument)*)))
    };
}
