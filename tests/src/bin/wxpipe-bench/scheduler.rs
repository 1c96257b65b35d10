//! `wxpipe-bench scheduler`.

use super::*;
use procfs::{cpu_secs_of, rss_of, sibling_binary};
use wxpipe_tests::sim::{self, SimConfig, state::Rules};

#[derive(clap::Args)]
pub struct SchedulerBench {
    /// Simulated authorized accounts.
    #[arg(long, default_value_t = 10_000)]
    authorizers: usize,
    /// Lifetime of an authorizer token in the simulator (seconds).
    #[arg(long, default_value_t = 60)]
    token_ttl: u64,
    /// WXPIPE_REFRESH_MARGIN_SECS of the scheduler.
    #[arg(long, default_value_t = 20)]
    margin: u64,
    /// Seconds measured after every account has its first token.
    #[arg(long, default_value_t = 90)]
    duration: u64,
    /// Longest wait for every account's first token (the restore), in seconds.
    #[arg(long, default_value_t = 300)]
    restore_timeout: u64,
    /// Admin API token reads per second during the measurement.
    #[arg(long, default_value_t = 1000.0)]
    read_rate: f64,
    /// The workers binary (default: `workers` beside this one).
    #[arg(long)]
    workers_bin: Option<PathBuf>,
    /// Redis URL.
    #[arg(
        long,
        env = "WXPIPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    redis_url: String,
}

const ADMIN: &str = "bench-admin-token-0123456789";

