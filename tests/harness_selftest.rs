//! Self-test of the integration-test harness (`tests/common`): the shared
//! Kafka cluster runs; a cluster of a test's own replicates 3 times, moves a
//! leader where it is told, takes a node kill and restart, and is gone after
//! drop; a cluster behind the harness's proxies sends clients through them
//! (and a black hole there stops only them); the `read_committed` reader returns exactly the
//! committed records (not aborted ones, not an open transaction, not control
//! records), an open transaction is named undecided until it ends, fresh databases are distinct, and the exactly-once checker
//! accepts a correct pipeline outcome and names each kind of violation.

mod common;

use std::time::Duration;

use common::{
    KafkaCluster, NODES, PipelineTopics, UndecidedRange, check_exactly_once, create_topic,
    fresh_database, process_alive, read_committed, unique, wait_for_catch_up, wait_until,
    wait_until_decided,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);

fn transactional_producer(bootstrap: &str) -> FutureProducer {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", unique("selftest-txn"))
        .set("enable.idempotence", "true")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

fn plain_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("plain producer")
}

/// Sends one record and waits for its delivery; returns (partition, offset).
async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    if !headers.is_empty() {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        record = record.headers(owned);
    }
    let delivery = producer
        .send(record, TIMEOUT)
        .await
        .map_err(|(error, _)| error)
        .expect("delivered");
    (delivery.partition, delivery.offset)
}

type Seen = (
    i32,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Vec<u8>)>,
);

fn seen(records: &[common::TopicRecord]) -> Vec<Seen> {
    records
        .iter()
        .map(|r| {
            (
                r.partition,
                r.key.clone(),
                r.value.clone(),
                r.headers.clone(),
            )
        })
        .collect()
}

