//! Static checks of the Docker deployment (`docker-compose.yml`, `Dockerfile`,
//! `deploy/`) against what the onceflow binary really accepts and exposes.
//! Nothing here needs Docker: the files are parsed and compared with the
//! settings, the command-line flags and the registered metrics.
//!
//! What must hold:
//! - every environment variable set for onceflow is one it reads, and the
//!   onceflow service's settings load and validate as `onceflow run` loads
//!   them (defaults, then the environment);
//! - the topics kafka-init creates are exactly the topics onceflow uses, and
//!   the load generator writes to onceflow's input topic;
//! - addresses agree: the HTTP port with the published port, the Prometheus
//!   target and the image's EXPOSE and HEALTHCHECK; the OTLP endpoint with
//!   Jaeger; the bootstrap servers with Kafka's in-network listeners; the
//!   database URL with the PostgreSQL service;
//! - Kafka is replicated as in production: three KRaft nodes, each broker and
//!   controller, with distinct node ids, one cluster id, every node a voter
//!   in every node's quorum list and a data volume of its own; replication
//!   factor 3 and min ISR 2 for every topic (the offsets and transaction
//!   state topics included), unclean leader election and automatic topic
//!   creation off; kafka-init creates onceflow's topics with replication
//!   factor 3 once every node is healthy; onceflow and the load generator
//!   bootstrap from every node;
//! - published ports are bound to 127.0.0.1 only, and each Kafka listener
//!   advertised to the host is published where it is advertised;
//! - the Grafana dashboard uses only metrics onceflow registers, through the
//!   provisioned data source.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use onceflow_actors::settings::Settings;
use serde_json::Value;

/// The OpenTelemetry variables onceflow's tracing export reads.
const OTEL_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// The log filter variable (src/logging.rs).
const LOG_VARIABLE: &str = "RUST_LOG";

const COMPOSE_FILE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
/// The image's config file: where the container has it, where the
/// repository keeps it.
const IMAGE_CONFIG: (&str, &str) = ("/etc/onceflow/onceflow.toml", "deploy/image/onceflow.toml");
const ONCEFLOW_SERVICE: &str = "onceflow";
const LOAD_GENERATOR_SERVICE: &str = "load-generator";
const KAFKA_INIT_SERVICE: &str = "kafka-init";
const DASHBOARD_FILE: &str = "deploy/grafana/dashboards/onceflow.json";

/// The image of the Kafka nodes: a service running it that sets
/// KAFKA_PROCESS_ROLES is a node (kafka-init runs it too, as a client).
const KAFKA_IMAGE: &str = "apache/kafka:";
/// Kafka nodes of the stack, as in production.
const KAFKA_NODE_COUNT: usize = 3;
/// Copies of every partition: one on each node.
const REPLICATION_FACTOR: u32 = 3;
/// Copies an `acks=all` write needs before it is acknowledged: one node may
/// be lost without losing an acknowledged write or stopping writes.
const MIN_INSYNC_REPLICAS: u32 = 2;
/// The only address published ports may be bound to.
const PUBLISHED_HOST_IP: &str = "127.0.0.1";

/// The production rule, as the apache/kafka image reads it (KAFKA_FOO_BAR is
/// foo.bar): variable, required value, why.
const PRODUCTION_RULE: &[(&str, &str, &str)] = &[
    (
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
        "3",
        "a topic created without an explicit factor must be on every node too",
    ),
    (
        "KAFKA_MIN_INSYNC_REPLICAS",
        "2",
        "an acks=all write is acknowledged only once two nodes have it, so it survives the loss of one",
    ),
    (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "3",
        "the group's committed offsets, which onceflow commits inside its transactions, must survive the loss \
         of a node",
    ),
    (
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "3",
        "the transaction coordinators' state must survive the loss of a node",
    ),
    (
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "2",
        "a transaction's state change must be on two nodes before it counts",
    ),
    (
        "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE",
        "false",
        "a replica that missed acknowledged writes must never become leader",
    ),
    (
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE",
        "false",
        "topics come from kafka-init only: a misspelt topic name must fail, not create a topic",
    ),
];

// ---------------------------------------------------------------------------
// The checks

#[test]
fn environment_variables_are_ones_onceflow_reads() {
    let deployment = Deployment::load();

    let run_accepts = run_variables();
    let onceflow = deployment.service(ONCEFLOW_SERVICE);
    for (name, origin) in deployment
        .compose_environment(ONCEFLOW_SERVICE)
        .keys()
        .map(|name| (name, COMPOSE_FILE))
        .chain(
            deployment
                .dockerfile
                .runtime_env
                .keys()
                .map(|name| (name, DOCKERFILE)),
        )
    {
        assert!(
            run_accepts.contains(name),
            "{origin}: `{name}` is set for the `{ONCEFLOW_SERVICE}` service, but `onceflow run` does not read it \
             (it reads: {run_accepts:?})"
        );
    }
    assert_eq!(
        command_of(onceflow, &deployment.dockerfile)
            .first()
            .map(String::as_str),
        Some("run"),
        "{COMPOSE_FILE}: the `{ONCEFLOW_SERVICE}` service must run `onceflow run`"
    );

    let produce_accepts = produce_variables();
    for name in deployment
        .compose_environment(LOAD_GENERATOR_SERVICE)
        .keys()
    {
        assert!(
            produce_accepts.contains(name),
            "{COMPOSE_FILE}: `{name}` is set for the `{LOAD_GENERATOR_SERVICE}` service, but `onceflow produce` \
             does not read it (it reads: {produce_accepts:?})"
        );
    }
    assert_eq!(
        command_of(
            deployment.service(LOAD_GENERATOR_SERVICE),
            &deployment.dockerfile
        )
        .first()
        .map(String::as_str),
        Some("produce"),
        "{COMPOSE_FILE}: the `{LOAD_GENERATOR_SERVICE}` service must run `onceflow produce`"
    );
}

#[test]
fn onceflow_service_settings_load_and_validate() {
    let deployment = Deployment::load();
    // `onceflow_settings` loads them exactly as `onceflow run` does and
    // panics with the loader's own one-line error when they are refused.
    let settings = deployment.onceflow_settings();
    assert!(
        settings.instance_id.is_some(),
        "{COMPOSE_FILE}: set ONCEFLOW_INSTANCE_ID on the `{ONCEFLOW_SERVICE}` service: the default, the \
         container's host name, changes with every new container, and with it the static membership and \
         the transactional.id"
    );
}

#[test]
fn topics_created_are_the_topics_onceflow_uses() {
    let deployment = Deployment::load();
    let settings = deployment.onceflow_settings();

    let created = deployment.created_topics();
    let created_names: BTreeSet<&str> = created.keys().map(String::as_str).collect();
    let used: BTreeSet<&str> = [
        settings.input_topic.as_str(),
        settings.output_topic.as_str(),
        settings.dlq_topic.as_str(),
    ]
    .into();
    assert_eq!(
        created_names, used,
        "{COMPOSE_FILE}: the `{KAFKA_INIT_SERVICE}` service creates {created_names:?}, but onceflow uses \
         input/output/dlq topics {used:?}"
    );

    let load_generator = deployment.service(LOAD_GENERATOR_SERVICE);
    let command = command_of(load_generator, &deployment.dockerfile);
    let topic = flag_value(&command, "--topic")
        .or_else(|| {
            deployment
                .compose_environment(LOAD_GENERATOR_SERVICE)
                .get("ONCEFLOW_INPUT_TOPIC")
                .cloned()
        })
        .unwrap_or_else(|| produce_default("ONCEFLOW_INPUT_TOPIC"));
    assert_eq!(
        topic, settings.input_topic,
        "{COMPOSE_FILE}: the `{LOAD_GENERATOR_SERVICE}` writes to `{topic}`, but onceflow reads `{}`",
        settings.input_topic
    );
    if let Some(partitions) = flag_value(&command, "--partitions") {
        let created_partitions = created
            .get(&settings.input_topic)
            .and_then(|topic| topic.partitions);
        assert_eq!(
            Some(partitions.as_str()),
            created_partitions.map(|count| count.to_string()).as_deref(),
            "{COMPOSE_FILE}: the `{LOAD_GENERATOR_SERVICE}` is told the input topic has {partitions} partitions, \
             but `{KAFKA_INIT_SERVICE}` creates it with {created_partitions:?}"
        );
    }
}