pub async fn run(b: SchedulerBench) -> anyhow::Result<()> {
    let t = TestNs::new("bench-sched");
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules = Rules {
        authorizer_token_ttl: Duration::from_secs(b.token_ttl),
        daily_quota: u64::MAX,
        ..Rules::default()
    };
    let sim = sim::start(settings).await?;
    let appids = authorized_accounts(&sim, b.authorizers, false)?;
    // wxpipe has only the ticket: accounts and refresh tokens come from the list.
    only_the_ticket(&sim, &t.ns, &b.redis_url).await?;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child =
        tokio::process::Command::new(sibling_binary(b.workers_bin.as_ref(), "workers")?)
            .arg("scheduler")
            .env("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID)
            .env("WXPIPE_COMPONENT_SECRET", test_platform::COMPONENT_SECRET)
            .env("WXPIPE_TOKEN", test_platform::TOKEN)
            .env("WXPIPE_ENCODING_AES_KEY", test_platform::ENCODING_AES_KEY)
            .env("WXPIPE_NAMESPACE", t.name())
            .env("WXPIPE_REDIS_URL", &b.redis_url)
            .env("WXPIPE_WECHAT_API_BASE", sim.api_base())
            .env("WXPIPE_REFRESH_MARGIN_SECS", b.margin.to_string())
            .env("WXPIPE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("WXPIPE_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
    let pid = child.id().unwrap_or(0);
    println!(
        "# wxpipe-bench scheduler: {} authorizers, {} s tokens, margin {} s, one replica, {} s measured, {:.0} token reads/s",
        b.authorizers, b.token_ttl, b.margin, b.duration, b.read_rate
    );

    // Until every account has its first token from wxpipe.
    let started = Instant::now();
    until_first_tokens(&sim, b.authorizers, Duration::from_secs(b.restore_timeout)).await?;
    let restore_secs = started.elapsed().as_secs_f64();
    let restore_cpu = cpu_secs_of(pid);
    println!(
        "restore: {} accounts listed, refresh tokens restored and first tokens fetched in {restore_secs:.1} s ({:.0} µs of scheduler CPU per account)",
        b.authorizers,
        restore_cpu / b.authorizers as f64 * 1e6
    );

    let calls_before = refresh_calls(&sim);
    let cpu_before = cpu_secs_of(pid);
    let measured = Instant::now();
    let reads = read_load(
        admin_port,
        &appids,
        b.read_rate,
        Duration::from_secs(b.duration),
    )
    .await?;
    let elapsed = measured.elapsed().as_secs_f64();
    let calls = refresh_calls(&sim) - calls_before;
    let cpu = cpu_secs_of(pid) - cpu_before;
    let (_, hwm) = rss_of(pid);
    let window = (b.token_ttl - b.margin) as f64 - b.margin as f64 / 4.0;
    let rejected = sim.stats()["rejected_token_calls"].as_u64().unwrap_or(0);
    println!(
        "refreshes: {calls} api_authorizer_token calls in {elapsed:.0} s = {:.0} per window of ~{window:.0} s ({:.2} per account per window)",
        calls as f64 * window / elapsed,
        calls as f64 * window / elapsed / b.authorizers as f64
    );
    println!(
        "scheduler CPU: {:.1} % of a core, {:.0} µs per refresh (including the admin API's share); peak RSS {hwm:.1} MB",
        cpu / elapsed * 100.0,
        // Meaningless with a handful of refreshes (long-lived tokens): shown as 0.
        if calls >= 100 {
            cpu / calls as f64 * 1e6
        } else {
            0.0
        }
    );
    println!(
        "admin API token reads: {} at {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}; tokens refused by the sim: {rejected}",
        reads.0, reads.1, reads.2, reads.3, reads.4, reads.5
    );
    println!(
        "figures: scheduler_cpu_pct={:.1} scheduler_rss_mb={hwm:.1} scheduler_read_p99_ms={:.2} scheduler_refreshes_per_account_window={:.2} scheduler_restore_secs={restore_secs:.1}",
        cpu / elapsed * 100.0,
        reads.3,
        calls as f64 * window / elapsed / b.authorizers as f64
    );
    super::terminate(&mut child, Duration::from_secs(10)).await;
    sim.stop().await;
    Ok(())
}

/// `n` accounts authorized in the simulator before wxpipe knew them (their refresh tokens are
/// in `api_get_authorizer_list`); their appids.
pub fn authorized_accounts(
    sim: &sim::SimHandle,
    n: usize,
    mini_program: bool,
) -> anyhow::Result<Vec<String>> {
    let mut st = sim
        .shared
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("sim state"))?;
    Ok((0..n)
        .map(|_| {
            let (a, code, _) = st.authorize(None, mini_program);
            let _ = st.query_auth(test_platform::COMPONENT_APPID, &code);
            a.appid
        })
        .collect())
}

/// Waits until `n` accounts have their first token from wxpipe (a second token issued by the
/// simulator: the first was the platform's own, before wxpipe knew the account).
pub async fn until_first_tokens(
    sim: &sim::SimHandle,
    n: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let got = sim
            .shared
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("sim state"))?
            .stats
            .authorizer_token_times
            .values()
            .filter(|v| v.len() >= 2)
            .count();
        if got >= n {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "only {got} accounts got a token in {} s",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Gives wxpipe on `ns` a ticket the simulator issued, and nothing else: a scheduler restores
/// the accounts and their tokens from the list.
pub async fn only_the_ticket(
    sim: &sim::SimHandle,
    ns: &common::ids::Namespace,
    redis_url: &str,
) -> anyhow::Result<()> {
    let ticket = sim
        .shared
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("sim state"))?
        .issue_ticket();
    let store = common::token::TokenStore::new(
        common::redis::pool(redis_url)?,
        common::redis::Keys::new(ns, test_platform::COMPONENT_APPID),
    );
    store.save_ticket(&ticket).await?;
    Ok(())
}

fn refresh_calls(sim: &sim::SimHandle) -> u64 {
    sim.stats()["calls"]["api_authorizer_token"]
        .as_u64()
        .unwrap_or(0)
}

/// (reads, rate, p50, p99, max, errors) of GET /v1/authorizers/{appid}/access_token.
async fn read_load(
    port: u16,
    appids: &[String],
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(usize, f64, f64, f64, f64, u64)> {
    let workers = 16usize;
    let interval = Duration::from_secs_f64(workers as f64 / rate);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (appids, errors) = (appids.to_vec(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let client = wxpipe_tests::http();
            let mut lat = Vec::new();
            let mut next = start + interval.mul_f64(w as f64 / workers as f64);
            let mut i = w;
            while start.elapsed() < duration {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                i = (i + 7919) % appids.len();
                let t0 = Instant::now();
                let ok = client
                    .get(format!(
                        "http://127.0.0.1:{port}/v1/authorizers/{}/access_token",
                        appids[i]
                    ))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
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
        all.extend(t.await?);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| percentile(&all, p);
    Ok((
        all.len(),
        all.len() as f64 / start.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.99),
        all.last().copied().unwrap_or(0.0),
        errors.load(Ordering::Relaxed),
    ))
}
