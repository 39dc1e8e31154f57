//! Runs the real `onceflow` binary: one scenario is the run's shared Kafka
//! cluster (or a cluster of its own, or a broker the caller runs), a fresh database (PostgreSQL, or a SQLite file
//! with [`Scenario::with_sqlite`]), unique topics and group, and helpers to
//! produce input, start/kill/terminate/freeze instances, cut the database
//! off, read metrics and wait until the pipeline has caught up.
//!
//! Every instance binds its HTTP endpoint on port 0 and the harness reads
//! the bound address from the instance's own log (`http endpoint listening
//! addr=…`, or its JSON line), so no port is picked ahead of time and none is reused across
//! restarts. Waiting for catch-up is a liveness check of both commits: a
//! partition has caught up when its stored `next_offset` (the database
//! side) and, on a broker that keeps transactional offsets, the group's
//! committed offset (the Kafka side: outputs produced) reached its high
//! watermark. When it times out, the error names every partition that did
//! not, and where each side stopped.

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

use super::{
    KafkaCluster, LiveReader, LiveTarget, Metrics, OwnedTables, PipelineTopics, Tables, Verdict,
};

/// Everything one test needs, isolated from every other test.
#[derive(Debug)]
pub struct Scenario {
    /// the `onceflow` binary under test
    pub binary: PathBuf,
    /// `bootstrap.servers` of the broker under test
    pub bootstrap: String,
    /// the Kafka cluster under test (none on the mock, which the caller runs)
    pub cluster: Option<KafkaCluster>,
    pub database_url: String,
    /// the scenario's PostgreSQL database (also when the service writes to
    /// SQLite): dropped by [`Scenario::drop_database`]
    postgres_url: String,
    /// the scenario's PostgreSQL database (unused by the service when
    /// `sqlite` is set)
    pub pool: PgPool,
    /// the SQLite file the service writes to instead, if any
    pub sqlite: Option<SqlitePool>,
    pub topics: PipelineTopics,
    pub group_id: String,
    pub instance_id: String,
    pub partitions: i32,
    /// the log of the instance started last with [`Scenario::start`]: its
    /// HTTP endpoint is the one [`Scenario::http_get`] asks
    main_log: std::sync::Mutex<Option<PathBuf>>,
    /// the `read_committed` reader that runs during the scenario (from the
    /// first instance's start; on a real cluster only), finished by
    /// [`Scenario::verdict`]
    live: std::sync::Mutex<Option<LiveReader>>,
    /// whether instances start the live reader ([`Scenario::without_live_reader`])
    live_reading: bool,
    /// the proxy between the service and PostgreSQL, if the scenario put
    /// one there ([`Scenario::with_database_behind_proxy`])
    database_proxy: Option<super::TcpProxy>,
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
    /// The run's shared Kafka cluster, a database and an input topic with
    /// `partitions` partitions.
    pub async fn new(binary: &Path, partitions: i32) -> Result<Scenario> {
        Scenario::on_cluster(binary, KafkaCluster::shared().await?, partitions).await
    }

