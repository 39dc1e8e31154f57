//! Blocking librdkafka calls, run on tokio's blocking pool and waited for
//! at most a limit.
//!
//! librdkafka bounds its transactional calls by the timeout they are given,
//! but several of them wait for its main thread with no bound of their own
//! (`begin_transaction`, and the operation behind `send_offsets_to_transaction`
//! is awaited with `RD_POLL_INFINITE`). A chaos run saw a coordinator wait
//! for ever in its Kafka phase after the input leader was SIGKILLed: the
//! transaction stayed "open" for two minutes, no timeout fired, and every
//! partition stalled. So no caller waits on the call itself.
//!
//! Guarantees: [`bounded_blocking`] returns within its limit, whatever the
//! call does; a call still running then is abandoned (its thread finishes
//! on its own) and reported as [`KafkaTxnError::TaskLost`], which the
//! coordinator answers by recreating the producer: the new producer's
//! `init_transactions` fences the abandoned one, so nothing it might still
//! do can commit.

use std::time::Duration;

use crate::kafka::error::KafkaTxnError;

/// Added to a call's own timeout to bound the wait for it: librdkafka's
/// timeouts are honoured a little late under load.
pub const CALL_LIMIT_MARGIN: Duration = Duration::from_secs(5);

/// Runs `call` on the blocking pool and waits for it at most `limit`.
pub async fn bounded_blocking<T, F>(
    operation: &'static str,
    limit: Duration,
    call: F,
) -> Result<T, KafkaTxnError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let running = tokio::task::spawn_blocking(call);
    match tokio::time::timeout(limit, running).await {
        Err(_) => {
            tracing::error!(
                operation,
                limit_ms = limit.as_millis() as u64,
                "kafka call did not return in time; abandoned"
            );
            Err(KafkaTxnError::TaskLost {
                operation,
                reason: format!("no answer within {} ms", limit.as_millis()),
            })
        }
        Ok(Err(lost)) => Err(KafkaTxnError::TaskLost {
            operation,
            reason: lost.to_string(),
        }),
        Ok(Ok(value)) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::error::KafkaFailureClass;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_never_returns_is_abandoned_at_its_limit() {
        let (_hold, held) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        // Blocks until the sender is dropped: far past the limit.
        let result = bounded_blocking(
            "send_offsets_to_transaction",
            Duration::from_millis(200),
            move || {
                let _ = held.recv_timeout(Duration::from_secs(30));
            },
        )
        .await;
        let elapsed = started.elapsed();
        let error = result.expect_err("abandoned");
        assert!(
            matches!(
                error,
                KafkaTxnError::TaskLost {
                    operation: "send_offsets_to_transaction",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(error.class(), KafkaFailureClass::RecreateProducer);
        assert!(
            error.to_string().contains("no answer within 200 ms"),
            "{error}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_returns_in_time_gives_its_value_and_a_panic_is_a_lost_task() {
        let value = bounded_blocking("commit_transaction", Duration::from_secs(5), || 42)
            .await
            .expect("returns");
        assert_eq!(value, 42);
        let panicked = bounded_blocking("commit_transaction", Duration::from_secs(5), || {
            panic!("librdkafka wrapper panicked")
        })
        .await;
        assert!(matches!(panicked, Err(KafkaTxnError::TaskLost { .. })));
    }
}
