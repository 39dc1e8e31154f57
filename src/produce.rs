//! `onceflow produce`: the load generator.
//!
//! Writes ad events to the input topic: mostly valid events, a chosen share
//! of invalid records (cycling through every way a record can break the
//! contract's validity rule) and a chosen share of repeats (the exact bytes
//! of an earlier valid record, sent again at a new offset, usually on another
//! partition). At the end it prints a [`Manifest`], the ground truth of what
//! was written, as one JSON line on stdout.
//!
//! Guarantees:
//! - generation is pure and deterministic: the same arguments (seed, count,
//!   partitions, shares) give the same records, byte for byte, and the same
//!   manifest, within one build (`StdRng` may change between `rand` releases);
//! - every record counted as invalid violates the validity rule of the
//!   contract, every other record satisfies it;
//! - the manifest counts each distinct valid event once (repeats excluded from
//!   impressions, clicks and spend);
//! - `run_produce` returns only after every record was acknowledged by the
//!   broker (idempotent producer, `acks=all`); any failed delivery is an error;
//! - memory stays bounded: at most [`MAX_IN_FLIGHT`] unacknowledged records and
//!   at most [`REPEAT_POOL`] remembered events for repeats.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// At most this many records are handed to the producer and not yet acknowledged.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// At most this many earlier valid records are remembered as repeat candidates
/// (a uniform reservoir sample of all valid records sent so far).
pub const REPEAT_POOL: usize = 100_000;

/// Every this many records, one carries a `traceparent` header.
const TRACEPARENT_EVERY: u64 = 10;

/// Campaigns `c-0` to `c-19`.
const CAMPAIGNS: u32 = 20;

/// Ads `ad-0` to `ad-999`.
const ADS: u32 = 1_000;

/// Largest cost of a generated valid event, in micros.
const MAX_COST_MICROS: i64 = 2_000_000;

/// Largest cost the contract accepts, in micros.
const CONTRACT_MAX_COST_MICROS: i64 = 1_000_000_000_000;

/// Milliseconds in a day: `occurred_at` lies within 2026-11-26 (UTC).
const MILLIS_PER_DAY: u64 = 86_400_000;

/// Arguments of `onceflow produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Number of records to write.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Records per second, 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Partitions of the input topic (created with this many if missing).
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Share of invalid records, 0.0..=1.0.
    #[arg(long, default_value_t = 0.03)]
    pub invalid_share: f64,
    /// Share of repeats of an earlier valid event, 0.0..=1.0.
    #[arg(long, default_value_t = 0.05)]
    pub repeat_share: f64,
    /// Seed of the generator: the same seed gives the same records.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Kafka bootstrap servers.
    #[arg(long, env = "ONCEFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Input topic to write to.
    #[arg(long, env = "ONCEFLOW_INPUT_TOPIC", default_value = "ad-events")]
    pub topic: String,
    /// Also write the manifest (the ground truth) as JSON to this file.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Ground truth of one campaign: distinct valid events only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignTruth {
    pub impressions: u64,
    pub clicks: u64,
    pub spend_micros: i64,
}

/// Ground truth of one `produce` run.
///
/// `records = valid_records + invalid` and `valid_records = distinct_events +
/// repeats`; `impressions`, `clicks`, `spend_micros_total` and `per_campaign`
/// count each distinct valid event once. Serialised as one JSON object
/// with the field names as keys (the last line `produce` prints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub records: u64,
    pub valid_records: u64,
    pub distinct_events: u64,
    pub repeats: u64,
    pub invalid: u64,
    pub spend_micros_total: i64,
    pub impressions: u64,
    pub clicks: u64,
    pub per_campaign: BTreeMap<String, CampaignTruth>,
}

/// The ways a generated record breaks the validity rule; the generator cycles
/// through them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidKind {
    /// The value is not UTF-8.
    NotUtf8,
    /// The value is UTF-8 but not JSON.
    NotJson,
    /// A JSON object missing one required field.
    MissingField,
    /// `event_id` is not a UUID.
    BadUuid,
    /// `kind` is `view`.
    KindView,
    /// `cost_micros` is negative.
    NegativeCost,
    /// `cost_micros` is above 1,000,000,000,000.
    CostTooHigh,
    /// `campaign_id` is empty.
    EmptyCampaign,
    /// `campaign_id` has 129 characters.
    LongCampaign,
    /// `occurred_at` is not RFC 3339.
    BadOccurredAt,
}

