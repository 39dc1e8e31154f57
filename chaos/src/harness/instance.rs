//! Runs the real `onceflow` binary: one scenario is a fresh broker (or a
//! broker the caller runs), a fresh database (PostgreSQL, or a SQLite file
//! with [`Scenario::with_sqlite`]), unique topics and group, and helpers to
//! produce input, start/kill/terminate/freeze instances, cut the database
//! off, read metrics and wait until the pipeline has caught up.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bail;
use crate::error::{Context, Result};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{Broker, PipelineTopics, Tables, Verdict};

/// Everything one test needs, isolated from every other test.
#[derive(Debug)]
pub struct Scenario {
    /// the `onceflow` binary under test
    pub binary: PathBuf,
    /// `bootstrap.servers` of the broker under test
    pub bootstrap: String,
    /// the noida-db broker, when the scenario owns one (not on the mock)
    pub broker: Option<Broker>,
    pub database_url: String,
    /// the scenario's PostgreSQL database (unused by the service when
    /// `sqlite` is set)
    pub pool: PgPool,
    /// the SQLite file the service writes to instead, if any
    pub sqlite: Option<SqlitePool>,
    pub topics: PipelineTopics,
    pub group_id: String,
    pub instance_id: String,
    pub partitions: i32,
    pub http_port: u16,
}

/// A running `onceflow run`.
#[derive(Debug)]
pub struct Service {
    pub child: Child,
    pub log_path: std::path::PathBuf,
}

pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Scenario {
    /// A noida-db broker, a database and an input topic with `partitions`
    /// partitions.
    pub async fn new(binary: &Path, partitions: i32) -> Result<Scenario> {
        let broker = Broker::start().await?;
        let bootstrap = broker.bootstrap.clone();
        let topics = Scenario::unique_topics();
        super::create_topic(&bootstrap, &topics.input, partitions).await?;
        super::create_topic(&bootstrap, &topics.output, 3).await?;
        super::create_topic(&bootstrap, &topics.dlq, 1).await?;
        Scenario::with_broker(binary, bootstrap, Some(broker), topics, partitions).await
    }

    /// Fresh unique topic names.
    pub fn unique_topics() -> PipelineTopics {
        PipelineTopics {
            input: super::unique("in"),
            output: super::unique("out"),
            dlq: super::unique("dlq"),
        }
    }

    /// A scenario on a broker the caller runs (librdkafka's mock cluster),
    /// whose topics the caller has created.
    pub async fn with_broker(
        binary: &Path,
        bootstrap: String,
        broker: Option<Broker>,
        topics: PipelineTopics,
        partitions: i32,
    ) -> Result<Scenario> {
        let (database_url, pool) = super::fresh_database().await?;
        Ok(Scenario {
            binary: binary.to_path_buf(),
            bootstrap,
            broker,
            database_url,
            pool,
            sqlite: None,
            topics,
            group_id: super::unique("group"),
            instance_id: super::unique("instance"),
            partitions,
            http_port: free_port()?,
        })
    }

    /// The same scenario with its service writing to the SQLite file `path`
    /// (`ONCEFLOW_DATABASE_URL=sqlite://path`) instead of PostgreSQL; table
    /// counts and the verdict read that file. The file is created by the
    /// service, not here.
    pub fn with_sqlite(mut self, path: &Path) -> Scenario {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        self.database_url = format!("sqlite://{}", path.display());
        self.sqlite = Some(pool);
        self
    }

    /// The tables the service writes to.
    pub fn tables(&self) -> Tables<'_> {
        match &self.sqlite {
            Some(pool) => Tables::Sqlite(pool),
            None => Tables::Postgres(&self.pool),
        }
    }

    /// The environment of every `onceflow` command of this scenario.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ONCEFLOW_KAFKA_BROKERS", self.bootstrap.clone()),
            ("ONCEFLOW_DATABASE_URL", self.database_url.clone()),
            ("ONCEFLOW_GROUP_ID", self.group_id.clone()),
            ("ONCEFLOW_INSTANCE_ID", self.instance_id.clone()),
            ("ONCEFLOW_INPUT_TOPIC", self.topics.input.clone()),
            ("ONCEFLOW_OUTPUT_TOPIC", self.topics.output.clone()),
            ("ONCEFLOW_DLQ_TOPIC", self.topics.dlq.clone()),
            (
                "ONCEFLOW_HTTP_ADDR",
                format!("127.0.0.1:{}", self.http_port),
            ),
            ("RUST_LOG", "info,onceflow_actors=debug".to_owned()),
            // Small batches: many cycles, so kill points and backpressure are
            // reached on a small workload.
            ("ONCEFLOW_MAX_BATCH_RECORDS", "200".to_owned()),
            ("ONCEFLOW_MAX_BUFFERED_RECORDS", "800".to_owned()),
        ]
    }

    /// The `onceflow produce` command of this scenario: `count` records
    /// with `seed`, `invalid_share` malformed, 5 % repeats, at `rate` per
    /// second (0: as fast as possible).
    pub fn produce_command(&self, count: u64, seed: u64, invalid_share: f64, rate: u64) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["produce", "--quiet", "--count", &count.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--partitions", &self.partitions.to_string()])
            .args(["--seed", &seed.to_string()])
            .args([
                "--invalid-share",
                &invalid_share.to_string(),
                "--repeat-share",
                "0.05",
            ])
            .envs(self.env())
            .stdin(Stdio::null());
        command
    }

    /// Writes `count` records (3 % invalid, 5 % repeats) with `seed`.
    pub async fn produce(&self, count: u64, seed: u64) -> Result<()> {
        self.produce_with_invalid_share(count, seed, 0.03).await
    }

    /// Writes `count` records with `seed` and a share of malformed ones.
    pub async fn produce_with_invalid_share(
        &self,
        count: u64,
        seed: u64,
        invalid_share: f64,
    ) -> Result<()> {
        let output = self
            .produce_command(count, seed, invalid_share, 0)
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "onceflow produce failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts `onceflow run` with extra environment (for example `FAILPOINTS`).
    pub fn start(&self, extra_env: &[(&str, &str)]) -> Result<Service> {
        self.start_instance(&self.instance_id, self.http_port, extra_env)
    }

    /// Starts another instance of the same group, with its own instance id
    /// and HTTP port.
    pub fn start_instance(
        &self,
        instance_id: &str,
        http_port: u16,
        extra_env: &[(&str, &str)],
    ) -> Result<Service> {
        let log_path = std::env::temp_dir().join(format!(
            "{instance_id}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&self.binary)
            .arg("run")
            .envs(self.env())
            .env("ONCEFLOW_INSTANCE_ID", instance_id)
            .env("ONCEFLOW_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning onceflow run")?;
        Ok(Service { child, log_path })
    }

    /// Rows in `ad_events` and `dead_letters` (0 while a table or the
    /// database does not exist yet).
    pub async fn table_counts(&self) -> Result<(i64, i64)> {
        let tables = self.tables();
        let events = tables.count("ad_events").await.unwrap_or(0);
        let dead = tables.count("dead_letters").await.unwrap_or(0);
        Ok((events, dead))
    }

    /// Whether the group's committed offset reached the high watermark of
    /// every input partition (Kafka side caught up).
    pub fn group_caught_up(&self) -> Result<bool> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut list = TopicPartitionList::new();
        for partition in 0..self.partitions {
            list.add_partition(&self.topics.input, partition);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
        for partition in 0..self.partitions {
            let (_, high) = consumer.fetch_watermarks(
                &self.topics.input,
                partition,
                Duration::from_secs(10),
            )?;
            let offset = committed
                .find_partition(&self.topics.input, partition)
                .map(|element| element.offset());
            match offset {
                Some(Offset::Offset(offset)) if offset >= high => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Waits until the database holds every expected row and the group's
    /// offsets reached the end of the input.
    pub async fn wait_caught_up(
        &self,
        events: i64,
        dead_letters: i64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (stored_events, stored_dead) = self.table_counts().await?;
            if stored_events == events && stored_dead == dead_letters {
                let bootstrap_check = tokio::task::block_in_place(|| self.group_caught_up())?;
                if bootstrap_check {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not caught up after {timeout:?}: {stored_events}/{events} events, {stored_dead}/{dead_letters} dead letters"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Recomputes the ground truth from the input topic and waits until the
    /// pipeline has caught up with it; returns the truth.
    pub async fn wait_caught_up_with_input(&self, timeout: Duration) -> Result<super::InputTruth> {
        let truth = super::input_truth(&self.bootstrap, &self.topics.input).await?;
        self.wait_caught_up(truth.distinct_events as i64, truth.invalid as i64, timeout)
            .await?;
        Ok(truth)
    }

    /// GET a path of the service's HTTP endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no status line")?;
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        Ok((status, body))
    }

    /// The value of a metric line (`name` with its labels, exactly as printed).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let (_, body) = self.http_get("/metrics").await?;
        body.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .with_context(|| format!("metric {series} not found"))
    }

    /// The exactly-once verdict, independent of onceflow's code.
    pub async fn verdict(&self) -> Result<Verdict> {
        super::check_exactly_once_in(&self.bootstrap, self.tables(), &self.topics).await
    }
}

impl Service {
    /// Sends SIGTERM and waits for the exit, at most `timeout`.
    pub async fn terminate(mut self, timeout: Duration) -> Result<(ExitStatus, Duration)> {
        let pid = self.child.id().context("service already exited")?;
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let exit = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "no exit within {timeout:?} after SIGTERM; log: {}",
                    self.log_path.display()
                )
            })??;
        Ok((exit, started.elapsed()))
    }

    /// SIGKILL, as an orchestrator or the OOM killer would.
    pub async fn sigkill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits for the process to exit by itself (a kill point with `sigkill`).
    pub async fn wait_exit(mut self, timeout: Duration) -> Result<ExitStatus> {
        Ok(tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "service did not exit within {timeout:?}; log: {}",
                    self.log_path.display()
                )
            })??)
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the process.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("service already exited")?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Waits until the service has committed something to the database.
pub async fn wait_for_progress(scenario: &Scenario, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while scenario.table_counts().await?.0 == 0 {
        if Instant::now() > deadline {
            bail!("no progress within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Makes the scenario's database refuse new connections and terminates its
/// sessions; [`DatabaseOutage::end`] lets connections in again.
#[derive(Debug)]
pub struct DatabaseOutage {
    admin: PgPool,
    database: String,
}

impl DatabaseOutage {
    pub async fn begin(scenario: &Scenario) -> Result<DatabaseOutage> {
        let database = scenario
            .database_url
            .rsplit('/')
            .next()
            .context("database url has no name")?
            .to_owned();
        let admin_url = std::env::var("CHAOS_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let admin = PgPool::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS false"
        )))
        .execute(&admin)
        .await?;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&database)
            .execute(&admin)
            .await?;
        Ok(DatabaseOutage { admin, database })
    }

    pub async fn end(self) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
            self.database
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }
}

impl Scenario {
    /// Writes `count` records at `rate` per second in the background.
    pub fn produce_in_background(&self, count: u64, rate: u64, seed: u64) -> Result<Child> {
        Ok(self
            .produce_command(count, seed, 0.03, rate)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?)
    }

    /// Polls `check` until it holds, at most `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut(&Scenario) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !check(self).await {
            if Instant::now() > deadline {
                bail!("{what}: not seen within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}