#[test]
fn three_kafka_nodes_form_one_kraft_quorum() {
    let deployment = Deployment::load();
    let nodes = deployment.kafka_nodes();
    assert_eq!(
        nodes.len(),
        KAFKA_NODE_COUNT,
        "{COMPOSE_FILE}: expected {KAFKA_NODE_COUNT} Kafka nodes (services running `{KAFKA_IMAGE}…` that set \
         KAFKA_PROCESS_ROLES), found {nodes:?}"
    );

    // Node id → service; service → cluster id.
    let mut ids: BTreeMap<u32, String> = BTreeMap::new();
    let mut cluster_ids: BTreeMap<String, String> = BTreeMap::new();
    for node in &nodes {
        let environment = deployment.compose_environment(node);
        let roles = environment
            .get("KAFKA_PROCESS_ROLES")
            .map(String::as_str)
            .unwrap_or_default();
        let role_set: BTreeSet<&str> = roles.split(',').map(str::trim).collect();
        assert_eq!(
            role_set,
            BTreeSet::from(["broker", "controller"]),
            "{COMPOSE_FILE}: Kafka node `{node}` has KAFKA_PROCESS_ROLES={roles}: every node must be both broker \
             and controller"
        );
        let id = kafka_node_id(&environment, node);
        if let Some(other) = ids.insert(id, node.clone()) {
            panic!(
                "{COMPOSE_FILE}: Kafka nodes `{other}` and `{node}` both have KAFKA_NODE_ID={id}"
            );
        }
        let cluster_id = environment.get("CLUSTER_ID").unwrap_or_else(|| {
            panic!(
                "{COMPOSE_FILE}: Kafka node `{node}` does not set CLUSTER_ID (the apache/kafka image formats its \
                 storage with it)"
            )
        });
        cluster_ids.insert(node.clone(), cluster_id.clone());
    }
    let distinct: BTreeSet<&String> = cluster_ids.values().collect();
    assert_eq!(
        distinct.len(),
        1,
        "{COMPOSE_FILE}: the Kafka nodes must share one CLUSTER_ID, but have {cluster_ids:?}"
    );

    let node_ids: BTreeSet<u32> = ids.keys().copied().collect();
    for node in &nodes {
        let environment = deployment.compose_environment(node);
        let voters = quorum_voters(&environment, node);
        let voter_ids: BTreeSet<u32> = voters.keys().copied().collect();
        assert_eq!(
            voter_ids, node_ids,
            "{COMPOSE_FILE}: Kafka node `{node}` has KAFKA_CONTROLLER_QUORUM_VOTERS with ids {voter_ids:?}, but the \
             nodes' ids are {node_ids:?}: every node must name every node as a voter"
        );
        for (id, (host, port)) in &voters {
            let voter = deployment.service_named_by_host(host);
            assert_eq!(
                Some(&voter),
                ids.get(id),
                "{COMPOSE_FILE}: Kafka node `{node}` names voter {id} at {host}:{port}, which is service `{voter}`, \
                 but KAFKA_NODE_ID={id} is `{}`",
                ids.get(id).map_or("no node", String::as_str)
            );
            let controller_port = deployment.kafka_controller_port(&voter);
            assert_eq!(
                *port, controller_port,
                "{COMPOSE_FILE}: Kafka node `{node}` names voter {id} at {host}:{port}, but `{voter}` binds its \
                 controller listener on port {controller_port}"
            );
        }
    }

    // Each node keeps its log on a volume of its own.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for node in &nodes {
        let environment = deployment.compose_environment(node);
        let log_dirs = environment.get("KAFKA_LOG_DIRS").unwrap_or_else(|| {
            panic!("{COMPOSE_FILE}: Kafka node `{node}` does not set KAFKA_LOG_DIRS")
        });
        let mounts = deployment.mounts(node);
        for log_dir in log_dirs.split(',').map(str::trim) {
            let source = mounts.get(log_dir).unwrap_or_else(|| {
                panic!(
                    "{COMPOSE_FILE}: Kafka node `{node}` keeps its log in {log_dir}, where no volume is mounted \
                     (mounts: {mounts:?}): its data would not outlive the container"
                )
            });
            if let Some(other) = owners.insert(source.clone(), node.clone()) {
                panic!(
                    "{COMPOSE_FILE}: Kafka nodes `{other}` and `{node}` both keep their log in `{source}`: every \
                     node needs a volume of its own"
                );
            }
        }
    }
}

#[test]
fn kafka_nodes_follow_the_production_rule() {
    let deployment = Deployment::load();
    let nodes = deployment.kafka_nodes();
    assert!(
        !nodes.is_empty(),
        "{COMPOSE_FILE}: no Kafka node (a service running `{KAFKA_IMAGE}…` that sets KAFKA_PROCESS_ROLES)"
    );
    for node in &nodes {
        let environment = deployment.compose_environment(node);
        for (variable, required, why) in PRODUCTION_RULE {
            assert_eq!(
                environment.get(*variable).map(String::as_str),
                Some(*required),
                "{COMPOSE_FILE}: Kafka node `{node}` must set {variable}={required}: {why}"
            );
        }
    }
}

#[test]
fn kafka_init_creates_replicated_topics_once_every_node_is_healthy() {
    let deployment = Deployment::load();
    let settings = deployment.onceflow_settings();
    let created = deployment.created_topics();
    for topic in [
        &settings.input_topic,
        &settings.output_topic,
        &settings.dlq_topic,
    ] {
        let spec = created.get(topic).unwrap_or_else(|| {
            panic!("{COMPOSE_FILE}: the `{KAFKA_INIT_SERVICE}` service does not create onceflow's topic `{topic}`")
        });
        assert_eq!(
            spec.replication_factor,
            Some(REPLICATION_FACTOR),
            "{COMPOSE_FILE}: `{KAFKA_INIT_SERVICE}` creates `{topic}` with replication factor {:?}: it must pass \
             --replication-factor {REPLICATION_FACTOR}, a copy on every node",
            spec.replication_factor
        );
        if let Some(min_isr) = spec.configs.get("min.insync.replicas") {
            assert_eq!(
                min_isr,
                &MIN_INSYNC_REPLICAS.to_string(),
                "{COMPOSE_FILE}: `{KAFKA_INIT_SERVICE}` creates `{topic}` with min.insync.replicas={min_isr}, which \
                 overrides the brokers' {MIN_INSYNC_REPLICAS}"
            );
        }
    }

    // Creating a topic with replication factor 3 fails while a node is not up.
    for node in deployment.kafka_nodes() {
        let condition = deployment.depends_on_condition(KAFKA_INIT_SERVICE, &node);
        assert_eq!(
            condition.as_deref(),
            Some("service_healthy"),
            "{COMPOSE_FILE}: `{KAFKA_INIT_SERVICE}` must wait for Kafka node `{node}` with `condition: \
             service_healthy` (it has {condition:?}): a topic with replication factor {REPLICATION_FACTOR} cannot \
             be created while a node is not up"
        );
    }
}

#[test]
fn clients_bootstrap_from_every_kafka_node() {
    let deployment = Deployment::load();
    let settings = deployment.onceflow_settings();
    let nodes: BTreeSet<String> = deployment.kafka_nodes().into_iter().collect();
    for (client, bootstrap) in [
        (ONCEFLOW_SERVICE, settings.kafka_brokers.clone()),
        (LOAD_GENERATOR_SERVICE, deployment.load_generator_brokers()),
    ] {
        let reached: BTreeSet<String> = deployment
            .kafka_listener_for(&bootstrap, client)
            .into_iter()
            .map(|(service, _)| service)
            .collect();
        assert_eq!(
            reached, nodes,
            "{COMPOSE_FILE}: `{client}` bootstraps from `{bootstrap}`, which reaches {reached:?}: name every Kafka \
             node {nodes:?} at its in-network listener, so that it can (re)start while any one node is down"
        );
    }
}

