//! What a platform running onceflow relies on, checked on the real binary:
//! a configuration error exits 78 with one line naming the setting (a
//! failure exits 1: `tests/failures.rs`, the fenced zombie).

mod common;
mod service;

use std::process::Stdio;
use std::time::Duration;

/// Runs `onceflow run` with `env` (and nothing else of the caller's
/// `ONCEFLOW_*`), expecting it to stop at once; its exit code and stderr.
async fn run_to_exit(env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut command = tokio::process::Command::new(service::bin());
    command.arg("run");
    for (key, _) in std::env::vars() {
        if key.starts_with("ONCEFLOW_") {
            command.env_remove(key);
        }
    }
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        command
            .envs(env.iter().copied())
            .env("ONCEFLOW_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .output(),
    )
    .await??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn a_configuration_error_exits_78_with_one_line_naming_the_setting() -> anyhow::Result<()> {
    let database = (
        "ONCEFLOW_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    for (env, named) in [
        (
            vec![database, ("ONCEFLOW_COMMIT_INTERVAL_MS", "0")],
            "commit_interval_ms",
        ),
        (
            vec![database, ("ONCEFLOW_COMMIT_INTERVALL_MS", "5")],
            "commit_intervall_ms",
        ),
        (
            vec![database, ("ONCEFLOW_LOG_FORMAT", "xml")],
            "ONCEFLOW_LOG_FORMAT",
        ),
        (vec![], "database_url"),
        (
            vec![database, ("ONCEFLOW_HTTP_ADDR_UNUSED", "x")],
            "http_addr_unused",
        ),
    ] {
        let (code, stderr) = run_to_exit(&env).await?;
        assert_eq!(code, Some(78), "{env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{env:?}: one line, not {stderr}");
        assert!(lines[0].contains(named), "{env:?}: {stderr}");
    }
    Ok(())
}
