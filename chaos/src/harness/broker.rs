//! A throwaway Kafka-compatible broker (noida-db) on a free loopback port
//! with its own temporary data dir; dropping it kills the broker and every
//! process it started.

use super::*;
use crate::bail;
use crate::error::{ChaosError, Context, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

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
    pub async fn start() -> Result<Broker> {
        let program = noida_db_program()?;
        let mut last_error = None;
        // A port picked as free can be taken before noida-db binds it: retry.
        for _ in 0..3 {
            match Broker::start_once(&program).await {
                Ok(broker) => return Ok(broker),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ChaosError::Step("noida-db did not start".to_owned())))
    }

    async fn start_once(program: &Path) -> Result<Broker> {
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

    async fn wait_ready(&mut self) -> Result<()> {
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
fn noida_db_program() -> Result<PathBuf> {
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
    // The repository's `.venv` (scripts/dev-env.sh installs it there), seen
    // from the current directory or from the source tree this was built in.
    for venv in [
        Path::new(".venv/bin/noida-db").to_path_buf(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/noida-db"),
    ] {
        if venv.is_file() {
            return Ok(venv);
        }
    }
    bail!(
        "noida-db not found: set NOIDA_DB, put it on PATH, or install it with \
         `python3 -m venv .venv && .venv/bin/pip install noida-db==0.2.3`"
    )
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
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

fn admin_client(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("cannot create a kafka admin client")
}

/// Number of brokers in the cluster metadata.
async fn fetch_broker_count(bootstrap: &str) -> Result<usize> {
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
pub(crate) async fn partition_count(bootstrap: &str, topic: &str) -> Result<Option<usize>> {
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
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
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
