//! `onceflow demo`: the whole pipeline on embedded defaults, in one process,
//! with no server to install or start.
//!
//! It starts librdkafka's mock cluster (three brokers), an embedded SQLite
//! store in a fresh directory (or a fresh schema in PostgreSQL when
//! `ONCEFLOW_DATABASE_URL` is set), the actor tree of `onceflow run`
//! unchanged ([`run_pipeline`]), and the load generator of `onceflow
//! produce` (invalid records and repeats included). While events flow it
//! kills the transaction coordinator mid-commit, moves every partition's
//! leader, and makes the store refuse writes for a few seconds. Then it
//! stops the pipeline gracefully and prints a verdict.
//!
//! Guarantees: the verdict is reached from outside the pipeline (see
//! [`demo_verdict`]); the mock cluster has no transactions, so it cannot
//! show what committed: the store is judged exactly and the topics only for
//! loss, as the chaos suite does on the mock, and the output says so. The
//! exit code is 0 only if everything the mock can show held.

mod committed_transactions;
mod demo_progress;
mod demo_store;
mod demo_verdict;
mod fault_injection;
mod mock_brokers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use onceflow_actors::ActorNames;
use onceflow_actors::store::{Store, StoreBackend};
use onceflow_actors::{PipelineStatus, Settings, run_pipeline};
use onceflow_chaos::harness::{
    MockEvidence, PipelineTopics, high_watermarks, input_truth, judge_on_mock, read_committed,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use committed_transactions::CommittedTransactions;
use demo_progress::DemoProgress;
use demo_store::DemoStore;
use demo_verdict::{DemoVerdict, FaultReport, RunFacts, digits};
use mock_brokers::{DemoTopics, MockBrokers, PARTITIONS};

use crate::produce::{ProduceArgs, produce_records};

/// Most records a demo writes: librdkafka's mock cluster keeps at most
/// 5 MB per partition (hard-coded) and deletes the oldest records past it;
/// 30,000 events leave the output partitions at about 3.5 MB with replays.
const MAX_EVENTS: u64 = 30_000;
/// Share of invalid records the demo writes.
const INVALID_SHARE: f64 = 0.03;
/// Share of repeated events the demo writes.
const REPEAT_SHARE: f64 = 0.05;
/// The instance id of the demo's single instance.
const INSTANCE_ID: &str = "demo";
/// How long the demo waits for the pipeline to commit everything after the
/// last record was written and the last fault injected.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest graceful stop of the pipeline.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the committed position is read.
const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// Arguments of `onceflow demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Input records to write (about 3 % invalid, 5 % repeats); at most
    /// 30,000: the mock cluster keeps only 5 MB per partition and deletes
    /// older records, which would leave nothing to judge.
    #[arg(long, default_value_t = 6_000, value_parser = clap::value_parser!(u64).range(100..=MAX_EVENTS))]
    pub events: u64,
    /// Records per second, 0 = as fast as possible (faults may then find
    /// the work already done).
    #[arg(long, default_value_t = 600)]
    pub rate: u64,
    /// Seed of the load generator: the same seed writes the same records.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run without injecting faults.
    #[arg(long)]
    pub no_chaos: bool,
    /// Keep the store (the SQLite file, or the PostgreSQL schema) for
    /// inspection, and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Print the verdict as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Directory for the SQLite store (a new directory inside it; default:
    /// the system's temporary directory). Ignored with `ONCEFLOW_DATABASE_URL`.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One planned fault: injected once this share of the records is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlannedFault {
    KillCoordinator,
    LeaderChange,
    StoreUnavailable,
}

/// The faults and when they strike (share of the records committed).
const FAULT_PLAN: [(f64, PlannedFault); 3] = [
    (0.20, PlannedFault::KillCoordinator),
    (0.45, PlannedFault::LeaderChange),
    (0.70, PlannedFault::StoreUnavailable),
];

