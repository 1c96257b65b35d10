//! Every long-running process announces itself in Redis every few seconds: its role, where it
//! runs, and its own counters (what its `/metrics` shows). The console reads the announcements
//! to show which roles are alive and how traffic moves, with no Prometheus needed.
//!
//! An announcement is `…:proc:{id}` (JSON, expiring after [`TTL`]) plus the id in `…:procs`
//! scored by the time it was made; readers ignore ids older than [`TTL`] and prune them.

use crate::redis::{Keys, RedisError, conn, failed};
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// How often a process announces itself.
pub const EVERY: Duration = Duration::from_secs(5);
/// An announcement older than this means the process is gone.
pub const TTL: Duration = Duration::from_secs(20);

/// One counter, gauge or histogram bucket (`…_bucket` with an `le` label) of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What a process announced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// `{host}:{pid}`.
    pub id: String,
    pub role: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
    pub at_ms: i64,
    pub series: Vec<Series>,
}

/// The series of a Prometheus text exposition whose name starts with `wxpipe_` (histograms as
/// their buckets, `_sum` and `_count`). Lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Series> {
    use prometheus_parse::{Scrape, Value};
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let Ok(scrape) = Scrape::parse(lines) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in scrape.samples {
        if !s.metric.starts_with("wxpipe_") {
            continue;
        }
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => out.push(Series {
                name: s.metric,
                labels,
                value: v,
            }),
            Value::Histogram(buckets) => {
                for b in buckets {
                    let mut labels = labels.clone();
                    labels.insert("le".into(), prometheus_le(b.less_than));
                    out.push(Series {
                        name: format!("{}_bucket", s.metric),
                        labels,
                        value: b.count,
                    });
                }
            }
            Value::Summary(_) => {}
        }
    }
    out
}

fn prometheus_le(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        v.to_string()
    }
}

/// The roles of this process that announce under each key prefix: a process running several
/// roles (`workers all`, or tests) announces once, as `decrypt+business+scheduler`, since its
/// counters are one set.
static ROLES: Mutex<BTreeMap<String, BTreeSet<&'static str>>> = Mutex::new(BTreeMap::new());

/// Announces this process's `role` under `keys` every [`EVERY`] until `shutdown`, then
/// withdraws it. A second role of the same process joins the first one's announcement.
pub fn spawn(
    pool: crate::redis::Pool,
    keys: Keys,
    role: &'static str,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(mut roles) = ROLES.lock() else { return };
    if let Some(set) = roles.get_mut(keys.prefix()) {
        set.insert(role);
        return;
    }
    roles.insert(keys.prefix().to_owned(), BTreeSet::from([role]));
    drop(roles);
    tokio::spawn(async move {
        let prefix = keys.prefix().to_owned();
        run(pool, keys, shutdown).await;
        if let Ok(mut roles) = ROLES.lock() {
            roles.remove(&prefix);
        }
    });
}

fn roles_of(prefix: &str) -> String {
    ROLES
        .lock()
        .ok()
        .and_then(|r| r.get(prefix).cloned())
        .map(|set| set.into_iter().collect::<Vec<_>>().join("+"))
        .unwrap_or_default()
}

async fn run(pool: crate::redis::Pool, keys: Keys, shutdown: watch::Receiver<bool>) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let pid = std::process::id();
    let id = format!("{host}:{pid}");
    let started_ms = crate::unix_now_ms();
    let handle = crate::telemetry::metrics_handle();
    let mut every = crate::shutdown::every(EVERY, shutdown);
    while every.tick().await {
        let a = Announcement {
            id: id.clone(),
            role: roles_of(keys.prefix()),
            host: host.clone(),
            pid,
            started_ms,
            at_ms: crate::unix_now_ms(),
            series: parse(&handle.render()),
        };
        if let Err(e) = announce(&pool, &keys, &a).await {
            tracing::debug!(error = %e, "could not announce this process");
        }
    }
    let _ = withdraw(&pool, &keys, &id).await;
}