#[test]
fn published_ports_are_bound_to_localhost_only() {
    let deployment = Deployment::load();
    let services = deployment.compose["services"]
        .as_object()
        .unwrap_or_else(|| panic!("{COMPOSE_FILE} has no `services` mapping"));
    for (name, service) in services {
        assert_ne!(
            service["network_mode"].as_str(),
            Some("host"),
            "{COMPOSE_FILE}: service `{name}` uses the host's network: its ports would be on every interface"
        );
        for (entry, published) in published_ports(service) {
            assert_eq!(
                published.host_ip.as_deref(),
                Some(PUBLISHED_HOST_IP),
                "{COMPOSE_FILE}: service `{name}` publishes `{entry}` on {}: bind it to {PUBLISHED_HOST_IP} \
                 (`{PUBLISHED_HOST_IP}:HOST_PORT:CONTAINER_PORT`), nothing here has real credentials",
                published
                    .host_ip
                    .as_deref()
                    .map_or("every interface".to_owned(), |ip| format!("`{ip}`"))
            );
        }
    }

    // A listener advertised to clients on the host must be reachable there:
    // published on the advertised port, to the port the listener binds.
    for node in deployment.kafka_nodes() {
        let environment = deployment.compose_environment(&node);
        let advertised = listeners(&environment, "KAFKA_ADVERTISED_LISTENERS", &node);
        let bound = listeners(&environment, "KAFKA_LISTENERS", &node);
        let published: Vec<PublishedPort> = published_ports(deployment.service(&node))
            .into_iter()
            .map(|(_, published)| published)
            .collect();
        for (listener, (host, port)) in &advertised {
            if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
                continue;
            }
            let bound_port = bound.get(listener).map(|(_, port)| *port);
            let wanted = PublishedPort {
                host_ip: Some(PUBLISHED_HOST_IP.to_owned()),
                host_port: Some(*port),
                container_port: bound_port,
            };
            assert!(
                published.contains(&wanted),
                "{COMPOSE_FILE}: Kafka node `{node}` advertises listener {listener} at {host}:{port} to clients on \
                 the host, but does not publish {PUBLISHED_HOST_IP}:{port}:{} (it publishes {published:?})",
                bound_port.map_or("?".to_owned(), |port| port.to_string())
            );
        }
    }
}

#[test]
fn addresses_and_ports_agree() {
    let deployment = Deployment::load();
    let settings = deployment.onceflow_settings();

    // HTTP: reachable from the other containers, published, scraped.
    let http_port = settings.http_addr.port();
    assert!(
        settings.http_addr.ip().is_unspecified(),
        "{COMPOSE_FILE}: ONCEFLOW_HTTP_ADDR of `{ONCEFLOW_SERVICE}` is {}: inside a container it must listen on \
         every interface (0.0.0.0), else neither Prometheus nor the host can reach /metrics",
        settings.http_addr
    );
    let published = container_ports(deployment.service(ONCEFLOW_SERVICE));
    assert!(
        published.contains(&http_port),
        "{COMPOSE_FILE}: `{ONCEFLOW_SERVICE}` listens on port {http_port} (ONCEFLOW_HTTP_ADDR), but publishes \
         container ports {published:?}"
    );
    let scraped = deployment.prometheus_target_ports(ONCEFLOW_SERVICE);
    assert!(
        !scraped.is_empty(),
        "the Prometheus configuration has no scrape target on the `{ONCEFLOW_SERVICE}` service"
    );
    for port in scraped {
        assert_eq!(
            port, http_port,
            "Prometheus scrapes `{ONCEFLOW_SERVICE}:{port}`, but onceflow serves /metrics on port {http_port}"
        );
    }

    // Traces: the OTLP endpoint is the Jaeger service, on the port of the protocol.
    let environment = deployment.effective_onceflow_environment();
    if let Some(endpoint) = environment.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let (host, port) = url_host_port(endpoint).unwrap_or_else(|| {
            panic!("{COMPOSE_FILE}: OTEL_EXPORTER_OTLP_ENDPOINT `{endpoint}` is not an http(s)://host:port URL")
        });
        let image = deployment.image_of(&host);
        assert!(
            image.starts_with("jaegertracing/jaeger:"),
            "{COMPOSE_FILE}: OTEL_EXPORTER_OTLP_ENDPOINT points at service `{host}`, which runs `{image}`, not Jaeger"
        );
        let protocol = environment
            .get("OTEL_EXPORTER_OTLP_PROTOCOL")
            .map_or("grpc", String::as_str);
        let expected = match protocol {
            "grpc" => 4317,
            "http/protobuf" | "http/json" => 4318,
            other => panic!(
                "{COMPOSE_FILE}: OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not an OTLP protocol"
            ),
        };
        assert_eq!(
            port, expected,
            "{COMPOSE_FILE}: OTLP over {protocol} goes to Jaeger's port {expected}, but the endpoint is `{endpoint}`"
        );
    }

    // Kafka: every client bootstraps through the brokers' in-network listeners.
    deployment.kafka_listener_for(&settings.kafka_brokers, ONCEFLOW_SERVICE);
    deployment.kafka_listener_for(&deployment.load_generator_brokers(), LOAD_GENERATOR_SERVICE);
    for bootstrap in deployment.kafka_init_bootstrap_servers() {
        deployment.kafka_listener_for(&bootstrap, KAFKA_INIT_SERVICE);
    }

    // PostgreSQL: host, port, database and credentials of the postgres service.
    let url = settings.database_url.as_deref().unwrap_or_else(|| {
        panic!("{COMPOSE_FILE}: `{ONCEFLOW_SERVICE}` has no ONCEFLOW_DATABASE_URL")
    });
    let database = DatabaseUrl::parse(url);
    let image = deployment.image_of(&database.host);
    assert!(
        image.starts_with("postgres:"),
        "{COMPOSE_FILE}: ONCEFLOW_DATABASE_URL points at service `{}`, which runs `{image}`, not PostgreSQL",
        database.host
    );
    assert_eq!(
        database.port, 5432,
        "{COMPOSE_FILE}: ONCEFLOW_DATABASE_URL uses port {}, but PostgreSQL listens on 5432 inside the network \
         (published host ports do not apply between containers)",
        database.port
    );
    let postgres = deployment.compose_environment(&database.host);
    let user = postgres
        .get("POSTGRES_USER")
        .map_or("postgres", String::as_str);
    let db_name = postgres.get("POSTGRES_DB").map_or(user, String::as_str);
    assert_eq!(
        database.user, user,
        "{COMPOSE_FILE}: ONCEFLOW_DATABASE_URL logs in as `{}`, but the postgres service's user is `{user}`",
        database.user
    );
    assert_eq!(
        database.password.as_deref(),
        postgres.get("POSTGRES_PASSWORD").map(String::as_str),
        "{COMPOSE_FILE}: the password in ONCEFLOW_DATABASE_URL differs from POSTGRES_PASSWORD"
    );
    assert_eq!(
        database.name, db_name,
        "{COMPOSE_FILE}: ONCEFLOW_DATABASE_URL names database `{}`, but the postgres service creates `{db_name}`",
        database.name
    );
}