    /// A scenario on `cluster` (the shared one, or one of its own for faults
    /// that hurt brokers): its topics, replicated 3 times, and a database.
    pub async fn on_cluster(
        binary: &Path,
        cluster: KafkaCluster,
        partitions: i32,
    ) -> Result<Scenario> {
        let bootstrap = cluster.bootstrap.clone();
        let topics = Scenario::unique_topics();
        super::create_topic(&bootstrap, &topics.input, partitions).await?;
        super::create_topic(&bootstrap, &topics.output, 3).await?;
        super::create_topic(&bootstrap, &topics.dlq, 1).await?;
        Scenario::with_broker(binary, bootstrap, Some(cluster), topics, partitions).await
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
        cluster: Option<KafkaCluster>,
        topics: PipelineTopics,
        partitions: i32,
    ) -> Result<Scenario> {
        let (database_url, pool) = super::fresh_database().await?;
        Ok(Scenario {
            binary: binary.to_path_buf(),
            bootstrap,
            cluster,
            postgres_url: database_url.clone(),
            database_url,
            pool,
            sqlite: None,
            topics,
            group_id: super::unique("group"),
            instance_id: super::unique("instance"),
            partitions,
            main_log: std::sync::Mutex::new(None),
            live: std::sync::Mutex::new(None),
            live_reading: true,
            database_proxy: None,
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

    /// The same scenario with its service reaching PostgreSQL through a TCP
    /// proxy of the harness ([`Scenario::database_proxy`]), so a fault can
    /// cut, black-hole or slow that path; the harness's own pool and the
    /// verdict still connect directly.
    pub async fn with_database_behind_proxy(mut self) -> Result<Scenario> {
        let (before, rest) = self
            .database_url
            .split_once('@')
            .context("the database url has no host part")?;
        let (host_port, after) = rest
            .split_once('/')
            .context("the database url has no name")?;
        let upstream = tokio::net::lookup_host(host_port)
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .find(std::net::SocketAddr::is_ipv4)
            .with_context(|| format!("{host_port} has no IPv4 address"))?;
        let proxy = super::TcpProxy::start(upstream).await?;
        self.database_url = format!("{before}@{}/{after}", proxy.listen_addr());
        self.database_proxy = Some(proxy);
        Ok(self)
    }

    /// The proxy between the service and PostgreSQL, if there is one.
    pub fn database_proxy(&self) -> Option<&super::TcpProxy> {
        self.database_proxy.as_ref()
    }

    /// `bootstrap.servers` the service gets: through the cluster's proxies
    /// when it has some ([`KafkaCluster::start_own_behind_proxies`]).
    pub fn service_bootstrap(&self) -> String {
        self.cluster
            .as_ref()
            .map_or_else(|| self.bootstrap.clone(), KafkaCluster::client_bootstrap)
    }

    /// The tables the service writes to.
    pub fn tables(&self) -> Tables<'_> {
        match &self.sqlite {
            Some(pool) => Tables::Sqlite(pool),
            None => Tables::Postgres(&self.pool),
        }
    }

    /// A `onceflow` command of this scenario (see [`onceflow_command`]).
    fn onceflow_command(&self) -> Command {
        onceflow_command(&self.binary)
    }

    /// The environment of every `onceflow` command of this scenario.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ONCEFLOW_KAFKA_BROKERS", self.service_bootstrap()),
            ("ONCEFLOW_DATABASE_URL", self.database_url.clone()),
            ("ONCEFLOW_GROUP_ID", self.group_id.clone()),
            ("ONCEFLOW_INSTANCE_ID", self.instance_id.clone()),
            ("ONCEFLOW_INPUT_TOPIC", self.topics.input.clone()),
            ("ONCEFLOW_OUTPUT_TOPIC", self.topics.output.clone()),
            ("ONCEFLOW_DLQ_TOPIC", self.topics.dlq.clone()),
            // Any free port; the bound address is read from the log.
            ("ONCEFLOW_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("RUST_LOG", "info,onceflow_actors=debug".to_owned()),
            // Small batches: many cycles, so kill points and backpressure are
            // reached on a small workload; the same under a backlog, since
            // tests count cycles to place their faults (the chaos scenarios
            // turn the larger backlog batches on: `INSTANCE_ENV`).
            ("ONCEFLOW_MAX_BATCH_RECORDS", "200".to_owned()),
            ("ONCEFLOW_BACKLOG_BATCH_RECORDS", "200".to_owned()),
            ("ONCEFLOW_MAX_BUFFERED_RECORDS", "800".to_owned()),
        ]
    }

    /// The `onceflow produce` command of this scenario: `count` records
    /// with `seed`, `invalid_share` malformed, 5 % repeats, at `rate` per
    /// second (0: as fast as possible).
    pub fn produce_command(&self, count: u64, seed: u64, invalid_share: f64, rate: u64) -> Command {
        let mut command = self.onceflow_command();
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
            // The harness's input takes the direct path, whatever the
            // network between the service and the brokers does.
            .env("ONCEFLOW_KAFKA_BROKERS", &self.bootstrap)
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

    /// Writes the harness's own generated workload (see [`super::Generator`])
    /// to the input topic, as fast as the broker takes it.
    pub async fn generate(&self, spec: super::WorkloadSpec) -> Result<super::GeneratedSummary> {
        super::write_workload(&self.bootstrap, &self.topics.input, spec, 0).await
    }

    /// Writes a generated workload at `rate` records per second in the
    /// background; await the handle for its summary.
    pub fn generate_in_background(
        &self,
        spec: super::WorkloadSpec,
        rate: u64,
    ) -> tokio::task::JoinHandle<Result<super::GeneratedSummary>> {
        let bootstrap = self.bootstrap.clone();
        let topic = self.topics.input.clone();
        tokio::task::spawn_blocking(move || {
            super::write_workload_blocking(&bootstrap, &topic, spec, rate)
        })
    }

    /// Starts `onceflow run` with extra environment (for example `FAILPOINTS`).
    pub fn start(&self, extra_env: &[(&str, &str)]) -> Result<Service> {
        let service = self.start_instance(&self.instance_id, extra_env)?;
        *self
            .main_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(service.log_path.clone());
        Ok(service)
    }

    /// Starts another instance of the same group, with its own instance id
    /// (its HTTP endpoint on a port of its own, see [`Service::http_addr`]).
    pub fn start_instance(&self, instance_id: &str, extra_env: &[(&str, &str)]) -> Result<Service> {
        self.start_live_reader();
        let log_path = std::env::temp_dir().join(format!(
            "{instance_id}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let log = std::fs::File::create(&log_path)?;
        let child = self
            .onceflow_command()
            .arg("run")
            .envs(self.env())
            .env("ONCEFLOW_INSTANCE_ID", instance_id)
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
                let stalled = match self.stalled_partitions().await {
                    Ok(stalled) if stalled.is_empty() => {
                        "every partition caught up on both sides".to_owned()
                    }
                    Ok(stalled) => stalled.join("; "),
                    Err(error) => format!("cannot read the offsets: {error}"),
                };
                bail!(
                    "not caught up after {timeout:?}: {stored_events}/{events} events, \
                     {stored_dead}/{dead_letters} dead letters; {stalled}"
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

    /// Per input partition: the high watermark (end of input), the
    /// `consumer_offsets.next_offset` the store holds for this group (None:
    /// no row or NULL) and the group's committed Kafka offset (None: none).
    pub async fn partition_progress(&self) -> Result<Vec<PartitionProgress>> {
        // Before the service's first migration there is no table: nothing
        // is stored yet.
        let stored = self.stored_offsets().await.unwrap_or_default();
        // onceflow's own record of its Kafka commits is the Kafka side only
        // where the broker keeps no group offsets (the mock).
        let kafka_committed = if self.cluster.is_some() {
            std::collections::HashMap::new()
        } else {
            self.tables()
                .kafka_committed_offsets(&self.group_id, &self.topics.input)
                .await
                .unwrap_or_default()
        };
        let bootstrap = self.bootstrap.clone();
        let group = self.group_id.clone();
        let topic = self.topics.input.clone();
        let partitions = self.partitions;
        let group_offsets_kept = self.cluster.is_some();
        let kafka = tokio::task::spawn_blocking(move || {
            kafka_progress(&bootstrap, &group, &topic, partitions)
        })
        .await
        .context("the watermark task failed")??;
        Ok(kafka
            .into_iter()
            .map(
                |(partition, high_watermark, group_offset)| PartitionProgress {
                    partition,
                    high_watermark,
                    stored_next_offset: stored.get(&partition).copied().flatten(),
                    group_offset,
                    group_offsets_kept,
                    stored_kafka_committed: kafka_committed.get(&partition).copied().flatten(),
                },
            )
            .collect())
    }

    /// The sum of the input topic's high watermarks: the end both sides of
    /// the pipeline must reach.
    pub async fn input_end_offset(&self) -> Result<i64> {
        Ok(self
            .partition_progress()
            .await?
            .iter()
            .map(|progress| progress.high_watermark)
            .sum())
    }

    /// The sum of the output topic's high watermarks (3 partitions): it
    /// moves with every record and every transaction marker written there.
    pub async fn output_end_offset(&self) -> Result<i64> {
        let bootstrap = self.bootstrap.clone();
        let group = self.group_id.clone();
        let topic = self.topics.output.clone();
        let ends =
            tokio::task::spawn_blocking(move || kafka_progress(&bootstrap, &group, &topic, 3))
                .await
                .context("the watermark task failed")??;
        Ok(ends
            .iter()
            .map(|(_, high_watermark, _)| high_watermark)
            .sum())
    }

    /// The sum of the stored `consumer_offsets.next_offset` of the input
    /// partitions: it moves with every database commit of a batch.
    pub async fn stored_offset_total(&self) -> Result<i64> {
        Ok(self.stored_offsets().await?.values().flatten().sum())
    }

    /// `consumer_offsets.next_offset` per partition of the input topic.
    async fn stored_offsets(&self) -> Result<std::collections::HashMap<i32, Option<i64>>> {
        self.tables()
            .consumer_offsets(&self.group_id, &self.topics.input)
            .await
    }

    /// The liveness check, in words: every partition that has not caught up
    /// (see [`PartitionProgress::caught_up`]), and where each side is.
    pub async fn stalled_partitions(&self) -> Result<Vec<String>> {
        Ok(self
            .partition_progress()
            .await?
            .iter()
            .filter(|progress| !progress.caught_up())
            .map(PartitionProgress::describe)
            .collect())
    }

    /// Waits until every partition caught up on both sides (see
    /// [`PartitionProgress::caught_up`]); on timeout, one violation per
    /// stalled partition (`liveness: partition P stalled at …`). Empty when
    /// every partition caught up.
    pub async fn liveness_violations(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.stalled_partitions().await;
            match result {
                Ok(stalled) if stalled.is_empty() => return Vec::new(),
                Ok(stalled) if Instant::now() > deadline => {
                    return stalled
                        .into_iter()
                        .map(|stall| format!("liveness: {stall} after {timeout:?}"))
                        .collect();
                }
                Err(error) if Instant::now() > deadline => {
                    return vec![format!("liveness: cannot read the offsets: {error}")];
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The HTTP address of the instance started last with [`Scenario::start`].
    pub async fn http_addr(&self) -> Result<std::net::SocketAddr> {
        let log = self
            .main_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .context("no instance was started")?;
        http_addr_in_log(&log, Duration::from_secs(30)).await
    }

    /// GET a path of the service's HTTP endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http_addr().await?, path).await
    }

    /// The `/metrics` of the instance started last, parsed.
    pub async fn metrics(&self) -> Result<Metrics> {
        let (_, body) = self.http_get("/metrics").await?;
        Metrics::parse(&body)
    }

    /// The sum of the samples of `name` (e.g. `onceflow_txn_aborts_total`)
    /// whose labels include `labels`; see [`Metrics::sum`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.metrics().await?.sum(name, labels)
    }

    /// The exactly-once verdict, independent of onceflow's code.
    pub async fn verdict(&self) -> Result<Verdict> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let observed = match live {
            Some(reader) => Some(reader.finish().await?),
            None => None,
        };
        super::check_exactly_once_observed(
            &self.bootstrap,
            self.tables(),
            &self.topics,
            observed.as_ref(),
        )
        .await
    }

    /// No live reader: the verdict reads the topics after the run only
    /// (a benchmark's clients must not share the machine's cores with one).
    pub fn without_live_reader(mut self) -> Scenario {
        self.live_reading = false;
        self
    }

    /// Starts the live `read_committed` reader once, on a real cluster.
    fn start_live_reader(&self) {
        if self.cluster.is_none() || !self.live_reading {
            return;
        }
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if live.is_none() {
            let tables = match &self.sqlite {
                Some(pool) => OwnedTables::Sqlite(pool.clone()),
                None => OwnedTables::Postgres(self.pool.clone()),
            };
            *live = Some(LiveReader::start(LiveTarget {
                bootstrap: self.bootstrap.clone(),
                topics: self.topics.clone(),
                group_id: self.group_id.clone(),
                input_partitions: self.partitions,
                tables,
            }));
        }
    }

    /// Drops the scenario's PostgreSQL database (call it when the test or
    /// scenario passed; a failed one keeps its database for inspection).
    pub async fn drop_database(&self) -> Result<()> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(reader) = live {
            // Its offset sampler holds a connection of the pool.
            let _ = reader.finish().await;
        }
        self.pool.close().await;
        if let Some(sqlite) = &self.sqlite {
            sqlite.close().await;
        }
        super::drop_database(&self.postgres_url).await
    }
}

/// Where one input partition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: i32,
    /// the end of the input
    pub high_watermark: i64,
    /// `consumer_offsets.next_offset` for this group (None: not yet stored)
    pub stored_next_offset: Option<i64>,
    /// the group's committed Kafka offset (None: none)
    pub group_offset: Option<i64>,
    /// whether the broker keeps transactional offsets (a real cluster; not
    /// librdkafka's mock, which discards them)
    pub group_offsets_kept: bool,
    /// `consumer_offsets.kafka_committed_offset`: the Kafka offset onceflow
    /// confirmed committed (its own record; the Kafka side on the mock)
    pub stored_kafka_committed: Option<i64>,
}

impl PartitionProgress {
    /// Whether the pipeline caught up with this partition: its database side
    /// (the stored offset) and its Kafka side reached the end of the input.
    /// The Kafka side is the group's offset (moved only by a transaction
    /// that produced the outputs) where the broker keeps it, else (the mock)
    /// the offset onceflow stored after confirming its Kafka commit. The database side alone is
    /// not enough: a cycle that aborted after its database commit leaves the
    /// stored offset at the end and the outputs owed until the replay. An
    /// empty partition is caught up without a row.
    pub fn caught_up(&self) -> bool {
        let end = Some(self.high_watermark);
        let kafka_side = if self.group_offsets_kept {
            self.group_offset
        } else {
            self.stored_kafka_committed
        };
        self.high_watermark == 0 || (self.database_caught_up() && kafka_side >= end)
    }

    /// Whether the database side alone reached the end of the input (every
    /// record consumed and committed there; the outputs may still be owed).
    pub fn database_caught_up(&self) -> bool {
        self.high_watermark == 0 || self.stored_next_offset >= Some(self.high_watermark)
    }

    /// `partition 1 stalled at stored next_offset 1234 of 5000 (group offset 1200)`.
    pub fn describe(&self) -> String {
        let stored = self
            .stored_next_offset
            .map_or("no stored offset".to_owned(), |o| {
                format!("stored next_offset {o}")
            });
        let group = self.group_offset.map_or("no group offset".to_owned(), |o| {
            format!("group offset {o}")
        });
        format!(
            "partition {} stalled at {stored} of high watermark {} ({group})",
            self.partition, self.high_watermark
        )
    }
}

/// (partition, high watermark, group committed offset) of every partition.
fn kafka_progress(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, i64, Option<i64>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    let mut out = Vec::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        let offset = committed
            .find_partition(topic, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            });
        out.push((partition, high, offset));
    }
    Ok(out)
}

/// The address after the last `http endpoint listening addr=` of a log,
/// waiting at most `timeout` for it to appear.
pub async fn http_addr_in_log(log: &Path, timeout: Duration) -> Result<std::net::SocketAddr> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .rev()
            .filter(|line| line.contains("http endpoint listening"))
            .filter_map(listening_addr_of)
            .next();
        if let Some(addr) = found {
            return Ok(addr);
        }
        if Instant::now() > deadline {
            bail!(
                "no `http endpoint listening` line in {} within {timeout:?}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address of an `http endpoint listening` line, text (`addr=…`) or
/// JSON (`ONCEFLOW_LOG_FORMAT=json`: `"fields":{"addr":"…"}`).
fn listening_addr_of(line: &str) -> Option<std::net::SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json.get("fields")?.get("addr")?.as_str()?.parse().ok();
    }
    let start = line.find("addr=")? + "addr=".len();
    line.get(start..)?.split_whitespace().next()?.parse().ok()
}

/// GET `path` from `addr`: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
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

/// A `binary` command that inherits no `ONCEFLOW_*` variable from the
/// harness's own environment: a scenario sets every setting its instances
/// run with, and an instance refuses a variable it does not know (such as
/// `ONCEFLOW_KAFKA_JVM_OPTS`, which is the Kafka cluster script's: a run
/// with it exported had every instance exit at start).
pub fn onceflow_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    remove_inherited_settings(&mut command, std::env::vars_os().map(|(key, _)| key));
    command
}

/// Removes from `command`'s environment every `ONCEFLOW_*` name of
/// `inherited`.
fn remove_inherited_settings(
    command: &mut Command,
    inherited: impl Iterator<Item = std::ffi::OsString>,
) {
    for key in inherited {
        if key.to_string_lossy().starts_with("ONCEFLOW_") {
            command.env_remove(key);
        }
    }
}

impl Service {
    /// The address this instance's HTTP endpoint bound (from its log).
    pub async fn http_addr(&self) -> Result<std::net::SocketAddr> {
        http_addr_in_log(&self.log_path, Duration::from_secs(30)).await
    }

