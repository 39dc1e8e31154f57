//! What a measured process used, read from outside in `/proc/<pid>`: CPU
//! time of all its threads (user and system) and its peak resident memory
//! (`VmHWM`, the kernel's high-water mark, so no sampling can miss a peak).

use crate::error::{BenchError, Result};

/// CPU time and peak memory of a process so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// user + system CPU seconds of every thread
    pub cpu_seconds: f64,
    /// peak resident set, bytes
    pub peak_rss_bytes: u64,
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
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            sum = std::hint::black_box(sum.wrapping_mul(31).wrapping_add(7));
        }
        std::hint::black_box(sum);
        let after = process_usage(pid).expect("this process is readable");
        assert!(
            after.cpu_seconds >= before.cpu_seconds + 0.1,
            "{before:?} {after:?}"
        );
        assert!(after.peak_rss_bytes >= 64 << 20, "{after:?}");
        assert!(process_usage(u32::MAX).is_err(), "no such process");
    }
}