#[test]
fn dockerfile_agrees_with_the_service() {
    let deployment = Deployment::load();
    let dockerfile = &deployment.dockerfile;
    let settings = deployment.onceflow_settings();
    let http_port = settings.http_addr.port();

    assert_eq!(
        dockerfile.entrypoint.as_deref(),
        Some(&["onceflow".to_owned()][..]),
        "{DOCKERFILE}: the runtime stage must have ENTRYPOINT [\"onceflow\"]"
    );
    assert!(
        dockerfile.exposed.contains(&http_port),
        "{DOCKERFILE}: EXPOSE {:?} does not include onceflow's HTTP port {http_port}",
        dockerfile.exposed
    );
    let image_addr = dockerfile
        .runtime_env
        .get("ONCEFLOW_HTTP_ADDR")
        .map(|addr| {
            addr.parse::<SocketAddr>().unwrap_or_else(|error| {
                panic!("{DOCKERFILE}: ENV ONCEFLOW_HTTP_ADDR={addr}: {error}")
            })
        });
    if let Some(addr) = image_addr {
        assert!(
            dockerfile.exposed.contains(&addr.port()),
            "{DOCKERFILE}: ENV ONCEFLOW_HTTP_ADDR={addr} but EXPOSE {:?}",
            dockerfile.exposed
        );
    }

    let check = dockerfile
        .healthcheck
        .as_deref()
        .unwrap_or_else(|| panic!("{DOCKERFILE}: the runtime stage has no HEALTHCHECK"));
    assert!(
        check.contains("/healthz"),
        "{DOCKERFILE}: HEALTHCHECK `{check}` does not ask /healthz"
    );
    // The port is either written out or taken from ONCEFLOW_HTTP_ADDR.
    let checked_port = if check.contains("${ONCEFLOW_HTTP_ADDR##*:}") {
        http_port
    } else if let Some(rest) = check.split("${ONCEFLOW_HTTP_ADDR:-").nth(1) {
        // The port follows ONCEFLOW_HTTP_ADDR, else a fallback address: the
        // one of the image's config file.
        let fallback: SocketAddr = rest
            .split('}')
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{DOCKERFILE}: cannot read the fallback in `{check}`"));
        use figment::providers::Format;
        let image_addr: SocketAddr = figment::Figment::from(figment::providers::Toml::string(
            &read_repo_file(IMAGE_CONFIG.1),
        ))
        .extract_inner("http_addr")
        .unwrap_or_else(|error| panic!("{}: no http_addr: {error}", IMAGE_CONFIG.1));
        assert_eq!(
            fallback.port(),
            image_addr.port(),
            "{DOCKERFILE}: HEALTHCHECK's fallback port differs from {}'s http_addr",
            IMAGE_CONFIG.1
        );
        http_port
    } else {
        let before = check
            .split("/healthz")
            .next()
            .and_then(|text| text.rsplit(':').next())
            .and_then(|digits| digits.parse::<u16>().ok());
        before.unwrap_or_else(|| {
            panic!("{DOCKERFILE}: cannot find the port in HEALTHCHECK `{check}` (`:PORT/healthz` expected)")
        })
    };
    assert_eq!(
        checked_port, http_port,
        "{DOCKERFILE}: HEALTHCHECK asks port {checked_port}, onceflow serves port {http_port}"
    );

    // The image's health check probes onceflow's HTTP server: any service of
    // this image not running `onceflow run` must switch it off.
    for name in deployment.services_built_here() {
        let command = command_of(deployment.service(&name), dockerfile);
        if command.first().map(String::as_str) != Some("run") {
            let disabled = deployment.service(&name)["healthcheck"]["disable"] == Value::Bool(true);
            assert!(
                disabled,
                "{COMPOSE_FILE}: service `{name}` runs `onceflow {}`, which serves no /healthz: set \
                 `healthcheck: {{disable: true}}`, else it is reported unhealthy",
                command.join(" ")
            );
        }
    }
}

#[test]
fn dashboard_uses_registered_metrics_through_the_provisioned_datasource() {
    let deployment = Deployment::load();
    let exposed = exposed_metric_names();
    let dashboard_text = read_repo_file(DASHBOARD_FILE);
    let dashboard: Value = serde_json::from_str(&dashboard_text)
        .unwrap_or_else(|error| panic!("{DASHBOARD_FILE} is not JSON: {error}"));
    let panels = dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{DASHBOARD_FILE} has no `panels` list"));
    assert!(!panels.is_empty(), "{DASHBOARD_FILE} has no panels");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some() && dashboard["uid"].is_string(),
        "{DASHBOARD_FILE} lacks `schemaVersion` or `uid`"
    );

    let uid = deployment.provisioned_datasource_uid();
    let mut expressions = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some(uid.as_str()),
            "{DASHBOARD_FILE}: panel `{title}` does not use the provisioned data source `{uid}`"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{DASHBOARD_FILE}: panel `{title}` has no targets"));
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("{DASHBOARD_FILE}: panel `{title}` has a target without `expr`")
            });
            assert_eq!(
                target["datasource"]["uid"].as_str(),
                Some(uid.as_str()),
                "{DASHBOARD_FILE}: a target of panel `{title}` does not use the provisioned data source `{uid}`"
            );
            let names = metric_names_in(expr);
            assert!(
                !names.is_empty(),
                "{DASHBOARD_FILE}: panel `{title}` queries no onceflow metric: `{expr}`"
            );
            for name in names {
                assert!(
                    exposed.contains(&name),
                    "{DASHBOARD_FILE}: panel `{title}` queries `{name}`, which onceflow does not expose \
                     (actors/src/telemetry/metrics.rs exposes {exposed:?})"
                );
            }
            expressions += 1;
        }
    }
    assert!(expressions > 0, "{DASHBOARD_FILE} has no queries");
}

// ---------------------------------------------------------------------------
// The deployment files

/// docker-compose.yml and the Dockerfile, parsed.
struct Deployment {
    compose: Value,
    dockerfile: Dockerfile,
}