fn bytes(text: &str) -> Option<Vec<u8>> {
    Some(text.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_returns_exactly_the_committed_records() {
    let broker = KafkaCluster::shared()
        .await
        .expect("the shared cluster runs");
    let topic = unique("selftest");
    create_topic(&broker.bootstrap, &topic, 2)
        .await
        .expect("topic");

    let txn = transactional_producer(&broker.bootstrap);
    let plain = plain_producer(&broker.bootstrap);

    // Committed: three records, one without a value, one with headers.
    txn.begin_transaction().expect("begin");
    send(
        &txn,
        &topic,
        0,
        Some(b"k1"),
        Some(b"v1"),
        &[("h", "1"), ("traceparent", "x")],
    )
    .await;
    send(&txn, &topic, 1, Some(b"k2"), None, &[]).await;
    send(&txn, &topic, 0, None, Some(b"v3"), &[]).await;
    txn.commit_transaction(TIMEOUT).expect("commit");

    // Aborted: never seen.
    txn.begin_transaction().expect("begin");
    send(&txn, &topic, 0, Some(b"x"), Some(b"aborted-1"), &[]).await;
    send(&txn, &topic, 1, Some(b"x"), Some(b"aborted-2"), &[]).await;
    txn.abort_transaction(TIMEOUT).expect("abort");

    // Outside any transaction.
    send(&plain, &topic, 1, Some(b"k4"), Some(b"plain"), &[]).await;

    txn.begin_transaction().expect("begin");
    send(&txn, &topic, 1, Some(b"k5"), Some(b"v5"), &[]).await;
    txn.commit_transaction(TIMEOUT).expect("commit");

    // The topic ends with an aborted record and its abort marker.
    txn.begin_transaction().expect("begin");
    send(&txn, &topic, 0, Some(b"x"), Some(b"aborted-3"), &[]).await;
    txn.abort_transaction(TIMEOUT).expect("abort");

    let expected: Vec<Seen> = vec![
        (
            0,
            bytes("k1"),
            bytes("v1"),
            vec![
                ("h".to_owned(), b"1".to_vec()),
                ("traceparent".to_owned(), b"x".to_vec()),
            ],
        ),
        (0, None, bytes("v3"), vec![]),
        (1, bytes("k2"), None, vec![]),
        (1, bytes("k4"), bytes("plain"), vec![]),
        (1, bytes("k5"), bytes("v5"), vec![]),
    ];
    let records = read_committed(&broker.bootstrap, &topic)
        .await
        .expect("read");
    assert_eq!(seen(&records), expected);
    assert!(
        records
            .windows(2)
            .all(|w| (w[0].partition, w[0].offset) < (w[1].partition, w[1].offset)),
        "sorted by partition and offset"
    );

    // An open transaction is not read and does not make the reader hang.
    txn.begin_transaction().expect("begin");
    send(&txn, &topic, 1, Some(b"x"), Some(b"still-open"), &[]).await;
    let records = read_committed(&broker.bootstrap, &topic)
        .await
        .expect("read with open txn");
    assert_eq!(seen(&records), expected);
    txn.commit_transaction(TIMEOUT).expect("commit");
    let records = read_committed(&broker.bootstrap, &topic)
        .await
        .expect("read after commit");
    assert_eq!(records.len(), expected.len() + 1);
    assert_eq!(
        records.last().and_then(|r| r.value.clone()),
        bytes("still-open")
    );

    // An empty topic reads as empty.
    let empty = unique("selftest-empty");
    create_topic(&broker.bootstrap, &empty, 3)
        .await
        .expect("topic");
    let records = read_committed(&broker.bootstrap, &empty)
        .await
        .expect("read empty");
    assert!(records.is_empty());
}

/// The verdict waits for open transactions before it judges (a joiner
/// SIGKILLed mid-transaction hid every later output until the broker
/// aborted it, and a verdict read then called them lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_is_undecided_until_it_ends() {
    let broker = KafkaCluster::shared()
        .await
        .expect("the shared cluster runs");
    let topic = unique("selftest-undecided");
    create_topic(&broker.bootstrap, &topic, 2)
        .await
        .expect("topic");
    let txn = transactional_producer(&broker.bootstrap);
    let plain = plain_producer(&broker.bootstrap);

    send(&plain, &topic, 1, None, Some(b"decided"), &[]).await;
    txn.begin_transaction().expect("begin");
    let (_, open_at) = send(&txn, &topic, 0, None, Some(b"open"), &[]).await;
    let (_, behind) = send(&plain, &topic, 0, None, Some(b"behind the open one"), &[]).await;
    assert_eq!(behind, open_at + 1);

    let undecided = wait_until_decided(&broker.bootstrap, &topic, Duration::from_secs(2))
        .await
        .expect("offsets read");
    assert_eq!(
        undecided,
        vec![UndecidedRange {
            partition: 0,
            stable: open_at,
            end: behind + 1,
        }],
        "partition 0 is held at the open transaction's first record; partition 1 is decided"
    );
    let visible = read_committed(&broker.bootstrap, &topic)
        .await
        .expect("read");
    assert_eq!(
        visible.iter().map(|r| r.partition).collect::<Vec<_>>(),
        vec![1],
        "the record behind the open transaction is hidden"
    );

    txn.commit_transaction(TIMEOUT).expect("commit");
    let undecided = wait_until_decided(&broker.bootstrap, &topic, Duration::from_secs(20))
        .await
        .expect("offsets read");
    assert_eq!(undecided, vec![], "committed: every record decided");
    let visible = read_committed(&broker.bootstrap, &topic)
        .await
        .expect("read");
    assert_eq!(visible.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_cluster_survives_a_node_kill_moves_leaders_and_is_gone_after_drop() {
    let cluster = KafkaCluster::start_own()
        .await
        .expect("a cluster of our own starts");
    let bootstrap = cluster.bootstrap.clone();
    let brokers: Vec<String> = bootstrap.split(',').map(str::to_owned).collect();
    assert_eq!(brokers.len(), 3, "three brokers in {bootstrap}");
    for broker in &brokers {
        assert!(
            tokio::net::TcpStream::connect(broker).await.is_ok(),
            "{broker} serves"
        );
    }
    let topic = unique("placement");
    create_topic(&bootstrap, &topic, 3).await.expect("topic");
    let placements = cluster.placements(&topic).await.expect("placements");
    assert_eq!(placements.len(), 3);
    for placement in &placements {
        assert_eq!(placement.replicas.len(), 3, "replication 3: {placement:?}");
    }

    // A leader moves where it is told, and the metadata shows it.
    let first = &placements[0];
    let target = first
        .replicas
        .iter()
        .copied()
        .find(|node| *node != first.leader)
        .expect("another replica");
    cluster
        .move_leader(&topic, 0, target)
        .await
        .expect("leader moves");
    let moved = cluster.placements(&topic).await.expect("placements");
    assert_eq!(moved[0].leader, target, "{moved:?}");

    // A SIGKILLed node's port refuses connections; restarted, it serves and
    // is back in sync.
    cluster.kill_node(2).await.expect("node 2 killed");
    let node_2 = brokers[1].clone();
    wait_until(
        Duration::from_secs(10),
        "node 2's port refuses connections",
        || {
            let node_2 = node_2.clone();
            async move { Ok(tokio::net::TcpStream::connect(&node_2).await.is_err()) }
        },
    )
    .await
    .expect("a killed node serves no more");
    cluster.restart_node(2).await.expect("node 2 restarts");
    assert!(tokio::net::TcpStream::connect(&brokers[1]).await.is_ok());
    wait_until(
        Duration::from_secs(60),
        "node 2 is back in sync",
        || async {
            Ok(cluster
                .placements(&topic)
                .await?
                .iter()
                .all(|placement| placement.in_sync.contains(&2)))
        },
    )
    .await
    .expect("node 2 in sync again");

    // Dropped, every node is gone.
    let pids: Vec<u32> = NODES
        .iter()
        .map(|node| cluster.node_pid(*node).expect("pid"))
        .collect();
    drop(cluster);
    wait_until(
        Duration::from_secs(10),
        "every node of the cluster is gone",
        || {
            let pids = pids.clone();
            async move { Ok(pids.iter().all(|pid| !process_alive(*pid))) }
        },
    )
    .await
    .expect("the cluster stops with its owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_proxies_sends_clients_through_them_and_a_black_hole_stops_only_them() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let cluster = KafkaCluster::start_own_behind_proxies()
        .await
        .expect("a cluster behind proxies starts");
    let network = cluster.client_network().expect("proxies");
    let through = cluster.client_bootstrap();
    assert_ne!(through, cluster.bootstrap);
    let topic = unique("proxied");
    create_topic(&cluster.bootstrap, &topic, 3)
        .await
        .expect("topic");

    // Bootstrapped through the proxies, a client is sent to the proxies for
    // every broker (the nodes advertise them on that listener).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &through)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(&topic), TIMEOUT)
        .expect("metadata through the proxies");
    let mut advertised: Vec<String> = metadata
        .brokers()
        .iter()
        .map(|broker| format!("{}:{}", broker.host(), broker.port()))
        .collect();
    advertised.sort();
    let mut proxies: Vec<String> = through.split(',').map(str::to_owned).collect();
    proxies.sort();
    assert_eq!(advertised, proxies);

    let producer = |bootstrap: &str| -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("message.timeout.ms", "4000")
            .create()
            .expect("producer")
    };
    let proxied = producer(&through);
    let direct = producer(&cluster.bootstrap);
    async fn send_keyed(producer: &FutureProducer, topic: &str, key: &str) -> Result<(), String> {
        let record = FutureRecord::to(topic).key(key).payload("x");
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error.to_string())
    }
    send_keyed(&proxied, &topic, "open")
        .await
        .expect("sent through the open proxies");

    network.set(common::NetworkCondition::BlackHoled);
    assert!(
        send_keyed(&proxied, &topic, "held").await.is_err(),
        "a send crossed the black hole"
    );
    send_keyed(&direct, &topic, "direct")
        .await
        .expect("the direct path is untouched");
    assert!(network.counters().held > 0, "{:?}", network.counters());

    network.set(common::NetworkCondition::Open);
    send_keyed(&proxied, &topic, "healed")
        .await
        .expect("sent after the heal");
}

#[tokio::test]
async fn fresh_databases_are_distinct_and_empty() {
    let (first_url, first) = fresh_database().await.expect("first database");
    let (second_url, second) = fresh_database().await.expect("second database");
    assert_ne!(first_url, second_url);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&first)
    .await
    .expect("query");
    assert_eq!(tables, 0);
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&second)
        .await
        .expect("query");
    assert!(second_url.ends_with(&name), "{second_url} names {name}");
    first.close().await;
    second.close().await;
    for url in [&first_url, &second_url] {
        common::drop_database(url).await.expect("dropped");
    }
    let admin_url = common::admin_url();
    let admin = sqlx::PgPool::connect(&admin_url).await.expect("admin");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&admin)
        .await
        .expect("query");
    assert_eq!(left, 0, "the database is gone after drop_database");
}

