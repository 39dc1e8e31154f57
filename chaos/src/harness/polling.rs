//! Waiting for a condition with a bounded timeout that says what it waited
//! for.

use crate::bail;
use crate::error::{ChaosError, Result};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Polls `check` every 200 ms until it returns `Ok(true)`; fails after
/// `timeout` naming `what` and the last error `check` returned, if any.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<ChaosError> = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!(
                    "timed out after {:.1} s waiting until {what} (last error: {error:#})",
                    timeout.as_secs_f64()
                ),
                None => bail!(
                    "timed out after {:.1} s waiting until {what}",
                    timeout.as_secs_f64()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