impl InvalidKind {
    /// Every kind, in the order the generator cycles through them.
    pub const ALL: [InvalidKind; 10] = [
        InvalidKind::NotUtf8,
        InvalidKind::NotJson,
        InvalidKind::MissingField,
        InvalidKind::BadUuid,
        InvalidKind::KindView,
        InvalidKind::NegativeCost,
        InvalidKind::CostTooHigh,
        InvalidKind::EmptyCampaign,
        InvalidKind::LongCampaign,
        InvalidKind::BadOccurredAt,
    ];
}

/// What a generated record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordClass {
    /// The first record of a new valid event.
    Valid,
    /// The exact bytes of an earlier valid record, sent again.
    Repeat,
    /// A record that breaks the validity rule.
    Invalid(InvalidKind),
}

/// One record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedRecord {
    /// Partition to write to, in `0..partitions`.
    pub partition: i32,
    /// Key: the campaign id for valid records and repeats, anything for invalid ones.
    pub key: Option<Vec<u8>>,
    /// Value: the event JSON, or the broken bytes of an invalid record.
    pub value: Vec<u8>,
    /// W3C trace context header value, on every tenth record.
    pub traceparent: Option<String>,
    pub class: RecordClass,
}

/// One valid event, before rendering.
#[derive(Debug, Clone)]
struct Event {
    event_id: Uuid,
    campaign: u32,
    ad: u32,
    click: bool,
    cost_micros: i64,
    /// Milliseconds since 2026-11-26T00:00:00Z, below one day.
    millis_of_day: u64,
}

impl Event {
    fn random(rng: &mut StdRng) -> Event {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Event {
            event_id: uuid::Builder::from_random_bytes(bytes).into_uuid(),
            campaign: rng.random_range(0..CAMPAIGNS),
            ad: rng.random_range(0..ADS),
            click: !rng.random_bool(0.8),
            cost_micros: rng.random_range(0..=MAX_COST_MICROS),
            millis_of_day: rng.random_range(0..MILLIS_PER_DAY),
        }
    }

    fn campaign_id(&self) -> String {
        format!("c-{}", self.campaign)
    }

    /// The fields in the contract's order, each rendered as JSON.
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("event_id", json_string(&self.event_id.to_string())),
            ("campaign_id", json_string(&self.campaign_id())),
            ("ad_id", json_string(&format!("ad-{}", self.ad))),
            (
                "kind",
                json_string(if self.click { "click" } else { "impression" }),
            ),
            ("cost_micros", self.cost_micros.to_string()),
            ("occurred_at", json_string(&occurred_at(self.millis_of_day))),
        ]
    }
}

/// A JSON string literal, escaped.
fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// RFC 3339 with milliseconds and `Z`, on 2026-11-26.
fn occurred_at(millis_of_day: u64) -> String {
    let millis = millis_of_day % MILLIS_PER_DAY;
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = millis / 1_000 % 60;
    let fraction = millis % 1_000;
    format!("2026-11-26T{hours:02}:{minutes:02}:{seconds:02}.{fraction:03}Z")
}