#[tokio::test]
async fn wait_until_names_what_it_waited_for() {
    let error = wait_until(Duration::from_millis(300), "the moon is blue", || async {
        Err::<bool, _>(common::ChaosError::Step("still green".to_owned()))
    })
    .await
    .expect_err("times out");
    let text = error.to_string();
    assert!(
        text.contains("the moon is blue") && text.contains("still green"),
        "{text}"
    );

    let mut calls = 0;
    wait_until(Duration::from_secs(5), "the third call", || {
        calls += 1;
        let done = calls >= 3;
        async move { Ok(done) }
    })
    .await
    .expect("succeeds on the third call");
}

/// The contract's tables, as far as the checker reads them.
const SCHEMA: &str = "
CREATE TABLE ad_events (
    event_id uuid PRIMARY KEY, campaign_id text NOT NULL, ad_id text NOT NULL,
    kind text NOT NULL, cost_micros bigint NOT NULL, occurred_at timestamptz NOT NULL,
    source_partition int NOT NULL, source_offset bigint NOT NULL, txn_id uuid NOT NULL);
CREATE TABLE campaign_spend (
    campaign_id text NOT NULL, minute timestamptz NOT NULL, impressions bigint NOT NULL,
    clicks bigint NOT NULL, spend_micros bigint NOT NULL, PRIMARY KEY (campaign_id, minute));