impl Deployment {
    fn load() -> Deployment {
        let text = read_repo_file(COMPOSE_FILE);
        let compose: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|error| panic!("{COMPOSE_FILE} is not valid YAML: {error}"));
        assert!(
            compose["services"].is_object(),
            "{COMPOSE_FILE} has no `services` mapping"
        );
        Deployment {
            compose,
            dockerfile: Dockerfile::parse(&read_repo_file(DOCKERFILE)),
        }
    }

    fn service(&self, name: &str) -> &Value {
        match &self.compose["services"][name] {
            Value::Object(_) => &self.compose["services"][name],
            _ => panic!("{COMPOSE_FILE} has no service `{name}`"),
        }
    }

    /// The service called `host`, also found by its `hostname`.
    fn service_named_by_host(&self, host: &str) -> String {
        self.service_reachable_as(host).unwrap_or_else(|| {
            panic!("{COMPOSE_FILE}: no service is reachable as `{host}` (no such service name or hostname)")
        })
    }

    /// The service called `host`, also found by its `hostname`, if any.
    fn service_reachable_as(&self, host: &str) -> Option<String> {
        let services = self.compose["services"]
            .as_object()
            .unwrap_or_else(|| panic!("{COMPOSE_FILE} has no `services` mapping"));
        services
            .iter()
            .find(|(name, service)| *name == host || service["hostname"].as_str() == Some(host))
            .map(|(name, _)| name.clone())
    }

    fn image_of(&self, host: &str) -> String {
        let name = self.service_named_by_host(host);
        self.service(&name)["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{COMPOSE_FILE}: service `{name}` has no image"))
            .to_owned()
    }

    /// Services whose image is built from this repository's Dockerfile.
    fn services_built_here(&self) -> Vec<String> {
        let services = self.compose["services"].as_object().into_iter().flatten();
        services
            .filter(|(_, service)| {
                let context = match &service["build"] {
                    Value::String(context) => Some(context.as_str()),
                    Value::Object(build) => build.get("context").and_then(Value::as_str),
                    _ => None,
                };
                matches!(context, Some("." | "./"))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The `environment` of a service in docker-compose.yml, as strings.
    fn compose_environment(&self, service: &str) -> BTreeMap<String, String> {
        let entries: Vec<(String, Option<String>)> = match &self.service(service)["environment"] {
            Value::Null => Vec::new(),
            Value::Object(map) => map
                .iter()
                .map(|(name, value)| (name.clone(), scalar_text(value)))
                .collect(),
            Value::Array(list) => list
                .iter()
                .map(|entry| {
                    let entry = entry.as_str().unwrap_or_else(|| {
                        panic!("{COMPOSE_FILE}: service `{service}`: environment entries must be strings")
                    });
                    match entry.split_once('=') {
                        Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                        None => (entry.to_owned(), None),
                    }
                })
                .collect(),
            other => panic!("{COMPOSE_FILE}: service `{service}`: unexpected environment {other}"),
        };
        entries
            .into_iter()
            .map(|(name, value)| {
                let value = value.unwrap_or_else(|| {
                    panic!(
                        "{COMPOSE_FILE}: service `{service}`: `{name}` has no value (it would be copied from \
                         the host's environment, which this check cannot see)"
                    )
                });
                assert!(
                    !value.contains("${"),
                    "{COMPOSE_FILE}: service `{service}`: `{name}={value}` is interpolated from the host's \
                     environment, which this check cannot see"
                );
                (name, value)
            })
            .collect()
    }

    /// What the onceflow process sees: the image's ENV, overridden by compose.
    fn effective_onceflow_environment(&self) -> BTreeMap<String, String> {
        let mut environment = self.dockerfile.runtime_env.clone();
        environment.extend(self.compose_environment(ONCEFLOW_SERVICE));
        environment
    }

    /// The onceflow service's settings, loaded exactly as `onceflow run` loads
    /// them (defaults, then `ONCEFLOW_*` variables; unknown ones refused),
    /// validated, and with the database URL `run` requires.
    #[allow(
        clippy::result_large_err,
        reason = "the closure's error type is the one figment's Jail requires"
    )]
    fn onceflow_settings(&self) -> Settings {
        let mut environment = self.effective_onceflow_environment();
        // The one config file a container has: the image's own, copied from
        // the repository (the Dockerfile must say so).
        let config_file = environment.remove("ONCEFLOW_CONFIG").map(|path| {
            assert_eq!(
                path, IMAGE_CONFIG.0,
                "{COMPOSE_FILE}: ONCEFLOW_CONFIG names a file inside the container other than the image's \
                 own, which this check cannot read; configure the service through ONCEFLOW_* variables"
            );
            let copy = format!("COPY {} {}", IMAGE_CONFIG.1, IMAGE_CONFIG.0);
            assert!(
                read_repo_file(DOCKERFILE).lines().any(|line| line.trim() == copy),
                "{DOCKERFILE}: no `{copy}`"
            );
            read_repo_file(IMAGE_CONFIG.1)
        });
        let mut loaded = None;
        figment::Jail::expect_with(|jail| {
            // Only the service's environment, not the one running this test.
            jail.clear_env();
            for (name, value) in &environment {
                jail.set_env(name, value);
            }
            let config_path = match &config_file {
                Some(text) => {
                    jail.create_file("onceflow.toml", text)?;
                    Some(std::path::Path::new("onceflow.toml"))
                }
                None => None,
            };
            let refused = |error: onceflow_actors::settings::SettingsError| {
                format!(
                    "{COMPOSE_FILE}: `onceflow run` refuses the settings of `{ONCEFLOW_SERVICE}`: {error}"
                )
            };
            let settings = Settings::load(config_path).map_err(refused)?;
            settings.required_database_url().map_err(refused)?;
            loaded = Some(settings);
            Ok(())
        });
        loaded.unwrap_or_else(|| panic!("the settings of `{ONCEFLOW_SERVICE}` were not loaded"))
    }

    /// Topics the kafka-init service creates, as it creates them.
    fn created_topics(&self) -> BTreeMap<String, CreatedTopic> {
        let script = command_of(self.service(KAFKA_INIT_SERVICE), &self.dockerfile).join("\n");
        let mut topics = BTreeMap::new();
        for line in script.lines().filter(|line| line.contains("--create")) {
            let words = shell_words(line);
            let topic = flag_value(&words, "--topic").unwrap_or_else(|| {
                panic!("{COMPOSE_FILE}: `{KAFKA_INIT_SERVICE}` creates a topic without --topic: `{line}`")
            });
            let number = |flag: &str| {
                flag_value(&words, flag).map(|count| {
                    count.parse::<u32>().unwrap_or_else(|_| {
                        panic!("{COMPOSE_FILE}: `{KAFKA_INIT_SERVICE}`: {flag} `{count}` is not a number")
                    })
                })
            };
            let configs = flag_values(&words, "--config")
                .iter()
                .map(|config| {
                    let (name, value) = config.split_once('=').unwrap_or_else(|| {
                        panic!("{COMPOSE_FILE}: `{KAFKA_INIT_SERVICE}`: --config `{config}` is not name=value")
                    });
                    (name.to_owned(), value.to_owned())
                })
                .collect();
            let created = CreatedTopic {
                partitions: number("--partitions"),
                replication_factor: number("--replication-factor"),
                configs,
            };
            topics.insert(topic, created);
        }
        assert!(
            !topics.is_empty(),
            "{COMPOSE_FILE}: the `{KAFKA_INIT_SERVICE}` service creates no topic (no `--create --topic …`)"
        );
        topics
    }

    /// Every `--bootstrap-server` of the kafka-init script.
    fn kafka_init_bootstrap_servers(&self) -> Vec<String> {
        let script = command_of(self.service(KAFKA_INIT_SERVICE), &self.dockerfile).join("\n");
        let servers: Vec<String> = script
            .lines()
            .filter_map(|line| flag_value(&shell_words(line), "--bootstrap-server"))
            .collect();
        assert!(
            !servers.is_empty(),
            "{COMPOSE_FILE}: the `{KAFKA_INIT_SERVICE}` service names no --bootstrap-server"
        );
        servers
    }

    /// The bootstrap servers of the load generator: its environment, else its
    /// `--brokers` flag, else the flag's default.
    fn load_generator_brokers(&self) -> String {
        self.compose_environment(LOAD_GENERATOR_SERVICE)
            .get("ONCEFLOW_KAFKA_BROKERS")
            .cloned()
            .or_else(|| {
                flag_value(
                    &command_of(self.service(LOAD_GENERATOR_SERVICE), &self.dockerfile),
                    "--brokers",
                )
            })
            .unwrap_or_else(|| produce_default("ONCEFLOW_KAFKA_BROKERS"))
    }

    /// The Kafka nodes: services running [`KAFKA_IMAGE`] that set
    /// KAFKA_PROCESS_ROLES.
    fn kafka_nodes(&self) -> Vec<String> {
        let services = self.compose["services"].as_object().into_iter().flatten();
        services
            .filter(|(_, service)| {
                service["image"]
                    .as_str()
                    .is_some_and(|image| image.starts_with(KAFKA_IMAGE))
            })
            .map(|(name, _)| name.clone())
            .filter(|name| {
                self.compose_environment(name)
                    .contains_key("KAFKA_PROCESS_ROLES")
            })
            .collect()
    }

    /// The port a Kafka node binds its (first) controller listener on.
    fn kafka_controller_port(&self, node: &str) -> u16 {
        let environment = self.compose_environment(node);
        let names = environment
            .get("KAFKA_CONTROLLER_LISTENER_NAMES")
            .unwrap_or_else(|| {
                panic!(
                    "{COMPOSE_FILE}: Kafka node `{node}` does not set KAFKA_CONTROLLER_LISTENER_NAMES (mandatory \
                     from Kafka 4.2)"
                )
            });
        let name = names.split(',').next().unwrap_or_default().trim();
        let bound = listeners(&environment, "KAFKA_LISTENERS", node);
        bound.get(name).map(|(_, port)| *port).unwrap_or_else(|| {
            panic!(
                "{COMPOSE_FILE}: Kafka node `{node}`: controller listener {name} is not among KAFKA_LISTENERS \
                 {bound:?}"
            )
        })
    }

    /// The `condition` with which `service` waits for `other`: compose's
    /// default `service_started` for the list form, `None` if it does not
    /// wait for it.
    fn depends_on_condition(&self, service: &str, other: &str) -> Option<String> {
        match &self.service(service)["depends_on"] {
            Value::Array(names) => names
                .iter()
                .any(|name| name.as_str() == Some(other))
                .then(|| "service_started".to_owned()),
            Value::Object(map) => map.get(other).map(|entry| {
                entry["condition"]
                    .as_str()
                    .unwrap_or("service_started")
                    .to_owned()
            }),
            _ => None,
        }
    }

    /// Checks that every server of `bootstrap` (as used by `client`) is the
    /// in-network listener of a Kafka service; returns, per server, that
    /// service and the listener's name.
    fn kafka_listener_for(&self, bootstrap: &str, client: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for server in bootstrap.split(',').map(str::trim) {
            let (host, port) = host_port(server).unwrap_or_else(|| {
                panic!(
                    "{COMPOSE_FILE}: `{client}` bootstraps from `{server}`, which is not host:port"
                )
            });
            let service = self.service_reachable_as(&host).unwrap_or_else(|| {
                panic!(
                    "{COMPOSE_FILE}: `{client}` bootstraps from `{server}`, but no service is reachable as `{host}`: \
                     inside the compose network a broker is reached by its service name or hostname, at its \
                     in-network listener"
                )
            });
            let environment = self.compose_environment(&service);
            let advertised = listeners(&environment, "KAFKA_ADVERTISED_LISTENERS", &service);
            let bound = listeners(&environment, "KAFKA_LISTENERS", &service);
            let (listener, _) = advertised
                .iter()
                .find(|(_, (advertised_host, advertised_port))| {
                    *advertised_port == port
                        && (advertised_host == &host || advertised_host == &service)
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{COMPOSE_FILE}: `{client}` bootstraps from `{server}`, but `{service}` advertises no \
                         listener at that address (KAFKA_ADVERTISED_LISTENERS: {advertised:?})"
                    )
                });
            let bound_port = bound.get(listener).map(|(_, port)| *port);
            assert_eq!(
                bound_port,
                Some(port),
                "{COMPOSE_FILE}: `{service}` advertises listener {listener} at {server}, but binds it on port \
                 {bound_port:?} (KAFKA_LISTENERS)"
            );
            let protocol = environment
                .get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
                .and_then(|map| {
                    map.split(',')
                        .filter_map(|pair| pair.trim().split_once(':'))
                        .find(|(name, _)| name == listener)
                        .map(|(_, protocol)| protocol.to_owned())
                })
                .unwrap_or_else(|| listener.clone());
            assert_eq!(
                protocol, "PLAINTEXT",
                "{COMPOSE_FILE}: `{client}` bootstraps from `{server}`, listener {listener} of `{service}`, which \
                 speaks {protocol}, while the client sets no security protocol"
            );
            found.push((service, listener.clone()));
        }
        assert!(
            !found.is_empty(),
            "{COMPOSE_FILE}: `{client}` names no bootstrap server"
        );
        found
    }

    /// Bind mounts of a service: container path → host path (repo-relative).
    fn bind_mounts(&self, service: &str) -> BTreeMap<String, String> {
        self.mounts(service)
            .into_iter()
            .filter(|(_, source)| source.starts_with("./") || source.starts_with('/'))
            .map(|(target, source)| (target, source.trim_start_matches("./").to_owned()))
            .collect()
    }

    /// Every mount of a service, named volumes included: container path →
    /// source as written.
    fn mounts(&self, service: &str) -> BTreeMap<String, String> {
        let mut mounts = BTreeMap::new();
        for volume in self.service(service)["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (source, target) = match volume {
                Value::String(short) => {
                    let mut parts = short.split(':');
                    match (parts.next(), parts.next()) {
                        (Some(source), Some(target)) => (source.to_owned(), target.to_owned()),
                        _ => continue,
                    }
                }
                Value::Object(long) => match (
                    long.get("source").and_then(Value::as_str),
                    long.get("target").and_then(Value::as_str),
                ) {
                    (Some(source), Some(target)) => (source.to_owned(), target.to_owned()),
                    _ => continue,
                },
                _ => continue,
            };
            mounts.insert(target, source);
        }
        mounts
    }

    /// The single service running `image_prefix`.
    fn service_running(&self, image_prefix: &str) -> String {
        let services = self.compose["services"].as_object().into_iter().flatten();
        let matching: Vec<String> = services
            .filter(|(_, service)| {
                service["image"]
                    .as_str()
                    .is_some_and(|image| image.starts_with(image_prefix))
            })
            .map(|(name, _)| name.clone())
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{COMPOSE_FILE}: expected exactly one service running `{image_prefix}…`, found {matching:?}"
        );
        matching[0].clone()
    }

    /// The repo file mounted at `container_path` in `service`.
    fn mounted_file(&self, service: &str, container_path: &str) -> String {
        let mounts = self.bind_mounts(service);
        if let Some(source) = mounts.get(container_path) {
            return source.clone();
        }
        // A file inside a mounted directory.
        mounts
            .iter()
            .find_map(|(target, source)| {
                container_path
                    .strip_prefix(target.as_str())
                    .filter(|rest| rest.starts_with('/'))
                    .map(|rest| format!("{source}{rest}"))
            })
            .unwrap_or_else(|| {
                panic!("{COMPOSE_FILE}: service `{service}` mounts nothing at {container_path} (mounts: {mounts:?})")
            })
    }

    /// Ports of the scrape targets on `service` in the mounted Prometheus configuration.
    fn prometheus_target_ports(&self, service: &str) -> Vec<u16> {
        let prometheus = self.service_running("prom/prometheus:");
        let path = self.mounted_file(&prometheus, "/etc/prometheus/prometheus.yml");
        let config: Value = serde_norway::from_str(&read_repo_file(&path))
            .unwrap_or_else(|error| panic!("{path} is not valid YAML: {error}"));
        let mut ports = Vec::new();
        for job in config["scrape_configs"].as_array().into_iter().flatten() {
            let metrics_path = job["metrics_path"].as_str().unwrap_or("/metrics");
            for static_config in job["static_configs"].as_array().into_iter().flatten() {
                for target in static_config["targets"].as_array().into_iter().flatten() {
                    let target = target.as_str().unwrap_or_default();
                    let (host, port) = host_port(target).unwrap_or_else(|| {
                        panic!("{path}: scrape target `{target}` is not host:port")
                    });
                    if host == service {
                        assert_eq!(
                            metrics_path, "/metrics",
                            "{path}: `{target}` is scraped at {metrics_path}, onceflow serves /metrics"
                        );
                        ports.push(port);
                    }
                }
            }
        }
        ports
    }

    /// The uid of the provisioned Prometheus data source; checks that it
    /// points at the Prometheus service and that the dashboard is mounted
    /// where the provisioned dashboard provider looks.
    fn provisioned_datasource_uid(&self) -> String {
        let grafana = self.service_running("grafana/grafana:");
        let provisioning = self.mounted_file(&grafana, "/etc/grafana/provisioning");

        let datasources = yaml_files_in(&format!("{provisioning}/datasources"));
        let prometheus_sources: Vec<&Value> = datasources
            .iter()
            .flat_map(|(_, file)| file["datasources"].as_array().into_iter().flatten())
            .filter(|source| source["type"] == "prometheus")
            .collect();
        assert_eq!(
            prometheus_sources.len(),
            1,
            "{provisioning}/datasources: expected one Prometheus data source, found {}",
            prometheus_sources.len()
        );
        let source = prometheus_sources[0];
        let url = source["url"].as_str().unwrap_or_default();
        let (host, port) = url_host_port(url).unwrap_or_else(|| {
            panic!("{provisioning}/datasources: data source url `{url}` is not http://host:port")
        });
        let prometheus = self.service_running("prom/prometheus:");
        assert!(
            host == prometheus && port == 9090,
            "{provisioning}/datasources: the data source url `{url}` is not the `{prometheus}` service on 9090"
        );

        let providers = yaml_files_in(&format!("{provisioning}/dashboards"));
        let dashboard_dirs: Vec<String> = providers
            .iter()
            .flat_map(|(_, file)| file["providers"].as_array().into_iter().flatten())
            .filter_map(|provider| provider["options"]["path"].as_str().map(str::to_owned))
            .collect();
        let dashboard_dir = Path::new(DASHBOARD_FILE)
            .parent()
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_default();
        let served = dashboard_dirs
            .iter()
            .any(|dir| self.mounted_file(&grafana, dir).trim_end_matches('/') == dashboard_dir);
        assert!(
            served,
            "{COMPOSE_FILE}: no dashboard provider path ({dashboard_dirs:?}) of `{grafana}` has {dashboard_dir} \
             mounted"
        );
        let grafana_environment = self.compose_environment(&grafana);
        if let Some(home) = grafana_environment.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
            let file = self.mounted_file(&grafana, home);
            assert!(
                repo_path(&file).is_file(),
                "{COMPOSE_FILE}: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is {file}, which does not exist"
            );
        }

        source["uid"]
            .as_str()
            .unwrap_or_else(|| {
                panic!("{provisioning}/datasources: the Prometheus data source has no uid")
            })
            .to_owned()
    }
}

