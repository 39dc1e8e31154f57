//! Shared harness of the integration tests (each test binary does `mod common;`).
//!
//! - [`Broker`]: a throwaway Kafka-compatible broker (noida-db) on a free
//!   loopback port with its own temporary data dir; dropping it kills the
//!   broker process and everything it started.
//! - [`fresh_database`]: a new, empty PostgreSQL database per test.
//! - [`read_committed`]: reads a whole topic as a `read_committed` consumer
//!   sees it, up to each partition's end (the last stable offset).
//! - [`check_exactly_once`]: checks the contract's three guarantees from the
//!   outside. Its ground truth comes from reading the input topic and applying
//!   the contract's validity rule, written here independently of both the
//!   generator and onceflow; it never trusts what onceflow says about itself.
//!
//! Nothing here shares state between tests through fixed names: topics,
//! groups and databases get unique names from [`unique`].

#![allow(dead_code)] // every test binary uses a different part of the harness

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;
use uuid::Uuid;

/// How long [`Broker::start`] waits for the broker to answer.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`read_committed`] may take for one topic.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A unique name for a topic, group or transactional id: `prefix-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

/// A single noida-db Kafka broker for one test (or one test binary).
#[derive(Debug)]
pub struct Broker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub bootstrap: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts noida-db (`--only kafka`) on a free loopback port and waits,
    /// at most 30 s, until it accepts TCP connections and answers a metadata
    /// request. The error includes the broker's stderr.
    ///
    /// noida-db is found at `$NOIDA_DB`, else on `PATH`, else at
    /// `.venv/bin/noida-db` in the package directory.
    pub async fn start() -> anyhow::Result<Broker> {
        let program = noida_db_program()?;
        let mut last_error = None;
        // A port picked as free can be taken before noida-db binds it: retry.
        for _ in 0..3 {
            match Broker::start_once(&program).await {
                Ok(broker) => return Ok(broker),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("noida-db did not start")))
    }

    async fn start_once(program: &Path) -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("onceflow-noida-")
            .tempdir()
            .context("cannot create a temporary directory for noida-db")?;
        let port = free_port()?;
        let stdout = std::fs::File::create(dir.path().join("noida.stdout"))
            .context("cannot create the noida-db stdout file")?;
        let stderr = std::fs::File::create(dir.path().join("noida.stderr"))
            .context("cannot create the noida-db stderr file")?;
        let child = tokio::process::Command::new(program)
            .arg("start")
            .args(["--only", "kafka", "--host", "127.0.0.1"])
            .arg("--kafka-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", program.display()))?;
        // Built before waiting so that any failure below kills the child.
        let mut broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot check the noida-db process")?
            {
                bail!(
                    "noida-db exited ({status}) before it was ready on {}; stderr:\n{}",
                    self.bootstrap,
                    self.stderr_tail()
                );
            }
            let last_problem = match tokio::net::TcpStream::connect(&self.bootstrap).await {
                Err(error) => format!("tcp connect: {error}"),
                Ok(_) => match fetch_broker_count(&self.bootstrap).await {
                    Ok(count) if count > 0 => return Ok(()),
                    Ok(_) => "metadata lists no broker".to_owned(),
                    Err(error) => format!("metadata: {error:#}"),
                },
            };
            if Instant::now() >= deadline {
                bail!(
                    "noida-db on {} not ready within {} s ({last_problem}); stderr:\n{}",
                    self.bootstrap,
                    BROKER_START_TIMEOUT.as_secs(),
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 4 KiB of the broker's stderr (for error messages).
    pub fn stderr_tail(&self) -> String {
        let path = self._dir.path().join("noida.stderr");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let start = bytes.len().saturating_sub(4096);
                String::from_utf8_lossy(&bytes[start..]).into_owned()
            }
            Err(error) => format!("(cannot read {}: {error})", path.display()),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // `noida-db` from pip is a Python wrapper that runs the real binary
        // as its child: killing the wrapper alone would orphan the broker.
        if let Some(pid) = self.child.id() {
            let pids: Vec<String> = descendants(pid).iter().map(u32::to_string).collect();
            if !pids.is_empty() {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .args(&pids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = self.child.start_kill();
    }
}

/// Where noida-db is: `$NOIDA_DB`, else `PATH`, else `.venv/bin/noida-db`.
fn noida_db_program() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NOIDA_DB") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("NOIDA_DB={} is not a file", path.display());
        }
        return Ok(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("noida-db");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/noida-db");
    if venv.is_file() {
        return Ok(venv);
    }
    bail!(
        "noida-db not found: set NOIDA_DB, put it on PATH, or install it with \
         `python3 -m venv .venv && .venv/bin/pip install noida-db==0.2.3`"
    )
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener
        .local_addr()
        .context("cannot read the bound port")?
        .port())
}

/// Every process below `root` (children, grandchildren, ...), from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

fn admin_client(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("cannot create a kafka admin client")
}

/// Number of brokers in the cluster metadata.
async fn fetch_broker_count(bootstrap: &str) -> anyhow::Result<usize> {
    let admin = admin_client(bootstrap)?;
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(3))
            .context("metadata request failed")?;
        Ok(metadata.brokers().len())
    })
    .await
    .context("the metadata task failed")?
}

