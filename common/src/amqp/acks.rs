//! Coalesced acknowledgements of one channel.
//!
//! A consumer whose handlers ack one delivery at a time makes the broker settle each message on
//! its own: for a quorum queue every `basic.ack` becomes its own command in the queue's log. One
//! `basic.ack` with `multiple` settles every delivery up to its tag at once (measured: RabbitMQ's
//! CPU per message of a consume-and-republish drain fell by about a third without per-message
//! acks; docs/performance.md). [`Acks`] decides which acknowledgements go out, and when:
//!
//! * a delivery whose handler said `Ack` becomes *ready*; nothing is sent yet;
//! * the ready deliveries at the head of the channel (every earlier tag settled or ready) go out
//!   as **one** `basic.ack(multiple)` once a quarter of the prefetch is ready or the first of
//!   them has waited [`LINGER`];
//! * a `multiple` never covers a delivery still being handled: a ready delivery behind one that
//!   is still running waits for it — unless that one has been the channel's oldest unsettled
//!   delivery for [`STUCK`], after which every ready delivery behind it is acked on its own, so
//!   that a handler retrying for minutes holds one slot of the prefetch window, not all of them
//!   (as before the coalescing). The clock starts when it becomes the oldest, not when it was
//!   delivered: draining a backlog, every delivery waits its turn in a full prefetch window
//!   (256 at 10,000/s is ~25 ms) without being slow, and an age-based 25 ms rule sent half of
//!   a drain's acknowledgements one by one;
//! * a delivery settled any other way (requeued, dead-lettered) is acked or nacked on its own by
//!   its handler's task and leaves the bookkeeping ([`Acks::settled`]).
//!
//! An acknowledgement still waiting when the connection is lost is never sent; the broker
//! redelivers that message, and its handler finds the push already done (the decrypt worker's
//! dedup key) — the same as a crash just before an ack.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Longest a ready acknowledgement waits for others to join it.
pub const LINGER: Duration = Duration::from_millis(2);
/// How long the oldest unsettled delivery may hold back the acknowledgements behind it: above
/// the scheduling delays of a loaded machine (at 25 ms, a drained backlog of 600 still went out
/// in 170 frames, 145 single, with the test suite running beside it), and no longer than a
/// retrying handler's first backoff (100 ms), after which it is known to be slow.
pub const STUCK: Duration = Duration::from_millis(100);

/// A frame to send on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckFrame {
    /// `basic.ack(tag, multiple = true)`: every delivery up to `tag`.
    UpTo(u64),
    /// `basic.ack(tag, multiple = false)`.
    One(u64),
}

/// A delivery not settled on the broker yet.
#[derive(Debug, Clone, Copy)]
struct Entry {
    delivered: Instant,
    /// Its handler said `Ack`.
    ready: bool,
}

/// The unsettled deliveries of one channel (see the module's documentation).
#[derive(Debug)]
pub struct Acks {
    pending: BTreeMap<u64, Entry>,
    ready: usize,
    /// When the first ready delivery since the last flush became ready.
    ready_since: Option<Instant>,
    /// When the oldest unsettled delivery became the oldest (see [`STUCK`]).
    head_since: Option<Instant>,
    /// Ready deliveries that make a flush due at once.
    enough: usize,
}

/// A quarter of the prefetch (at least one): how many ready acknowledgements make a flush due at
/// once, and — at least two — how few deliveries in hand make the consumer linger for company
/// (`super::consumer`).
pub fn quarter(prefetch: u16) -> usize {
    usize::from(prefetch / 4).max(1)
}

impl Acks {
    pub fn new(prefetch: u16) -> Self {
        Self {
            pending: BTreeMap::new(),
            ready: 0,
            ready_since: None,
            head_since: None,
            enough: quarter(prefetch),
        }
    }

    /// A delivery arrived.
    pub fn delivered(&mut self, tag: u64, now: Instant) {
        // Tags only grow: a new delivery is the oldest only of an empty channel.
        if self.pending.is_empty() {
            self.head_since = Some(now);
        }
        self.pending.insert(
            tag,
            Entry {
                delivered: now,
                ready: false,
            },
        );
    }

    /// Its handler said `Ack`. Whether enough are ready to flush now.
    pub fn ready(&mut self, tag: u64, now: Instant) -> bool {
        if let Some(e) = self.pending.get_mut(&tag)
            && !e.ready
        {
            e.ready = true;
            self.ready += 1;
            self.ready_since.get_or_insert(now);
        }
        self.ready >= self.enough
    }

    /// It was settled by its own task (nack, or the ack after a dead letter), or never will be.
    pub fn settled(&mut self, tag: u64, now: Instant) {
        if self
            .pending
            .first_key_value()
            .is_some_and(|(head, _)| *head == tag)
        {
            self.head_since = Some(now);
        }
        if let Some(e) = self.pending.remove(&tag)
            && e.ready
        {
            self.ready -= 1;
        }
    }

    /// Ready acknowledgements not sent yet.
    pub fn waiting(&self) -> usize {
        self.ready
    }

    /// When [`Acks::flush`] has something to send without more deliveries finishing: the head's
    /// linger, or the moment the delivery holding the others back counts as stuck.
    pub fn deadline(&self) -> Option<Instant> {
        if self.ready == 0 {
            return None;
        }
        let (_, head) = self.pending.first_key_value()?;
        if head.ready {
            Some(self.ready_since.unwrap_or(head.delivered) + LINGER)
        } else {
            Some(self.head_since.unwrap_or(head.delivered) + STUCK)
        }
    }

