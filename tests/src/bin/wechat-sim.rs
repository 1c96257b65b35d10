//! `wechat-sim`: a simulated WeChat for wxpipe's tests, demos and benchmarks.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;
use wxpipe_tests::push::PushBuilder;
use wxpipe_tests::sim::{self, SimConfig, load, state::Rules};

/// A simulated WeChat that speaks the real wire format (protocol.md), so wxpipe can be run,
/// tested and load-tested without registering a real third-party platform.
///
/// Point wxpipe at it with WXPIPE_WECHAT_API_BASE=http://<api-addr> and
/// WXPIPE_WECHAT_PAGE_BASE=http://<page-addr>; give both the same WXPIPE_COMPONENT_APPID,
/// WXPIPE_COMPONENT_SECRET, WXPIPE_TOKEN and WXPIPE_ENCODING_AES_KEY.
#[derive(Parser)]
#[command(name = "wechat-sim", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve the component API (with /sim/* inspection and control) and the authorization
    /// pages, push a ticket now and every --ticket-interval, and push authorization events and
    /// follower messages to the ingress with WeChat's retries (5 s, 3 tries).
    Serve(ServeArgs),
    /// Send encrypted pushes to an ingress at a steady rate (or as fast as possible), with a
    /// live progress line and a final summary.
    Load(LoadArgs),
    /// Ask a running `wechat-sim serve` to play the full-network release test against the
    /// ingress, and print its report (exit 1 if a step failed).
    ReleaseTest(ReleaseArgs),
}

/// The platform's credentials; the same variables wxpipe reads.
#[derive(clap::Args)]
struct PlatformArgs {
    /// The platform's appid.
    #[arg(long, env = "WXPIPE_COMPONENT_APPID", default_value = wxpipe_tests::test_platform::COMPONENT_APPID)]
    component_appid: String,
    /// The AppSecret the simulated API accepts.
    #[arg(long, env = "WXPIPE_COMPONENT_SECRET", default_value = wxpipe_tests::test_platform::COMPONENT_SECRET, hide_env_values = true)]
    component_secret: String,
    /// The message-verification Token.
    #[arg(long, env = "WXPIPE_TOKEN", default_value = wxpipe_tests::test_platform::TOKEN, hide_env_values = true)]
    token: String,
    /// The EncodingAESKey.
    #[arg(long, env = "WXPIPE_ENCODING_AES_KEY", default_value = wxpipe_tests::test_platform::ENCODING_AES_KEY, hide_env_values = true)]
    encoding_aes_key: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// Address of the component API (WXPIPE_WECHAT_API_BASE) and of /sim/*.
    #[arg(long, env = "WXPIPE_SIM_API_ADDR", default_value = "127.0.0.1:8090")]
    api_addr: SocketAddr,
    /// Address of the authorization pages (WXPIPE_WECHAT_PAGE_BASE).
    #[arg(long, env = "WXPIPE_SIM_PAGE_ADDR", default_value = "127.0.0.1:8091")]
    page_addr: SocketAddr,
    /// The ingress pushes go to.
    #[arg(
        long,
        env = "WXPIPE_SIM_INGRESS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingress_url: String,
    /// How often a component_verify_ticket is pushed ("0s": only on demand).
    #[arg(long, env = "WXPIPE_SIM_TICKET_INTERVAL", default_value = "10m", value_parser = duration)]
    ticket_interval: Duration,
    /// Lifetime of a component_access_token.
    #[arg(long, env = "WXPIPE_SIM_COMPONENT_TOKEN_TTL", default_value = "2h", value_parser = duration)]
    component_token_ttl: Duration,
    /// Lifetime of an authorizer_access_token.
    #[arg(long, env = "WXPIPE_SIM_AUTHORIZER_TOKEN_TTL", default_value = "2h", value_parser = duration)]
    authorizer_token_ttl: Duration,
    /// How long a superseded token keeps working after a new one is issued.
    #[arg(long, env = "WXPIPE_SIM_SUPERSEDE_GRACE", default_value = "5m", value_parser = duration)]
    supersede_grace: Duration,
    /// Calls per API per day before 45009.
    #[arg(long, env = "WXPIPE_SIM_DAILY_QUOTA", default_value_t = 10_000)]
    daily_quota: u64,
    /// Share of API calls answered -1 (system busy), 0..1.
    #[arg(long, env = "WXPIPE_SIM_BUSY_RATE", default_value_t = 0.0)]
    busy_rate: f64,
    /// Share of API calls answered after --slow-delay, 0..1.
    #[arg(long, env = "WXPIPE_SIM_SLOW_RATE", default_value_t = 0.0)]
    slow_rate: f64,
    #[arg(long, env = "WXPIPE_SIM_SLOW_DELAY", default_value = "3s", value_parser = duration)]
    slow_delay: Duration,
    /// Refuse authorization-page visitors whose Referer is not on this host, as WeChat does.
    #[arg(long, env = "WXPIPE_SIM_REFERER_DOMAIN")]
    referer_domain: Option<String>,
    /// The platform's 公众号开发域名: web login's redirect_uri must be on it (10003), as at
    /// WeChat (unset: any host).
    #[arg(long, env = "WXPIPE_SIM_WEB_DOMAIN")]
    web_domain: Option<String>,
}

