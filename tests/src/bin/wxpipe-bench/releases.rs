//! `wxpipe-bench releases`: one release job across N simulated mini programs with instant
//! review, through the real pipeline (the simulator pushes each audit result to an in-process
//! ingress, a decrypt worker turns it into an event, the `workers releases` process under
//! measurement consumes it). Reports, per run: the time from create to all released, WeChat
//! calls per account by API, and the releases process's CPU and peak RSS; then medians with
//! their ranges over `--runs`.

use super::*;
use procfs::{cpu_secs_of, rss_of, sibling_binary};
use wxpipe_tests::harness;
use wxpipe_tests::sim::{self, SimConfig, state::Rules};

#[derive(clap::Args)]
pub struct ReleasesBench {
    /// Simulated mini programs.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// The job's concurrency (accounts worked on at once).
    #[arg(long, default_value_t = 200)]
    concurrency: u32,
    /// Jobs run one after the other (each a new version for every account).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Longest wait for one job, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
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
/// The mutating calls of one release, and the reads around them.
const APIS: [&str; 6] = [
    "wxa_commit",
    "wxa_submit_audit",
    "wxa_release",
    "wxa_getversioninfo",
    "wxa_queryquota",
    "wxa_get_auditstatus",
];

fn calls(sim: &sim::SimHandle) -> Vec<u64> {
    let code = sim.shared.code.lock().expect("code world");
    APIS.iter()
        .map(|api| code.calls.get(*api).map(|m| m.values().sum()).unwrap_or(0))
        .collect()
}

pub async fn run(b: ReleasesBench) -> anyhow::Result<()> {
    let t = TestNs::new("bench-releases");
    let port = harness::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut settings = SimConfig::for_tests(&base);
    settings.rules = Rules {
        daily_quota: u64::MAX,
        ..Rules::default()
    };
    let sim = sim::start(settings).await?;
    {
        let mut code = sim
            .shared
            .code
            .lock()
            .map_err(|_| anyhow::anyhow!("code"))?;
        code.config.review = Duration::ZERO;
        code.quota.rest = i64::MAX / 2;
        code.quota.limit = i64::MAX / 2;
    }
    let appids = super::scheduler::authorized_accounts(&sim, b.accounts, true)?;
    let template_id = sim
        .shared
        .library
        .lock()
        .map_err(|_| anyhow::anyhow!("library"))?
        .promote(0, 0)
        .context("a draft")?;
    // The pipeline the audit results travel through: ingress and decrypt, in this process.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let ingress = harness::IngressHandle::start_on(
        listener,
        harness::ingress_config_with_sim(&t.ns, &sim, &base),
    )
    .await;
    let decrypt = harness::spawn_decrypt(harness::decrypt_config(&t.ns));
    // wxpipe has only the ticket: the scheduler restores the accounts and their tokens.
    super::scheduler::only_the_ticket(&sim, &t.ns, &b.redis_url).await?;
    let admin_port = harness::free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let workers = sibling_binary(b.workers_bin.as_ref(), "workers")?;
    let role = |what: &str| {
        let mut c = tokio::process::Command::new(&workers);
        c.arg(what)
            .env("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID)
            .env("WXPIPE_COMPONENT_SECRET", test_platform::COMPONENT_SECRET)
            .env("WXPIPE_TOKEN", test_platform::TOKEN)
            .env("WXPIPE_ENCODING_AES_KEY", test_platform::ENCODING_AES_KEY)
            .env("WXPIPE_NAMESPACE", t.name())
            .env("WXPIPE_AMQP_URL", wxpipe_tests::amqp_url())
            .env("WXPIPE_REDIS_URL", &b.redis_url)
            .env("WXPIPE_WECHAT_API_BASE", sim.api_base())
            .env("WXPIPE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("WXPIPE_ADMIN_TOKEN", ADMIN)
            .env("WXPIPE_RELEASES_TICK_MS", "100")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        c
    };
    let mut scheduler = role("scheduler").spawn()?;
    println!(
        "# wxpipe-bench releases: {} mini programs, instant review, concurrency {}, {} runs; audit results pushed through ingress + decrypt",
        b.accounts, b.concurrency, b.runs
    );
    let started = Instant::now();
    super::scheduler::until_first_tokens(&sim, b.accounts, Duration::from_secs(600)).await?;
    println!(
        "restore: every account's first token in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut releases = role("releases").spawn()?;
    let pid = releases.id().unwrap_or(0);
    let client = wxpipe_tests::http();
    let (mut secs, mut cpu_pct, mut per_account) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..b.runs {
        let before = calls(&sim);
        let cpu_before = cpu_secs_of(pid);
        let t0 = Instant::now();
        let r = client
            .post(format!("{admin}/v1/releases"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({
                "template_id": template_id, "user_version": format!("1.0.{run}"),
                "targets": { "appids": appids }, "concurrency": b.concurrency,
            }))
            .send()
            .await?;
        let created: serde_json::Value = r.json().await?;
        let id = created["id"]
            .as_str()
            .with_context(|| format!("the job was not created: {created}"))?
            .to_owned();
        let mut shown = Instant::now();
        let job = loop {
            let v: serde_json::Value = client
                .get(format!("{admin}/v1/releases/{id}"))
                .bearer_auth(ADMIN)
                .send()
                .await?
                .json()
                .await?;
            if v["status"] == "finished" {
                break v;
            }
            if shown.elapsed() >= Duration::from_secs(5) {
                shown = Instant::now();
                let counts: Vec<String> = v["counts"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                            .map(|(s, n)| format!("{s} {n}"))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "  {:.0} s: {}",
                    t0.elapsed().as_secs_f64(),
                    counts.join(", ")
                );
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(b.timeout),
                "run {run} did not finish in {} s: {v}",
                b.timeout
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_secs_of(pid) - cpu_before;
        let delta: Vec<f64> = calls(&sim)
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b) as f64 / appids.len() as f64)
            .collect();
        let released = job["counts"]["released"].as_u64().unwrap_or(0);
        println!(
            "run {}: {released} of {} released in {elapsed:.1} s ({:.0} accounts/s); releases role CPU {:.0} % of a core ({:.0} µs per account); calls per account: {}",
            run + 1,
            appids.len(),
            released as f64 / elapsed,
            cpu / elapsed * 100.0,
            cpu / appids.len() as f64 * 1e6,
            APIS.iter()
                .zip(&delta)
                .map(|(a, d)| format!("{a} {d:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        anyhow::ensure!(
            released as usize == appids.len(),
            "not every account was released: {job}"
        );
        secs.push(elapsed);
        cpu_pct.push(cpu / elapsed * 100.0);
        per_account.push(delta[..3].iter().sum::<f64>());
    }
    let (_, hwm) = rss_of(pid);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (percentile(v, 0.5), v[0], v[v.len() - 1])
    };
    let (s, s_lo, s_hi) = med(&mut secs);
    let (c, c_lo, c_hi) = med(&mut cpu_pct);
    let (m, m_lo, m_hi) = med(&mut per_account);
    println!(
        "median of {}: {s:.1} s to release all ({s_lo:.1}–{s_hi:.1}); commit+submit+release per account {m:.3} ({m_lo:.3}–{m_hi:.3}); releases CPU {c:.0} % of a core ({c_lo:.0}–{c_hi:.0}); peak RSS {hwm:.1} MB",
        b.runs
    );
    println!(
        "figures: releases_secs={s:.1} releases_mutating_calls_per_account={m:.3} releases_cpu_pct={c:.0} releases_rss_mb={hwm:.1}"
    );
    super::terminate(&mut releases, Duration::from_secs(10)).await;
    super::terminate(&mut scheduler, Duration::from_secs(10)).await;
    decrypt.stop().await;
    let _ = ingress.stop().await;
    sim.stop().await;
    Ok(())
}