CREATE TABLE dead_letters (
    source_topic text NOT NULL, source_partition int NOT NULL, source_offset bigint NOT NULL,
    error_kind text NOT NULL, error text NOT NULL, payload bytea, txn_id uuid NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset));
";

struct Input {
    partition: i32,
    key: Option<&'static [u8]>,
    value: Vec<u8>,
    /// `Some((event_id, campaign, ad, kind, cost, occurred_at, billed_minute))` if valid.
    valid: Option<(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        i64,
        &'static str,
        &'static str,
    )>,
    /// The error kind if invalid.
    invalid: Option<&'static str>,
}

fn event_json(
    (id, campaign, ad, kind, cost, at, _): (&str, &str, &str, &str, i64, &str, &str),
) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","campaign_id":"{campaign}","ad_id":"{ad}","kind":"{kind}","cost_micros":{cost},"occurred_at":"{at}"}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_accepts_a_correct_outcome_and_names_each_violation() {
    let broker = KafkaCluster::shared()
        .await
        .expect("the shared cluster runs");
    let (url, pool) = fresh_database().await.expect("database");
    let topics = PipelineTopics {
        input: unique("in"),
        output: unique("out"),
        dlq: unique("dlq"),
    };
    for topic in [&topics.input, &topics.output, &topics.dlq] {
        create_topic(&broker.bootstrap, topic, 2)
            .await
            .expect("topic");
    }
    // No tables yet: waiting for the pipeline times out and says why.
    let error = wait_for_catch_up(
        &broker.bootstrap,
        &pool,
        &topics,
        Duration::from_millis(500),
    )
    .await
    .expect_err("no tables");
    assert!(
        format!("{error:#}").contains("cannot count ad_events"),
        "{error:#}"
    );
    sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema");

    let e1 = (
        "0b6c3c1e-5b1f-4e43-9f0a-0f3f6f4d8a01",
        "c-1",
        "ad-1",
        "impression",
        100,
        "2026-11-26T10:15:30.123Z",
        "2026-11-26T10:15:00Z",
    );
    let e2 = (
        "0b6c3c1e-5b1f-4e43-9f0a-0f3f6f4d8a02",
        "c-2",
        "ad-2",
        "click",
        250_000,
        "2026-11-26T10:16:59.999+01:00",
        "2026-11-26T09:16:00Z",
    );
    let e3 = (
        "0b6c3c1e-5b1f-4e43-9f0a-0f3f6f4d8a03",
        "c-1",
        "ad-3",
        "click",
        5,
        "2026-11-26T10:15:01Z",
        "2026-11-26T10:15:00Z",
    );
    let inputs = vec![
        Input {
            partition: 0,
            key: Some(b"c-1"),
            value: event_json(e1),
            valid: Some(e1),
            invalid: None,
        },
        Input {
            partition: 0,
            key: Some(b"c-2"),
            value: event_json(e2),
            valid: Some(e2),
            invalid: None,
        },
        Input {
            partition: 1,
            key: Some(b"c-1"),
            value: event_json(e3),
            valid: Some(e3),
            invalid: None,
        },
        // A repeat of e1 on the other partition: no second anything.
        Input {
            partition: 1,
            key: Some(b"c-1"),
            value: event_json(e1),
            valid: None,
            invalid: None,
        },
        Input {
            partition: 0,
            key: None,
            value: vec![0xff, 0x00, 0x7b],
            valid: None,
            invalid: Some("invalid-utf8"),
        },
        Input {
            partition: 1,
            key: Some(b"k"),
            value: b"{\"event_id\":".to_vec(),
            valid: None,
            invalid: Some("invalid-json"),
        },
        Input {
            partition: 0,
            key: Some(b"c-1"),
            value: event_json((
                "0b6c3c1e-5b1f-4e43-9f0a-0f3f6f4d8a04",
                "c-1",
                "ad-1",
                "view",
                1,
                "2026-11-26T10:15:30Z",
                "",
            )),
            valid: None,
            invalid: Some("invalid-event"),
        },
    ];

    // The input, and what a correct pipeline makes of it.
    let producer = plain_producer(&broker.bootstrap);
    let txn_id = Uuid::new_v4().to_string();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for input in &inputs {
        let (partition, offset) = send(
            &producer,
            &topics.input,
            input.partition,
            input.key,
            Some(&input.value),
            &[],
        )
        .await;
        if let Some(event @ (id, campaign, ad, kind, cost, at, minute)) = input.valid {
            let mut output: serde_json::Value =
                serde_json::from_slice(&event_json(event)).expect("json");
            output["billed_minute"] = minute.into();
            let output = output.to_string();
            send(
                &producer,
                &topics.output,
                0,
                Some(campaign.as_bytes()),
                Some(output.as_bytes()),
                &[
                    ("onceflow-txn-id", txn_id.as_str()),
                    ("traceparent", traceparent),
                ],
            )
            .await;
            sqlx::query(
                "INSERT INTO ad_events VALUES ($1::uuid, $2, $3, $4, $5, $6::timestamptz, $7, $8, $9::uuid)",
            )
            .bind(id)
            .bind(campaign)
            .bind(ad)
            .bind(kind)
            .bind(cost)
            .bind(at)
            .bind(partition)
            .bind(offset)
            .bind(&txn_id)
            .execute(&pool)
            .await
            .expect("insert event");
        }
        if let Some(kind) = input.invalid {
            let partition_text = partition.to_string();
            let offset_text = offset.to_string();
            send(
                &producer,
                &topics.dlq,
                1,
                input.key,
                Some(&input.value),
                &[
                    ("onceflow-error-kind", kind),
                    ("onceflow-error", "bad record"),
                    ("onceflow-source-topic", topics.input.as_str()),
                    ("onceflow-source-partition", partition_text.as_str()),
                    ("onceflow-source-offset", offset_text.as_str()),
                    ("traceparent", traceparent),
                ],
            )
            .await;
            sqlx::query(
                "INSERT INTO dead_letters VALUES ($1, $2, $3, $4, 'bad record', $5, $6::uuid)",
            )
            .bind(&topics.input)
            .bind(partition)
            .bind(offset)
            .bind(kind)
            .bind(&input.value)
            .bind(&txn_id)
            .execute(&pool)
            .await
            .expect("insert dead letter");
        }
    }
    sqlx::query(
        "INSERT INTO campaign_spend SELECT campaign_id, date_trunc('minute', occurred_at), \
         count(*) FILTER (WHERE kind = 'impression'), count(*) FILTER (WHERE kind = 'click'), \
         sum(cost_micros) FROM ad_events GROUP BY 1, 2",
    )
    .execute(&pool)
    .await
    .expect("spend");

    wait_for_catch_up(&broker.bootstrap, &pool, &topics, Duration::from_secs(20))
        .await
        .expect("caught up");
    let mut verdict = check_exactly_once(&broker.bootstrap, &pool, &topics)
        .await
        .expect("check runs");
    verdict.assert_holds();
    assert_eq!(
        (
            verdict.truth.records,
            verdict.truth.distinct_events,
            verdict.truth.repeats,
            verdict.truth.invalid,
        ),
        (7, 3, 1, 3)
    );
    assert_eq!((verdict.output_records, verdict.ad_events_rows), (3, 3));
    assert_eq!((verdict.dlq_records, verdict.dead_letter_rows), (3, 3));
    assert_eq!(verdict.campaign_spend_rows, 2);

    let manifest = serde_json::json!({
        "records": 7, "valid_records": 4, "distinct_events": 3, "repeats": 1, "invalid": 3,
        "spend_micros_total": 250_105, "impressions": 1, "clicks": 2,
        "per_campaign": {
            "c-1": {"impressions": 1, "clicks": 1, "spend_micros": 105},
            "c-2": {"impressions": 0, "clicks": 1, "spend_micros": 250_000},
        },
    });
    verdict.compare_manifest(&manifest);
    verdict.assert_holds();

    // Now break each guarantee once.
    let e2_output = {
        let mut output: serde_json::Value = serde_json::from_slice(&event_json(e2)).expect("json");
        output["billed_minute"] = e2.6.into();
        output.to_string()
    };
    send(
        &producer,
        &topics.output,
        1,
        Some(b"c-2"),
        Some(e2_output.as_bytes()),
        &[
            ("onceflow-txn-id", txn_id.as_str()),
            ("traceparent", traceparent),
        ],
    )
    .await;
    sqlx::query("DELETE FROM dead_letters WHERE error_kind = 'invalid-json'")
        .execute(&pool)
        .await
        .expect("delete");
    sqlx::query("UPDATE campaign_spend SET clicks = clicks + 1 WHERE campaign_id = 'c-2'")
        .execute(&pool)
        .await
        .expect("update");
    sqlx::query("DELETE FROM ad_events WHERE kind = 'impression'")
        .execute(&pool)
        .await
        .expect("delete");

    let verdict = check_exactly_once(&broker.bootstrap, &pool, &topics)
        .await
        .expect("check runs");
    assert!(!verdict.holds());
    let expect = |needle: &str| {
        assert!(
            verdict.violations.iter().any(|v| v.contains(needle)),
            "no violation mentions {needle:?}: {:#?}",
            verdict.violations
        );
    };
    expect("output twice");
    expect("has no dead_letters row");
    expect("campaign_spend per minute vs input");
    expect("campaign_spend vs ad_events");
    expect(&format!("event {} has no ad_events row", e1.0));
    let panic = std::panic::catch_unwind(|| verdict.assert_holds());
    assert!(panic.is_err(), "assert_holds panics on violations");
    pool.close().await;
    common::drop_database(&url).await.expect("drop");
}