/// The runtime (last) stage of the Dockerfile.
#[derive(Debug, Default)]
struct Dockerfile {
    runtime_env: BTreeMap<String, String>,
    exposed: Vec<u16>,
    healthcheck: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        let mut stage = Dockerfile::default();
        let mut stages = 0;
        for instruction in dockerfile_instructions(text) {
            let (keyword, rest) = instruction
                .split_once(char::is_whitespace)
                .unwrap_or((instruction.as_str(), ""));
            let rest = rest.trim();
            match keyword.to_ascii_uppercase().as_str() {
                "FROM" => {
                    stage = Dockerfile::default();
                    stages += 1;
                }
                "ENV" => stage.runtime_env.extend(parse_env_instruction(rest)),
                "EXPOSE" => stage.exposed.extend(rest.split_whitespace().map(|port| {
                    let number = port.split('/').next().unwrap_or_default();
                    number
                        .parse::<u16>()
                        .unwrap_or_else(|_| panic!("{DOCKERFILE}: EXPOSE `{port}` is not a port"))
                })),
                "HEALTHCHECK" => stage.healthcheck = Some(rest.to_owned()),
                "ENTRYPOINT" => stage.entrypoint = Some(exec_form(rest, "ENTRYPOINT")),
                "CMD" => stage.cmd = Some(exec_form(rest, "CMD")),
                _ => {}
            }
        }
        assert!(
            stages >= 2,
            "{DOCKERFILE} must have a build and a runtime stage"
        );
        stage
    }
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment and empty lines are dropped, also inside a continued instruction.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                instructions.push(current.trim().to_owned());
            }
            current.clear();
        }
    }
    instructions
}

