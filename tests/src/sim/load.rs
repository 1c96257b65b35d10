//! `wechat-sim load`: encrypted pushes at a steady rate (or as fast as possible) to an ingress,
//! from `authorizers` simulated accounts, with a live progress line and a final summary.

use crate::http1::HttpConn;
use crate::push::PushBuilder;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a load run is asked to do.
#[derive(Clone)]
pub struct LoadPlan {
    /// The ingress base URL, `http://host:port`.
    pub ingress_url: String,
    /// Pushes per second; 0 means as fast as possible.
    pub rate: f64,
    pub duration: Duration,
    pub authorizers: usize,
    pub concurrency: usize,
    pub builder: PushBuilder,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Keep the `MsgId` of every accepted push (for tools that count losses by id).
    pub record: bool,
    /// Stop before `duration` once this turns true.
    pub stop: Option<Arc<AtomicBool>>,
}

/// The final figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadSummary {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failed_connections: u64,
    pub elapsed_secs: f64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The `MsgId`s of the accepted pushes, when the plan asked to record them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted_msg_ids: Vec<u64>,
}

impl std::fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} in {:.1} s ({:.0}/s): accepted {}, rejected {}, connection failures {}; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.sent,
            self.elapsed_secs,
            self.rate,
            self.accepted,
            self.rejected,
            self.failed_connections,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// The appid and original id of simulated account `i`.
pub fn account(i: usize) -> (String, String) {
    let appid = format!("wx{:016x}", 0x10ad_0000_0000_0000u64 + i as u64);
    let gh = format!("gh_{}", &appid[6..]);
    (appid, gh)
}

/// Runs the plan and returns the summary.
pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadSummary> {
    let url = url::Url::parse(&plan.ingress_url)?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{} has no host", plan.ingress_url))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    anyhow::ensure!(
        plan.authorizers > 0 && plan.concurrency > 0,
        "--authorizers and --concurrency must be at least 1"
    );

    let sent = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let msg_ids = Arc::new(AtomicU64::new(rand::random::<u32>() as u64 * 1_000_000));
    let start = Instant::now();
    let interval =
        (plan.rate > 0.0).then(|| Duration::from_secs_f64(plan.concurrency as f64 / plan.rate));

    let mut tasks = Vec::new();
    for w in 0..plan.concurrency {
        let mut conn = HttpConn::open((host.as_str(), port)).await?;
        let (sent, accepted, rejected, failed, stop, msg_ids) = (
            sent.clone(),
            accepted.clone(),
            rejected.clone(),
            failed.clone(),
            stop.clone(),
            msg_ids.clone(),
        );
        let (builder, authorizers, host, workers, record) = (
            plan.builder.clone(),
            plan.authorizers,
            host.clone(),
            plan.concurrency,
            plan.record,
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut ids: Vec<u64> = Vec::new();
            // Each worker sends on its own schedule, offset so the whole stays steady.
            let mut next = start
                + interval
                    .map(|i| i.mul_f64(w as f64 / workers as f64))
                    .unwrap_or_default();
            while !stop.load(Ordering::Relaxed) {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                let msg_id = msg_ids.fetch_add(1, Ordering::Relaxed);
                let (appid, gh) = account((msg_id as usize) % authorizers);
                let openid = format!("o-load-{}", msg_id % 10_000);
                let now = common::unix_now();
                let plain =
                    crate::push::text_message(&gh, &openid, now, "load test message", msg_id);
                let push = builder.authorizer(&gh, &openid, &plain, now, &msg_id.to_string());
                let path = format!("/wechat/authorizers/{appid}?{}", push.query);
                let t0 = Instant::now();
                sent.fetch_add(1, Ordering::Relaxed);
                match conn.post_status(&path, bytes::Bytes::from(push.body)).await {
                    Some(200) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        latencies.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if record {
                            ids.push(msg_id);
                        }
                    }
                    Some(_) => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        match HttpConn::open((host.as_str(), port)).await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            }
            (latencies, ids)
        }));
    }

    let progress = plan.progress.then(|| {
        let (sent, accepted, rejected, failed, stop) = (sent.clone(), accepted.clone(), rejected.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            // On a terminal the line rewrites itself; elsewhere (a log) one line per second.
            let (start_of_line, end_of_line) =
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ("\r", "") } else { ("", "\n") };
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = sent.load(Ordering::Relaxed);
                eprint!(
                    "{start_of_line}{:>5.0} s  sent {s:>9}  accepted {:>9}  rejected {:>6}  failed {:>6}  {:>7}/s   {end_of_line}",
                    start.elapsed().as_secs_f64(),
                    accepted.load(Ordering::Relaxed),
                    rejected.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    s - last
                );
                last = s;
            }
            eprintln!();
        })
    });

    let stopped = || {
        plan.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    };
    while start.elapsed() < plan.duration && !stopped() {
        let left = plan.duration.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut accepted_msg_ids = Vec::new();
    for t in tasks {
        let (latencies, ids) = t.await?;
        all.extend(latencies);
        accepted_msg_ids.extend(ids);
    }
    if let Some(p) = progress {
        let _ = p.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            return 0.0;
        }
        all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1] as f64 / 1000.0
    };
    let sent = sent.load(Ordering::Relaxed);
    Ok(LoadSummary {
        sent,
        accepted: accepted.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        failed_connections: failed.load(Ordering::Relaxed),
        elapsed_secs: elapsed,
        rate: sent as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: all.last().copied().unwrap_or(0) as f64 / 1000.0,
        accepted_msg_ids,
    })
}
