//! Traffic over the last minutes, from the processes' own counters: every [`SAMPLE_EVERY`] the
//! console reads every live process's announcement ([`common::beacon`]), takes the increase of
//! each counter since that process's previous announcement (a restarted process starts from
//! zero), sums over processes and keeps [`KEEP`] points. No Prometheus is involved.

use common::beacon::{Announcement, Series};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// How often the history gets a point.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Points kept: 15 minutes.
pub const KEEP: usize = 180;

/// Ingress outcomes that are not refusals.
const ACCEPTED: [&str; 3] = ["accepted", "replied", "verified"];

/// `name{k=v,…}`: one series across announcements.
fn key(s: &Series) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

/// One point: each series' increase over the interval, summed over processes.
#[derive(Debug, Clone)]
struct Point {
    at_ms: i64,
    secs: f64,
    increases: HashMap<String, (Series, f64)>,
}

impl Point {
    /// The summed increase of the series called `name` whose labels pass `pick`.
    fn sum(&self, name: &str, pick: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.increases
            .values()
            .filter(|(s, _)| s.name == name && pick(&s.labels))
            .fold(0.0, |sum, (_, v)| sum + v)
    }

    /// Increases of `name` grouped by `label`, for the series whose `label` passes `pick`.
    fn by(
        &self,
        name: &str,
        label: &str,
        pick: impl Fn(Option<&str>) -> bool,
        into: &mut BTreeMap<String, f64>,
    ) {
        for (s, v) in self.increases.values() {
            let value = s.labels.get(label).map(String::as_str);
            if s.name == name && *v > 0.0 && pick(value) {
                *into
                    .entry(value.unwrap_or_default().to_owned())
                    .or_default() += v;
            }
        }
    }

    /// A quantile (seconds) of the histogram `name` over this interval, from its buckets.
    fn quantile(&self, name: &str, q: f64) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (s, v) in self.increases.values() {
            if s.name != bucket {
                continue;
            }
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(x) => match x.parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => continue,
                },
                None => continue,
            };
            buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += v;
        }
        let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = sorted.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut below = (0.0, 0.0);
        for (le, count) in sorted {
            if count >= rank {
                if le.is_infinite() {
                    return Some(below.0);
                }
                // Linear within the bucket, as Prometheus' histogram_quantile does.
                let width = count - below.1;
                let within = if width > 0.0 {
                    (rank - below.1) / width
                } else {
                    1.0
                };
                return Some(below.0 + (le - below.0) * within);
            }
            below = (le, count);
        }
        None
    }
}

/// A live process, as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub id: String,
    pub role: String,
    pub host: String,
    pub pid: u32,
    /// Seconds since its last announcement.
    pub seen_secs_ago: f64,
    pub up_secs: f64,
}

/// One point of the traffic chart.
#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub at_ms: i64,
    /// Pushes accepted by the ingress, per second.
    pub pushes: f64,
    /// Pushes refused by the ingress (any reason), per second.
    pub refused: f64,
    /// Events published by the decrypt workers, per second.
    pub events: f64,
    /// Messages dead-lettered, per second.
    pub dead: f64,
    /// The ingress's publish-and-confirm latency over the interval, ms.
    pub publish_p50_ms: Option<f64>,
    pub publish_p99_ms: Option<f64>,
}

/// What `GET /v1/console/traffic` answers.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficView {
    pub interval_secs: u64,
    pub processes: Vec<Process>,
    pub points: Vec<Rates>,
    /// Over the whole history: refusals by reason, dead letters by reason, WeChat API errors
    /// by errcode (call outcome).
    pub refusals_by_reason: BTreeMap<String, f64>,
    pub dead_letters_by_reason: BTreeMap<String, f64>,
    pub wechat_errors: BTreeMap<String, f64>,
    /// The live processes' counters now (since each started): pushes accepted, events
    /// published.
    pub pushes_total: f64,
    pub events_total: f64,
}

