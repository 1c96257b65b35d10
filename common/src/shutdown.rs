//! Graceful shutdown: one signal (SIGTERM or Ctrl-C) observed by every task of a process.

use tokio::sync::watch;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A receiver that turns true on SIGTERM or Ctrl-C, for roles that watch a flag.
pub fn on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown requested: finishing in-flight work");
        tx.send_replace(true);
        // Keep the sender alive so receivers see `true` rather than a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}

/// A periodic task's clock that stops with the process: `while every.tick().await { … }` runs
/// the body every `period` (the first time at once; late ticks are delayed, not bunched) until
/// `shutdown` turns true.
pub struct Every {
    interval: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
}

/// See [`Every`].
pub fn every(period: std::time::Duration, shutdown: watch::Receiver<bool>) -> Every {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Every { interval, shutdown }
}

impl Every {
    /// Waits for the next tick: true, or false once shutdown was requested.
    pub async fn tick(&mut self) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        let ticked = tokio::select! {
            _ = self.interval.tick() => true,
            _ = self.shutdown.wait_for(|s| *s) => false,
        };
        ticked && !*self.shutdown.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn every_ticks_until_shutdown() {
        let (tx, rx) = watch::channel(false);
        let mut every = every(Duration::from_secs(5), rx);
        let start = tokio::time::Instant::now();
        assert!(every.tick().await, "the first tick is at once");
        assert!(every.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(true);
            tx
        });
        assert!(!every.tick().await, "shutdown ends the wait at once");
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        let _tx = stopper.await.unwrap();
        assert!(!every.tick().await);
    }
}