/// A JSON object of already rendered fields, in the given order.
fn render(fields: &[(&str, String)]) -> Vec<u8> {
    let body: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", json_string(name)))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

/// Replaces one rendered field.
fn with_field(mut fields: Vec<(&'static str, String)>, name: &str, value: String) -> Vec<u8> {
    for field in &mut fields {
        if field.0 == name {
            field.1 = value.clone();
        }
    }
    render(&fields)
}

/// Checks the arguments; the error is one line naming the flag.
pub fn validate(args: &ProduceArgs) -> anyhow::Result<()> {
    if args.count < 1 {
        bail!("--count must be at least 1");
    }
    if args.partitions < 1 {
        bail!("--partitions must be at least 1 (got {})", args.partitions);
    }
    for (flag, share) in [
        ("--invalid-share", args.invalid_share),
        ("--repeat-share", args.repeat_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{flag} must be between 0 and 1 (got {share})");
        }
    }
    let sum = args.invalid_share + args.repeat_share;
    if sum > 1.0 {
        bail!("--invalid-share plus --repeat-share must not exceed 1 (got {sum})");
    }
    if args.topic.is_empty() {
        bail!("the input topic name must not be empty");
    }
    Ok(())
}

/// The deterministic record generator: an iterator over the records of a run
/// that keeps the manifest up to date as it goes.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    count: u64,
    produced: u64,
    partitions: i32,
    invalid_share: f64,
    repeat_share: f64,
    /// Reservoir of earlier valid records (key, value), for repeats.
    pool: Vec<(Vec<u8>, Vec<u8>)>,
    invalid_cycle: usize,
    manifest: Manifest,
}

impl Generator {
    /// A generator for `args` (its shares, count, partitions and seed); call
    /// [`validate`] first.
    pub fn new(args: &ProduceArgs) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(args.seed),
            count: args.count,
            produced: 0,
            partitions: args.partitions.max(1),
            invalid_share: args.invalid_share,
            repeat_share: args.repeat_share,
            pool: Vec::new(),
            invalid_cycle: 0,
            manifest: Manifest::default(),
        }
    }

    /// The ground truth of the records generated so far.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn next_valid(&mut self) -> (Option<Vec<u8>>, Vec<u8>) {
        let event = Event::random(&mut self.rng);
        let campaign_id = event.campaign_id();
        let key = campaign_id.clone().into_bytes();
        let value = render(&event.fields());

        let manifest = &mut self.manifest;
        manifest.distinct_events += 1;
        manifest.spend_micros_total += event.cost_micros;
        let campaign = manifest.per_campaign.entry(campaign_id).or_default();
        campaign.spend_micros += event.cost_micros;
        if event.click {
            manifest.clicks += 1;
            campaign.clicks += 1;
        } else {
            manifest.impressions += 1;
            campaign.impressions += 1;
        }

        // Reservoir sampling keeps the pool a uniform sample of all valid
        // records so far, so a repeat picks any earlier one with equal odds.
        let seen = self.manifest.distinct_events;
        if self.pool.len() < REPEAT_POOL {
            self.pool.push((key.clone(), value.clone()));
        } else {
            let slot = self.rng.random_range(0..seen);
            if let Some(entry) = usize::try_from(slot)
                .ok()
                .and_then(|slot| self.pool.get_mut(slot))
            {
                *entry = (key.clone(), value.clone());
            }
        }
        (Some(key), value)
    }

    fn next_invalid(&mut self) -> (InvalidKind, Option<Vec<u8>>, Vec<u8>) {
        let kind = InvalidKind::ALL[self.invalid_cycle % InvalidKind::ALL.len()];
        self.invalid_cycle += 1;
        let rng = &mut self.rng;
        let base = Event::random(rng);
        let fields = base.fields();
        let value = match kind {
            InvalidKind::NotUtf8 => {
                // 0xff never occurs in UTF-8.
                let mut bytes = vec![0xff, 0xfe];
                let mut tail = [0u8; 8];
                rng.fill_bytes(&mut tail);
                bytes.extend_from_slice(&tail);
                bytes.extend_from_slice(&render(&fields));
                bytes
            }
            InvalidKind::NotJson => {
                let rendered = render(&fields);
                match rng.random_range(0..3) {
                    // A JSON object cut short.
                    0 => rendered[..rendered.len() / 2].to_vec(),
                    1 => format!("event {} for c-{}", base.event_id, base.campaign).into_bytes(),
                    _ => b"{'event_id': 'single quotes are not json'}".to_vec(),
                }
            }
            InvalidKind::MissingField => {
                let dropped = rng.random_range(0..fields.len());
                let kept: Vec<(&str, String)> = fields
                    .into_iter()
                    .enumerate()
                    .filter(|(index, _)| *index != dropped)
                    .map(|(_, field)| field)
                    .collect();
                render(&kept)
            }
            InvalidKind::BadUuid => {
                let id = base.event_id.to_string();
                let bad = match rng.random_range(0..3) {
                    0 => id[..id.len() - 1].to_owned(),
                    1 => id.replace('-', "_"),
                    _ => format!("not-a-uuid-{}", rng.random_range(0..1_000_000u32)),
                };
                with_field(fields, "event_id", json_string(&bad))
            }
            InvalidKind::KindView => with_field(fields, "kind", json_string("view")),
            InvalidKind::NegativeCost => with_field(
                fields,
                "cost_micros",
                (-rng.random_range(1..=MAX_COST_MICROS)).to_string(),
            ),
            InvalidKind::CostTooHigh => with_field(
                fields,
                "cost_micros",
                (CONTRACT_MAX_COST_MICROS + rng.random_range(1..=MAX_COST_MICROS)).to_string(),
            ),
            InvalidKind::EmptyCampaign => with_field(fields, "campaign_id", json_string("")),
            InvalidKind::LongCampaign => {
                let long = format!("c-{}", "x".repeat(127));
                with_field(fields, "campaign_id", json_string(&long))
            }
            InvalidKind::BadOccurredAt => {
                let bad = match rng.random_range(0..3) {
                    0 => "not a date".to_owned(),
                    1 => "2026-13-40T10:00:00Z".to_owned(),
                    // No offset: RFC 3339 requires one.
                    _ => occurred_at(base.millis_of_day)
                        .trim_end_matches('Z')
                        .to_owned(),
                };
                with_field(fields, "occurred_at", json_string(&bad))
            }
        };
        let key = match rng.random_range(0..3) {
            0 => None,
            1 => Some(b"junk".to_vec()),
            _ => {
                let mut bytes = vec![0u8; 6];
                rng.fill_bytes(&mut bytes);
                Some(bytes)
            }
        };
        (kind, key, value)
    }
}