/// The history.
#[derive(Debug, Default)]
pub struct Traffic {
    points: VecDeque<Point>,
    /// Each process's counters at its previous announcement, and when it was made.
    last: HashMap<String, (i64, HashMap<String, f64>)>,
    live: Vec<Announcement>,
}

impl Traffic {
    /// Adds a point from the announcements read at `now_ms`.
    pub fn sample(&mut self, announcements: Vec<Announcement>, now_ms: i64) {
        let mut increases: HashMap<String, (Series, f64)> = HashMap::new();
        let mut last = HashMap::new();
        let mut secs: f64 = 0.0;
        for a in &announcements {
            let now: HashMap<String, f64> = a.series.iter().map(|s| (key(s), s.value)).collect();
            if let Some((prev_at, prev)) = self.last.get(&a.id) {
                if a.at_ms > *prev_at {
                    secs = secs.max((a.at_ms - prev_at) as f64 / 1000.0);
                }
                for s in &a.series {
                    let k = key(s);
                    let before = prev.get(&k).copied().unwrap_or(0.0);
                    // A counter that went down was reset (the process restarted).
                    let inc = if s.value >= before {
                        s.value - before
                    } else {
                        s.value
                    };
                    increases.entry(k).or_insert_with(|| (s.clone(), 0.0)).1 += inc;
                }
            }
            last.insert(a.id.clone(), (a.at_ms, now));
        }
        self.last = last;
        self.live = announcements;
        if secs > 0.0 {
            self.points.push_back(Point {
                at_ms: now_ms,
                secs,
                increases,
            });
            while self.points.len() > KEEP {
                self.points.pop_front();
            }
        }
    }

    /// WeChat API errors by errcode (the calls' outcome) over the whole history.
    pub fn wechat_errors(&self) -> BTreeMap<String, f64> {
        let mut wechat = BTreeMap::new();
        for p in &self.points {
            p.by(
                "wxpipe_wechat_calls_total",
                "outcome",
                |o| o.is_some_and(|o| o != "ok"),
                &mut wechat,
            );
        }
        wechat
    }

