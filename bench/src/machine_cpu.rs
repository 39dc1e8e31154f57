//! Where the whole machine's CPU went during a measured run, by component:
//! the measured onceflow instance, the Kafka brokers, PostgreSQL, the
//! benchmark's own process (writers, readers, polling) and everything else.
//! Read from outside in `/proc`: every process's user + system time at the
//! start and at the end of the run.
//!
//! On a machine where all of them share the cores, this is what bounds the
//! throughput: at most `cores / (CPU per record of all components)` records
//! per second, whatever any one of them does. A process that ended during
//! the run is missing from the end snapshot, so its CPU is not counted
//! (PostgreSQL backends of closed connections, for example): the figures
//! are lower bounds.

use std::collections::BTreeMap;

use crate::error::{BenchError, Result};

/// What a process is, for the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// the measured instance
    Onceflow,
    /// a JVM whose command line runs `kafka.Kafka`
    KafkaBrokers,
    /// every `postgres` process (server and backends)
    Postgresql,
    /// this benchmark's own process
    Bench,
    /// anything else on the machine
    Other,
}

impl Component {
    /// The name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Onceflow => "onceflow",
            Component::KafkaBrokers => "kafka-brokers",
            Component::Postgresql => "postgresql",
            Component::Bench => "bench",
            Component::Other => "other",
        }
    }
}

/// Sorts a process into its component, from its pid, its command name and
/// its command line.
fn component_of(pid: i32, comm: &str, cmdline: &[String], instance: i32, bench: i32) -> Component {
    if pid == instance {
        Component::Onceflow
    } else if pid == bench {
        Component::Bench
    } else if comm == "postgres" {
        Component::Postgresql
    } else if cmdline.iter().any(|argument| argument == "kafka.Kafka") {
        Component::KafkaBrokers
    } else {
        Component::Other
    }
}

/// CPU ticks of every live process, by pid, with its component.
#[derive(Debug, Clone)]
pub struct MachineSnapshot {
    processes: BTreeMap<i32, (Component, u64)>,
}

impl MachineSnapshot {
    /// Reads every process now; `instance` is the measured onceflow's pid,
    /// if a run has one.
    pub fn now(instance: Option<u32>) -> Result<MachineSnapshot> {
        let failed = |reason: String| BenchError::Process {
            pid: instance.unwrap_or(0),
            reason,
        };
        // -1: no process has it.
        let instance = match instance {
            Some(pid) => i32::try_from(pid).map_err(|_| failed("pid out of range".into()))?,
            None => -1,
        };
        let bench = i32::try_from(std::process::id()).unwrap_or(-1);
        let all = procfs::process::all_processes().map_err(|error| failed(error.to_string()))?;
        let mut processes = BTreeMap::new();
        // A process may end between the listing and its reading: skipped.
        for process in all.flatten() {
            let Ok(stat) = process.stat() else { continue };
            let cmdline = process.cmdline().unwrap_or_default();
            let component = component_of(stat.pid, &stat.comm, &cmdline, instance, bench);
            processes.insert(stat.pid, (component, stat.utime.saturating_add(stat.stime)));
        }
        Ok(MachineSnapshot { processes })
    }

    /// CPU seconds each component used since `earlier` (a process new since
    /// then counts whole).
    pub fn cpu_seconds_since(&self, earlier: &MachineSnapshot) -> BTreeMap<Component, f64> {
        let per_tick = 1.0 / procfs::ticks_per_second() as f64;
        let mut by_component = BTreeMap::new();
        for (pid, (component, ticks)) in &self.processes {
            let before = earlier
                .processes
                .get(pid)
                .filter(|(earlier_component, _)| earlier_component == component)
                .map_or(0, |(_, ticks)| *ticks);
            *by_component.entry(*component).or_insert(0.0) +=
                ticks.saturating_sub(before) as f64 * per_tick;
        }
        by_component
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn processes_are_sorted_by_what_they_run() {
        let broker = args("/usr/bin/java -Xmx512m -cp /x/libs/* kafka.Kafka /d/server.properties");
        assert_eq!(
            component_of(10, "java", &broker, 1, 2),
            Component::KafkaBrokers
        );
        let admin = args("/usr/bin/java -cp /x ClusterAdmin describe");
        assert_eq!(component_of(11, "java", &admin, 1, 2), Component::Other);
        assert_eq!(
            component_of(12, "postgres", &args("postgres: 15/main: walwriter"), 1, 2),
            Component::Postgresql
        );
        assert_eq!(
            component_of(1, "onceflow", &args("onceflow run"), 1, 2),
            Component::Onceflow
        );
        assert_eq!(
            component_of(2, "onceflow", &args("onceflow bench"), 1, 2),
            Component::Bench
        );
    }

    #[test]
    fn this_process_work_shows_under_bench() {
        let before = MachineSnapshot::now(None).expect("/proc is readable");
        // Spins until this process has used 0.3 s of CPU (by its own
        // account, so a busy machine only makes it take longer).
        let own_cpu = || {
            crate::process_usage::process_usage(std::process::id())
                .expect("this process is readable")
                .cpu_seconds
        };
        let start = own_cpu();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut sum = 0u64;
        while own_cpu() < start + 0.3 && std::time::Instant::now() < deadline {
            for _ in 0..100_000 {
                sum = std::hint::black_box(sum.wrapping_mul(31).wrapping_add(7));
            }
        }
        std::hint::black_box(sum);
        let after = MachineSnapshot::now(None).expect("/proc is readable");
        let used = after.cpu_seconds_since(&before);
        let bench = used.get(&Component::Bench).copied().unwrap_or(0.0);
        assert!(bench >= 0.29, "{used:?}");
        assert!(
            used.get(&Component::Onceflow).copied().unwrap_or(0.0) == 0.0,
            "no instance was named: {used:?}"
        );
    }
}