/// `ENV A=1 B="two"` (or the legacy `ENV A 1`).
fn parse_env_instruction(rest: &str) -> Vec<(String, String)> {
    let words = shell_words(rest);
    if words.first().is_some_and(|word| !word.contains('=')) {
        let value = words[1..].join(" ");
        return vec![(words[0].clone(), value)];
    }
    words
        .iter()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn exec_form(rest: &str, keyword: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|_| {
        panic!("{DOCKERFILE}: {keyword} must use the exec (JSON) form, not `{rest}`")
    })
}

/// A service's command: its `command` (list or string), else the image's CMD.
fn command_of(service: &Value, dockerfile: &Dockerfile) -> Vec<String> {
    match &service["command"] {
        Value::Array(words) => words.iter().filter_map(scalar_text).collect(),
        Value::String(line) => shell_words(line),
        _ => dockerfile.cmd.clone().unwrap_or_default(),
    }
}

/// Container ports a service publishes or exposes.
fn container_ports(service: &Value) -> Vec<u16> {
    let mut ports = Vec::new();
    for entry in service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(service["expose"].as_array().into_iter().flatten())
    {
        let port = match entry {
            Value::Object(long) => long.get("target").and_then(scalar_text),
            other => scalar_text(other).and_then(|short| {
                short
                    .rsplit(':')
                    .next()
                    .map(|port| port.split('/').next().unwrap_or_default().to_owned())
            }),
        };
        if let Some(port) = port.and_then(|port| port.parse::<u16>().ok()) {
            ports.push(port);
        }
    }
    ports
}

/// Listener name → (host, port) of a Kafka listeners variable.
fn listeners(
    environment: &BTreeMap<String, String>,
    variable: &str,
    service: &str,
) -> BTreeMap<String, (String, u16)> {
    let value = environment.get(variable).unwrap_or_else(|| {
        panic!("{COMPOSE_FILE}: Kafka service `{service}` does not set {variable}")
    });
    value
        .split(',')
        .map(|listener| {
            let (name, address) = listener.trim().split_once("://").unwrap_or_else(|| {
                panic!(
                    "{COMPOSE_FILE}: `{service}` {variable}: `{listener}` is not NAME://host:port"
                )
            });
            let (host, port) = host_port(address).unwrap_or_else(|| {
                panic!(
                    "{COMPOSE_FILE}: `{service}` {variable}: `{listener}` is not NAME://host:port"
                )
            });
            (name.to_owned(), (host, port))
        })
        .collect()
}

/// KAFKA_NODE_ID of a Kafka node.
fn kafka_node_id(environment: &BTreeMap<String, String>, node: &str) -> u32 {
    let id = environment.get("KAFKA_NODE_ID").unwrap_or_else(|| {
        panic!("{COMPOSE_FILE}: Kafka node `{node}` does not set KAFKA_NODE_ID")
    });
    id.parse().unwrap_or_else(|_| {
        panic!("{COMPOSE_FILE}: Kafka node `{node}`: KAFKA_NODE_ID `{id}` is not a number")
    })
}

/// Voter id → (host, port) of a node's KAFKA_CONTROLLER_QUORUM_VOTERS
/// (`id@host:port,…`).
fn quorum_voters(
    environment: &BTreeMap<String, String>,
    node: &str,
) -> BTreeMap<u32, (String, u16)> {
    let value = environment
        .get("KAFKA_CONTROLLER_QUORUM_VOTERS")
        .unwrap_or_else(|| {
            panic!(
                "{COMPOSE_FILE}: Kafka node `{node}` does not set KAFKA_CONTROLLER_QUORUM_VOTERS"
            )
        });
    let mut voters = BTreeMap::new();
    for voter in value.split(',').map(str::trim) {
        let malformed = || {
            format!(
                "{COMPOSE_FILE}: Kafka node `{node}` KAFKA_CONTROLLER_QUORUM_VOTERS: `{voter}` is not id@host:port"
            )
        };
        let (id, address) = voter
            .split_once('@')
            .unwrap_or_else(|| panic!("{}", malformed()));
        let id: u32 = id.parse().unwrap_or_else(|_| panic!("{}", malformed()));
        let address = host_port(address).unwrap_or_else(|| panic!("{}", malformed()));
        assert!(
            voters.insert(id, address).is_none(),
            "{COMPOSE_FILE}: Kafka node `{node}` names voter {id} twice in KAFKA_CONTROLLER_QUORUM_VOTERS"
        );
    }
    voters
}

/// A port a service publishes on the host.
#[derive(Debug, PartialEq, Eq)]
struct PublishedPort {
    /// `None`: every interface of the host.
    host_ip: Option<String>,
    /// `None`: a port Docker picks.
    host_port: Option<u16>,
    container_port: Option<u16>,
}

/// The `ports` of a service, each as written and as understood: short syntax
/// `[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTOCOL]` (an IPv6 host address
/// in brackets) or long syntax (`host_ip`, `published`, `target`).
fn published_ports(service: &Value) -> Vec<(String, PublishedPort)> {
    let port = |text: &str| text.parse::<u16>().ok();
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            let published = match entry {
                Value::Object(long) => PublishedPort {
                    host_ip: long.get("host_ip").and_then(scalar_text),
                    host_port: long
                        .get("published")
                        .and_then(scalar_text)
                        .and_then(|text| port(&text)),
                    container_port: long
                        .get("target")
                        .and_then(scalar_text)
                        .and_then(|text| port(&text)),
                },
                other => {
                    let short = scalar_text(other).unwrap_or_default();
                    let short = short.split('/').next().unwrap_or_default();
                    let (host_ip, ports) = match short.strip_prefix('[') {
                        Some(bracketed) => match bracketed.split_once("]:") {
                            Some((ip, ports)) => (Some(ip.to_owned()), ports.to_owned()),
                            None => (None, short.to_owned()),
                        },
                        None => {
                            let parts: Vec<&str> = short.split(':').collect();
                            if parts.len() > 2 {
                                let ip = parts[..parts.len() - 2].join(":");
                                (Some(ip), parts[parts.len() - 2..].join(":"))
                            } else {
                                (None, short.to_owned())
                            }
                        }
                    };
                    let (host_port, container_port) = match ports.split_once(':') {
                        Some((host, container)) => (port(host), port(container)),
                        None => (None, port(&ports)),
                    };
                    PublishedPort {
                        host_ip: host_ip.filter(|ip| !ip.is_empty()),
                        host_port,
                        container_port,
                    }
                }
            };
            let written = match entry {
                Value::Object(_) => entry.to_string(),
                other => scalar_text(other).unwrap_or_default(),
            };
            (written, published)
        })
        .collect()
}

/// A topic as kafka-init creates it.
#[derive(Debug)]
struct CreatedTopic {
    partitions: Option<u32>,
    replication_factor: Option<u32>,
    /// The `--config name=value` overrides.
    configs: BTreeMap<String, String>,
}

/// A PostgreSQL URL, split: `postgres://user[:password]@host[:port]/name[?…]`.
#[derive(Debug)]
struct DatabaseUrl {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    name: String,
}

