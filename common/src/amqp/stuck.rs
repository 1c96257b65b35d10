//! Telling a confirm channel the broker keeps refusing from one that was refused once.
//!
//! Measured on RabbitMQ 3.10.8 (docs/robustness.md, "A node that stays down"): quorum queues
//! declared with `x-overflow: reject-publish` (which at-least-once dead-lettering needs), one
//! queue's leader node killed; a channel whose first publish to that queue lands during the
//! leader election gets a **nack for every later publish to that queue until the old leader
//! node returns** — minutes, or never — while a channel opened after the election is acked at
//! once, and the other queues are acked on the stuck channel all along. So acks on the channel
//! say nothing; a streak of nacks does. A [`NackStreak`] per channel says when to replace it:
//! nacks for [`STUCK_AFTER`] with no pause longer than [`STREAK_GAP`] between them. A channel
//! replaced during the election may get stuck again; it is then replaced again, until one
//! opened after the election is acked.
//!
//! Replacing a channel refused for a good reason (a queue really full) costs two round trips
//! every [`STUCK_AFTER`] and changes nothing else: the publishes are refused either way.

use std::time::{Duration, Instant};

/// How long nacks must go on before the channel is replaced.
pub const STUCK_AFTER: Duration = Duration::from_millis(500);
/// A pause in the nacks longer than this ends the streak.
pub const STREAK_GAP: Duration = Duration::from_secs(2);

/// The nacks one channel has received lately.
#[derive(Debug, Default, Clone)]
pub struct NackStreak {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl NackStreak {
    /// A publish on the channel was nacked at `now`; true when the channel should be replaced.
    pub fn nacked(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) > STREAK_GAP)
        {
            self.first = None;
        }
        let first = *self.first.get_or_insert(now);
        self.last = Some(now);
        now.saturating_duration_since(first) >= STUCK_AFTER
    }

    /// The channel was replaced: start over.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn one_nack_or_a_short_burst_keeps_the_channel() {
        let t = Instant::now();
        let mut s = NackStreak::default();
        assert!(!s.nacked(t));
        assert!(!s.nacked(at(t, 100)));
        assert!(!s.nacked(at(t, 499)));
    }

    #[test]
    fn nacks_going_on_past_the_threshold_replace_it() {
        let t = Instant::now();
        let mut s = NackStreak::default();
        for ms in (0..500).step_by(50) {
            assert!(!s.nacked(at(t, ms)), "at {ms} ms");
        }
        assert!(s.nacked(at(t, 500)));
    }

    #[test]
    fn a_pause_longer_than_the_gap_starts_a_new_streak() {
        let t = Instant::now();
        let mut s = NackStreak::default();
        assert!(!s.nacked(t));
        assert!(
            !s.nacked(at(t, 2_100)),
            "2.1 s after the last: a new streak"
        );
        assert!(!s.nacked(at(t, 2_500)));
        assert!(s.nacked(at(t, 2_600)));
    }

    #[test]
    fn sparse_nacks_within_the_gap_are_one_streak() {
        let t = Instant::now();
        let mut s = NackStreak::default();
        assert!(!s.nacked(t));
        assert!(s.nacked(at(t, 1_900)), "nacks 1.9 s apart still persist");
    }

    #[test]
    fn reset_starts_over() {
        let t = Instant::now();
        let mut s = NackStreak::default();
        s.nacked(t);
        s.reset();
        assert!(!s.nacked(at(t, 600)));
    }
}