/// Runs the demo and prints its verdict; an error if exactly-once did not hold.
pub async fn run_demo(args: DemoArgs, committed: CommittedTransactions) -> anyhow::Result<()> {
    let started = Instant::now();
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let store = match std::env::var("ONCEFLOW_DATABASE_URL") {
        Ok(url) if StoreBackend::of_url(&url) == Ok(StoreBackend::Postgres) => {
            DemoStore::postgres(&url, &run_id).await?
        }
        Ok(url) if !url.trim().is_empty() => bail!(
            "ONCEFLOW_DATABASE_URL: the demo uses it only for PostgreSQL (a postgres:// URL); \
             unset it for the embedded SQLite store (--dir chooses where)"
        ),
        _ => DemoStore::sqlite(args.dir.as_deref(), &run_id).await?,
    };
    let verdict = run_on_store(&args, &store, &run_id, committed, started).await;
    // The store goes (unless kept) whether or not the run got to a verdict.
    let kept = store.finish(args.keep).await?;
    let verdict = verdict?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print!("{}", verdict.table());
    }
    if let Some(location) = kept {
        eprintln!("  store kept: {location}");
    }
    if verdict.exactly_once {
        Ok(())
    } else {
        bail!(
            "the demo's verdict failed: {} lost, {} duplicated, {} violations (reproduce: onceflow demo --seed {} --events {} --rate {})",
            verdict.lost,
            verdict.duplicated,
            verdict.violation_count,
            args.seed,
            args.events,
            args.rate
        )
    }
}

/// Runs the demo on `store`, up to the verdict: prepare, announce, run the
/// pipeline until every record is committed (faults injected on the way),
/// stop it, judge.
async fn run_on_store(
    args: &DemoArgs,
    store: &DemoStore,
    run_id: &str,
    committed: CommittedTransactions,
    started: Instant,
) -> anyhow::Result<DemoVerdict> {
    let group_id = format!("onceflow-demo-{run_id}");
    let topics = DemoTopics {
        input: "ad-events".to_owned(),
        output: "ad-events-billed".to_owned(),
        dlq: "ad-events-dlq".to_owned(),
    };
    let mut settings = demo_settings(store, &topics, &group_id)?;
    // Declared first, dropped last: every client is gone before the cluster.
    let mut brokers = MockBrokers::start(topics.clone(), &group_id, &settings.transactional_id())?;
    settings.kafka_brokers = brokers.bootstrap_servers();
    let run = DemoRun {
        args,
        store,
        settings,
        topics,
        group_id,
        status: PipelineStatus::default(),
        committed,
    };
    eprint!("{}", run.banner());
    let driven = run.run_until_committed(&mut brokers).await?;
    eprintln!("  judging: re-reading the input, the store and the output topics");
    run.judge(&brokers, driven, started).await
}

/// One demo run: what it was asked, where it runs, what it reports.
struct DemoRun<'a> {
    args: &'a DemoArgs,
    store: &'a DemoStore,
    settings: Settings,
    topics: DemoTopics,
    group_id: String,
    status: PipelineStatus,
    committed: CommittedTransactions,
}