    /// The frames due at `now`: the ready head as one `multiple` ack, and, behind a delivery
    /// that has been the oldest for [`STUCK`], every ready one on its own. With `all`, every
    /// ready delivery goes (shutting down).
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<AckFrame> {
        let mut frames = Vec::new();
        let mut last = None;
        while let Some(entry) = self.pending.first_entry() {
            if !entry.get().ready {
                break;
            }
            last = Some(*entry.key());
            entry.remove();
            self.ready -= 1;
        }
        if last.is_some() {
            self.head_since = Some(now);
        }
        frames.extend(last.map(AckFrame::UpTo));
        let stuck = self.head_since.is_some_and(|since| {
            !self.pending.is_empty() && now.saturating_duration_since(since) >= STUCK
        });
        if self.ready > 0 && (all || stuck) {
            let behind: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, e)| e.ready)
                .map(|(tag, _)| *tag)
                .collect();
            for tag in behind {
                self.pending.remove(&tag);
                frames.push(AckFrame::One(tag));
            }
            self.ready = 0;
        }
        self.ready_since = (self.ready > 0).then_some(now);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks_of(prefetch: u16, tags: std::ops::RangeInclusive<u64>, at: Instant) -> Acks {
        let mut acks = Acks::new(prefetch);
        for tag in tags {
            acks.delivered(tag, at);
        }
        acks
    }

    #[test]
    fn the_ready_head_goes_out_as_one_multiple_ack() {
        let t0 = Instant::now();
        let mut acks = acks_of(256, 1..=5, t0);
        for tag in [2, 1, 3] {
            assert!(!acks.ready(tag, t0), "not enough for an early flush");
        }
        assert_eq!(acks.deadline(), Some(t0 + LINGER));
        assert_eq!(acks.flush(t0 + LINGER, false), vec![AckFrame::UpTo(3)]);
        assert_eq!(acks.waiting(), 0);
        assert_eq!(acks.deadline(), None);
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_running() {
        let t0 = Instant::now();
        let mut acks = acks_of(256, 1..=4, t0);
        acks.ready(1, t0);
        acks.ready(3, t0);
        acks.ready(4, t0);
        // 2 is running: only 1 may go; 3 and 4 wait for 2 (not stuck yet).
        assert_eq!(acks.flush(t0 + LINGER, false), vec![AckFrame::UpTo(1)]);
        assert_eq!(acks.waiting(), 2);
        assert_eq!(
            acks.deadline(),
            Some(t0 + LINGER + STUCK),
            "2 is the oldest since then"
        );
        acks.ready(2, t0 + LINGER);
        assert_eq!(acks.flush(t0 + LINGER * 2, false), vec![AckFrame::UpTo(4)]);
    }

    #[test]
    fn behind_a_stuck_delivery_each_ready_one_is_acked_on_its_own() {
        let t0 = Instant::now();
        let mut acks = acks_of(256, 1..=3, t0);
        acks.ready(2, t0);
        acks.ready(3, t0);
        assert_eq!(
            acks.flush(t0 + STUCK, false),
            vec![AckFrame::One(2), AckFrame::One(3)]
        );
        assert_eq!(acks.deadline(), None, "nothing ready is left");
        // The stuck one ends later, on its own terms.
        acks.ready(1, t0 + STUCK * 10);
        assert_eq!(acks.flush(t0 + STUCK * 10, false), vec![AckFrame::UpTo(1)]);
    }

    #[test]
    fn a_delivery_that_waited_its_turn_is_not_stuck() {
        // Draining a backlog: 1 to 4 have been in the window for longer than STUCK when 1
        // and 3 are done; 2 has only just become the oldest, so 3 waits for it.
        let t0 = Instant::now();
        let mut acks = acks_of(256, 1..=4, t0);
        let later = t0 + STUCK * 2;
        acks.ready(1, later);
        acks.ready(3, later);
        assert_eq!(acks.flush(later + LINGER, false), vec![AckFrame::UpTo(1)]);
        assert_eq!(acks.deadline(), Some(later + LINGER + STUCK));
        acks.ready(2, later + LINGER * 2);
        assert_eq!(
            acks.flush(later + LINGER * 3, false),
            vec![AckFrame::UpTo(3)]
        );
        // 4 is the oldest now; were it to hold 5 back for STUCK, 5 would go on its own.
        acks.delivered(5, later);
        acks.ready(5, later + LINGER * 3);
        let stuck_at = later + LINGER * 3 + STUCK;
        assert_eq!(acks.deadline(), Some(stuck_at));
        assert_eq!(acks.flush(stuck_at, false), vec![AckFrame::One(5)]);
    }

    #[test]
    fn a_quarter_of_the_prefetch_ready_makes_a_flush_due_at_once() {
        let t0 = Instant::now();
        let mut acks = acks_of(8, 1..=8, t0);
        assert!(!acks.ready(1, t0));
        assert!(acks.ready(2, t0));
        assert_eq!(acks.flush(t0, false), vec![AckFrame::UpTo(2)]);
    }

    #[test]
    fn a_delivery_settled_by_its_task_leaves_no_gap() {
        let t0 = Instant::now();
        let mut acks = acks_of(256, 1..=3, t0);
        acks.ready(1, t0);
        acks.settled(2, t0); // nacked (requeued) by its own task
        acks.ready(3, t0);
        assert_eq!(acks.flush(t0 + LINGER, false), vec![AckFrame::UpTo(3)]);
    }

    #[test]
    fn shutting_down_sends_every_ready_acknowledgement() {
        let t0 = Instant::now();
        let mut acks = acks_of(256, 1..=3, t0);
        acks.ready(1, t0);
        acks.ready(3, t0);
        assert_eq!(
            acks.flush(t0, true),
            vec![AckFrame::UpTo(1), AckFrame::One(3)]
        );
        assert_eq!(acks.waiting(), 0);
    }
}
