//! Construction of onceflow's Kafka clients: the input consumer (static
//! group member, `read_committed`, no auto-commit) with its rebalance
//! context, the output producer (transactional under `exactly-once`,
//! idempotent without transactions under `at-least-once`), and the lag
//! monitor's reader, which never joins the group.
//!
//! Guarantees: offsets are never committed by the consumer on its own (no
//! auto-commit): under `exactly-once` only the producer's transaction
//! commits them, under `at-least-once` the coordinator commits them after
//! the outputs were acknowledged; a newly assigned partition is paused before
//! the rebalance callback returns, so nothing is fetched from it until the
//! coordinator has positioned it at its recovery offset.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use crate::kafka::delivery::{OutputProducer, TallyingContext};
use crate::kafka::error::KafkaTxnError;
use crate::kafka::rebalance::RebalanceContext;
use crate::settings::Settings;

/// The input consumer.
pub type InputConsumer = StreamConsumer<RebalanceContext>;

/// The input consumer's `max.partition.fetch.bytes` unless `[kafka]` sets it.
pub const MAX_PARTITION_FETCH_BYTES: &str = "2097152";

/// How much librdkafka holds in each input partition's queue ahead of
/// onceflow, and how soon it fetches again once there is room: each unless
/// `[kafka]` sets it. 5,000 records is one default batch; 8 MiB holds four
/// fetches of `MAX_PARTITION_FETCH_BYTES`.
pub const INPUT_QUEUE_DEFAULTS: [(&str, &str); 3] = [
    ("queued.min.messages", "5000"),
    ("queued.max.messages.kbytes", "8192"),
    ("fetch.queue.backoff.ms", "10"),
];

