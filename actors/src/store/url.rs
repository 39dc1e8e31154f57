//! Which database a URL names: PostgreSQL, or an SQLite file.
//!
//! Guarantees: an SQLite database that would not outlive the process (in
//! memory, temporary) is refused, since it would lose every stored event
//! and offset on exit.

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