impl DatabaseUrl {
    fn parse(url: &str) -> DatabaseUrl {
        let malformed = || {
            format!(
                "{COMPOSE_FILE}: ONCEFLOW_DATABASE_URL `{url}` is not \
                 postgres://user[:password]@host[:port]/database"
            )
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .unwrap_or_else(|| panic!("{}", malformed()));
        let (credentials, location) = rest
            .rsplit_once('@')
            .unwrap_or_else(|| panic!("{}", malformed()));
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user.to_owned(), Some(password.to_owned())),
            None => (credentials.to_owned(), None),
        };
        let (address, path) = location
            .split_once('/')
            .unwrap_or_else(|| panic!("{}", malformed()));
        let name = path.split('?').next().unwrap_or_default().to_owned();
        let (host, port) = match address.split_once(':') {
            Some((host, port)) => (
                host.to_owned(),
                port.parse().unwrap_or_else(|_| panic!("{}", malformed())),
            ),
            None => (address.to_owned(), 5432),
        };
        assert!(!name.is_empty(), "{}", malformed());
        DatabaseUrl {
            user,
            password,
            host,
            port,
            name,
        }
    }
}

// ---------------------------------------------------------------------------
// What the binary reads, derived from its sources

/// Variables `onceflow run` reads: one per setting, the `env = "…"` names of
/// the command line (src/main.rs), the log filter and OpenTelemetry's.
fn run_variables() -> BTreeSet<String> {
    let defaults = serde_json::to_value(Settings::default())
        .unwrap_or_else(|error| panic!("Settings do not serialize: {error}"));
    let keys = defaults
        .as_object()
        .unwrap_or_else(|| panic!("Settings serialize to {defaults}, not an object"));
    let mut names: BTreeSet<String> = keys
        .keys()
        .map(|key| format!("ONCEFLOW_{}", key.to_ascii_uppercase()))
        .collect();
    names.extend(clap_env_names(&read_repo_file("src/main.rs")));
    names.extend(common_variables());
    names
}

/// Variables `onceflow produce` reads: its flags' `env = "…"` names
/// (src/produce.rs), the log filter and OpenTelemetry's.
fn produce_variables() -> BTreeSet<String> {
    let mut names = clap_env_names(&read_repo_file("src/produce.rs"));
    assert!(
        !names.is_empty(),
        "src/produce.rs: found no `env = \"…\"` flag; has the argument syntax changed?"
    );
    names.extend(common_variables());
    names
}

fn common_variables() -> BTreeSet<String> {
    OTEL_VARIABLES
        .iter()
        .chain([&LOG_VARIABLE])
        .map(|name| (*name).to_owned())
        .collect()
}

/// Every `env = "NAME"` of clap attributes in `source`.
fn clap_env_names(source: &str) -> BTreeSet<String> {
    source
        .match_indices("env = \"")
        .filter_map(|(at, marker)| {
            let rest = &source[at + marker.len()..];
            rest.split_once('"').map(|(name, _)| name.to_owned())
        })
        .collect()
}

/// The `default_value` of the produce flag read from `variable`.
fn produce_default(variable: &str) -> String {
    let source = read_repo_file("src/produce.rs");
    let marker = format!("env = \"{variable}\"");
    source
        .lines()
        .find(|line| line.contains(&marker))
        .and_then(|line| line.split("default_value = \"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("src/produce.rs: no default_value next to `{marker}`"))
}

/// The metric names onceflow exposes, read off its own registry's
/// exposition (`# TYPE name kind` lines): counters are exposed with
/// `_total`, histograms as `_bucket`, `_sum` and `_count`.
fn exposed_metric_names() -> BTreeSet<String> {
    // Labelled families are exposed once they have a series: one each.
    let status = onceflow_actors::PipelineStatus::default();
    status
        .metrics()
        .start_series_at_zero(&["invalid-json"], &["database"], &["db_writer"]);
    status.set_assigned_lags(&[(0, 0)]);
    let exposition = status.metrics().encode();
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest
            .split_once(' ')
            .unwrap_or_else(|| panic!("cannot read the exposition line `{line}`"));
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.contains("onceflow_txn_commits_total"),
        "the exposition lacks onceflow's metrics: {exposition}"
    );
    names
}

/// The `onceflow_…` metric names in a PromQL expression.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("onceflow_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if !preceded_by_word {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}

// ---------------------------------------------------------------------------
// Small parsers

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// Every YAML file of a repo directory, parsed.
fn yaml_files_in(relative_dir: &str) -> Vec<(String, Value)> {
    let entries = std::fs::read_dir(repo_path(relative_dir))
        .unwrap_or_else(|error| panic!("cannot list {relative_dir}: {error}"));
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yml") || name.ends_with(".yaml") {
            let relative = format!("{relative_dir}/{name}");
            let value = serde_norway::from_str(&read_repo_file(&relative))
                .unwrap_or_else(|error| panic!("{relative} is not valid YAML: {error}"));
            files.push((relative, value));
        }
    }
    files
}

/// A YAML scalar as the text a process would see in its environment.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// `host:port` (host may be empty, meaning every interface).
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.trim().rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

/// Host and port of an `http://host:port[/path]` URL.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    host_port(rest.split('/').next()?)
}

/// Words of a shell line, quotes removed (no expansion).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The value of `--flag value` or `--flag=value` (the first, if repeated).
fn flag_value(words: &[String], flag: &str) -> Option<String> {
    flag_values(words, flag).into_iter().next()
}

/// Every value of a repeated `--flag value` or `--flag=value`.
fn flag_values(words: &[String], flag: &str) -> Vec<String> {
    let with_equals = format!("{flag}=");
    words
        .iter()
        .enumerate()
        .filter_map(|(index, word)| {
            if word == flag {
                words.get(index + 1).cloned()
            } else {
                word.strip_prefix(&with_equals).map(str::to_owned)
            }
        })
        .collect()
}

#[test]
fn small_parsers_read_what_they_should() {
    assert_eq!(
        shell_words(r#"kafka-topics.sh --topic 'ad events' --x="a b" plain"#),
        [
            "kafka-topics.sh",
            "--topic",
            "ad events",
            "--x=a b",
            "plain"
        ]
    );
    assert_eq!(
        metric_names_in(
            "sum by (le) (rate(onceflow_commit_duration_seconds_bucket[1m])) / onceflow_x"
        ),
        BTreeSet::from([
            "onceflow_commit_duration_seconds_bucket".to_owned(),
            "onceflow_x".to_owned()
        ])
    );
    assert_eq!(
        parse_env_instruction(r#"A=1 B="two words""#),
        [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two words".to_owned())
        ]
    );
    let url = DatabaseUrl::parse("postgres://u:p@db/name?sslmode=disable");
    assert_eq!(
        (
            url.user.as_str(),
            url.password.as_deref(),
            url.host.as_str(),
            url.port,
            url.name.as_str()
        ),
        ("u", Some("p"), "db", 5432, "name")
    );
    assert_eq!(
        container_ports(
            &serde_json::json!({"ports": ["127.0.0.1:1:2", "3:4/tcp", 5, {"target": 6}]})
        ),
        [2, 4, 5, 6]
    );
    let published = |ip: Option<&str>, host: Option<u16>, container: u16| PublishedPort {
        host_ip: ip.map(str::to_owned),
        host_port: host,
        container_port: Some(container),
    };
    assert_eq!(
        published_ports(&serde_json::json!({"ports": [
            "127.0.0.1:1:2", "3:4/tcp", 5, "[::1]:6:7", "127.0.0.1::8",
            {"host_ip": "127.0.0.1", "published": "9", "target": 10}
        ]}))
        .into_iter()
        .map(|(_, port)| port)
        .collect::<Vec<_>>(),
        [
            published(Some("127.0.0.1"), Some(1), 2),
            published(None, Some(3), 4),
            published(None, None, 5),
            published(Some("::1"), Some(6), 7),
            published(Some("127.0.0.1"), None, 8),
            published(Some("127.0.0.1"), Some(9), 10),
        ]
    );
    let words = shell_words("kafka-topics.sh --config a=1 --config=b=2 --topic t");
    assert_eq!(flag_values(&words, "--config"), ["a=1", "b=2"]);
    let voters = quorum_voters(
        &BTreeMap::from([(
            "KAFKA_CONTROLLER_QUORUM_VOTERS".to_owned(),
            "1@kafka-1:9093, 2@kafka-2:9093".to_owned(),
        )]),
        "test",
    );
    assert_eq!(
        voters,
        BTreeMap::from([
            (1, ("kafka-1".to_owned(), 9093)),
            (2, ("kafka-2".to_owned(), 9093))
        ])
    );
}
