//! The local broker's own stalls, seen and named (issue 11: "where does the half-load latency
//! come from when the worker is idle half the time?").
//!
//! * **`epmd-starter`.** RabbitMQ before 3.11 (`rabbit_epmd_monitor` →
//!   `rabbit_nodes_common:ensure_epmd/0`) starts a whole Erlang VM, `erl -sname epmd-starter-N
//!   -s erlang halt`, every 60 seconds, whether epmd runs or not (rabbitmq-server#10457 made it
//!   check first, from 3.11). On a 2-core machine that VM's start — ~0.5 s of CPU within a few
//!   hundred ms — stalls every process of the pipeline (`perf sched latency`: 40–60 ms waits of
//!   the broker's own scheduler threads while it boots).
//! * **Quorum-queue WAL rollover.** Every quorum queue of a node writes one write-ahead log;
//!   when it reaches `raft.wal_max_size_bytes` (512 MB by default: about 1.5 runs of
//!   `wxpipe-bench decrypt`), a new file is started and the old one is written out into the
//!   queues' segment files.
//!
//! A latency phase of 10–30 s catches such a moment or not, and moves the p99 from one run to
//! the next (same binaries: 14 ms, then 580 ms). [`StallWatch`] polls, every 5 ms, the broker's
//! `erl_child_setup` (which its ports and `os:cmd`s fork from) for an `epmd-starter` child, and
//! the broker's quorum directory for a new `.wal` file; the benchmarks report how many fell into
//! each phase and the latency percentiles of the pushes that overlapped none, beside the plain
//! ones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A broker stall of one of the two kinds (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    EpmdStarter,
    WalRollover,
}

impl Stall {
    /// The time (ms) around its first sight `t` that a stall disturbs: `[t + start, t + end)`.
    /// An `epmd-starter` VM boots and halts within ~0.6 s of its fork. A WAL rollover is seen
    /// when the new file appears; the pushes stalled by it (250–600 ms each, in two decrypt
    /// runs matched against the WAL directory's listing every 50 ms) were sent from ~0.7 s
    /// before that until the old file was deleted, 0.9–1.5 s after.
    pub fn window(self) -> (i64, i64) {
        match self {
            Stall::EpmdStarter => (-10, 1_000),
            Stall::WalRollover => (-1_000, 2_000),
        }
    }

    /// Whether this stall, first seen at `t`, disturbed a push in the pipeline from `sent` to
    /// `received` (or a phase from its first send to its last arrival).
    pub fn overlaps(self, t: i64, sent: i64, received: i64) -> bool {
        let (start, end) = self.window();
        sent < t + end && received >= t + start
    }
}

/// Watches the local broker for stalls (see the module's documentation).
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(i64, Stall)>>>,
}

impl StallWatch {
    /// Starts watching the broker whose VM is `broker` (none: nothing is ever seen).
    pub fn start(broker: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let setup = broker.and_then(child_setup_of);
        let wal = wal_dir();
        if setup.is_some() || wal.is_some() {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || watch(setup, wal, &stop, &seen));
        }
        Self { stop, seen }
    }

    /// When (unix ms) each stall was first seen.
    pub fn stalls(&self) -> Vec<(i64, Stall)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many of each kind were first seen in `[from_ms, to_ms)`.
    pub fn count_between(&self, from_ms: i64, to_ms: i64) -> Counts {
        Counts::of(
            self.stalls()
                .into_iter()
                .filter(|(t, _)| (from_ms..to_ms).contains(t)),
        )
    }
}

/// Stalls of each kind in a phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub epmd: usize,
    pub wal: usize,
}