impl Iterator for Generator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        if self.produced >= self.count {
            return None;
        }
        let index = self.produced;
        self.produced += 1;

        let draw: f64 = self.rng.random();
        let partition = self.rng.random_range(0..self.partitions);
        let (class, key, value) = if draw < self.invalid_share {
            let (kind, key, value) = self.next_invalid();
            self.manifest.invalid += 1;
            (RecordClass::Invalid(kind), key, value)
        } else if draw < self.invalid_share + self.repeat_share && !self.pool.is_empty() {
            let pick = self.rng.random_range(0..self.pool.len());
            let (key, value) = self.pool[pick].clone();
            self.manifest.repeats += 1;
            self.manifest.valid_records += 1;
            (RecordClass::Repeat, Some(key), value)
        } else {
            let (key, value) = self.next_valid();
            self.manifest.valid_records += 1;
            (RecordClass::Valid, key, value)
        };
        self.manifest.records += 1;

        let traceparent = index.is_multiple_of(TRACEPARENT_EVERY).then(|| {
            let trace_id = self.rng.random::<u128>().max(1);
            let span_id = self.rng.random::<u64>().max(1);
            format!("00-{trace_id:032x}-{span_id:016x}-01")
        });

        Some(GeneratedRecord {
            partition,
            key,
            value,
            traceparent,
            class,
        })
    }
}

/// Generates every record of a run at once, with its manifest.
#[cfg_attr(not(test), allow(dead_code))]
pub fn generate(args: &ProduceArgs) -> (Vec<GeneratedRecord>, Manifest) {
    let mut generator = Generator::new(args);
    let records: Vec<GeneratedRecord> = generator.by_ref().collect();
    (records, generator.manifest)
}

/// The partition count of `topic`, if the broker knows it.
async fn topic_partitions(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<i32>, KafkaError> {
    let client = Arc::clone(admin);
    let name = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        // All topics: asking for one by name makes a broker that creates
        // topics on demand create it with its default partition count.
        let metadata = client
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
    })
    .await
    .unwrap_or(Ok(None))
}