impl DemoRun<'_> {
    /// What the demo is about to do, for stderr.
    fn banner(&self) -> String {
        let args = self.args;
        let rate = if args.rate == 0 {
            "full speed".to_owned()
        } else {
            format!("{}/s", digits(args.rate))
        };
        let faults = if args.no_chaos {
            "none (--no-chaos)"
        } else {
            "coordinator killed mid-commit at 20 %, leader change at 45 %, \
             store unavailable at 70 % of the records committed"
        };
        format!(
            "onceflow demo: {} ad events ({:.0} % invalid, {:.0} % repeats, seed {}) at {rate}\n\
             \x20 broker    librdkafka mock cluster in this process, 3 brokers ({})\n\
             \x20 store     {}\n\
             \x20 pipeline  the actor tree of `onceflow run`: {PARTITIONS} partition consumers, \
             transaction coordinator, {} database writers, circuit breaker, DLQ forwarder\n\
             \x20 faults    {faults}\n",
            digits(args.events),
            INVALID_SHARE * 100.0,
            REPEAT_SHARE * 100.0,
            args.seed,
            self.settings.kafka_brokers,
            self.store.describe(),
            self.settings.db_writers,
        )
    }

    /// Starts the load generator and the pipeline, drives the run until
    /// every record is committed (injecting the planned faults), then stops
    /// the pipeline gracefully.
    async fn run_until_committed(&self, brokers: &mut MockBrokers) -> anyhow::Result<Driven> {
        let shutdown = CancellationToken::new();
        let coordinator_name = ActorNames::new(INSTANCE_ID).coordinator();
        // Create the tables before anything reads them (the pipeline migrates
        // again, a no-op), so the first progress reads never race the schema.
        self.store
            .store
            .migrate()
            .await
            .context("cannot prepare the demo's store")?;
        let mut progress = DemoProgress::new(self.args.events);
        let produce_args = ProduceArgs {
            count: self.args.events,
            rate: self.args.rate,
            partitions: PARTITIONS,
            invalid_share: INVALID_SHARE,
            repeat_share: REPEAT_SHARE,
            seed: self.args.seed,
            brokers: self.settings.kafka_brokers.clone(),
            topic: self.topics.input.clone(),
            manifest: None,
            quiet: true,
        };
        let written_bar = progress.written_bar();
        let producer =
            tokio::spawn(async move { produce_records(&produce_args, &written_bar).await });
        // A load generator still writing when the run ends early stops with it.
        let _stop_producer = AbortOnDrop(producer.abort_handle());

        let pipeline = run_pipeline(self.settings.clone(), self.status.clone(), shutdown.clone());
        tokio::pin!(pipeline);
        let context = DriveContext {
            status: &self.status,
            committed: &self.committed,
            offsets: &self.store.store,
            group_id: &self.group_id,
            input_topic: &self.topics.input,
            coordinator_name: &coordinator_name,
            store: self.store,
            events: self.args.events,
            chaos: !self.args.no_chaos,
        };
        let driven = {
            let drive = drive(&context, brokers, &mut progress, producer);
            tokio::pin!(drive);
            tokio::select! {
                result = &mut pipeline => Err(match result {
                    Ok(()) => anyhow::anyhow!("the pipeline stopped before the demo ended"),
                    Err(error) => anyhow::Error::from(error).context("the pipeline stopped"),
                }),
                driven = &mut drive => driven,
            }
        };
        progress.finish();
        shutdown.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, &mut pipeline).await {
            Ok(result) => result.context("the pipeline's graceful stop failed")?,
            Err(_) => bail!("the pipeline did not stop within {STOP_TIMEOUT:?}"),
        }
        driven
    }

    /// Judges the run from the outside: the input as written, the store's
    /// tables and the topics as a `read_committed` reader sees them.
    async fn judge(
        &self,
        brokers: &MockBrokers,
        driven: Driven,
        started: Instant,
    ) -> anyhow::Result<DemoVerdict> {
        let Driven {
            faults,
            not_injected,
            mut extra_violations,
            manifest,
        } = driven;
        let topics = &self.topics;
        let bootstrap = brokers.bootstrap_servers();
        let truth = input_truth(&bootstrap, &topics.input).await?;
        if let Some(manifest) = manifest
            && (manifest.records, manifest.distinct_events, manifest.invalid)
                != (truth.records, truth.distinct_events, truth.invalid)
        {
            extra_violations.push(format!(
                "the load generator wrote {} records ({} distinct, {} invalid); the input topic holds {} ({} distinct, {} invalid)",
                manifest.records,
                manifest.distinct_events,
                manifest.invalid,
                truth.records,
                truth.distinct_events,
                truth.invalid
            ));
        }
        for topic in [&topics.input, &topics.output, &topics.dlq] {
            let deleted = mock_brokers::records_deleted_by_mock(&bootstrap, topic).await?;
            if deleted > 0 {
                extra_violations.push(format!(
                    "the mock cluster deleted the first {deleted} records of {topic} (it keeps 5 MB \
                     per partition): they cannot be judged; write fewer --events"
                ));
            }
        }
        let outputs = read_committed(&bootstrap, &topics.output).await?;
        let dead_letters = read_committed(&bootstrap, &topics.dlq).await?;
        let watermarks = high_watermarks(&bootstrap, &topics.input).await?;
        let pipeline_topics = PipelineTopics {
            input: topics.input.clone(),
            output: topics.output.clone(),
            dlq: topics.dlq.clone(),
        };
        let judgement = judge_on_mock(
            MockEvidence {
                truth: &truth,
                topics: &pipeline_topics,
                group_id: &self.group_id,
                high_watermarks: &watermarks,
                outputs: &outputs,
                dead_letter_records: &dead_letters,
            },
            self.store.tables(),
        )
        .await?;
        // Reported by the pipeline, shown for information only (never judged).
        let committed_txn_ids = self.committed.snapshot();
        Ok(DemoVerdict::new(
            &truth,
            judgement,
            RunFacts {
                seed: self.args.seed,
                store: self.store.kind(),
                faults,
                not_injected,
                restarts: self.status.actor_restarts(),
                committed_transactions: committed_txn_ids.len() as u64,
                elapsed_seconds: started.elapsed().as_secs_f64(),
                extra_violations,
            },
        ))
    }
}