/// Upstream sent one event id twice with different contents, on two
/// partitions; the store keeps whichever copy its first database commit
/// held (here the later offset's). The verdict must accept that copy, judge
/// the output and every spend cell against it, and never switch the spend
/// check off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_repeat_is_judged_by_the_copy_the_store_kept() {
    let broker = KafkaCluster::shared()
        .await
        .expect("the shared cluster runs");
    let (url, pool) = fresh_database().await.expect("database");
    let topics = PipelineTopics {
        input: unique("in"),
        output: unique("out"),
        dlq: unique("dlq"),
    };
    for topic in [&topics.input, &topics.output, &topics.dlq] {
        create_topic(&broker.bootstrap, topic, 2)
            .await
            .expect("topic");
    }
    sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema");
    let id = "0b6c3c1e-5b1f-4e43-9f0a-0f3f6f4d8a11";
    let first = (
        id,
        "c-1",
        "ad-1",
        "impression",
        100,
        "2026-11-26T10:15:30Z",
        "2026-11-26T10:15:00Z",
    );
    let second = (
        id,
        "c-2",
        "ad-9",
        "click",
        7,
        "2026-11-26T11:00:00Z",
        "2026-11-26T11:00:00Z",
    );
    let producer = plain_producer(&broker.bootstrap);
    send(
        &producer,
        &topics.input,
        0,
        None,
        Some(&event_json(first)),
        &[],
    )
    .await;
    let (partition, offset) = send(
        &producer,
        &topics.input,
        1,
        None,
        Some(&event_json(second)),
        &[],
    )
    .await;
    let txn_id = Uuid::new_v4().to_string();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let output_of = |event: (&str, &str, &str, &str, i64, &str, &str)| {
        let mut output: serde_json::Value =
            serde_json::from_slice(&event_json(event)).expect("json");
        output["billed_minute"] = event.6.into();
        output.to_string()
    };
    send(
        &producer,
        &topics.output,
        0,
        Some(b"c-2"),
        Some(output_of(second).as_bytes()),
        &[("onceflow-txn-id", &txn_id), ("traceparent", traceparent)],
    )
    .await;
    sqlx::query(
        "INSERT INTO ad_events VALUES ($1::uuid, 'c-2', 'ad-9', 'click', 7, \
         '2026-11-26T11:00:00Z', $2, $3, $4::uuid)",
    )
    .bind(id)
    .bind(partition)
    .bind(offset)
    .bind(&txn_id)
    .execute(&pool)
    .await
    .expect("insert");
    sqlx::query("INSERT INTO campaign_spend VALUES ('c-2', '2026-11-26T11:00:00Z', 0, 1, 7)")
        .execute(&pool)
        .await
        .expect("spend");

    let verdict = check_exactly_once(&broker.bootstrap, &pool, &topics)
        .await
        .expect("check runs");
    verdict.assert_holds();
    assert_eq!(verdict.truth.conflicting_repeats, 1);

    // The spend check stays on: a wrong cell is found.
    sqlx::query("UPDATE campaign_spend SET spend_micros = 8")
        .execute(&pool)
        .await
        .expect("update");
    let verdict = check_exactly_once(&broker.bootstrap, &pool, &topics)
        .await
        .expect("check runs");
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.contains("campaign_spend per minute vs input: c-2 at 2026-11-26T11:00:00Z")),
        "{:#?}",
        verdict.violations
    );
    sqlx::query("UPDATE campaign_spend SET spend_micros = 7")
        .execute(&pool)
        .await
        .expect("update");

    // An output carrying the other copy than the stored one is wrong.
    send(
        &producer,
        &topics.output,
        1,
        Some(b"c-1"),
        Some(output_of(first).as_bytes()),
        &[("onceflow-txn-id", &txn_id), ("traceparent", traceparent)],
    )
    .await;
    // A stored row that is none of the copies is wrong too.
    sqlx::query("UPDATE ad_events SET cost_micros = 100")
        .execute(&pool)
        .await
        .expect("update");
    let verdict = check_exactly_once(&broker.bootstrap, &pool, &topics)
        .await
        .expect("check runs");
    for needle in [
        "output twice",
        "has a wrong or missing campaign_id",
        "is none of the 2 input copies",
    ] {
        assert!(
            verdict.violations.iter().any(|v| v.contains(needle)),
            "no violation mentions {needle:?}: {:#?}",
            verdict.violations
        );
    }
    pool.close().await;
    common::drop_database(&url).await.expect("drop");
}
