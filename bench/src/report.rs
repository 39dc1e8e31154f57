//! The benchmark's report: every figure of one run, the ratios between them
//! (absolute times move with the machine, ratios much less), the issue's
//! targets with whether each was met, a text table and JSON.

use procfs::Current;

use crate::backlog_run::BacklogRun;
use crate::latency_run::LatencyRun;
use crate::per_message::PerMessageRun;
use crate::postgres_ceiling::Ceiling;
use crate::store_path::StorePath;

/// The machine a run was made on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPU model
    pub cpu: String,
    /// cores available to the process
    pub cores: usize,
    /// total memory, GiB
    pub memory_gib: f64,
    /// whether the binary was built with optimisations
    pub release_build: bool,
}

impl Machine {
    /// This machine.
    pub fn current(release_build: bool) -> Machine {
        let cpu = procfs::CpuInfo::current()
            .ok()
            .and_then(|info| info.model_name(0).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_gib = procfs::Meminfo::current().map_or(0.0, |info| {
            info.mem_total as f64 / (1024.0 * 1024.0 * 1024.0)
        });
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            memory_gib,
            release_build,
        }
    }
}

/// One target of the issue and the figure measured for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    /// what is measured
    pub name: &'static str,
    /// the target, in words
    pub target: &'static str,
    /// the figure measured
    pub measured: f64,
    /// whether the figure meets the target
    pub met: bool,
}

/// Ratios between the figures of the run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ratios {
    /// exactly-once throughput / PostgreSQL's ceiling
    pub exactly_once_over_ceiling: f64,
    /// onceflow's write path alone (partitions in parallel) / the ceiling
    pub store_path_over_ceiling: f64,
    /// exactly-once throughput / onceflow's write path alone
    pub exactly_once_over_store_path: f64,
    /// exactly-once throughput / at-least-once throughput
    pub exactly_once_over_at_least_once: f64,
    /// exactly-once throughput / the per-message pattern's
    pub exactly_once_over_per_message: f64,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// where
    pub machine: Machine,
    /// PostgreSQL's ceiling for the same writes
    pub postgres_ceiling: Ceiling,
    /// onceflow's write path alone, without Kafka
    pub store_path: StorePath,
    /// onceflow exactly-once from a cold backlog
    pub exactly_once: BacklogRun,
    /// onceflow at-least-once from the same cold backlog
    pub at_least_once: BacklogRun,
    /// one database and one Kafka transaction per record
    pub per_message: PerMessageRun,
    /// latency at half the exactly-once maximum
    pub latency: LatencyRun,
    /// the ratios
    pub ratios: Ratios,
    /// the targets
    pub targets: Vec<Target>,
}