/// Creates `topic` with `partitions` partitions unless it exists, and waits
/// until the broker reports at least that many partitions.
async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create the kafka admin client")?;
    let admin = Arc::new(admin);
    // A topic that exists needs no admin rights (and some brokers, such as
    // librdkafka's mock cluster, do not answer CreateTopics at all).
    if let Ok(Some(have)) = topic_partitions(&admin, topic).await {
        if have >= partitions {
            return Ok(());
        }
        bail!("topic {topic} has {have} partitions, fewer than --partitions {partitions}");
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // Replication -1: the broker's default replication factor.
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| format!("cannot create topic {topic} on {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let client = Arc::clone(&admin);
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let metadata = client
                .inner()
                .fetch_metadata(Some(&name), Duration::from_secs(5))?;
            Ok::<_, KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .map(|t| t.partitions().len()),
            )
        })
        .await
        .context("the metadata task failed")?;
        match found {
            Ok(Some(have)) if i32::try_from(have).unwrap_or(i32::MAX) >= partitions => {
                return Ok(());
            }
            Ok(Some(have)) => {
                bail!("topic {topic} has {have} partitions, fewer than --partitions {partitions}")
            }
            Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => bail!("topic {topic} did not appear on {brokers} within 15 s"),
            Err(error) => {
                bail!("cannot read the metadata of topic {topic} from {brokers}: {error}")
            }
        }
    }
}

/// Awaits one delivery; an error names the broker's reason.
async fn await_delivery(delivery: DeliveryFuture) -> anyhow::Result<()> {
    delivery_result(delivery.await)
}

fn delivery_result(
    delivery: <DeliveryFuture as std::future::Future>::Output,
) -> anyhow::Result<()> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => bail!("a record was not delivered: {error}"),
        Err(_) => bail!("the producer dropped a record before its delivery was confirmed"),
    }
}

fn progress_bar(count: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} records ({per_sec}, eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(count).with_style(style)
}

/// Runs `onceflow produce`: writes the records and returns the manifest, after
/// printing it as one JSON line on stdout (and to `--manifest` if given).
pub async fn run_produce(args: &ProduceArgs) -> anyhow::Result<Manifest> {
    let manifest = produce_records(args, &progress_bar(args.count, args.quiet)).await?;
    let line = serde_json::to_value(&manifest)?.to_string();
    println!("{line}");
    if let Some(path) = &args.manifest {
        std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("cannot write the manifest to {}", path.display()))?;
    }
    Ok(manifest)
}

