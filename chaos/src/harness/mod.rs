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
mod verdict;

pub use database::*;
pub use generator::*;
pub use ground_truth::*;
pub use instance::*;
pub use kafka_admin::*;
pub use kafka_cluster::*;
pub use live_reader::*;
pub use metrics::*;
pub use mock_verdict::*;
pub use polling::*;
pub use tcp_proxy::*;
pub use tls_material::*;
pub use tls_postgres::*;
pub use topic_reader::*;
pub use verdict::*;

pub use crate::error::ChaosError;

use std::time::Duration;

use uuid::Uuid;

/// How long [`read_committed`] may take for one topic.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A unique name for a topic, group or transactional id: `prefix-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}
