//! A real Apache Kafka cluster for the tests and the chaos suite: three KRaft
//! nodes (broker + controller each, static voters) on loopback, run as three
//! JVMs by `scripts/kafka-cluster.sh` from the jars Maven Central serves.
//!
//! Two kinds:
//! - [`KafkaCluster::shared`]: one cluster per test run, shared by every test
//!   process (each test has its own topics, group and transactional ids).
//!   `CHAOS_KAFKA_DIR` names a running one (`scripts/test.sh` starts it);
//!   without it the first caller starts one in `target/kafka-shared` and
//!   leaves it running for the next run.
//! - [`KafkaCluster::start_own`]: a cluster of the caller's own, in a
//!   temporary directory on free ports, for scenarios that hurt brokers
//!   (kills, pauses, restarts); stopped and removed when dropped.
//!   [`KafkaCluster::start_own_behind_proxies`] adds a second client
//!   listener per node reached only through the harness's TCP proxies
//!   ([`ClientNetwork`]), for scenarios that cut or slow the network between
//!   onceflow and the brokers.
//!
//! Node faults act on the JVM itself (its PID file): SIGKILL, SIGSTOP,
//! SIGCONT, and a restart that waits until the node serves again. Leader
//! moves and coordinator look-ups go through Kafka's own Admin API
//! (`scripts/kafka/ClusterAdmin.java`), which librdkafka does not offer.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{NetworkCondition, ProxyCounters, TcpProxy};
use crate::bail;
use crate::error::{Context, Result};

/// The node ids of every cluster: 1, 2 and 3.
pub const NODES: [u32; 3] = [1, 2, 3];

/// Ports a cluster takes from its base: 3 broker and 3 controller ports.
const PORTS_PER_CLUSTER: u16 = 6;

/// Base port of the shared cluster when the harness starts it itself.
/// (Shared clusters live below 20000, clusters of a scenario's own between
/// 20000 and 32000: see [`free_port_range`].)
const SHARED_BASE_PORT: u16 = 18_092;

/// How long starting a whole cluster or one node may take.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A three-node cluster, shared or the caller's own.
#[derive(Debug)]
pub struct KafkaCluster {
    /// `127.0.0.1:P,127.0.0.1:P+1,127.0.0.1:P+2`, for `bootstrap.servers`
    pub bootstrap: String,
    dir: PathBuf,
    /// set for a cluster of the caller's own: stopped and removed on drop
    own: Option<tempfile::TempDir>,
    /// the path a client under test takes, when it goes through proxies
    client_network: Option<ClientNetwork>,
    /// the TLS listeners, when the cluster has them
    tls_listeners: Option<TlsListeners>,
}

/// A cluster's TLS listeners: `SSL` and `SASL_SSL` (SCRAM-SHA-256 and -512)
/// on every node, with a certificate of the test's CA
/// ([`super::TlsMaterial`]).
#[derive(Debug, Clone)]
pub struct TlsListeners {
    /// `bootstrap.servers` of the `SSL` listeners
    pub ssl_bootstrap: String,
    /// `bootstrap.servers` of the `SASL_SSL` listeners
    pub sasl_ssl_bootstrap: String,
}

/// The listeners a cluster of the caller's own has besides its plaintext
/// one (kept for the harness's own clients and for replication).
#[derive(Debug, Default, Clone, Copy)]
pub struct ExtraListeners<'a> {
    /// a `PROXIED` listener per node, reached only through a TCP proxy of
    /// the harness ([`ClientNetwork`])
    pub behind_proxies: bool,
    /// `SSL` and `SASL_SSL` listeners with this material's server
    /// certificate ([`TlsListeners`])
    pub tls: Option<&'a super::TlsMaterial>,
}

impl ExtraListeners<'_> {
    /// Ports the listeners take per node.
    fn ports_per_node(&self) -> u16 {
        u16::from(self.behind_proxies) + if self.tls.is_some() { 2 } else { 0 }
    }
}