/// Writes the records of `args`, counting each acknowledged record on
/// `progress`, and returns the manifest once every record is acknowledged.
pub async fn produce_records(
    args: &ProduceArgs,
    progress: &ProgressBar,
) -> anyhow::Result<Manifest> {
    validate(args)?;
    ensure_topic(&args.brokers, &args.topic, args.partitions).await?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .context("cannot create the kafka producer")?;

    let started = tokio::time::Instant::now();
    let mut generator = Generator::new(args);
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let (mut invalid, mut repeats) = (0u64, 0u64);

    for (index, record) in generator.by_ref().enumerate() {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(index as f64 / args.rate as f64);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        match record.class {
            RecordClass::Invalid(_) => invalid += 1,
            RecordClass::Repeat => repeats += 1,
            RecordClass::Valid => {}
        }

        let headers = record.traceparent.as_deref().map(|traceparent| {
            OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(traceparent),
            })
        });
        let mut future_record = FutureRecord::<[u8], [u8]>::to(&args.topic)
            .partition(record.partition)
            .payload(&record.value);
        if let Some(key) = &record.key {
            future_record = future_record.key(key);
        }
        if let Some(headers) = headers {
            future_record = future_record.headers(headers);
        }

        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    future_record = returned;
                    match in_flight.pop_front() {
                        Some(oldest) => {
                            await_delivery(oldest).await?;
                            progress.inc(1);
                        }
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((error, _)) => bail!("cannot hand a record to the producer: {error}"),
            }
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(oldest) = in_flight.pop_front() {
                await_delivery(oldest).await?;
                progress.inc(1);
            }
        }
        // Count what is already acknowledged, so progress shows deliveries
        // as they happen rather than when the in-flight window fills.
        while let Some(acknowledged) = in_flight.front_mut().and_then(FutureExt::now_or_never) {
            in_flight.pop_front();
            delivery_result(acknowledged)?;
            progress.inc(1);
        }
        if index.is_multiple_of(1_000) {
            progress.set_message(format!("{invalid} invalid, {repeats} repeats"));
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        await_delivery(delivery).await?;
        progress.inc(1);
    }
    progress.set_message(format!("{invalid} invalid, {repeats} repeats"));
    progress.finish();
    Ok(generator.manifest().clone())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;

    fn args(count: u64, seed: u64) -> ProduceArgs {
        ProduceArgs {
            count,
            rate: 0,
            partitions: 3,
            invalid_share: 0.03,
            repeat_share: 0.05,
            seed,
            brokers: "127.0.0.1:9092".to_owned(),
            topic: "ad-events".to_owned(),
            manifest: None,
            quiet: true,
        }
    }

    /// An event as the contract's validity rule sees it.
    struct Checked {
        event_id: Uuid,
        campaign_id: String,
        kind: String,
        cost_micros: i64,
    }

    /// The contract's validity rule, written independently of the generator.
    fn contract_check(value: &[u8]) -> Result<Checked, String> {
        let text = std::str::from_utf8(value).map_err(|e| format!("not utf-8: {e}"))?;
        let json: Value = serde_json::from_str(text).map_err(|e| format!("not json: {e}"))?;
        let object = json.as_object().ok_or("not an object")?;
        let text_field = |name: &str| -> Result<String, String> {
            let value = object
                .get(name)
                .and_then(Value::as_str)
                .ok_or(format!("{name} missing or not a string"))?;
            let chars = value.chars().count();
            if chars == 0 || chars > 128 {
                return Err(format!("{name} has {chars} characters"));
            }
            Ok(value.to_owned())
        };
        let event_id = object
            .get("event_id")
            .and_then(Value::as_str)
            .ok_or("event_id missing")?;
        let event_id = Uuid::parse_str(event_id).map_err(|e| format!("bad uuid: {e}"))?;
        let campaign_id = text_field("campaign_id")?;
        text_field("ad_id")?;
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("kind missing")?;
        if kind != "impression" && kind != "click" {
            return Err(format!("kind {kind}"));
        }
        let cost_micros = object
            .get("cost_micros")
            .and_then(Value::as_i64)
            .ok_or("cost_micros missing or not an integer")?;
        if !(0..=1_000_000_000_000).contains(&cost_micros) {
            return Err(format!("cost_micros {cost_micros}"));
        }
        let occurred_at = object
            .get("occurred_at")
            .and_then(Value::as_str)
            .ok_or("occurred_at missing")?;
        chrono::DateTime::parse_from_rfc3339(occurred_at)
            .map_err(|e| format!("occurred_at {occurred_at}: {e}"))?;
        Ok(Checked {
            event_id,
            campaign_id,
            kind: kind.to_owned(),
            cost_micros,
        })
    }

    #[test]
    fn same_seed_same_records_other_seed_other_records() {
        let (first, first_manifest) = generate(&args(2_000, 7));
        let (second, second_manifest) = generate(&args(2_000, 7));
        let (other, _) = generate(&args(2_000, 8));
        assert_eq!(first, second);
        assert_eq!(first_manifest, second_manifest);
        assert_ne!(first, other);
    }

    #[test]
    fn shares_come_out_right() {
        let count = 10_000;
        let (records, _) = generate(&args(count, 42));
        assert_eq!(records.len() as u64, count);
        let share = |f: &dyn Fn(&GeneratedRecord) -> bool| {
            records.iter().filter(|r| f(r)).count() as f64 / count as f64
        };
        let invalid = share(&|r| matches!(r.class, RecordClass::Invalid(_)));
        let repeats = share(&|r| r.class == RecordClass::Repeat);
        assert!((invalid - 0.03).abs() < 0.01, "invalid share {invalid}");
        assert!((repeats - 0.05).abs() < 0.01, "repeat share {repeats}");
        for partition in 0..3 {
            let got = share(&|r| r.partition == partition);
            assert!(
                (got - 1.0 / 3.0).abs() < 0.03,
                "partition {partition}: {got}"
            );
        }
        let traced = share(&|r| r.traceparent.is_some());
        assert!((traced - 0.1).abs() < 1e-9, "traceparent share {traced}");

        let new_events: Vec<Checked> = records
            .iter()
            .filter(|r| r.class == RecordClass::Valid)
            .map(|r| contract_check(&r.value))
            .collect::<Result<_, _>>()
            .expect("valid records pass the contract check");
        let clicks = new_events.iter().filter(|e| e.kind == "click").count() as f64;
        let click_share = clicks / new_events.len() as f64;
        assert!(
            (click_share - 0.2).abs() < 0.02,
            "click share {click_share}"
        );

        let no_invalid = ProduceArgs {
            invalid_share: 0.0,
            repeat_share: 0.0,
            ..args(1_000, 1)
        };
        let (records, manifest) = generate(&no_invalid);
        assert!(records.iter().all(|r| r.class == RecordClass::Valid));
        assert_eq!(manifest.distinct_events, 1_000);

        let all_invalid = ProduceArgs {
            invalid_share: 1.0,
            repeat_share: 0.0,
            ..args(1_000, 1)
        };
        let (_, manifest) = generate(&all_invalid);
        assert_eq!(manifest.invalid, 1_000);
    }

    #[test]
    fn manifest_agrees_with_the_records() {
        let (records, manifest) = generate(&args(10_000, 3));
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut per_campaign: BTreeMap<String, CampaignTruth> = BTreeMap::new();
        let (mut valid, mut invalid, mut repeats) = (0u64, 0u64, 0u64);
        for record in &records {
            match contract_check(&record.value) {
                Err(_) => invalid += 1,
                Ok(event) => {
                    valid += 1;
                    if !seen.insert(event.event_id) {
                        repeats += 1;
                        continue;
                    }
                    let truth = per_campaign.entry(event.campaign_id).or_default();
                    truth.spend_micros += event.cost_micros;
                    if event.kind == "click" {
                        truth.clicks += 1;
                    } else {
                        truth.impressions += 1;
                    }
                }
            }
        }
        assert_eq!(manifest.records, records.len() as u64);
        assert_eq!(manifest.valid_records, valid);
        assert_eq!(manifest.invalid, invalid);
        assert_eq!(manifest.distinct_events, seen.len() as u64);
        assert_eq!(manifest.repeats, repeats);
        assert_eq!(manifest.per_campaign, per_campaign);
        assert_eq!(
            manifest.spend_micros_total,
            per_campaign.values().map(|c| c.spend_micros).sum::<i64>()
        );
        assert_eq!(
            manifest.impressions,
            per_campaign.values().map(|c| c.impressions).sum::<u64>()
        );
        assert_eq!(
            manifest.clicks,
            per_campaign.values().map(|c| c.clicks).sum::<u64>()
        );
        assert_eq!(manifest.records, manifest.valid_records + manifest.invalid);
        assert_eq!(
            manifest.valid_records,
            manifest.distinct_events + manifest.repeats
        );
        assert!(repeats > 0 && invalid > 0);
    }

    #[test]
    fn invalid_records_break_the_rule_and_the_others_keep_it() {
        let (records, _) = generate(&args(10_000, 11));
        let mut kinds_seen = HashSet::new();
        for record in &records {
            let verdict = contract_check(&record.value);
            match record.class {
                RecordClass::Invalid(kind) => {
                    kinds_seen.insert(kind);
                    assert!(
                        verdict.is_err(),
                        "{kind:?} record passes the check: {}",
                        String::from_utf8_lossy(&record.value)
                    );
                }
                RecordClass::Valid | RecordClass::Repeat => {
                    let event = verdict.unwrap_or_else(|e| {
                        panic!(
                            "valid record fails ({e}): {}",
                            String::from_utf8_lossy(&record.value)
                        )
                    });
                    assert_eq!(record.key.as_deref(), Some(event.campaign_id.as_bytes()));
                }
            }
        }
        assert_eq!(kinds_seen.len(), InvalidKind::ALL.len());

        let utf8 = |kind: InvalidKind| {
            records
                .iter()
                .filter(|r| r.class == RecordClass::Invalid(kind))
                .all(|r| std::str::from_utf8(&r.value).is_ok())
        };
        let json = |kind: InvalidKind| {
            records
                .iter()
                .filter(|r| r.class == RecordClass::Invalid(kind))
                .all(|r| serde_json::from_slice::<Value>(&r.value).is_ok())
        };
        assert!(!utf8(InvalidKind::NotUtf8));
        assert!(utf8(InvalidKind::NotJson) && !json(InvalidKind::NotJson));
        for kind in &InvalidKind::ALL[2..] {
            assert!(json(*kind), "{kind:?} records are json");
        }
    }

    #[test]
    fn repeats_resend_the_bytes_of_an_earlier_valid_record() {
        let (records, _) = generate(&args(5_000, 5));
        let mut earlier: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut repeats_elsewhere = 0;
        let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
        for record in &records {
            match record.class {
                RecordClass::Valid => {
                    assert!(!earlier.contains_key(&record.value), "new event sent twice");
                    earlier.insert(record.value.clone(), record.key.clone());
                    partition_of.insert(record.value.clone(), record.partition);
                }
                RecordClass::Repeat => {
                    let key = earlier
                        .get(&record.value)
                        .expect("a repeat re-sends an earlier valid record");
                    assert_eq!(key, &record.key);
                    if partition_of.get(&record.value) != Some(&record.partition) {
                        repeats_elsewhere += 1;
                    }
                }
                RecordClass::Invalid(_) => {}
            }
        }
        assert!(
            repeats_elsewhere > 0,
            "repeats also land on other partitions"
        );
    }

    #[test]
    fn records_have_the_contract_shape() {
        let (records, _) = generate(&args(2_000, 9));
        for record in &records {
            assert!((0..3).contains(&record.partition));
            if let Some(traceparent) = &record.traceparent {
                let parts: Vec<&str> = traceparent.split('-').collect();
                assert_eq!(parts.len(), 4, "{traceparent}");
                assert_eq!((parts[0], parts[3]), ("00", "01"));
                assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
                assert!(parts[1..3].iter().all(|p| {
                    p.chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                }));
            }
            if record.class == RecordClass::Valid {
                let json: Value = serde_json::from_slice(&record.value).expect("valid json");
                let id = json["event_id"].as_str().expect("event_id");
                let id = Uuid::parse_str(id).expect("uuid");
                assert_eq!(id.get_version_num(), 4);
                let at = json["occurred_at"].as_str().expect("occurred_at");
                assert!(
                    at.starts_with("2026-11-26T") && at.ends_with('Z') && at.len() == 24,
                    "{at}"
                );
                let cost = json["cost_micros"].as_i64().expect("cost");
                assert!((0..=2_000_000).contains(&cost));
                let campaign = json["campaign_id"].as_str().expect("campaign");
                let ad = json["ad_id"].as_str().expect("ad");
                let number = |text: &str, prefix: &str| {
                    text.strip_prefix(prefix)
                        .and_then(|n| n.parse::<u32>().ok())
                        .expect("numbered id")
                };
                assert!(number(campaign, "c-") < 20);
                assert!(number(ad, "ad-") < 1_000);
            }
        }
        assert_eq!(occurred_at(0), "2026-11-26T00:00:00.000Z");
        assert_eq!(occurred_at(MILLIS_PER_DAY - 1), "2026-11-26T23:59:59.999Z");
    }

    #[test]
    fn manifest_json_round_trips() {
        let (_, manifest) = generate(&args(1_000, 2));
        let json = serde_json::to_value(&manifest).expect("serialises");
        assert_eq!(json["records"], 1_000);
        let first = manifest.per_campaign.keys().next().expect("a campaign");
        assert!(
            json["per_campaign"][first]["spend_micros"].is_i64(),
            "{json}"
        );
        let back: Manifest = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(back, manifest);
        let text = json.to_string();
        assert!(!text.contains('\n'));
    }

    #[test]
    fn bad_arguments_are_refused_with_one_line() {
        let cases = [
            ProduceArgs {
                count: 0,
                ..args(1, 1)
            },
            ProduceArgs {
                partitions: 0,
                ..args(1, 1)
            },
            ProduceArgs {
                invalid_share: -0.1,
                ..args(1, 1)
            },
            ProduceArgs {
                repeat_share: 1.5,
                ..args(1, 1)
            },
            ProduceArgs {
                invalid_share: f64::NAN,
                ..args(1, 1)
            },
            ProduceArgs {
                invalid_share: 0.6,
                repeat_share: 0.6,
                ..args(1, 1)
            },
        ];
        for case in &cases {
            let error = validate(case).expect_err("refused").to_string();
            assert!(!error.contains('\n'), "{error}");
            assert!(error.starts_with("--"), "{error}");
        }
        assert!(validate(&args(1, 1)).is_ok());
        let edge = ProduceArgs {
            invalid_share: 0.5,
            repeat_share: 0.5,
            ..args(10, 1)
        };
        assert!(validate(&edge).is_ok());
    }
}