    /// GET a path of this instance's HTTP endpoint.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http_addr().await?, path).await
    }

    /// This instance's `/metrics`, parsed.
    pub async fn metrics(&self) -> Result<Metrics> {
        let (_, body) = self.http_get("/metrics").await?;
        Metrics::parse(&body)
    }

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

    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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

#[cfg(test)]
mod tests {
    use super::PartitionProgress;
    use proptest::prelude::*;

    #[test]
    fn an_instance_inherits_no_onceflow_variable_and_keeps_the_rest() {
        let mut command = tokio::process::Command::new("true");
        let inherited = [
            "ONCEFLOW_KAFKA_JVM_OPTS",
            "PATH",
            "ONCEFLOW_MAX_BATCH_RECORDS",
        ];
        super::remove_inherited_settings(&mut command, inherited.iter().map(Into::into));
        command.env("ONCEFLOW_MAX_BATCH_RECORDS", "200");
        let set: Vec<(String, Option<String>)> = command
            .as_std()
            .get_envs()
            .map(|(key, value)| {
                (
                    key.to_string_lossy().into_owned(),
                    value.map(|value| value.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(
            set,
            vec![
                ("ONCEFLOW_KAFKA_JVM_OPTS".to_owned(), None),
                (
                    "ONCEFLOW_MAX_BATCH_RECORDS".to_owned(),
                    Some("200".to_owned())
                ),
            ],
            "removed, then set by the scenario; PATH untouched"
        );
    }

    fn progress(
        high: i64,
        stored: Option<i64>,
        kafka_side: Option<i64>,
        kept: bool,
    ) -> PartitionProgress {
        PartitionProgress {
            partition: 0,
            high_watermark: high,
            stored_next_offset: stored,
            group_offset: if kept { kafka_side } else { None },
            group_offsets_kept: kept,
            stored_kafka_committed: if kept { None } else { kafka_side },
        }
    }

    #[test]
    fn a_database_at_the_end_with_outputs_owed_has_not_caught_up() {
        // The cycle of [880, 1000) aborted after its database commit: the
        // store says 1000, Kafka still 880, the outputs are owed.
        let owed = progress(1000, Some(1000), Some(880), true);
        assert!(!owed.caught_up());
        assert!(owed.database_caught_up());
        assert!(owed.describe().contains("group offset 880"));
        assert!(progress(1000, Some(1000), Some(1000), true).caught_up());
        assert!(!progress(1000, Some(1000), None, true).caught_up());
        assert!(
            progress(0, None, None, true).caught_up(),
            "an empty partition"
        );
    }

    #[test]
    fn on_the_mock_the_confirmed_kafka_offset_is_the_kafka_side() {
        assert!(!progress(1000, Some(1000), Some(880), false).caught_up());
        assert!(!progress(1000, Some(1000), None, false).caught_up());
        assert!(progress(1000, Some(1000), Some(1000), false).caught_up());
        // The group's offset is not read there (the mock discards it).
        let mut group_only = progress(1000, Some(1000), None, false);
        group_only.group_offset = Some(1000);
        assert!(!group_only.caught_up());
    }

    proptest! {
        /// Caught up means the database side is too, and committing more
        /// on either side never takes it back.
        #[test]
        fn caught_up_needs_the_database_and_survives_progress(
            high in 0i64..50,
            stored in proptest::option::of(0i64..60),
            kafka_side in proptest::option::of(0i64..60),
            kept in any::<bool>(),
            more_stored in 0i64..10,
            more_kafka in 0i64..10,
        ) {
            let now = progress(high, stored, kafka_side, kept);
            if now.caught_up() {
                prop_assert!(now.database_caught_up());
                let later = progress(
                    high,
                    stored.map(|s| s + more_stored),
                    kafka_side.map(|k| k + more_kafka),
                    kept,
                );
                prop_assert!(later.caught_up());
            }
            // Neither side alone is enough (unless the partition is empty).
            if high > 0 {
                prop_assert!(!progress(high, stored, None, kept).caught_up());
                prop_assert!(!progress(high, None, kafka_side, kept).caught_up());
            }
        }
    }
}