fn base_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &settings.kafka {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        // `[kafka] debug = "…"` asks librdkafka for debug logs: let them through.
        .set_log_level(if settings.kafka.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
    config
}

/// Creates the input consumer and subscribes it to the input topic.
pub fn create_input_consumer(settings: &Settings) -> Result<Arc<InputConsumer>, KafkaError> {
    let context = RebalanceContext::new(settings.input_topic.clone());
    let consumer: InputConsumer = input_consumer_config(settings).create_with_context(context)?;
    consumer.subscribe(&[settings.input_topic.as_str()])?;
    Ok(Arc::new(consumer))
}

/// The input consumer's configuration: onceflow's choices, each one a
/// `[kafka]` key may override unless exactly-once depends on it.
fn input_consumer_config(settings: &Settings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("group.instance.id", settings.instance_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    default_unless_named(&mut config, settings, &["session.timeout.ms"], "10000");
    // 2 MiB per partition and fetch, not librdkafka's 1 MiB: fewer fetch
    // round trips per batch under a backlog (`docs/performance.md`); what a
    // partition holds is bounded by its queue's limits below.
    default_unless_named(
        &mut config,
        settings,
        &["max.partition.fetch.bytes", "fetch.message.max.bytes"],
        MAX_PARTITION_FETCH_BYTES,
    );
    // Every positioned partition has a queue of its own (see
    // `actors::consumer::fetcher`), and a partition whose records fill its
    // share of memory is held back by no longer reading its queue: librdkafka
    // stops fetching it once the queue holds `queued.min.messages` records or
    // `queued.max.messages.kbytes`, and looks again every
    // `fetch.queue.backoff.ms`. librdkafka's defaults (100,000 records, 64 MiB,
    // 1 s) apply per queue: too much memory per partition, and a second of
    // waiting before a held-back partition is fetched again.
    for (key, value) in INPUT_QUEUE_DEFAULTS {
        default_unless_named(&mut config, settings, &[key], value);
    }
    // `cooperative-sticky` by default: a rebalance moves only the partitions
    // that change owner, the others keep flowing. onceflow drains a revoked
    // partition before giving it up (`drain_before_revocation`) and handles
    // assignments incrementally (assigned partitions are added, revoked ones
    // removed), so both protocols are exactly-once; eager `roundrobin` can
    // still be chosen under `[kafka]`. It was eager before only because the
    // stand-in broker of the first tests often never gave a joining
    // cooperative member its assignment; on Apache Kafka the joining,
    // leaving, storming and stalled-cycle scenarios pass with it.
    default_unless_named(
        &mut config,
        settings,
        &["partition.assignment.strategy"],
        "cooperative-sticky",
    );
    config
}

/// Sets `names[0]` to `value` unless `[kafka]` names the setting under any
/// of `names` (librdkafka's aliases of one setting): the user's value is then
/// the only one, with no second, conflicting one.
fn default_unless_named(
    config: &mut ClientConfig,
    settings: &Settings,
    names: &[&str],
    value: &str,
) {
    if names.iter().all(|name| !settings.kafka.contains_key(*name))
        && let Some(name) = names.first()
    {
        config.set(*name, value);
    }
}

/// The client the lag monitor reads the group's committed offsets with. It
/// never joins the group and never commits.
pub type LagReader = BaseConsumer;

/// Creates the lag monitor's client for the group's committed offsets: the
/// group's id, so it reads the group's offsets, but `read_uncommitted`, so
/// librdkafka does not ask the broker for *stable* offsets (KIP-447's
/// `require_stable`, which a `read_committed` client always sets). With
/// `require_stable`, an offset fetch waits while a transaction that sent
/// offsets for the partition is open: a hung transaction would hide the lag
/// it causes. This one reads what is committed now, an open transaction's
/// offsets left out. It never subscribes, so it never joins the group.
pub fn create_lag_reader(settings: &Settings) -> Result<LagReader, KafkaError> {
    lag_reader_config(settings).create()
}

fn lag_reader_config(settings: &Settings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    config
}

/// Creates the producer of the outputs and dead letters for the configured
/// guarantee. Blocking: call from a blocking task.
pub fn create_output_producer(settings: &Settings) -> Result<OutputProducer, KafkaTxnError> {
    if settings.guarantee.is_transactional() {
        return create_transactional_producer(settings);
    }
    let mut config = base_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    config
        .create_with_context(TallyingContext)
        .map_err(|source| KafkaTxnError::Client {
            operation: "create producer",
            source,
        })
}

/// Creates the transactional producer and runs `init_transactions`, which
/// fences any earlier producer with the same `transactional.id` and aborts
/// (or completes) its open transaction. Blocking: call from a blocking task.
pub fn create_transactional_producer(settings: &Settings) -> Result<OutputProducer, KafkaTxnError> {
    let mut config = base_config(settings);
    config
        .set("transactional.id", settings.transactional_id())
        .set("enable.idempotence", "true")
        .set(
            "transaction.timeout.ms",
            settings.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5");
    let producer: OutputProducer =
        config
            .create_with_context(TallyingContext)
            .map_err(|source| KafkaTxnError::Client {
                operation: "create producer",
                source,
            })?;
    producer
        .init_transactions(settings.kafka_call_timeout.max(Duration::from_secs(30)))
        .map_err(|source| KafkaTxnError::Client {
            operation: "init_transactions",
            source,
        })?;
    Ok(producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_fetches_2_mib_per_partition_unless_kafka_settings_say_otherwise() {
        let defaults = Settings::default();
        let config = input_consumer_config(&defaults);
        assert_eq!(
            config.get("max.partition.fetch.bytes"),
            Some(MAX_PARTITION_FETCH_BYTES)
        );
        assert_eq!(config.get("isolation.level"), Some("read_committed"));

        // Under either of librdkafka's names for it, the user's value is the
        // only one: onceflow adds no second, conflicting value.
        let (name, alias) = ("max.partition.fetch.bytes", "fetch.message.max.bytes");
        for (named, other) in [(name, alias), (alias, name)] {
            let mut overridden = Settings::default();
            overridden
                .kafka
                .insert(named.to_owned(), "1048576".to_owned());
            let config = input_consumer_config(&overridden);
            assert_eq!(config.get(named), Some("1048576"), "{named}");
            assert_eq!(config.get(other), None, "{named}");
        }
    }

    #[tokio::test]
    async fn each_input_partition_queue_holds_little_and_refills_soon_unless_kafka_settings_say_otherwise()
     {
        let config = input_consumer_config(&Settings::default());
        for (key, value) in INPUT_QUEUE_DEFAULTS {
            assert_eq!(config.get(key), Some(value), "{key}");
        }
        let mut overridden = Settings::default();
        overridden
            .kafka
            .insert("fetch.queue.backoff.ms".to_owned(), "250".to_owned());
        let config = input_consumer_config(&overridden);
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("250"));
        assert_eq!(config.get("queued.min.messages"), Some("5000"));
        // librdkafka knows every one of them (it refuses an unknown property).
        assert!(create_input_consumer(&Settings::default()).is_ok());
    }

    #[test]
    fn the_lag_reader_reads_the_group_s_offsets_without_waiting_for_stable_ones() {
        let settings = Settings::default();
        let config = lag_reader_config(&settings);
        assert_eq!(config.get("isolation.level"), Some("read_uncommitted"));
        assert_eq!(config.get("group.id"), Some(settings.group_id.as_str()));
        assert_eq!(config.get("group.instance.id"), None, "never a member");
        assert!(create_lag_reader(&settings).is_ok());
    }
}