/// A second client listener on every node, reached only through a TCP
/// proxy of the harness (the node advertises the proxy's address on it), so
/// a scenario can cut, black-hole or slow the network between onceflow and
/// the brokers while the harness itself (its admin, reader and load, on the
/// first listener) and the brokers' replication are untouched.
#[derive(Debug)]
pub struct ClientNetwork {
    /// node 1's proxy first
    proxies: Vec<TcpProxy>,
}

impl ClientNetwork {
    /// `bootstrap.servers` through the proxies.
    pub fn bootstrap(&self) -> String {
        self.proxies
            .iter()
            .map(|proxy| proxy.listen_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Applies `condition` between the client and every broker.
    pub fn set(&self, condition: NetworkCondition) {
        for proxy in &self.proxies {
            proxy.set(condition);
        }
    }

    /// What the proxies met so far, summed.
    pub fn counters(&self) -> ProxyCounters {
        self.proxies
            .iter()
            .map(TcpProxy::counters)
            .fold(ProxyCounters::default(), |sum, one| ProxyCounters {
                accepted: sum.accepted + one.accepted,
                reset: sum.reset + one.reset,
                held: sum.held + one.held,
                forwarded_bytes: sum.forwarded_bytes + one.forwarded_bytes,
            })
    }
}

/// Where one partition's replicas are, per the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlacement {
    pub partition: i32,
    /// the leader's node id, -1 while there is none
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
}

impl KafkaCluster {
    /// The run's shared cluster (see the module doc).
    pub async fn shared() -> Result<KafkaCluster> {
        if let Some(dir) = std::env::var_os("CHAOS_KAFKA_DIR") {
            let dir = PathBuf::from(dir);
            let bootstrap = run_script(&["bootstrap", "--dir", &path_text(&dir)]).await?;
            return Ok(KafkaCluster {
                bootstrap: last_line(&bootstrap)?,
                dir,
                own: None,
                client_network: None,
                tls_listeners: None,
            });
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kafka-shared");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // `start` is idempotent and serialised by the script's own lock on
        // the directory: the first test process starts the cluster, the
        // others wait and find it running. (No `flock` around the script:
        // the brokers it starts would inherit that lock and hold it.)
        let output = run_script(&[
            "start",
            "--dir",
            &path_text(&dir),
            "--base-port",
            &SHARED_BASE_PORT.to_string(),
        ])
        .await?;
        Ok(KafkaCluster {
            bootstrap: last_line(&output)?,
            dir,
            own: None,
            client_network: None,
            tls_listeners: None,
        })
    }

    /// A cluster of the caller's own on free loopback ports.
    pub async fn start_own() -> Result<KafkaCluster> {
        KafkaCluster::start_own_with(ExtraListeners::default()).await
    }

    /// A cluster of the caller's own whose nodes also serve clients through
    /// the harness's TCP proxies: [`KafkaCluster::client_network`].
    pub async fn start_own_behind_proxies() -> Result<KafkaCluster> {
        KafkaCluster::start_own_with(ExtraListeners {
            behind_proxies: true,
            ..ExtraListeners::default()
        })
        .await
    }

    /// A cluster of the caller's own with `extra` listeners.
    pub async fn start_own_with(extra: ExtraListeners<'_>) -> Result<KafkaCluster> {
        let temp = tempfile::Builder::new()
            .prefix("onceflow-kafka-")
            .tempdir()
            .context("cannot create a directory for a kafka cluster")?;
        let mut last_error = None;
        // Ports free a moment ago can be taken before the JVMs bind them.
        for _ in 0..3 {
            let base = free_port_range(PORTS_PER_CLUSTER + 3 * extra.ports_per_node())?;
            let (client_network, tls_listeners) =
                write_extra_listeners(temp.path(), base, extra).await?;
            let started = run_script(&[
                "start",
                "--dir",
                &path_text(temp.path()),
                "--base-port",
                &base.to_string(),
            ])
            .await;
            match started {
                Ok(output) => {
                    return Ok(KafkaCluster {
                        bootstrap: last_line(&output)?,
                        dir: temp.path().to_path_buf(),
                        own: Some(temp),
                        client_network,
                        tls_listeners,
                    });
                }
                Err(error) => {
                    // Stopped and emptied: the next try formats anew on
                    // other ports (a directory keeps the ports it began with).
                    let _ = run_script(&["stop", "--dir", &path_text(temp.path())]).await;
                    if let Ok(entries) = std::fs::read_dir(temp.path()) {
                        for entry in entries.flatten() {
                            let path = entry.path();
                            let _ = if path.is_dir() {
                                std::fs::remove_dir_all(&path)
                            } else {
                                std::fs::remove_file(&path)
                            };
                        }
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| crate::ChaosError::Step("no cluster started".into())))
    }

    /// The TLS listeners, if the cluster was started with some.
    pub fn tls_listeners(&self) -> Option<&TlsListeners> {
        self.tls_listeners.as_ref()
    }

    /// Creates (or updates) a user with SCRAM-SHA-256 and SCRAM-SHA-512
    /// credentials for `password`.
    pub async fn add_scram_user(&self, user: &str, password: &str) -> Result<()> {
        run_script(&["admin", "add-scram-user", &self.bootstrap, user, password])
            .await
            .map(|_| ())
    }

    /// The path through proxies a client under test takes, if the cluster
    /// was started with [`KafkaCluster::start_own_behind_proxies`].
    pub fn client_network(&self) -> Option<&ClientNetwork> {
        self.client_network.as_ref()
    }

    /// `bootstrap.servers` for the client under test: through the proxies
    /// when there are some, else the cluster's own.
    pub fn client_bootstrap(&self) -> String {
        self.client_network
            .as_ref()
            .map_or_else(|| self.bootstrap.clone(), ClientNetwork::bootstrap)
    }

    /// The directory of the cluster (a folder per node with its log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PID of node `node`'s JVM, if it runs.
    pub fn node_pid(&self, node: u32) -> Result<u32> {
        let path = self.dir.join(format!("node-{node}/pid"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("node {node} has no pid file ({})", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("bad pid in {}", path.display()))
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to node `node`'s JVM.
    pub async fn signal_node(&self, node: u32, signal: &str) -> Result<()> {
        let pid = self.node_pid(node)?;
        run_command(
            "kill",
            &[&format!("-{signal}"), &pid.to_string()],
            Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    /// SIGKILLs node `node` and waits until its process is gone.
    pub async fn kill_node(&self, node: u32) -> Result<()> {
        let pid = self.node_pid(node)?;
        self.signal_node(node, "KILL").await?;
        super::wait_until(
            Duration::from_secs(10),
            &format!("node {node} (pid {pid}) is gone"),
            || async move { Ok(!process_alive(pid)) },
        )
        .await
    }

    /// Starts node `node` again from its configuration and waits until it
    /// serves.
    pub async fn restart_node(&self, node: u32) -> Result<()> {
        run_script(&[
            "start-node",
            &node.to_string(),
            "--dir",
            &path_text(&self.dir),
        ])
        .await
        .map(|_| ())
    }

    /// Where the partitions of `topic` are, per a fresh metadata request.
    pub async fn placements(&self, topic: &str) -> Result<Vec<PartitionPlacement>> {
        let output = self.admin(&["leaders", &self.bootstrap, topic]).await?;
        output.lines().map(parse_placement).collect()
    }

    /// Moves the leadership of `topic`/`partition` to `node` (reassignment
    /// with `node` first, then a preferred election) and waits until it
    /// leads.
    pub async fn move_leader(&self, topic: &str, partition: i32, node: i32) -> Result<()> {
        self.admin(&[
            "move-leader",
            &self.bootstrap,
            topic,
            &partition.to_string(),
            &node.to_string(),
        ])
        .await
        .map(|_| ())
    }

    /// Moves the leader of every partition of `topics` to another in-sync
    /// replica (the `round`-th other one, so successive rounds visit every
    /// replica); a partition without another in-sync replica (a node just
    /// restarted may still be catching up) keeps its leader. The moves that
    /// landed (each seen in the metadata).
    pub async fn move_every_leader(&self, topics: &[&str], round: usize) -> Result<u64> {
        let mut moves = 0;
        for topic in topics {
            for placement in self.placements(topic).await? {
                let others: Vec<i32> = placement
                    .in_sync
                    .iter()
                    .copied()
                    .filter(|node| *node != placement.leader)
                    .collect();
                let Some(target) = others.get(round % others.len().max(1)).copied() else {
                    continue;
                };
                self.move_leader(topic, placement.partition, target).await?;
                moves += 1;
            }
        }
        Ok(moves)
    }

    /// The node coordinating `transactional_id`'s transactions.
    pub async fn transaction_coordinator(&self, transactional_id: &str) -> Result<u32> {
        self.coordinator("txn-coordinator", transactional_id).await
    }

    /// The node coordinating consumer group `group_id`.
    pub async fn group_coordinator(&self, group_id: &str) -> Result<u32> {
        self.coordinator("group-coordinator", group_id).await
    }

    /// The node id the admin tool's `command` prints for `id`.
    async fn coordinator(&self, command: &str, id: &str) -> Result<u32> {
        let output = self.admin(&[command, &self.bootstrap, id]).await?;
        last_line(&output)?
            .parse()
            .with_context(|| format!("bad coordinator id in {output:?}"))
    }

    async fn admin(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        run_script(&all).await
    }

    /// The last 4 KiB of node `node`'s server log (for error messages).
    pub fn log_tail(&self, node: u32) -> String {
        let path = self.dir.join(format!("node-{node}/server.log"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let start = bytes.len().saturating_sub(4096);
                String::from_utf8_lossy(&bytes[start..]).into_owned()
            }
            Err(error) => format!("(cannot read {}: {error})", path.display()),
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        if let Some(temp) = &self.own {
            // A cluster of our own dies with us, whatever state its nodes are
            // in (a SIGSTOPped JVM ignores SIGTERM until woken).
            for node in NODES {
                if let Ok(pid) = self.node_pid(node) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(temp.path());
        }
    }
}

/// Writes each node's `extra.properties` for `extra` (ports from
/// `base + 6` on, node by node) and starts the proxies: the client network
/// and the TLS listeners the cluster will have.
async fn write_extra_listeners(
    dir: &Path,
    base: u16,
    extra: ExtraListeners<'_>,
) -> Result<(Option<ClientNetwork>, Option<TlsListeners>)> {
    if !extra.behind_proxies && extra.tls.is_none() {
        return Ok((None, None));
    }
    let mut proxies = Vec::new();
    let (mut ssl, mut sasl_ssl) = (Vec::new(), Vec::new());
    for node in NODES {
        let index = u16::try_from(node).context("node ids are small")?;
        let broker = base + index - 1;
        let controller = base + 2 + index;
        let mut next_port = base + PORTS_PER_CLUSTER + (index - 1) * extra.ports_per_node();
        let mut listeners = vec![
            format!("PLAINTEXT://127.0.0.1:{broker}"),
            format!("CONTROLLER://127.0.0.1:{controller}"),
        ];
        let mut advertised = vec![format!("PLAINTEXT://127.0.0.1:{broker}")];
        let mut protocols = vec!["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"];
        let mut settings = String::new();
        if extra.behind_proxies {
            let port = next_port;
            next_port += 1;
            // The node advertises the proxy, so a client bootstrapped
            // through the proxies is sent to them for every broker.
            let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await?;
            listeners.push(format!("PROXIED://127.0.0.1:{port}"));
            advertised.push(format!("PROXIED://{}", proxy.listen_addr()));
            protocols.push("PROXIED:PLAINTEXT");
            proxies.push(proxy);
        }
        if let Some(tls) = extra.tls {
            let (ssl_port, sasl_port) = (next_port, next_port + 1);
            for (name, port) in [("SSL", ssl_port), ("SASL_SSL", sasl_port)] {
                listeners.push(format!("{name}://127.0.0.1:{port}"));
                advertised.push(format!("{name}://127.0.0.1:{port}"));
            }
            protocols.extend(["SSL:SSL", "SASL_SSL:SASL_SSL"]);
            ssl.push(format!("127.0.0.1:{ssl_port}"));
            sasl_ssl.push(format!("127.0.0.1:{sasl_port}"));
            let jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
            settings.push_str(&format!(
                "ssl.keystore.type=PEM\n\
                 ssl.keystore.location={}\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas}\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}\n",
                tls.server_key_and_certificate.display()
            ));
        }
        let node_dir = dir.join(format!("node-{node}"));
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("cannot create {}", node_dir.display()))?;
        let text = format!(
            "listeners={}\nadvertised.listeners={}\nlistener.security.protocol.map={}\n{settings}",
            listeners.join(","),
            advertised.join(","),
            protocols.join(","),
        );
        let path = node_dir.join("extra.properties");
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let client_network = extra.behind_proxies.then_some(ClientNetwork { proxies });
    let tls_listeners = extra.tls.map(|_| TlsListeners {
        ssl_bootstrap: ssl.join(","),
        sasl_ssl_bootstrap: sasl_ssl.join(","),
    });
    Ok((client_network, tls_listeners))
}

/// Whether process `pid` exists and is not a zombie (a detached JVM's
/// parent may be slow to reap it).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": comm may hold spaces and parens.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `scripts/kafka-cluster.sh`: `$CHAOS_KAFKA_SCRIPT`, else the one of the
/// source tree this crate was built from.
fn script_path() -> PathBuf {
    match std::env::var_os("CHAOS_KAFKA_SCRIPT") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-cluster.sh"),
    }
}

async fn run_script(args: &[&str]) -> Result<String> {
    let script = script_path();
    let timeout = if args.first() == Some(&"admin") {
        Duration::from_secs(90)
    } else {
        START_TIMEOUT
    };
    run_command(&path_text(&script), args, timeout).await
}

/// Runs `program` with `args`; its stdout, or an error with its stderr.
async fn run_command(program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "{program} {} did not finish within {} s",
                args.join(" "),
                timeout.as_secs()
            )
        })?
        .with_context(|| format!("cannot wait for {program}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let start = stderr.len().saturating_sub(4096);
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.get(start..).unwrap_or(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn last_line(output: &str) -> Result<String> {
    output
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.trim().to_owned())
        .with_context(|| "the cluster script printed nothing".to_owned())
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `"0 2 2,3,1 2,3"` → partition 0, leader 2, replicas [2,3,1], in sync [2,3].
fn parse_placement(line: &str) -> Result<PartitionPlacement> {
    let ids = |field: &str| -> Result<Vec<i32>> {
        field
            .split(',')
            .filter(|id| !id.is_empty())
            .map(|id| {
                id.parse()
                    .with_context(|| format!("bad node id in {line:?}"))
            })
            .collect()
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [partition, leader, replicas, rest @ ..] => Ok(PartitionPlacement {
            partition: partition
                .parse()
                .with_context(|| format!("bad partition in {line:?}"))?,
            leader: leader
                .parse()
                .with_context(|| format!("bad leader in {line:?}"))?,
            replicas: ids(replicas)?,
            in_sync: ids(rest.first().copied().unwrap_or(""))?,
        }),
        _ => bail!("cannot read a partition placement from {line:?}"),
    }
}

/// A base port whose `count` consecutive ports were all free a moment ago,
/// below the kernel's range for outgoing ports (32768 and up here), so no
/// client connection can take one of them before a broker binds it.
fn free_port_range(count: u16) -> Result<u16> {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..100 {
        let base: u16 = rng.random_range(20_000..32_000);
        let all_free = (base..base + count)
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("found no {count} consecutive free loopback ports in 20000..32000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_line_is_read() {
        let placement = parse_placement("0 2 2,3,1 2,3").expect("parses");
        assert_eq!(
            placement,
            PartitionPlacement {
                partition: 0,
                leader: 2,
                replicas: vec![2, 3, 1],
                in_sync: vec![2, 3],
            }
        );
        let leaderless = parse_placement("4 -1 1,2,3 ").expect("parses");
        assert_eq!(leaderless.leader, -1);
        assert!(leaderless.in_sync.is_empty());
        assert!(parse_placement("garbage").is_err());
    }
}
