//! The end every scenario shares once the pipeline caught up: every
//! instance still running is stopped with SIGTERM, as an orchestrator stops
//! it, and each must exit 0 within 15 s (the contract's shutdown); an
//! instance that died before the end is a violation too.
//!
//! Guarantee: every instance given is stopped (or found gone) before this
//! returns, so the verdict that follows reads what they left behind.

use std::time::Duration;

use crate::harness::Service;

/// How long an instance has to exit after SIGTERM.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(15);

/// Stops `main` (which must still be running) and `others`; the violations,
/// each naming the instance and its log.
pub(crate) async fn stop_instances(main: Service, others: Vec<Service>) -> Vec<String> {
    let mut violations = Vec::new();
    for other in others {
        stop(other, "another instance", &mut violations).await;
    }
    let mut main = main;
    if main.is_running() {
        stop(main, "the instance", &mut violations).await;
    } else {
        violations.push(format!(
            "the instance exited before the end; log: {}",
            main.log_path.display()
        ));
    }
    violations
}

async fn stop(service: Service, which: &str, violations: &mut Vec<String>) {
    let log = service.log_path.clone();
    match service.terminate(SHUTDOWN_WITHIN).await {
        Ok((exit, _)) if exit.success() => {}
        Ok((exit, _)) => violations.push(format!(
            "{which} did not exit 0 on SIGTERM but {exit:?}; log: {}",
            log.display()
        )),
        Err(error) => violations.push(format!("{which}: {error}; log: {}", log.display())),
    }
}
