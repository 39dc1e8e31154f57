//! What the process's exit code says, so a supervisor (Kubernetes, systemd,
//! a script) can tell the cases apart:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done: a command finished, or `run` shut down gracefully on SIGTERM/SIGINT |
//! | 1 | a failure: the pipeline escalated (a supervisor gave up, fenced by a newer incarnation, …), or a command failed |
//! | 75 | `run` was forced to exit: the graceful shutdown did not finish within its deadline (uncommitted work is replayed on the next start) |
//! | 78 | a configuration error (`EX_CONFIG`): a bad or missing setting, named on the one line printed |
//! | 128 + N | a second signal N (SIGTERM 143, SIGINT 130) forced the exit at once |
//!
//! Guarantee: a configuration error never exits 1 and a failure never exits
//! 78; the classification reads the error's chain, not its text.

use std::process::ExitCode;

use onceflow_actors::settings::SettingsError;

/// A configuration problem the binary itself finds (outside the library's
/// settings): the log format, an HTTP address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigurationError(pub String);

/// `EX_CONFIG` of sysexits.h.
pub const CONFIGURATION_ERROR: u8 = 78;
/// `EX_TEMPFAIL` of sysexits.h: the work is retried on the next start.
pub const FORCED_AFTER_DEADLINE: u8 = 75;
/// A failure of any other kind.
pub const FAILURE: u8 = 1;

/// The exit code for `error`.
pub fn code_for(error: &anyhow::Error) -> u8 {
    let configuration = error.chain().any(|cause| {
        cause.downcast_ref::<SettingsError>().is_some()
            || cause.downcast_ref::<ConfigurationError>().is_some()
    });
    if configuration {
        CONFIGURATION_ERROR
    } else {
        FAILURE
    }
}

/// The exit code of a process ended by a second signal `signal`.
pub fn forced_by_signal(signal: i32) -> i32 {
    128 + signal
}

/// The exit code for a command's result.
pub fn exit_code(result: &anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(FORCED_AFTER_DEADLINE),
        Err(error) => ExitCode::from(code_for(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_error_anywhere_in_the_chain_is_a_configuration_error() {
        let error = anyhow::Error::new(SettingsError::Invalid {
            setting: "commit_interval_ms",
            reason: "must be at least 1".to_owned(),
        })
        .context("cannot start");
        assert_eq!(code_for(&error), CONFIGURATION_ERROR);
        let own = anyhow::Error::new(ConfigurationError("setting `http_addr`".to_owned()));
        assert_eq!(code_for(&own), CONFIGURATION_ERROR);
    }

    #[test]
    fn any_other_error_is_a_failure_whatever_its_text() {
        let error = anyhow::anyhow!("setting `x`: looks like configuration but is not");
        assert_eq!(code_for(&error), FAILURE);
    }

    #[test]
    fn a_second_signal_exits_128_plus_its_number() {
        assert_eq!(forced_by_signal(15), 143);
        assert_eq!(forced_by_signal(2), 130);
    }
}