impl Counts {
    /// Tallies `stalls` by kind.
    pub fn of(stalls: impl IntoIterator<Item = (i64, Stall)>) -> Self {
        let mut c = Counts::default();
        for (_, kind) in stalls {
            match kind {
                Stall::EpmdStarter => c.epmd += 1,
                Stall::WalRollover => c.wal += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.epmd + self.wal
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "broker stalls during it: {} epmd-starter, {} WAL rollover",
            self.epmd, self.wal
        )
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The broker's `erl_child_setup`.
fn child_setup_of(broker: u32) -> Option<u32> {
    children(broker).into_iter().find(|&pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "erl_child_setup")
    })
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The local broker's quorum-queue directory (where its `.wal` files are), when it can be read:
/// Debian's package keeps it in `/var/lib/rabbitmq/mnesia/<node>/quorum/<node>`.
fn wal_dir() -> Option<PathBuf> {
    let mnesia = std::fs::read_dir("/var/lib/rabbitmq/mnesia").ok()?;
    let mut found = mnesia
        .flatten()
        .map(|node| node.path().join("quorum"))
        .filter_map(|q| std::fs::read_dir(q).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .filter(|p| !wal_files(p).is_empty());
    let dir = found.next()?;
    // Several nodes' directories: which one is the broker's is not known; watch none.
    found.next().is_none().then_some(dir)
}

fn wal_files(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().ends_with(".wal"))
                .collect()
        })
        .unwrap_or_default()
}

fn watch(
    setup: Option<u32>,
    wal: Option<PathBuf>,
    stop: &AtomicBool,
    seen: &Mutex<Vec<(i64, Stall)>>,
) {
    let note = |t: i64, kind: Stall| {
        if let Ok(mut s) = seen.lock() {
            s.push((t, kind));
        }
    };
    let mut wals = wal.as_deref().map(wal_files).unwrap_or_default();
    // Children not yet known to be an epmd-starter or not, with when they were first seen: a
    // fresh fork still carries erl_child_setup's command line until it execs `erl`.
    let mut pending: HashMap<u32, i64> = HashMap::new();
    let mut known: Vec<u32> = setup.map(children).unwrap_or_default();
    while !stop.load(Ordering::Relaxed) {
        let now = common::unix_now_ms();
        if let Some(dir) = &wal {
            let files = wal_files(dir);
            if files.iter().any(|f| !wals.contains(f)) {
                note(now, Stall::WalRollover);
            }
            wals = files;
        }
        let current = setup.map(children).unwrap_or_default();
        for &pid in &current {
            if !known.contains(&pid) {
                known.push(pid);
                pending.insert(pid, now);
            }
        }
        known.retain(|p| current.contains(p));
        pending.retain(|pid, first| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is = |s: &[u8]| cmdline.windows(s.len()).any(|w| w == s);
            if is(b"epmd-starter") {
                note(*first, Stall::EpmdStarter);
                false
            } else {
                // Still forking (or gone, or another command): look again while it lives.
                current.contains(pid)
                    && (cmdline.is_empty() || is(b"erl_child_setup") || is(b"erl"))
            }
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The latencies (ms) of the pushes `(sent_ms, received_ms)` whose time in the pipeline did
/// not overlap the [`Stall::window`] of any of `stalls` (first seen at unix ms).
pub fn outside_stalls(samples: &[(i64, i64)], stalls: &[(i64, Stall)]) -> Vec<f64> {
    samples
        .iter()
        .filter(|&&(sent, received)| {
            !stalls
                .iter()
                .any(|&(t, kind)| kind.overlaps(t, sent, received))
        })
        .map(|(sent, received)| (received - sent) as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_overlapping_a_stall_are_set_apart() {
        let samples = [
            (0, 5),
            (990, 1_000),
            (1_000, 1_030),
            (1_500, 1_600),
            (2_020, 2_025),
        ];
        // An epmd-starter first seen at 1,010 ms disturbs from 1,000 until 2,010 ms.
        let quiet = outside_stalls(&samples, &[(1_010, Stall::EpmdStarter)]);
        assert_eq!(quiet, vec![5.0, 5.0]);
        // A WAL rollover first seen at 2,100 ms: from 1,100 ms until 4,100 ms.
        let quiet = outside_stalls(&samples, &[(2_100, Stall::WalRollover)]);
        assert_eq!(quiet, vec![5.0, 10.0, 30.0]);
        assert_eq!(outside_stalls(&samples, &[]).len(), samples.len());
    }
}
