//! An opt-in CPU profile of the process, for finding where onceflow's CPU
//! goes (the sandbox the benchmark runs in has no perf events, so `perf`
//! cannot sample it). Built only with the `cpu-profile` feature, and only
//! active when `CPU_PROFILE_OUT` names a path prefix: the profile goes to
//! `<prefix>.<pid>.txt`, one file per process (not an `ONCEFLOW_` variable:
//! settings refuse unknown keys, and this is a build for measuring, not a
//! setting).
//!
//! It samples with `SIGPROF` (pprof-rs, 499 Hz) and rewrites the file every
//! two seconds, so a process that is killed still leaves its profile:
//! samples by thread kind, then the functions with the most samples on top
//! of the stack (self) and anywhere in it (inclusive).
//!
//! What to know when reading one:
//! - librdkafka's threads block signals, so the CPU they use is sampled on
//!   whichever thread takes the signal, often one asleep in `syscall`
//!   (futex) or `epoll_wait`: read those as "librdkafka, elsewhere";
//! - frames inside libc are kept (pprof-rs suggests leaving them out,
//!   because unwinding from inside libc can deadlock; it did not in our
//!   runs), so `malloc`, `free` and `memcpy` show.
//!
//! Guarantees nothing about onceflow's behaviour beyond the cost of the
//! sampling itself.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// How often the report is written.
const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Functions listed in each table.
const TOP: usize = 60;

/// Starts the profiler if `CPU_PROFILE_OUT` is set; it lives as long as the
/// process.
pub fn start_if_asked() {
    let Some(prefix) = std::env::var_os("CPU_PROFILE_OUT") else {
        return;
    };
    let mut out = prefix;
    out.push(format!(".{}.txt", std::process::id()));
    let out = PathBuf::from(out);
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(499)
        .blocklist(&["vdso"])
        .build()
    {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("onceflow: CPU profile not started: {error}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("cpu-profile".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(WRITE_EVERY);
                match guard.report().build() {
                    Ok(report) => {
                        if let Err(error) = std::fs::write(&out, summary(&report)) {
                            eprintln!("onceflow: CPU profile not written: {error}");
                        }
                    }
                    Err(error) => eprintln!("onceflow: CPU profile not built: {error}"),
                }
            }
        });
    if let Err(error) = spawned {
        eprintln!("onceflow: CPU profile thread not started: {error}");
    }
}

/// The thread's kind: its name without a trailing number (`tokio-rt-worker`,
/// `rdk:broker1` → `rdk:broker`).
fn thread_kind(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '/')
        .to_owned()
}

fn summary(report: &pprof::Report) -> String {
    let mut total = 0isize;
    let mut by_thread: HashMap<String, isize> = HashMap::new();
    let mut self_samples: HashMap<String, isize> = HashMap::new();
    let mut inclusive: HashMap<String, isize> = HashMap::new();
    for (frames, count) in &report.data {
        total += count;
        *by_thread
            .entry(thread_kind(&frames.thread_name))
            .or_default() += count;
        // frames.frames: innermost first; each a list of inlined symbols.
        let names: Vec<String> = frames
            .frames
            .iter()
            .flat_map(|symbols| symbols.iter().map(|symbol| symbol.name()))
            .collect();
        if let Some(leaf) = names.first() {
            *self_samples.entry(leaf.clone()).or_default() += count;
        }
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if seen.insert(name.clone()) {
                *inclusive.entry(name).or_default() += count;
            }
        }
    }
    let mut text = String::new();
    let _ = writeln!(text, "samples: {total}");
    for (title, table) in [
        ("by thread kind", by_thread),
        ("self (top of the stack)", self_samples),
        ("inclusive (anywhere in the stack)", inclusive),
    ] {
        let _ = writeln!(text, "\n## {title}");
        let mut rows: Vec<(String, isize)> = table.into_iter().collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.1));
        for (name, count) in rows.into_iter().take(TOP) {
            let share = if total > 0 {
                100.0 * count as f64 / total as f64
            } else {
                0.0
            };
            let _ = writeln!(text, "{share:6.2}%  {count:7}  {name}");
        }
    }
    text
}
