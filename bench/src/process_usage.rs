//! What a measured process used, read from outside in `/proc/<pid>`: CPU
//! time of all its threads (user and system), split by thread kind (the
//! profile `perf` cannot take in a sandbox), and its peak resident memory
//! (`VmHWM`, the kernel's high-water mark, so no sampling can miss a peak);
//! and how busy the whole machine was (`/proc/stat`).

use std::collections::BTreeMap;

use crate::error::{BenchError, Result};

/// CPU time and peak memory of a process so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// user + system CPU seconds of every thread
    pub cpu_seconds: f64,
    /// peak resident set, bytes
    pub peak_rss_bytes: u64,
}

/// CPU seconds of the live threads of process `pid`, by thread kind: the
/// thread's name without its trailing digits (`rdk:broker3` and
/// `rdk:broker1` are `rdk:broker`; tokio's workers are
/// `tokio-runtime-w`). Threads that already ended are not in it.
pub fn cpu_by_thread_kind(pid: u32) -> Result<BTreeMap<String, f64>> {
    let failed = |reason: String| BenchError::Process { pid, reason };
    let id = i32::try_from(pid).map_err(|_| failed("pid out of range".to_owned()))?;
    let process = procfs::process::Process::new(id).map_err(|error| failed(error.to_string()))?;
    let tasks = process.tasks().map_err(|error| failed(error.to_string()))?;
    let per_tick = 1.0 / procfs::ticks_per_second() as f64;
    let mut by_kind = BTreeMap::new();
    for task in tasks.flatten() {
        let Ok(stat) = task.stat() else { continue };
        let kind = stat
            .comm
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '#' || c == '-' || c == '/')
            .to_owned();
        *by_kind.entry(kind).or_insert(0.0) +=
            stat.utime.saturating_add(stat.stime) as f64 * per_tick;
    }
    Ok(by_kind)
}

/// Busy and total CPU ticks of the whole machine since boot (`/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    busy: u64,
    total: u64,
}

impl MachineTicks {
    /// Reads them now.
    pub fn now() -> Result<MachineTicks> {
        use procfs::CurrentSI;
        let stat = procfs::KernelStats::current().map_err(|error| BenchError::Process {
            pid: 0,
            reason: format!("/proc/stat: {error}"),
        })?;
        let cpu = stat.total;
        let idle = cpu.idle + cpu.iowait.unwrap_or(0);
        let busy = cpu.user
            + cpu.nice
            + cpu.system
            + cpu.irq.unwrap_or(0)
            + cpu.softirq.unwrap_or(0)
            + cpu.steal.unwrap_or(0);
        Ok(MachineTicks {
            busy,
            total: busy + idle,
        })
    }

    /// The share of the machine's CPU that was busy since `earlier` (0 to 1).
    pub fn busy_share_since(&self, earlier: &MachineTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Reads the usage of process `pid` (Linux).
pub fn process_usage(pid: u32) -> Result<ProcessUsage> {
    let failed = |reason: String| BenchError::Process { pid, reason };
    let id = i32::try_from(pid).map_err(|_| failed("pid out of range".to_owned()))?;
    let process = procfs::process::Process::new(id).map_err(|error| failed(error.to_string()))?;
    let stat = process.stat().map_err(|error| failed(error.to_string()))?;
    let status = process
        .status()
        .map_err(|error| failed(error.to_string()))?;
    let ticks = stat.utime.saturating_add(stat.stime);
    Ok(ProcessUsage {
        cpu_seconds: ticks as f64 / procfs::ticks_per_second() as f64,
        peak_rss_bytes: status.vmhwm.unwrap_or(0).saturating_mul(1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the calling thread has run on a CPU for `cpu` (its own
    /// time, `/proc/thread-self/schedstat`): a wall-clock spin gets less
    /// CPU than its length when the tests beside it keep the cores busy.
    fn spin_on_cpu_for(cpu: std::time::Duration) {
        let on_cpu = || -> u128 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse().ok())
                .expect("/proc/thread-self/schedstat")
        };
        let start = on_cpu();
        let mut sum = 0u64;
        while on_cpu() - start < cpu.as_nanos() {
            for _ in 0..10_000 {
                sum = std::hint::black_box(sum.wrapping_mul(31).wrapping_add(7));
            }
        }
        std::hint::black_box(sum);
    }

    #[test]
    fn reads_this_process_and_sees_its_work() {
        let pid = std::process::id();
        let before = process_usage(pid).expect("this process is readable");
        // Burn some CPU and touch 64 MB: both figures must move.
        let mut block = vec![0u8; 64 << 20];
        let mut sum = 0u64;
        for round in 0..40u64 {
            for (index, byte) in block.iter_mut().enumerate().step_by(4096) {
                *byte = (index as u64 ^ round) as u8;
                sum = sum.wrapping_add(u64::from(*byte));
            }
        }
        std::hint::black_box(sum);
        spin_on_cpu_for(std::time::Duration::from_millis(300));
        let after = process_usage(pid).expect("this process is readable");
        assert!(
            after.cpu_seconds >= before.cpu_seconds + 0.1,
            "{before:?} {after:?}"
        );
        assert!(after.peak_rss_bytes >= 64 << 20, "{after:?}");
        assert!(process_usage(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn the_thread_split_adds_up_to_at_most_the_process_and_names_this_thread() {
        let pid = std::process::id();
        let (spun_tx, spun_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bench-spin7".to_owned())
            .spawn(move || {
                spin_on_cpu_for(std::time::Duration::from_millis(200));
                let _ = spun_tx.send(());
                // Still alive when read: parked until the main thread reads.
                std::thread::park_timeout(std::time::Duration::from_secs(5));
            })
            .expect("a thread");
        spun_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the thread spun");
        let split = cpu_by_thread_kind(pid).expect("this process is readable");
        let whole = process_usage(pid).expect("readable").cpu_seconds;
        let spun = split.get("bench-spin").copied().unwrap_or(0.0);
        assert!(spun >= 0.1, "{split:?}");
        assert!(
            split.values().sum::<f64>() <= whole + 0.05,
            "{split:?} {whole}"
        );
    }

    #[test]
    fn the_machine_was_busy_while_this_test_spun() {
        let before = MachineTicks::now().expect("/proc/stat");
        let spin = std::time::Instant::now();
        let mut sum = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            sum = std::hint::black_box(sum.wrapping_mul(31).wrapping_add(7));
        }
        std::hint::black_box(sum);
        let after = MachineTicks::now().expect("/proc/stat");
        let share = after.busy_share_since(&before);
        assert!(share > 0.0 && share <= 1.0, "{share}");
    }
}