/// The pipeline's settings: the environment's `ONCEFLOW_*` tuning over the
/// demo's own defaults, with the broker, store, group, instance and topics
/// the demo owns.
fn demo_settings(
    store: &DemoStore,
    topics: &DemoTopics,
    group_id: &str,
) -> anyhow::Result<Settings> {
    let defaults = Settings {
        // Small batches: many commit cycles for the faults to land in.
        max_batch_records: 200,
        backlog_batch_records: Some(400),
        max_buffered_records: 800,
        // The store outage must outlast a statement.
        db_statement_timeout: Duration::from_millis(800),
        breaker_cooldown: Duration::from_millis(300),
        breaker_max_cooldown: Duration::from_millis(1_500),
        kafka_call_timeout: Duration::from_millis(5_000),
        ..Settings::default()
    };
    let mut settings = Settings::load_over(defaults, None)?;
    settings.database_url = Some(store.pipeline_url.clone());
    settings.group_id = group_id.to_owned();
    settings.instance_id = Some(INSTANCE_ID.to_owned());
    settings.input_topic = topics.input.clone();
    settings.output_topic = topics.output.clone();
    settings.dlq_topic = topics.dlq.clone();
    settings
        .validate()
        .context("the demo's settings are not valid")?;
    Ok(settings)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the drive loop needs to see.
struct DriveContext<'a> {
    status: &'a PipelineStatus,
    committed: &'a CommittedTransactions,
    offsets: &'a Store,
    group_id: &'a str,
    input_topic: &'a str,
    coordinator_name: &'a str,
    store: &'a DemoStore,
    events: u64,
    chaos: bool,
}

/// What the drive loop found.
struct Driven {
    faults: Vec<FaultReport>,
    not_injected: Vec<FaultReport>,
    extra_violations: Vec<String>,
    manifest: Option<crate::produce::Manifest>,
}