    pub fn view(&self, now_ms: i64) -> TrafficView {
        let accepted = |l: &BTreeMap<String, String>| {
            l.get("outcome")
                .is_some_and(|o| ACCEPTED[..2].contains(&o.as_str()))
        };
        let refused = |l: &BTreeMap<String, String>| {
            l.get("outcome")
                .is_some_and(|o| !ACCEPTED.contains(&o.as_str()))
        };
        let published =
            |l: &BTreeMap<String, String>| l.get("outcome").is_some_and(|o| o == "published");
        let mut refusals = BTreeMap::new();
        let mut dead = BTreeMap::new();
        let points = self
            .points
            .iter()
            .map(|p| {
                p.by(
                    "wxpipe_ingress_pushes_total",
                    "outcome",
                    |o| o.is_some_and(|o| !ACCEPTED.contains(&o)),
                    &mut refusals,
                );
                p.by("wxpipe_dead_letters_total", "reason", |_| true, &mut dead);
                let ms = |q| {
                    p.quantile("wxpipe_ingress_publish_seconds", q)
                        .map(|s| (s * 1e5).round() / 100.0)
                };
                Rates {
                    at_ms: p.at_ms,
                    pushes: p.sum("wxpipe_ingress_pushes_total", accepted) / p.secs,
                    refused: p.sum("wxpipe_ingress_pushes_total", refused) / p.secs,
                    events: p.sum("wxpipe_decrypt_messages_total", published) / p.secs,
                    dead: p.sum("wxpipe_dead_letters_total", |_| true) / p.secs,
                    publish_p50_ms: ms(0.5),
                    publish_p99_ms: ms(0.99),
                }
            })
            .collect();
        let total = |name: &str, pick: &dyn Fn(&BTreeMap<String, String>) -> bool| -> f64 {
            self.live
                .iter()
                .flat_map(|a| a.series.iter())
                .filter(|s| s.name == name && pick(&s.labels))
                .fold(0.0, |sum, s| sum + s.value)
        };
        TrafficView {
            interval_secs: SAMPLE_EVERY.as_secs(),
            processes: self
                .live
                .iter()
                .map(|a| Process {
                    id: a.id.clone(),
                    role: a.role.clone(),
                    host: a.host.clone(),
                    pid: a.pid,
                    seen_secs_ago: (now_ms - a.at_ms).max(0) as f64 / 1000.0,
                    up_secs: (now_ms - a.started_ms).max(0) as f64 / 1000.0,
                })
                .collect(),
            points,
            refusals_by_reason: refusals,
            dead_letters_by_reason: dead,
            wechat_errors: self.wechat_errors(),
            pushes_total: total("wxpipe_ingress_pushes_total", &accepted),
            events_total: total("wxpipe_decrypt_messages_total", &published),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, labels: &[(&str, &str)], value: f64) -> Series {
        Series {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    fn announcement(
        id: &str,
        at_ms: i64,
        pushes: f64,
        bad: f64,
        fast: f64,
        all: f64,
    ) -> Announcement {
        Announcement {
            id: id.into(),
            role: "ingress".into(),
            host: "h".into(),
            pid: 1,
            started_ms: 0,
            at_ms,
            series: vec![
                series(
                    "wxpipe_ingress_pushes_total",
                    &[("outcome", "accepted"), ("route", "authorizer")],
                    pushes,
                ),
                series(
                    "wxpipe_ingress_pushes_total",
                    &[("outcome", "bad_signature"), ("route", "authorizer")],
                    bad,
                ),
                series(
                    "wxpipe_ingress_publish_seconds_bucket",
                    &[("le", "0.01")],
                    fast,
                ),
                series(
                    "wxpipe_ingress_publish_seconds_bucket",
                    &[("le", "0.1")],
                    all,
                ),
                series(
                    "wxpipe_ingress_publish_seconds_bucket",
                    &[("le", "+Inf")],
                    all,
                ),
            ],
        }
    }

    #[test]
    fn rates_are_increases_summed_over_processes_per_second() {
        let mut t = Traffic::default();
        t.sample(
            vec![
                announcement("a", 0, 100.0, 1.0, 0.0, 0.0),
                announcement("b", 0, 50.0, 0.0, 0.0, 0.0),
            ],
            0,
        );
        assert!(t.view(0).points.is_empty(), "one sample is no rate yet");
        t.sample(
            vec![
                announcement("a", 5000, 600.0, 11.0, 90.0, 100.0),
                announcement("b", 5000, 550.0, 0.0, 0.0, 0.0),
            ],
            5000,
        );
        let v = t.view(5000);
        assert_eq!(v.points.len(), 1);
        assert_eq!(v.points[0].pushes, 200.0, "(500 + 500) / 5 s");
        assert_eq!(v.points[0].refused, 2.0);
        assert_eq!(v.refusals_by_reason.get("bad_signature"), Some(&10.0));
        assert_eq!(v.pushes_total, 1150.0);
        // 90 of 100 within 10 ms: the median is inside the first bucket, p99 in the second.
        let p50 = v.points[0].publish_p50_ms.unwrap();
        let p99 = v.points[0].publish_p99_ms.unwrap();
        assert!(p50 > 0.0 && p50 <= 10.0, "{p50}");
        assert!(p99 > 10.0 && p99 <= 100.0, "{p99}");
    }

    #[test]
    fn a_restarted_process_counts_from_zero_not_negative() {
        let mut t = Traffic::default();
        t.sample(vec![announcement("a", 0, 1000.0, 0.0, 0.0, 0.0)], 0);
        t.sample(vec![announcement("a", 5000, 20.0, 0.0, 0.0, 0.0)], 5000);
        assert_eq!(t.view(5000).points[0].pushes, 4.0);
    }
}