/// Writes one announcement.
pub async fn announce(
    pool: &crate::redis::Pool,
    keys: &Keys,
    a: &Announcement,
) -> Result<(), RedisError> {
    let mut c = conn(pool, "announcing a process").await?;
    let body = serde_json::to_string(a).unwrap_or_default();
    deadpool_redis::redis::pipe()
        .set_ex(keys.proc(&a.id), body, TTL.as_secs())
        .ignore()
        .zadd(keys.procs(), &a.id, a.at_ms)
        .ignore()
        // The index outlives no process by much, even if every one was killed.
        .expire(keys.procs(), 3 * TTL.as_secs() as i64)
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .map_err(failed("announcing a process"))
}

async fn withdraw(pool: &crate::redis::Pool, keys: &Keys, id: &str) -> Result<(), RedisError> {
    let mut c = conn(pool, "withdrawing a process").await?;
    deadpool_redis::redis::pipe()
        .del(keys.proc(id))
        .ignore()
        .zrem(keys.procs(), id)
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .map_err(failed("withdrawing a process"))
}

/// Every live process's latest announcement, sorted by id; forgets the ones gone for longer
/// than [`TTL`].
pub async fn read_all(
    pool: &crate::redis::Pool,
    keys: &Keys,
) -> Result<Vec<Announcement>, RedisError> {
    let mut c = conn(pool, "reading processes").await?;
    let oldest = crate::unix_now_ms() - TTL.as_millis() as i64;
    let _: i64 = c
        .zrembyscore(keys.procs(), "-inf", oldest)
        .await
        .map_err(failed("reading processes"))?;
    let ids: Vec<String> = c
        .zrange(keys.procs(), 0, -1)
        .await
        .map_err(failed("reading processes"))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let bodies: Vec<Option<String>> = deadpool_redis::redis::cmd("MGET")
        .arg(ids.iter().map(|id| keys.proc(id)).collect::<Vec<_>>())
        .query_async(&mut c)
        .await
        .map_err(failed("reading processes"))?;
    let mut out: Vec<Announcement> = bodies
        .into_iter()
        .flatten()
        .filter_map(|b| match serde_json::from_str(&b) {
            Ok(a) => Some(a),
            Err(_) => {
                metrics::counter!("wxpipe_redis_bad_values_total", "key" => "proc").increment(1);
                None
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE wxpipe_ingress_pushes_total counter
wxpipe_ingress_pushes_total{route=\"authorizer\",outcome=\"accepted\"} 42
wxpipe_ingress_pushes_total{route=\"component\",outcome=\"bad_signature\"} 3
# TYPE wxpipe_ingress_connections gauge
wxpipe_ingress_connections 7
# TYPE other_total counter
other_total 1
# TYPE wxpipe_ingress_publish_seconds histogram
wxpipe_ingress_publish_seconds_bucket{route=\"authorizer\",le=\"0.001\"} 10
wxpipe_ingress_publish_seconds_bucket{route=\"authorizer\",le=\"+Inf\"} 12
wxpipe_ingress_publish_seconds_sum{route=\"authorizer\"} 0.5
wxpipe_ingress_publish_seconds_count{route=\"authorizer\"} 12
";

    #[test]
    fn parses_counters_gauges_and_buckets_of_wxpipe_only() {
        let s = parse(TEXT);
        let find = |name: &str, k: &str, v: &str| {
            s.iter()
                .find(|x| x.name == name && x.labels.get(k).map(String::as_str) == Some(v))
                .map(|x| x.value)
        };
        assert_eq!(
            find("wxpipe_ingress_pushes_total", "outcome", "accepted"),
            Some(42.0)
        );
        assert_eq!(
            find("wxpipe_ingress_pushes_total", "outcome", "bad_signature"),
            Some(3.0)
        );
        assert_eq!(
            find("wxpipe_ingress_publish_seconds_bucket", "le", "0.001"),
            Some(10.0)
        );
        assert_eq!(
            find("wxpipe_ingress_publish_seconds_bucket", "le", "+Inf"),
            Some(12.0)
        );
        assert!(s.iter().any(|x| x.name == "wxpipe_ingress_connections"));
        assert!(
            s.iter()
                .any(|x| x.name == "wxpipe_ingress_publish_seconds_count")
        );
        assert!(!s.iter().any(|x| x.name.starts_with("other")));
    }

    #[test]
    fn garbage_gives_nothing_rather_than_a_panic() {
        assert!(parse("}{ not prometheus\n\u{0}").is_empty());
    }
}
