//! The verification toolkit, independent of the code under test: a real
//! three-node Kafka cluster per run (and one of its own for a scenario that
//! hurts brokers), a database per run, a `read_committed` topic reader, the
//! contract's validity rule written anew, a seeded input generator of its
//! own, a `/metrics` parser, and the verdicts (exactly-once on a broker
//! with transactions, the database and loss on the mock cluster).
//! The integration tests use it too (`tests/common`).

mod database;
mod generator;
mod ground_truth;
mod instance;
mod kafka_admin;
mod kafka_cluster;
mod live_reader;
mod metrics;
mod mock_verdict;
mod polling;
mod tcp_proxy;
mod tls_material;
mod tls_postgres;
mod topic_reader;
mod undecided;
mod verdict;

pub use database::{admin_url, drop_database, fresh_database};
pub use generator::{
    GeneratedRecord, GeneratedSummary, Generator, RecordKind, WorkloadSpec, write_workload,
    write_workload_blocking,
};
pub use ground_truth::{
    INVALID_EVENT, INVALID_JSON, INVALID_UTF8, InputTruth, InvalidRecord, Totals, ValidEvent,
    check_event, input_truth,
};
pub use instance::{
    DatabaseOutage, PartitionProgress, Scenario, Service, free_port, http_addr_in_log,
    wait_for_progress,
};
pub use kafka_admin::{create_topic, fetch_broker_count};
pub use kafka_cluster::{
    ClientNetwork, ExtraListeners, KafkaCluster, NODES, PartitionPlacement, TlsListeners,
    process_alive,
};
pub use live_reader::{
    LiveObservations, LiveReader, LiveTarget, OwnedTables, SeenRecord, live_anomalies,
};
pub use metrics::{LABELLED_SERIES, Metrics, Sample};
pub use mock_verdict::{
    MOCK_JUDGED_BY, MockEvidence, MockJudgement, TopicsForLoss, judge_offsets, judge_on_mock,
    judge_topics_for_loss, mock_judgement, mock_violations,
};
pub use polling::wait_until;
pub use tcp_proxy::{NetworkCondition, ProxyCounters, TcpProxy};
pub use tls_material::TlsMaterial;
pub use tls_postgres::TlsPostgres;
pub use topic_reader::{EndOfPartitionIsNoError, TopicRecord, high_watermarks, read_committed};
pub use undecided::{DECIDED_WITHIN, UndecidedRange, wait_until_decided};
pub use verdict::{
    PipelineTopics, Tables, Verdict, check_exactly_once, check_exactly_once_in,
    check_exactly_once_observed, is_traceparent, wait_for_catch_up,
};

pub(crate) use kafka_admin::partition_count;
use verdict::{check_ad_events, check_campaign_spend, check_dead_letters};

pub use crate::error::ChaosError;

use std::time::Duration;

use uuid::Uuid;

/// How long [`read_committed`] may take for one topic.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A unique name for a topic, group or transactional id: `prefix-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}