/// Partitions of `topic` per the metadata, or `None` while it does not exist.
async fn partition_count(bootstrap: &str, topic: &str) -> anyhow::Result<Option<usize>> {
    let admin = admin_client(bootstrap)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .with_context(|| format!("cannot fetch the metadata of topic {topic}"))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len()))
    })
    .await
    .context("the metadata task failed")?
}

/// Creates `topic` with `partitions` partitions (an existing topic is fine)
/// and waits until its metadata shows them.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin = admin_client(bootstrap)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| format!("cannot create topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    let wanted = usize::try_from(partitions).unwrap_or(0);
    wait_until(
        Duration::from_secs(15),
        &format!("topic {topic} exists"),
        || async {
            Ok(partition_count(bootstrap, topic)
                .await?
                .is_some_and(|n| n >= wanted))
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------

/// A new empty database `onceflow_t_<uuid>` on the test server
/// (`$ONCEFLOW_TEST_ADMIN_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
/// its URL and a pool on it. The database is left behind for inspection.
pub async fn fresh_database() -> anyhow::Result<(String, PgPool)> {
    let admin_url = std::env::var("ONCEFLOW_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&admin_url)
        .await
        .with_context(|| format!("cannot connect to the test postgres at {admin_url}"))?;
    let name = format!("onceflow_t_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    admin.close().await;
    let url = with_database(&admin_url, &name)?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .with_context(|| format!("cannot connect to the new database {name}"))?;
    Ok((url, pool))
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("not a postgres url: {url}"))?;
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Reading topics
// ---------------------------------------------------------------------------

/// One record of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Headers in order; a header without a value has an empty one.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TopicRecord {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The first header named `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many headers are named `name`.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(key, _)| key == name).count()
    }
}

/// Every record of `topic` that a `read_committed` consumer sees, from the
/// earliest offset to the end of each partition (for `read_committed` the
/// end is the last stable offset: aborted records, control records and open
/// transactions are not returned). Sorted by partition, then offset.
///
/// Uses a fresh consumer that assigns all partitions itself (no group join,
/// no commits) and stops once librdkafka reports the end of every partition;
/// fails after 60 s.
pub async fn read_committed(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<TopicRecord>> {
    let partitions = match partition_count(bootstrap, topic).await? {
        Some(count) => count,
        None => bail!("topic {topic} does not exist"),
    };
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_committed_blocking(&bootstrap, &topic, partitions))
        .await
        .context("the topic reader task failed")?
}

fn read_committed_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<Vec<TopicRecord>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("onceflow-harness-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        // An empty fetch (the end of a partition) answers after at most this.
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("cannot create the topic reader")?;
    let mut assignment = TopicPartitionList::new();
    let partition_ids: Vec<i32> = (0..partitions)
        .map(|p| i32::try_from(p).context("too many partitions"))
        .collect::<anyhow::Result<_>>()?;
    for &partition in &partition_ids {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .with_context(|| format!("cannot assign {topic}/{partition}"))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot assign the partitions of {topic}"))?;

    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut records = Vec::new();
    let mut last_error = None;
    while at_end.len() < partition_ids.len() {
        if std::time::Instant::now() >= deadline {
            let missing: Vec<i32> = partition_ids
                .iter()
                .copied()
                .filter(|p| !at_end.contains(p))
                .collect();
            bail!(
                "reading {topic}: partitions {missing:?} did not reach their end within {} s \
                 ({} records read; last error: {})",
                READ_TIMEOUT.as_secs(),
                records.len(),
                last_error.map_or("none".to_owned(), |e: KafkaError| e.to_string())
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => last_error = Some(error),
            Some(Ok(message)) => {
                // A record after an EOF means the partition grew: read on.
                at_end.remove(&message.partition());
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(TopicRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `check` every 200 ms until it returns `Ok(true)`; fails after
/// `timeout` naming `what` and the last error `check` returned, if any.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!(
                    "timed out after {:.1} s waiting until {what} (last error: {error:#})",
                    timeout.as_secs_f64()
                ),
                None => bail!(
                    "timed out after {:.1} s waiting until {what}",
                    timeout.as_secs_f64()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// The contract's validity rule, written independently of onceflow
// ---------------------------------------------------------------------------

/// The `onceflow-error-kind` the contract implies for an invalid record.
pub const INVALID_UTF8: &str = "invalid-utf8";
pub const INVALID_JSON: &str = "invalid-json";
pub const INVALID_EVENT: &str = "invalid-event";

/// A valid input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent {
    pub event_id: Uuid,
    pub campaign_id: String,
    pub ad_id: String,
    /// `impression` or `click`.
    pub kind: String,
    pub cost_micros: i64,
    /// `occurred_at` in microseconds since the epoch.
    pub occurred_at_micros: i64,
    /// `billed_minute`: `occurred_at` (UTC) truncated to the minute, in
    /// seconds since the epoch.
    pub minute: i64,
}

/// Applies the contract's validity rule to a record value; an invalid one
/// gives the error kind the contract implies and a reason.
pub fn check_event(value: Option<&[u8]>) -> Result<ValidEvent, (&'static str, String)> {
    let bytes = value.unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|e| (INVALID_UTF8, e.to_string()))?;
    let json: Value = serde_json::from_str(text).map_err(|e| (INVALID_JSON, e.to_string()))?;
    let bad = |reason: String| (INVALID_EVENT, reason);
    let object = json
        .as_object()
        .ok_or_else(|| bad("not a json object".to_owned()))?;
    let string = |name: &str| -> Result<&str, (&'static str, String)> {
        object
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{name} missing or not a string")))
    };
    let bounded = |name: &str| -> Result<String, (&'static str, String)> {
        let value = string(name)?;
        let chars = value.chars().count();
        if chars == 0 || chars > 128 {
            return Err(bad(format!("{name} has {chars} characters")));
        }
        Ok(value.to_owned())
    };
    let event_id = Uuid::parse_str(string("event_id")?)
        .map_err(|e| bad(format!("event_id is not a uuid: {e}")))?;
    let campaign_id = bounded("campaign_id")?;
    let ad_id = bounded("ad_id")?;
    let kind = string("kind")?;
    if kind != "impression" && kind != "click" {
        return Err(bad(format!("kind {kind:?}")));
    }
    let cost_micros = object
        .get("cost_micros")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("cost_micros missing or not an integer".to_owned()))?;
    if !(0..=1_000_000_000_000).contains(&cost_micros) {
        return Err(bad(format!("cost_micros {cost_micros} out of range")));
    }
    let occurred_at = string("occurred_at")?;
    let occurred_at = chrono::DateTime::parse_from_rfc3339(occurred_at)
        .map_err(|e| bad(format!("occurred_at {occurred_at:?}: {e}")))?;
    let seconds = occurred_at.timestamp();
    Ok(ValidEvent {
        event_id,
        campaign_id,
        ad_id,
        kind: kind.to_owned(),
        cost_micros,
        occurred_at_micros: occurred_at.timestamp_micros(),
        minute: seconds - seconds.rem_euclid(60),
    })
}

/// Impressions, clicks and spend of a set of distinct events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub impressions: u64,
    pub clicks: u64,
    pub spend_micros: i64,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} impressions, {} clicks, {} micros",
            self.impressions, self.clicks, self.spend_micros
        )
    }
}

impl Totals {
    fn add(&mut self, kind: &str, cost_micros: i64) {
        if kind == "click" {
            self.clicks += 1;
        } else {
            self.impressions += 1;
        }
        self.spend_micros += cost_micros;
    }

    fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// An invalid input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    pub error_kind: &'static str,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// The ground truth, recomputed from the input topic.
#[derive(Debug, Clone, Default)]
pub struct InputTruth {
    pub records: u64,
    pub valid_records: u64,
    pub distinct_events: u64,
    pub repeats: u64,
    pub invalid: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub spend_micros_total: i64,
    pub per_campaign: BTreeMap<String, Totals>,
    /// Per `(campaign_id, billed_minute in epoch seconds)`.
    pub per_minute: BTreeMap<(String, i64), Totals>,
    /// Each distinct valid event (its first copy by partition, offset).
    pub events: HashMap<Uuid, ValidEvent>,
    /// Every input position `(partition, offset)` of each valid event.
    pub positions: HashMap<Uuid, Vec<(i32, i64)>>,
    /// Invalid records by `(partition, offset)`.
    pub invalid_records: BTreeMap<(i32, i64), InvalidRecord>,
    /// Event ids sent more than once with different contents: their spend
    /// depends on which copy onceflow saw first, so the per-campaign check
    /// is skipped when this is not zero.
    pub conflicting_repeats: u64,
}

impl InputTruth {
    /// The truth of these input records (any order).
    pub fn from_records(records: &[TopicRecord]) -> InputTruth {
        let mut sorted: Vec<&TopicRecord> = records.iter().collect();
        sorted.sort_by_key(|r| (r.partition, r.offset));
        let mut truth = InputTruth::default();
        for record in sorted {
            truth.records += 1;
            match check_event(record.value.as_deref()) {
                Err((error_kind, reason)) => {
                    truth.invalid += 1;
                    truth.invalid_records.insert(
                        (record.partition, record.offset),
                        InvalidRecord {
                            error_kind,
                            reason,
                            key: record.key.clone(),
                            value: record.value.clone(),
                        },
                    );
                }
                Ok(event) => {
                    truth.valid_records += 1;
                    truth
                        .positions
                        .entry(event.event_id)
                        .or_default()
                        .push((record.partition, record.offset));
                    if let Some(first) = truth.events.get(&event.event_id) {
                        truth.repeats += 1;
                        if *first != event {
                            truth.conflicting_repeats += 1;
                        }
                        continue;
                    }
                    truth.distinct_events += 1;
                    if event.kind == "click" {
                        truth.clicks += 1;
                    } else {
                        truth.impressions += 1;
                    }
                    truth.spend_micros_total += event.cost_micros;
                    truth
                        .per_campaign
                        .entry(event.campaign_id.clone())
                        .or_default()
                        .add(&event.kind, event.cost_micros);
                    truth
                        .per_minute
                        .entry((event.campaign_id.clone(), event.minute))
                        .or_default()
                        .add(&event.kind, event.cost_micros);
                    truth.events.insert(event.event_id, event);
                }
            }
        }
        truth
    }
}

/// The ground truth of `topic`, read with [`read_committed`].
pub async fn input_truth(bootstrap: &str, topic: &str) -> anyhow::Result<InputTruth> {
    Ok(InputTruth::from_records(
        &read_committed(bootstrap, topic).await?,
    ))
}

// ---------------------------------------------------------------------------
// The exactly-once verdict
// ---------------------------------------------------------------------------

/// The topics of one pipeline under test.
#[derive(Debug, Clone)]
pub struct PipelineTopics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

/// What [`check_exactly_once`] found: the counts and every violation of the
/// contract's guarantees, in words.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub truth: InputTruth,
    pub output_records: u64,
    pub output_distinct_events: u64,
    pub dlq_records: u64,
    pub ad_events_rows: u64,
    pub campaign_spend_rows: u64,
    pub dead_letter_rows: u64,
    pub violations: Vec<String>,
    /// Things worth knowing that are not violations.
    pub notes: Vec<String>,
}

impl Verdict {
    /// Whether every guarantee holds.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics listing every violation (the first 200) unless all guarantees hold.
    #[track_caller]
    pub fn assert_holds(&self) {
        if self.holds() {
            return;
        }
        let shown: Vec<&str> = self
            .violations
            .iter()
            .take(200)
            .map(String::as_str)
            .collect();
        let more = self.violations.len().saturating_sub(shown.len());
        panic!(
            "exactly-once violated ({} violations{}):\n  - {}\n{}",
            self.violations.len(),
            if more > 0 {
                format!(", {more} not shown")
            } else {
                String::new()
            },
            shown.join("\n  - "),
            self.summary()
        );
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        format!(
            "input: {} records, {} distinct valid events, {} repeats, {} invalid; \
             output: {} records ({} distinct); ad_events: {}; dlq: {}; dead_letters: {}; \
             campaign_spend rows: {}",
            self.truth.records,
            self.truth.distinct_events,
            self.truth.repeats,
            self.truth.invalid,
            self.output_records,
            self.output_distinct_events,
            self.ad_events_rows,
            self.dlq_records,
            self.dead_letter_rows,
            self.campaign_spend_rows
        )
    }

    /// Adds a violation for every count of a `produce` manifest (its JSON)
    /// that disagrees with what the input topic holds.
    pub fn compare_manifest(&mut self, manifest: &Value) {
        let truth = &self.truth;
        let counts: [(&str, i128); 8] = [
            ("records", i128::from(truth.records)),
            ("valid_records", i128::from(truth.valid_records)),
            ("distinct_events", i128::from(truth.distinct_events)),
            ("repeats", i128::from(truth.repeats)),
            ("invalid", i128::from(truth.invalid)),
            ("impressions", i128::from(truth.impressions)),
            ("clicks", i128::from(truth.clicks)),
            ("spend_micros_total", i128::from(truth.spend_micros_total)),
        ];
        for (field, expected) in counts {
            let claimed = manifest.get(field).and_then(Value::as_i64).map(i128::from);
            if claimed != Some(expected) {
                self.violations.push(format!(
                    "manifest {field} is {claimed:?}, the input topic says {expected}"
                ));
            }
        }
        let claimed: BTreeMap<String, Totals> = manifest
            .get("per_campaign")
            .and_then(Value::as_object)
            .map(|campaigns| {
                campaigns
                    .iter()
                    .map(|(campaign, t)| {
                        let totals = Totals {
                            impressions: t.get("impressions").and_then(Value::as_u64).unwrap_or(0),
                            clicks: t.get("clicks").and_then(Value::as_u64).unwrap_or(0),
                            spend_micros: t
                                .get("spend_micros")
                                .and_then(Value::as_i64)
                                .unwrap_or(0),
                        };
                        (campaign.clone(), totals)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if claimed != self.truth.per_campaign {
            self.violations.push(format!(
                "manifest per_campaign {claimed:?} differs from the input topic's {:?}",
                self.truth.per_campaign
            ));
        }
    }
}

/// Waits until the pipeline has caught up with the input as it is now: at
/// least one `ad_events` row and one output record per distinct valid event,
/// and one `dead_letters` row and one DLQ record per invalid record. Errors
/// (such as tables that do not exist yet) count as "not yet". Call
/// [`check_exactly_once`] afterwards: this only counts, it does not check.
pub async fn wait_for_catch_up(
    bootstrap: &str,
    pool: &PgPool,
    topics: &PipelineTopics,
    timeout: Duration,
) -> anyhow::Result<()> {
    let truth = input_truth(bootstrap, &topics.input).await?;
    let events = i64::try_from(truth.distinct_events).unwrap_or(i64::MAX);
    let invalid = i64::try_from(truth.invalid).unwrap_or(i64::MAX);
    let what = format!(
        "the pipeline has caught up with {} distinct events and {} invalid records",
        truth.distinct_events, truth.invalid
    );
    wait_until(timeout, &what, || async {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
            .fetch_one(pool)
            .await
            .context("cannot count ad_events")?;
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(pool)
            .await
            .context("cannot count dead_letters")?;
        if stored < events || dead < invalid {
            anyhow::bail!("{stored} ad_events rows, {dead} dead_letters rows so far");
        }
        let (output, dlq) = tokio::try_join!(
            read_committed(bootstrap, &topics.output),
            read_committed(bootstrap, &topics.dlq),
        )?;
        let outputs = i64::try_from(output.len()).unwrap_or(i64::MAX);
        let dead_lettered = i64::try_from(dlq.len()).unwrap_or(i64::MAX);
        if outputs < events || dead_lettered < invalid {
            anyhow::bail!("{outputs} output records, {dead_lettered} dlq records so far");
        }
        Ok(true)
    })
    .await
}

/// Reads a header as a decimal integer.
fn header_number(record: &TopicRecord, name: &str) -> Option<i64> {
    record.header_str(name).and_then(|v| v.parse().ok())
}

/// Whether `value` is a W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].chars().any(|c| c != '0')
        && parts[2].chars().any(|c| c != '0')
}

/// Checks the contract's guarantees for a pipeline that has caught up:
///
/// 1. every distinct valid `event_id` of the input has exactly one row in
///    `ad_events` (matching the input event and one of its input positions)
///    and exactly one record in the output topic (`read_committed`), and
///    `campaign_spend` holds exactly the totals of the distinct events (per
///    campaign and per `(campaign_id, minute)`), which also equal the totals
///    of the `ad_events` rows;
/// 2. every invalid input record has exactly one DLQ record (original key and
///    value, the contract's headers) and exactly one `dead_letters` row;
/// 3. nothing else appears: no output or row for an unknown event, no DLQ
///    record or `dead_letters` row for a valid or unknown position.
///
/// The ground truth comes from the input topic itself (see [`InputTruth`]).
pub async fn check_exactly_once(
    bootstrap: &str,
    pool: &PgPool,
    topics: &PipelineTopics,
) -> anyhow::Result<Verdict> {
    let (input, output, dlq) = tokio::try_join!(
        read_committed(bootstrap, &topics.input),
        read_committed(bootstrap, &topics.output),
        read_committed(bootstrap, &topics.dlq),
    )?;
    let truth = InputTruth::from_records(&input);

    let mut violations = Vec::new();
    let mut notes = Vec::new();
    if truth.conflicting_repeats > 0 {
        notes.push(format!(
            "{} repeats carry different contents than their first copy: \
             campaign_spend is checked against ad_events only",
            truth.conflicting_repeats
        ));
    }

    let output_distinct = check_output(&truth, &output, &mut violations);
    let ad_events = check_ad_events(&truth, pool, &mut violations).await?;
    let campaign_spend_rows =
        check_campaign_spend(&truth, &ad_events, pool, &mut violations).await?;
    check_dlq(&truth, &topics.input, &dlq, &mut violations);
    let dead_letter_rows = check_dead_letters(&truth, &topics.input, pool, &mut violations).await?;

    Ok(Verdict {
        output_records: output.len() as u64,
        output_distinct_events: output_distinct,
        dlq_records: dlq.len() as u64,
        ad_events_rows: ad_events.len() as u64,
        campaign_spend_rows,
        dead_letter_rows,
        truth,
        violations,
        notes,
    })
}

/// Output topic: one record per distinct valid event, with the contract's
/// key, value fields and headers. Returns the number of distinct event ids.
fn check_output(truth: &InputTruth, output: &[TopicRecord], violations: &mut Vec<String>) -> u64 {
    let mut seen: HashMap<Uuid, (i32, i64)> = HashMap::new();
    for record in output {
        let at = format!("output {}/{}", record.partition, record.offset);
        let Some(json) = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        else {
            violations.push(format!("{at}: value is not json"));
            continue;
        };
        let Some(event_id) = json
            .get("event_id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            violations.push(format!("{at}: no uuid event_id in {json}"));
            continue;
        };
        if let Some((p, o)) = seen.insert(event_id, (record.partition, record.offset)) {
            violations.push(format!(
                "{at}: event {event_id} output twice (also at {p}/{o})"
            ));
        }
        let Some(event) = truth.events.get(&event_id) else {
            violations.push(format!("{at}: event {event_id} is not a valid input event"));
            continue;
        };
        let text = |name: &str| json.get(name).and_then(Value::as_str);
        let mismatches = [
            (
                "campaign_id",
                text("campaign_id") == Some(event.campaign_id.as_str()),
            ),
            ("ad_id", text("ad_id") == Some(event.ad_id.as_str())),
            ("kind", text("kind") == Some(event.kind.as_str())),
            (
                "cost_micros",
                json.get("cost_micros").and_then(Value::as_i64) == Some(event.cost_micros),
            ),
            (
                "occurred_at",
                text("occurred_at")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros())
                    == Some(event.occurred_at_micros),
            ),
            (
                "billed_minute",
                text("billed_minute")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros())
                    == Some(event.minute * 1_000_000),
            ),
        ];
        for (field, ok) in mismatches {
            if !ok {
                violations.push(format!(
                    "{at}: event {event_id} has a wrong or missing {field}: {json}"
                ));
            }
        }
        if record.key.as_deref() != Some(event.campaign_id.as_bytes()) {
            violations.push(format!(
                "{at}: key is not the campaign_id {}",
                event.campaign_id
            ));
        }
        if record
            .header_str("onceflow-txn-id")
            .and_then(|v| Uuid::parse_str(v).ok())
            .is_none()
        {
            violations.push(format!("{at}: no uuid onceflow-txn-id header"));
        }
        if !record.header_str("traceparent").is_some_and(is_traceparent) {
            violations.push(format!("{at}: no valid traceparent header"));
        }
    }
    let mut missing: Vec<&Uuid> = truth
        .events
        .keys()
        .filter(|id| !seen.contains_key(id))
        .collect();
    missing.sort();
    for event_id in missing {
        violations.push(format!("event {event_id} has no output record"));
    }
    seen.len() as u64
}

/// One `ad_events` row.
#[derive(Debug, Clone)]
struct AdEventRow {
    campaign_id: String,
    kind: String,
    cost_micros: i64,
    minute: i64,
}

async fn check_ad_events(
    truth: &InputTruth,
    pool: &PgPool,
    violations: &mut Vec<String>,
) -> anyhow::Result<Vec<AdEventRow>> {
    type Row = (Uuid, String, String, String, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, campaign_id::text, ad_id::text, kind::text, cost_micros::int8, \
         (extract(epoch FROM occurred_at) * 1000000)::int8, \
         (floor(extract(epoch FROM occurred_at) / 60) * 60)::int8, \
         source_partition::int8, source_offset::int8 \
         FROM ad_events",
    )
    .fetch_all(pool)
    .await
    .context("cannot read ad_events")?;
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (
        event_id,
        campaign_id,
        ad_id,
        kind,
        cost_micros,
        occurred_micros,
        minute,
        partition,
        offset,
    ) in rows
    {
        let at = format!("ad_events row {event_id}");
        if !seen.insert(event_id) {
            violations.push(format!("{at}: event stored twice"));
        }
        match truth.events.get(&event_id) {
            None => violations.push(format!("{at}: not a valid input event")),
            Some(event) => {
                if (
                    campaign_id.as_str(),
                    ad_id.as_str(),
                    kind.as_str(),
                    cost_micros,
                    occurred_micros,
                ) != (
                    event.campaign_id.as_str(),
                    event.ad_id.as_str(),
                    event.kind.as_str(),
                    event.cost_micros,
                    event.occurred_at_micros,
                ) {
                    violations.push(format!(
                        "{at}: stored ({campaign_id}, {ad_id}, {kind}, {cost_micros}, \
                             {occurred_micros} µs) differs from the input {event:?}"
                    ));
                }
                let position = i32::try_from(partition).ok().map(|p| (p, offset));
                let known = truth.positions.get(&event_id);
                if !position.is_some_and(|pos| known.is_some_and(|k| k.contains(&pos))) {
                    violations.push(format!(
                        "{at}: source position {partition}/{offset} does not hold this \
                             event (it is at {known:?})"
                    ));
                }
            }
        }
        out.push(AdEventRow {
            campaign_id,
            kind,
            cost_micros,
            minute,
        });
    }
    let mut missing: Vec<&Uuid> = truth
        .events
        .keys()
        .filter(|id| !seen.contains(id))
        .collect();
    missing.sort();
    for event_id in missing {
        violations.push(format!("event {event_id} has no ad_events row"));
    }
    Ok(out)
}

async fn check_campaign_spend(
    truth: &InputTruth,
    ad_events: &[AdEventRow],
    pool: &PgPool,
    violations: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT campaign_id::text, extract(epoch FROM minute)::int8, impressions::int8, \
         clicks::int8, spend_micros::int8 FROM campaign_spend",
    )
    .fetch_all(pool)
    .await
    .context("cannot read campaign_spend")?;
    let row_count = rows.len() as u64;

    let mut per_minute: BTreeMap<(String, i64), Totals> = BTreeMap::new();
    for (campaign_id, minute, impressions, clicks, spend_micros) in rows {
        if minute.rem_euclid(60) != 0 {
            violations.push(format!(
                "campaign_spend {campaign_id} at {minute}: minute is not whole"
            ));
        }
        let totals = per_minute.entry((campaign_id, minute)).or_default();
        totals.impressions += u64::try_from(impressions).unwrap_or(u64::MAX);
        totals.clicks += u64::try_from(clicks).unwrap_or(u64::MAX);
        totals.spend_micros += spend_micros;
    }
    per_minute.retain(|_, totals| !totals.is_zero());
    let per_campaign = roll_up(&per_minute);

    // Counted once: campaign_spend equals the totals of the stored events.
    let mut from_rows: BTreeMap<(String, i64), Totals> = BTreeMap::new();
    for row in ad_events {
        from_rows
            .entry((row.campaign_id.clone(), row.minute))
            .or_default()
            .add(&row.kind, row.cost_micros);
    }
    compare_totals(
        "campaign_spend vs ad_events",
        &per_minute,
        &from_rows,
        describe_minute,
        violations,
    );

    if truth.conflicting_repeats == 0 {
        compare_totals(
            "campaign_spend per campaign vs input",
            &per_campaign,
            &truth.per_campaign,
            |campaign| campaign.clone(),
            violations,
        );
        compare_totals(
            "campaign_spend per minute vs input",
            &per_minute,
            &truth.per_minute,
            describe_minute,
            violations,
        );
    }
    Ok(row_count)
}

/// `c-1 at 2026-11-26T10:15:00Z`.
fn describe_minute((campaign_id, minute): &(String, i64)) -> String {
    match chrono::DateTime::from_timestamp(*minute, 0) {
        Some(at) => format!(
            "{campaign_id} at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("{campaign_id} at epoch second {minute}"),
    }
}

fn roll_up(per_minute: &BTreeMap<(String, i64), Totals>) -> BTreeMap<String, Totals> {
    let mut per_campaign: BTreeMap<String, Totals> = BTreeMap::new();
    for ((campaign_id, _), totals) in per_minute {
        let sum = per_campaign.entry(campaign_id.clone()).or_default();
        sum.impressions += totals.impressions;
        sum.clicks += totals.clicks;
        sum.spend_micros += totals.spend_micros;
    }
    per_campaign
}

fn compare_totals<K: Ord>(
    what: &str,
    found: &BTreeMap<K, Totals>,
    expected: &BTreeMap<K, Totals>,
    describe: impl Fn(&K) -> String,
    violations: &mut Vec<String>,
) {
    let keys: BTreeSet<&K> = found.keys().chain(expected.keys()).collect();
    for key in keys {
        let have = found.get(key).copied().unwrap_or_default();
        let want = expected.get(key).copied().unwrap_or_default();
        if have != want {
            violations.push(format!(
                "{what}: {} has {have}, expected {want}",
                describe(key)
            ));
        }
    }
}

/// DLQ topic: one record per invalid input record, original bytes, headers.
fn check_dlq(
    truth: &InputTruth,
    input_topic: &str,
    dlq: &[TopicRecord],
    violations: &mut Vec<String>,
) {
    let mut seen: HashMap<(i32, i64), (i32, i64)> = HashMap::new();
    for record in dlq {
        let at = format!("dlq {}/{}", record.partition, record.offset);
        for header in [
            "onceflow-error-kind",
            "onceflow-error",
            "onceflow-source-topic",
            "onceflow-source-partition",
            "onceflow-source-offset",
            "traceparent",
        ] {
            if record.header_count(header) != 1 {
                violations.push(format!(
                    "{at}: header {header} appears {} times",
                    record.header_count(header)
                ));
            }
        }
        if record
            .header_str("onceflow-error")
            .is_some_and(|e| e.contains('\n'))
        {
            violations.push(format!("{at}: onceflow-error is not one line"));
        }
        if !record.header_str("traceparent").is_some_and(is_traceparent) {
            violations.push(format!("{at}: traceparent header is not w3c"));
        }
        if record.header_str("onceflow-source-topic") != Some(input_topic) {
            violations.push(format!(
                "{at}: source topic {:?} is not {input_topic}",
                record.header_str("onceflow-source-topic")
            ));
            continue;
        }
        let partition =
            header_number(record, "onceflow-source-partition").and_then(|p| i32::try_from(p).ok());
        let offset = header_number(record, "onceflow-source-offset");
        let (Some(partition), Some(offset)) = (partition, offset) else {
            violations.push(format!("{at}: source partition or offset is not a number"));
            continue;
        };
        let position = (partition, offset);
        if let Some((p, o)) = seen.insert(position, (record.partition, record.offset)) {
            violations.push(format!(
                "{at}: source {partition}/{offset} dead-lettered twice (also at {p}/{o})"
            ));
        }
        let Some(invalid) = truth.invalid_records.get(&position) else {
            violations.push(format!(
                "{at}: source {partition}/{offset} is not an invalid input record"
            ));
            continue;
        };
        let kind = record.header_str("onceflow-error-kind");
        if kind != Some(invalid.error_kind) {
            violations.push(format!(
                "{at}: error kind {kind:?} for source {partition}/{offset}, the contract \
                     implies {} ({})",
                invalid.error_kind, invalid.reason
            ));
        }
        if record.key != invalid.key {
            violations.push(format!("{at}: key differs from the original"));
        }
        if record.value.as_deref().unwrap_or_default()
            != invalid.value.as_deref().unwrap_or_default()
        {
            violations.push(format!("{at}: value differs from the original"));
        }
    }
    for (partition, offset) in truth.invalid_records.keys() {
        if !seen.contains_key(&(*partition, *offset)) {
            violations.push(format!(
                "invalid input {partition}/{offset} has no dlq record"
            ));
        }
    }
}

async fn check_dead_letters(
    truth: &InputTruth,
    input_topic: &str,
    pool: &PgPool,
    violations: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT source_topic::text, source_partition::int8, source_offset::int8, error_kind::text \
         FROM dead_letters",
    )
    .fetch_all(pool)
    .await
    .context("cannot read dead_letters")?;
    let count = rows.len() as u64;
    let mut seen: HashSet<(i32, i64)> = HashSet::new();
    for (topic, partition, offset, error_kind) in rows {
        let at = format!("dead_letters row {topic}/{partition}/{offset}");
        if topic != input_topic {
            violations.push(format!("{at}: not from the input topic {input_topic}"));
            continue;
        }
        let Ok(partition) = i32::try_from(partition) else {
            violations.push(format!("{at}: partition out of range"));
            continue;
        };
        if !seen.insert((partition, offset)) {
            violations.push(format!("{at}: stored twice"));
        }
        match truth.invalid_records.get(&(partition, offset)) {
            None => violations.push(format!("{at}: not an invalid input record")),
            Some(invalid) if invalid.error_kind != error_kind => violations.push(format!(
                "{at}: error kind {error_kind}, the contract implies {}",
                invalid.error_kind
            )),
            Some(_) => {}
        }
    }
    for (partition, offset) in truth.invalid_records.keys() {
        if !seen.contains(&(*partition, *offset)) {
            violations.push(format!(
                "invalid input {partition}/{offset} has no dead_letters row"
            ));
        }
    }
    Ok(count)
}
