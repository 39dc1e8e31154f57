//! Log output: `tracing` events to stderr, filtered by `RUST_LOG` (default
//! `info`).
//!
//! Guarantees: an invalid `RUST_LOG` falls back to `info` with a warning
//! instead of failing start-up.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init() {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => (
            EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().map(|value| (value, error)),
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if let Some((value, error)) = bad_filter {
        tracing::warn!(rust_log = %value, %error, "RUST_LOG is not a valid filter; using info");
    }
}
