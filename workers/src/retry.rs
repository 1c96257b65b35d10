//! Retrying transient failures with jittered exponential backoff (`backon`), a bounded number
//! of times, so that a role's handler can say "dead-letter after N attempts" in one line.

use backon::BackoffBuilder;
use std::future::Future;
use std::time::Duration;

/// The result of one attempt.
pub enum Attempt<T> {
    Done(T),
    /// Try again later; the string says why (for the log and the dead letter's detail).
    Transient {
        reason: &'static str,
        detail: String,
    },
}

/// What [`retry`] ends with when every attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub reason: &'static str,
    pub detail: String,
    pub attempts: u32,
}

/// Runs `attempt` until it is `Done` or `max_attempts` transient failures have happened, waiting
/// 100 ms, 200 ms, … up to 10 s (with jitter) between attempts.
pub async fn retry<T, F, Fut>(
    max_attempts: u32,
    what: &'static str,
    mut attempt: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Transient { reason, detail } => {
                metrics::counter!("wxpipe_retries_total", "what" => what, "reason" => reason)
                    .increment(1);
                if n >= max_attempts {
                    return Err(GaveUp {
                        reason,
                        detail,
                        attempts: n,
                    });
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::debug!(what, reason, %detail, attempt = n, retry_in = ?delay, "transient failure");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_and_succeeds_otherwise() {
        let mut calls = 0;
        let r: Result<(), _> = retry(3, "test", || {
            calls += 1;
            async {
                Attempt::Transient {
                    reason: "down",
                    detail: "x".into(),
                }
            }
        })
        .await;
        assert_eq!(r.unwrap_err().attempts, 3);
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r = retry(5, "test", || {
            calls += 1;
            let c = calls;
            async move {
                if c < 3 {
                    Attempt::Transient {
                        reason: "down",
                        detail: String::new(),
                    }
                } else {
                    Attempt::Done(c)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }
}