/// Shows progress, injects the planned faults as the committed share
/// reaches them, and returns once every record is committed (or the
/// catch-up time ran out).
async fn drive(
    context: &DriveContext<'_>,
    brokers: &mut MockBrokers,
    progress: &mut DemoProgress,
    producer: tokio::task::JoinHandle<anyhow::Result<crate::produce::Manifest>>,
) -> anyhow::Result<Driven> {
    let mut plan: Vec<(f64, PlannedFault)> = if context.chaos {
        FAULT_PLAN.to_vec()
    } else {
        Vec::new()
    };
    plan.reverse();
    let mut faults = Vec::new();
    let mut not_injected = Vec::new();
    let mut extra_violations = Vec::new();
    let mut producer = Some(producer);
    let mut manifest = None;
    let mut written_at: Option<Instant> = None;
    loop {
        refresh(context, progress).await;
        if let Some(handle) = producer.as_ref()
            && handle.is_finished()
            && let Some(handle) = producer.take()
        {
            manifest = Some(
                handle
                    .await
                    .context("the load generator stopped")?
                    .context("the load generator failed")?,
            );
            written_at = Some(Instant::now());
        }
        let committed = progress.committed();
        if let Some((share, fault)) = plan.last().copied()
            && committed as f64 >= share * context.events as f64
        {
            plan.pop();
            progress.say(&format!(
                "  fault: {} ({} records committed)",
                fault_name(fault),
                digits(committed)
            ));
            let backlog = progress.backlog();
            let report =
                while_refreshing(inject(fault, context, brokers, &backlog), context, progress)
                    .await;
            match report {
                Ok(report) => {
                    progress.say(&format!("    -> {}", report.detail));
                    faults.push(report);
                }
                Err(error) => {
                    let detail = format!("{error:#}");
                    progress.say(&format!("    -> not injected: {detail}"));
                    not_injected.push(FaultReport {
                        fault: fault_label(fault),
                        detail,
                    });
                }
            }
            continue;
        }
        if manifest.is_some() && plan.is_empty() && committed >= context.events {
            break;
        }
        if let Some(written) = written_at
            && written.elapsed() > CATCH_UP_TIMEOUT
        {
            extra_violations.push(format!(
                "the pipeline committed {committed} of {} records within {CATCH_UP_TIMEOUT:?} of the last write",
                context.events
            ));
            break;
        }
        tokio::time::sleep(REFRESH_EVERY).await;
    }
    Ok(Driven {
        faults,
        not_injected,
        extra_violations,
        manifest,
    })
}

fn fault_name(fault: PlannedFault) -> &'static str {
    match fault {
        PlannedFault::KillCoordinator => "killing the transaction coordinator mid-commit",
        PlannedFault::LeaderChange => "moving every partition leader to another broker",
        PlannedFault::StoreUnavailable => "making the store refuse writes",
    }
}

fn fault_label(fault: PlannedFault) -> &'static str {
    match fault {
        PlannedFault::KillCoordinator => "coordinator killed mid-commit",
        PlannedFault::LeaderChange => "broker leader change",
        PlannedFault::StoreUnavailable => "store unavailable",
    }
}

async fn inject(
    fault: PlannedFault,
    context: &DriveContext<'_>,
    brokers: &mut MockBrokers,
    backlog: &demo_progress::Backlog,
) -> anyhow::Result<FaultReport> {
    let report = match fault {
        PlannedFault::KillCoordinator => {
            fault_injection::kill_coordinator_mid_commit(
                context.status,
                context.coordinator_name,
                backlog,
            )
            .await?
        }
        PlannedFault::LeaderChange => {
            fault_injection::change_leaders(brokers, context.status, backlog).await?
        }
        PlannedFault::StoreUnavailable => {
            fault_injection::refuse_store_writes(context.store, context.status, backlog).await?
        }
    };
    debug_assert_eq!(report.fault, fault_label(fault));
    Ok(report)
}

/// Runs `work` while keeping the progress display fresh.
async fn while_refreshing<T>(
    work: impl std::future::Future<Output = T>,
    context: &DriveContext<'_>,
    progress: &mut DemoProgress,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            () = tokio::time::sleep(REFRESH_EVERY) => refresh(context, progress).await,
        }
    }
}

/// Reads the committed position (the Kafka-committed end offsets the
/// pipeline records in the store) and updates the display.
async fn refresh(context: &DriveContext<'_>, progress: &mut DemoProgress) {
    let mut committed = 0u64;
    for partition in 0..PARTITIONS {
        let read = context
            .offsets
            .read_partition(context.group_id, context.input_topic, partition);
        match tokio::time::timeout(Duration::from_millis(500), read).await {
            Ok(Ok(Some(stored))) => {
                committed += stored.kafka_committed_offset.unwrap_or(0).max(0) as u64;
            }
            Ok(Ok(None)) => {}
            // The store is busy (an injected outage): keep the last figure.
            Ok(Err(_)) | Err(_) => return,
        }
    }
    progress.update(committed, context.status, context.committed.count());
}
