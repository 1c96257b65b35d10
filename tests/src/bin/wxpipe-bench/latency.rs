//! Push-to-event latency of a phase, plain and without the broker's own stalls
//! ([`super::stalls`]).

use super::percentile;
use super::stalls::{Counts, StallWatch, outside_stalls};

/// The start of a latency phase left out of its percentiles.
pub const WARMUP_MS: i64 = 1_000;

/// The latency percentiles (ms) of one phase, after its first [`WARMUP_MS`].
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
    /// The broker's stalls during the phase.
    pub stalls: Counts,
    /// p99 of the pushes that did not overlap one of them.
    pub quiet_p99: f64,
    pub quiet_n: usize,
}

impl Latency {
    /// Of the pushes `(sent_ms, received_ms)`. With `WXPIPE_BENCH_SAMPLES=<dir>` every sample
    /// (the warm-up's too) is also written to `<dir>/<name>.csv` (`sent_ms,received_ms`), to see
    /// when a tail happened.
    pub fn of(name: &str, samples: &[(i64, i64)], watch: &StallWatch) -> Self {
        if let Some(dir) = std::env::var_os("WXPIPE_BENCH_SAMPLES") {
            let csv: String = samples.iter().map(|(s, r)| format!("{s},{r}\n")).collect();
            let path = std::path::Path::new(&dir).join(format!("{name}.csv"));
            if let Err(e) = std::fs::write(&path, csv) {
                eprintln!("writing {}: {e}", path.display());
            }
        }
        // The phase's first second is its warm-up, as the throughput phases have theirs: a new
        // connection's first publishes and a new consumer's first deliveries (50–90 ms there).
        let first = samples.iter().map(|(s, _)| *s).min().unwrap_or(0);
        let samples: Vec<(i64, i64)> = samples
            .iter()
            .copied()
            .filter(|(s, _)| *s >= first + WARMUP_MS)
            .collect();
        let samples = samples.as_slice();
        let mut all: Vec<f64> = samples.iter().map(|(s, r)| (r - s) as f64).collect();
        all.sort_by(|a, b| a.total_cmp(b));
        let (from, to) = samples
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), (s, r)| {
                (lo.min(*s), hi.max(*r))
            });
        // The stalls whose window overlaps the phase: the same test that sets pushes apart.
        let seen = watch.stalls();
        let stalls = Counts::of(
            seen.iter()
                .copied()
                .filter(|&(t, kind)| kind.overlaps(t, from, to)),
        );
        let mut quiet = outside_stalls(samples, &seen);
        quiet.sort_by(|a, b| a.total_cmp(b));
        Self {
            p50: percentile(&all, 0.5),
            p99: percentile(&all, 0.99),
            max: all.last().copied().unwrap_or(0.0),
            n: all.len(),
            stalls,
            quiet_p99: percentile(&quiet, 0.99),
            quiet_n: quiet.len(),
        }
    }

    /// One line: the percentiles, then what the broker's stalls did to them.
    pub fn describe(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events); {}; p99 of the {} events outside them {:.1} ms",
            self.p50, self.p99, self.max, self.n, self.stalls, self.quiet_n, self.quiet_p99
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_second_is_warm_up() {
        // 80 ms in the first second, then 2,000 pushes of 5 ms and 10 of 40 ms.
        let mut samples: Vec<(i64, i64)> = (0..100).map(|i| (i, i + 80)).collect();
        samples.extend((0..2_010).map(|i| (1_000 + i, 1_000 + i + if i < 10 { 40 } else { 5 })));
        let l = Latency::of("test", &samples, &StallWatch::start(None));
        assert_eq!(l.n, 2_010);
        assert_eq!((l.p50, l.p99, l.max), (5.0, 5.0, 40.0));
    }
}
