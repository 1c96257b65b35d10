//! `wxpipe-bench gateway`: what the gateway adds to a call. The same WeChat API
//! (`cgi-bin/user/info`, answered by wechat-sim) is called directly with the account's token and
//! through the gateway with a team key (key lookup, scope, rate limit, token read, forward):
//! first one call at a time (the added latency, p50/p99), then `--concurrency` calls in flight
//! (calls/s of one replica). The gateway, the simulator and the load run in this one process.

use super::*;
use wxpipe_tests::harness::{spawn_gateway, token_service_with_ticket};
use wxpipe_tests::sim::{self, SimConfig, state::Rules};

#[derive(clap::Args)]
pub struct GatewayBench {
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Calls in flight in the throughput measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// (calls, calls/s, p50 ms, p99 ms, errors) of `concurrency` loops calling `url` for `duration`.
async fn load(
    url: String,
    bearer: Option<String>,
    concurrency: usize,
    duration: Duration,
) -> (usize, f64, f64, f64, u64) {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, bearer, errors) = (url.clone(), bearer.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let client = wxpipe_tests::http();
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let t0 = Instant::now();
                let mut req = client.get(&url);
                if let Some(b) = &bearer {
                    req = req.bearer_auth(b);
                }
                let ok = match req.send().await {
                    Ok(r) => {
                        r.status() == 200
                            && r.bytes()
                                .await
                                .is_ok_and(|b| b.windows(12).any(|w| w == b"\"errcode\":0,"))
                    }
                    Err(_) => false,
                };
                if ok {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| percentile(&all, p);
    (
        all.len(),
        all.len() as f64 / start.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.99),
        errors.load(Ordering::Relaxed),
    )
}

pub async fn run(b: GatewayBench) -> anyhow::Result<()> {
    let t = TestNs::new("bench-gateway");
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules = Rules {
        daily_quota: u64::MAX,
        ..Rules::default()
    };
    let sim = sim::start(settings).await?;
    let appid: common::ids::AppId = sim.authorized_account().parse()?;
    let svc = token_service_with_ticket(&t.ns, &sim, Duration::from_secs(600)).await;
    svc.restore_from_list().await?;
    let token = svc.authorizer_token(&appid).await?;
    let keys =
        workers::gateway::keys::KeyStore::new(svc.store.pool().clone(), svc.store.keys.clone());
    let (key, _) = keys
        .create(workers::gateway::keys::Scope {
            team: "bench".into(),
            appids: vec!["*".into()],
            paths: vec!["cgi-bin/user/*".into()],
            rate_per_sec: 100_000,
            raw_tokens: false,
            return_to: vec![],
        })
        .await?;
    let (gw, gw_base) = spawn_gateway(svc.clone(), &sim.api_base()).await;
    let direct = format!(
        "{}/cgi-bin/user/info?openid=o-bench&access_token={}",
        sim.api_base(),
        token.access_token.expose()
    );
    let via = format!("{gw_base}/v1/wechat/{appid}/cgi-bin/user/info?openid=o-bench");
    let d = Duration::from_secs(b.duration);
    // Warm both paths (connections, the token's first read).
    let _ = load(direct.clone(), None, 1, Duration::from_millis(500)).await;
    let _ = load(
        via.clone(),
        Some(key.clone()),
        1,
        Duration::from_millis(500),
    )
    .await;

    println!("one call at a time, {} s each:", b.duration);
    let (n1, _, p50d, p99d, e1) = load(direct.clone(), None, 1, d).await;
    let (n2, _, p50g, p99g, e2) = load(via.clone(), Some(key.clone()), 1, d).await;
    println!(
        "  direct to the simulator: {n1} calls, p50 {p50d:.3} ms, p99 {p99d:.3} ms, {e1} errors"
    );
    println!(
        "  through the gateway:     {n2} calls, p50 {p50g:.3} ms, p99 {p99g:.3} ms, {e2} errors"
    );
    let added = (p50g - p50d, p99g - p99d);
    println!(
        "  added by the gateway:    p50 {:.3} ms, p99 {:.3} ms",
        added.0, added.1
    );
    println!("{} calls in flight, {} s each:", b.concurrency, b.duration);
    let (_, rd, p50d, p99d, e1) = load(direct, None, b.concurrency, d).await;
    let (_, rg, p50g, p99g, e2) = load(via, Some(key), b.concurrency, d).await;
    println!(
        "  direct to the simulator: {rd:.0} calls/s, p50 {p50d:.2} ms, p99 {p99d:.2} ms, {e1} errors"
    );
    println!(
        "  through the gateway:     {rg:.0} calls/s, p50 {p50g:.2} ms, p99 {p99g:.2} ms, {e2} errors"
    );
    println!(
        "figures: gateway_added_p50_ms={:.3} gateway_added_p99_ms={:.3} gateway_rate={rg:.0}",
        added.0, added.1
    );
    println!(
        "  (the gateway, the simulator and the load share this process and {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    gw.stop().await;
    sim.stop().await;
    Ok(())
}