#[derive(clap::Args)]
struct LoadArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// The ingress.
    #[arg(
        long,
        env = "WXPIPE_SIM_INGRESS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingress_url: String,
    /// Pushes per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Simulated accounts the pushes are spread over.
    #[arg(long, default_value_t = 100)]
    authorizers: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReleaseArgs {
    /// The running simulator's API address.
    #[arg(long, env = "WXPIPE_SIM_URL", default_value = "http://127.0.0.1:8090")]
    sim_url: String,
    /// Which test account (default: the first official account of protocol.md §5).
    #[arg(long)]
    appid: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::telemetry::init_logging();
    let result = match Cli::parse().mode {
        Mode::Serve(a) => serve(a).await,
        Mode::Load(a) => load_run(a).await,
        Mode::ReleaseTest(a) => release(a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wechat-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.busy_rate) && (0.0..=1.0).contains(&a.slow_rate),
        "--busy-rate and --slow-rate are shares between 0 and 1"
    );
    let settings = SimConfig {
        api_addr: a.api_addr,
        page_addr: a.page_addr,
        ingress_url: a.ingress_url,
        component_appid: a.platform.component_appid,
        component_secret: a.platform.component_secret,
        token: a.platform.token,
        encoding_aes_key: a.platform.encoding_aes_key,
        ticket_interval: (!a.ticket_interval.is_zero()).then_some(a.ticket_interval),
        rules: Rules {
            component_token_ttl: a.component_token_ttl,
            authorizer_token_ttl: a.authorizer_token_ttl,
            supersede_grace: a.supersede_grace,
            daily_quota: a.daily_quota,
            ..Rules::default()
        },
        busy_rate: a.busy_rate,
        slow_rate: a.slow_rate,
        slow_delay: a.slow_delay,
        referer_domain: a.referer_domain,
        web_domain: a.web_domain,
    };
    let handle = sim::start(settings)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen ({e}); is another wechat-sim running?"))?;
    eprintln!(
        "wechat-sim: API and /sim/* on {}, authorization pages on {}",
        handle.api_base(),
        handle.page_base()
    );
    common::shutdown::signal().await;
    handle.stop().await;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn load_run(a: LoadArgs) -> anyhow::Result<std::process::ExitCode> {
    let summary = load::run(load::LoadPlan {
        ingress_url: a.ingress_url,
        rate: a.rate,
        duration: a.duration,
        authorizers: a.authorizers,
        concurrency: a.concurrency,
        builder: PushBuilder::new(
            &a.platform.token,
            &a.platform.encoding_aes_key,
            &a.platform.component_appid,
        ),
        progress: !a.json,
        record: false,
        stop: None,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn release(a: ReleaseArgs) -> anyhow::Result<std::process::ExitCode> {
    let body = serde_json::json!({ "appid": a.appid });
    let report: serde_json::Value = wxpipe_tests::http()
        .post(format!(
            "{}/sim/release-test",
            a.sim_url.trim_end_matches('/')
        ))
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach wechat-sim at {}: {e}", a.sim_url))?
        .json()
        .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report["passed"] == true {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