impl BenchReport {
    /// Puts the figures together with their ratios and targets.
    pub fn new(
        machine: Machine,
        postgres_ceiling: Ceiling,
        store_path: StorePath,
        exactly_once: BacklogRun,
        at_least_once: BacklogRun,
        per_message: PerMessageRun,
        latency: LatencyRun,
    ) -> BenchReport {
        let eos = exactly_once.processing_records_per_second;
        let ratios = Ratios {
            exactly_once_over_ceiling: eos / postgres_ceiling.rows_per_second,
            store_path_over_ceiling: store_path.parallel.records_per_second
                / postgres_ceiling.rows_per_second,
            exactly_once_over_store_path: eos / store_path.parallel.records_per_second,
            exactly_once_over_at_least_once: eos / at_least_once.processing_records_per_second,
            exactly_once_over_per_message: eos / per_message.records_per_second,
        };
        // Every run's peak: the target holds "at any backlog".
        let peak_rss_mib = exactly_once
            .peak_rss_mib
            .max(at_least_once.peak_rss_mib)
            .max(latency.peak_rss_mib);
        let targets = vec![
            Target {
                name: "exactly-once / PostgreSQL ceiling",
                target: ">= 0.6",
                measured: ratios.exactly_once_over_ceiling,
                met: ratios.exactly_once_over_ceiling >= 0.6,
            },
            Target {
                name: "exactly-once / at-least-once",
                target: ">= 0.9",
                measured: ratios.exactly_once_over_at_least_once,
                met: ratios.exactly_once_over_at_least_once >= 0.9,
            },
            Target {
                name: "commit p99 at half load, ms",
                target: "<= 100",
                measured: latency.commit_p99_ms,
                met: latency.commit_p99_ms <= 100.0,
            },
            Target {
                name: "exactly-once / per-message pattern",
                target: ">= 50",
                measured: ratios.exactly_once_over_per_message,
                met: ratios.exactly_once_over_per_message >= 50.0,
            },
            Target {
                name: "peak RSS, MiB (default settings)",
                target: "<= 256",
                measured: peak_rss_mib,
                met: peak_rss_mib <= 256.0,
            },
            Target {
                name: "CPU per record, µs",
                target: "<= 8",
                measured: exactly_once.cpu_us_per_record,
                met: exactly_once.cpu_us_per_record <= 8.0,
            },
        ];
        BenchReport {
            machine,
            postgres_ceiling,
            store_path,
            exactly_once,
            at_least_once,
            per_message,
            latency,
            ratios,
            targets,
        }
    }

    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out.push_str(&format!(
            "machine: {} ({} cores, {:.1} GiB){}\n\n",
            m.cpu,
            m.cores,
            m.memory_gib,
            if m.release_build {
                ""
            } else {
                ", DEBUG BUILD: figures not comparable"
            }
        ));
        out.push_str(&format!(
            "{:<44} {:>12} {:>10} {:>12} {:>10}\n",
            "run", "records/s", "seconds", "CPU µs/rec", "peak MiB"
        ));
        let c = &self.postgres_ceiling;
        out.push_str(&format!(
            "{:<44} {:>12.0} {:>10.2} {:>12} {:>10}\n",
            format!("PostgreSQL ceiling ({} rows, {}/txn)", c.rows, c.batch_rows),
            c.rows_per_second,
            c.seconds,
            "-",
            "-"
        ));
        let s = &self.store_path;
        for (how, timing) in [("parallel", &s.parallel), ("one at a time", &s.sequential)] {
            out.push_str(&format!(
                "{:<44} {:>12.0} {:>10.2} {:>12} {:>10}\n",
                format!("onceflow write path alone, {how}"),
                timing.records_per_second,
                timing.seconds,
                "-",
                "-"
            ));
        }
        out.push_str(&format!(
            "  ({} records, {} cycles of {} per partition, slowest cycle {:.0} ms parallel, \
             {:.0} ms one at a time; no Kafka)\n",
            s.records,
            s.cycles,
            s.batch_records,
            s.parallel.slowest_cycle_ms,
            s.sequential.slowest_cycle_ms
        ));
        out.push_str(&format!(
            "  write path alone / ceiling {:.2}; exactly-once / write path alone {:.2}\n",
            self.ratios.store_path_over_ceiling, self.ratios.exactly_once_over_store_path
        ));
        for run in [&self.exactly_once, &self.at_least_once] {
            out.push_str(&format!(
                "{:<44} {:>12.0} {:>10.2} {:>12.1} {:>10.0}\n",
                format!("onceflow {} ({} records)", run.guarantee, run.records),
                run.processing_records_per_second,
                run.processing_seconds,
                run.cpu_us_per_record,
                run.peak_rss_mib
            ));
            out.push_str(&format!(
                "{:<44} {:>12.0} {:>10.2}\n",
                "  with start-up", run.records_per_second, run.seconds
            ));
        }
        for run in [&self.exactly_once, &self.at_least_once] {
            let split: Vec<String> = run
                .cpu_us_per_record_by_thread
                .iter()
                .filter(|(_, micros)| **micros >= 0.05)
                .map(|(kind, micros)| format!("{kind} {micros:.1}"))
                .collect();
            out.push_str(&format!(
                "  {} CPU µs/rec by thread: {}; machine: {:.2} cores busy\n",
                run.guarantee,
                split.join(", "),
                run.machine_cores_busy
            ));
            let components: Vec<String> = run
                .machine_cpu_us_per_record
                .iter()
                .map(|(component, micros)| format!("{component} {micros:.1}"))
                .collect();
            out.push_str(&format!(
                "  {} after the first commit: {:.2} cores busy; machine CPU µs/rec: {} (total {:.1}: at most {:.0} rec/s on these cores)\n",
                run.guarantee,
                run.window_cores_busy,
                components.join(", "),
                run.machine_cpu_us_per_record.values().sum::<f64>(),
                run.cpu_bound_records_per_second
            ));
        }
        let p = &self.per_message;
        out.push_str(&format!(
            "{:<44} {:>12.0} {:>10.2}\n",
            format!("per-message pattern ({} records)", p.records),
            p.records_per_second,
            p.seconds
        ));
        out.push_str(&format!(
            "  one Kafka transaction (one output, the offsets) cost the brokers {:.1} ms of CPU (above their idle {:.2} cores)\n",
            p.broker_cpu_ms_per_transaction, p.broker_idle_cores
        ));
        out.push_str(&format!(
            "  per record: database transaction p50 {:.1} ms, p99 {:.1} ms; Kafka transaction (begin to commit) p50 {:.1} ms, p99 {:.1} ms\n",
            p.database_transaction_ms.p50,
            p.database_transaction_ms.p99,
            p.kafka_transaction_ms.p50,
            p.kafka_transaction_ms.p99
        ));
        let l = &self.latency;
        out.push_str(&format!(
            "\nat {} records/s for {} s after {} s of warm-up ({:.0} committed per second, CPU {:.1} µs/rec, peak {:.0} MiB): \
             commit p50 {:.1} ms, p99 {:.1} ms ({} cycles; database phase p50 {:.1}, p99 {:.1} ms; \
             Kafka phase p50 {:.1}, p99 {:.1} ms); \
             end-to-end p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} events)\n",
            l.rate,
            l.seconds,
            l.warm_up_seconds,
            l.achieved_records_per_second,
            l.cpu_us_per_record,
            l.peak_rss_mib,
            l.commit_p50_ms,
            l.commit_p99_ms,
            l.cycles,
            l.database_phase_ms.p50,
            l.database_phase_ms.p99,
            l.kafka_phase_ms.p50,
            l.kafka_phase_ms.p99,
            l.end_to_end_ms.p50,
            l.end_to_end_ms.p99,
            l.end_to_end_ms.max,
            l.end_to_end_ms.count
        ));
        out.push_str("\ntargets:\n");
        for target in &self.targets {
            out.push_str(&format!(
                "  {:<40} {:>10.2}  target {:<8} {}\n",
                target.name,
                target.measured,
                target.target,
                if target.met { "met" } else { "NOT MET" }
            ));
        }
        out
    }
}
