//! `onceflow demo` as a new user runs it: the real binary, one process with
//! the mock cluster, the embedded SQLite store (or PostgreSQL through
//! `ONCEFLOW_DATABASE_URL`), the actor tree, the load generator and the
//! faults. Each test reads the JSON verdict and, where the store is kept,
//! checks the tables itself.

mod common;
mod service;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// Longest a demo run may take in these tests (a debug build, 2 cores shared).
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

async fn run_demo(args: &[&str], database_url: Option<&str>) -> anyhow::Result<Output> {
    run_demo_with_env(args, database_url, &[]).await
}

async fn run_demo_with_env(
    args: &[&str],
    database_url: Option<&str>,
    env: &[(&str, &str)],
) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(service::bin());
    command
        .arg("demo")
        .args(args)
        .env_remove("ONCEFLOW_DATABASE_URL")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    if let Some(url) = database_url {
        command.env("ONCEFLOW_DATABASE_URL", url);
    }
    command.envs(env.iter().copied());
    Ok(tokio::time::timeout(DEMO_TIMEOUT, command.output()).await??)
}

/// The JSON verdict on stdout (nothing else may be there).
fn verdict_of(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON verdict ({error}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn number(verdict: &Value, field: &str) -> u64 {
    verdict[field]
        .as_u64()
        .unwrap_or_else(|| panic!("verdict has no number {field}: {verdict}"))
}

/// The guarantees every demo verdict must show, whatever the faults.
fn assert_exactly_once(verdict: &Value, events: u64) {
    assert_eq!(verdict["exactly_once"], Value::Bool(true), "{verdict:#}");
    assert_eq!(number(verdict, "events"), events, "{verdict:#}");
    assert_eq!(number(verdict, "lost"), 0, "{verdict:#}");
    assert_eq!(number(verdict, "duplicated"), 0, "{verdict:#}");
    // The mock has no transactions: the topics show loss, not duplicates.
    assert_eq!(
        number(verdict, "distinct_outputs"),
        number(verdict, "distinct_events"),
        "{verdict:#}"
    );
    assert!(
        number(verdict, "outputs") >= number(verdict, "distinct_events"),
        "{verdict:#}"
    );
    assert!(
        number(verdict, "dlq_records") >= number(verdict, "invalid"),
        "{verdict:#}"
    );
    assert_eq!(verdict["dlq_exact"], Value::Bool(true), "{verdict:#}");
    assert_eq!(
        number(verdict, "distinct_events")
            + number(verdict, "repeats")
            + number(verdict, "invalid"),
        events,
        "{verdict:#}"
    );
    assert!(number(verdict, "repeats") > 0 && number(verdict, "invalid") > 0);
    assert!(number(verdict, "spend_cells_checked") >= 20, "{verdict:#}");
    assert!(
        verdict["judged_by"]
            .as_str()
            .is_some_and(|text| text.contains("cannot show what committed")),
        "{verdict:#}"
    );
}

/// The path after `store kept: ` on stderr.
fn kept_location(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("store kept: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no `store kept:` line on stderr:\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_sqlite_survives_its_faults_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let output = run_demo(
        &[
            "--events", "3000", "--rate", "300", "--seed", "11", "--json", "--keep", "--dir",
            &dir_arg,
        ],
        None,
    )
    .await?;
    let verdict = verdict_of(&output);
    assert!(output.status.success(), "{verdict:#}");
    assert_exactly_once(&verdict, 3_000);
    assert_eq!(verdict["store"], "sqlite");
    assert_eq!(number(&verdict, "faults_injected"), 3, "{verdict:#}");
    let faults: Vec<&str> = verdict["faults"]
        .as_array()
        .map(|faults| faults.iter().filter_map(|f| f["fault"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        faults,
        [
            "coordinator killed mid-commit",
            "broker leader change",
            "store unavailable"
        ]
    );
    assert!(
        number(&verdict, "restarts") >= 1,
        "the killed coordinator must have been restarted: {verdict:#}"
    );

    // The kept SQLite file, read by this test: one row per distinct event,
    // one dead letter per invalid record, the spend of the truth.
    let file = kept_location(&output);
    assert!(Path::new(&file).starts_with(dir.path()), "{file}");
    let mut connection = SqliteConnectOptions::new()
        .filename(&file)
        .read_only(true)
        .connect()
        .await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
        .fetch_one(&mut connection)
        .await?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut connection)
        .await?;
    let spend: i64 =
        sqlx::query_scalar("SELECT CAST(sum(spend_micros) AS BIGINT) FROM campaign_spend")
            .fetch_one(&mut connection)
            .await?;
    connection.close().await?;
    assert_eq!(events as u64, number(&verdict, "distinct_events"));
    assert_eq!(dead as u64, number(&verdict, "invalid"));
    assert_eq!(Some(spend), verdict["spend_micros_total"].as_i64());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_uses_a_schema_of_its_own() -> anyhow::Result<()> {
    let (url, pool) = common::fresh_database().await?;
    let output = run_demo(
        &[
            "--events", "2000", "--rate", "250", "--seed", "5", "--json", "--keep",
        ],
        Some(&url),
    )
    .await?;
    let verdict = verdict_of(&output);
    assert!(output.status.success(), "{verdict:#}");
    assert_exactly_once(&verdict, 2_000);
    assert_eq!(verdict["store"], "postgresql");
    assert_eq!(number(&verdict, "faults_injected"), 3, "{verdict:#}");

    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'onceflow_demo_%'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(schemas.len(), 1, "{schemas:?}");
    assert!(kept_location(&output).contains(&schemas[0]));
    let events: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.ad_events",
        schemas[0]
    )))
    .fetch_one(&pool)
    .await?;
    assert_eq!(events as u64, number(&verdict, "distinct_events"));
    // Nothing landed outside the demo's schema.
    let public_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(public_tables, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_chaos_removes_its_store_and_prints_a_table() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let output = run_demo(
        &[
            "--events",
            "1000",
            "--rate",
            "0",
            "--no-chaos",
            "--dir",
            &dir_arg,
        ],
        None,
    )
    .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for row in [
        "events written",
        "distinct events",
        "repeats",
        "invalid",
        "outputs",
        "DLQ records",
        "faults injected",
        "actor restarts",
        "lost",
        "duplicated",
        "spend cells checked",
    ] {
        assert!(stdout.contains(row), "no `{row}` row in:\n{stdout}");
    }
    assert!(stdout.contains("HELD"), "{stdout}");
    assert!(stdout.contains("no transactions"), "{stdout}");
    assert!(stderr.contains("faults    none"), "{stderr}");
    // Not kept: the demo's directory is gone.
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_bad_options_with_one_line() -> anyhow::Result<()> {
    for too_few_or_too_many in ["5", "30001"] {
        let output = run_demo(&["--events", too_few_or_too_many], None).await?;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--events"), "{stderr}");
    }

    let output = run_demo(&["--events", "1000"], Some("mysql://root@127.0.0.1/test")).await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("ONCEFLOW_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A bad setting stops the demo with one line naming it, and the schema
    // it had made in PostgreSQL is gone.
    let (url, pool) = common::fresh_database().await?;
    let output = run_demo_with_env(
        &["--events", "1000"],
        Some(&url),
        &[("ONCEFLOW_COMMIT_INTERVAL_MS", "999999")],
    )
    .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("commit_interval_ms"), "{stderr}");
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'onceflow_demo_%'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(schemas, 0);
    Ok(())
}
