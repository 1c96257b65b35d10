//! A real ingress, started in-process on a random loopback port.

use crate::test_platform;
use common::config::PlatformArgs;
use common::ids::Namespace;
use ingress::IngressConfig;
use ingress::server::ServeError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct IngressHandle {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// The ingress configuration of the test platform on `ns`, talking to `amqp_urls`.
pub fn test_config(ns: &Namespace, amqp_urls: Vec<String>) -> IngressConfig {
    let platform = PlatformArgs {
        component_appid: Some(test_platform::COMPONENT_APPID.into()),
        component_secret: None,
        token: Some(test_platform::TOKEN.into()),
        encoding_aes_key: Some(test_platform::ENCODING_AES_KEY.into()),
    };
    IngressConfig {
        crypt: platform.crypt().expect("test credentials are valid"),
        namespace: ns.clone(),
        raw_shards: common::amqp::RawShards::ONE,
        amqp_urls,
        redis_url: crate::redis_url(),
        addr: "127.0.0.1:0".parse().expect("literal address"),
        publish_timeout: Duration::from_secs(2),
        max_body_bytes: 64 * 1024,
        timestamp_window: Duration::from_secs(300),
        publish_channels: 4,
        shutdown_grace: Duration::from_secs(10),
        wechat_api_base: "http://127.0.0.1:9".into(),
        wechat_page_base: "http://127.0.0.1:9".into(),
        wechat_open_base: "http://127.0.0.1:9".into(),
        public_base_url: "http://127.0.0.1:8080".into(),
        component_secret: None,
        refresh_margin: Duration::from_secs(600),
        sync_reply_appids: ingress::sync_reply::release_test_appids(),
        sync_reply_timeout: Duration::from_millis(4500),
        limits: common::edge::Limits::default(),
        auth: ingress::routes::auth::AuthLimits {
            starts_per_client: 10,
            starts_per_minute: 120,
            trust_forwarded_for: false,
        },
        auth_texts: ingress::routes::auth_page::AuthTexts {
            platform_name: "wxpipe test platform".into(),
            note: String::new(),
        },
    }
}

impl IngressHandle {
    /// Starts an ingress with `config` on a random port (its `addr` is ignored).
    pub async fn start(config: IngressConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::start_on(listener, config).await
    }

    /// Starts an ingress with `config` on `listener`.
    pub async fn start_on(listener: TcpListener, config: IngressConfig) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ingress::server::serve(listener, config, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Waits until `/readyz` answers 200, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        ready_within(&self.url(""), timeout).await
    }

    /// Graceful shutdown, as on SIGTERM; returns the server's result.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("ingress task panicked")
    }
}

/// A worker role running in-process.
pub struct WorkerHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Graceful stop, as on SIGTERM: in-flight messages are finished.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }

    /// As a crash: the role's task is dropped where it stands (no graceful steps, no releases).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The decrypt configuration of the test platform on `ns`.
pub fn decrypt_config(ns: &Namespace) -> workers::decrypt::DecryptConfig {
    let ingress = test_config(ns, vec![crate::amqp_url()]);
    workers::decrypt::DecryptConfig {
        crypt: ingress.crypt,
        namespace: ns.clone(),
        raw_shards: common::amqp::RawShards::ONE,
        shards: vec![0],
        amqp_urls: vec![crate::amqp_url()],
        redis_url: crate::redis_url(),
        prefetch: 64,
        linger: Duration::from_micros(workers::decrypt::DEFAULT_LINGER_US.into()),
        dedup_ttl: Duration::from_secs(600),
        claim_ttl: Duration::from_secs(10),
        max_attempts: 12,
        confirm_timeout: Duration::from_secs(2),
        fault_panic_on: None,
    }
}

/// Starts a decrypt worker in-process.
pub fn spawn_decrypt(config: workers::decrypt::DecryptConfig) -> WorkerHandle {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        if let Err(e) = workers::decrypt::run(config, rx).await {
            panic!("decrypt worker failed: {e}");
        }
    });
    WorkerHandle { stop, task }
}

/// The test platform's credentials, as a `workers` process reads them from its environment.
pub fn platform_env() -> [(&'static str, &'static str); 4] {
    [
        ("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID),
        ("WXPIPE_COMPONENT_SECRET", test_platform::COMPONENT_SECRET),
        ("WXPIPE_TOKEN", test_platform::TOKEN),
        ("WXPIPE_ENCODING_AES_KEY", test_platform::ENCODING_AES_KEY),
    ]
}

/// The environment of a `workers scheduler` process of the test platform on `t`'s namespace,
/// its admin API on `admin_port`, WeChat unreachable (nothing listens on port 9).
pub fn scheduler_env(t: &crate::broker::TestNs, admin_port: u16) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = platform_env()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(
        [
            ("WXPIPE_NAMESPACE", t.name().to_owned()),
            ("WXPIPE_AMQP_URL", crate::amqp_url()),
            ("WXPIPE_REDIS_URL", crate::redis_url()),
            ("WXPIPE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("WXPIPE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
            ("WXPIPE_WECHAT_API_BASE", "http://127.0.0.1:9".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

/// A `workers decrypt` process of the test platform on `t`'s namespace (with `env` added),
/// killed when dropped: a failing test leaves no worker behind.
pub fn spawn_decrypt_process(t: &crate::broker::TestNs, env: &[(&str, &str)]) -> ChildProcess {
    let child = std::process::Command::new(workspace_bin("workers"))
        .arg("decrypt")
        .envs(platform_env())
        .env("WXPIPE_NAMESPACE", t.name())
        .env("WXPIPE_AMQP_URL", crate::amqp_url())
        .env("WXPIPE_REDIS_URL", crate::redis_url())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .spawn()
        .expect("workers decrypt starts");
    ChildProcess::new(child)
}

/// A child process killed (SIGKILL) when dropped, unless it was stopped first.
pub struct ChildProcess(Option<std::process::Child>);

impl ChildProcess {
    /// Takes charge of `child`: from now on it dies with this value.
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then its exit status (waiting at most `timeout`; then it is killed).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of a binary of this workspace built beside the running test (`target/<profile>/NAME`).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (`cargo test --workspace`) or `cargo build --bins`",
        path.display()
    );
    path
}

/// The token service of the test platform on `ns`, talking to `api_base` (a wechat-sim).
pub fn token_service(
    ns: &Namespace,
    api_base: &str,
    margin: Duration,
) -> common::token::TokenService {
    common::token::TokenService {
        store: common::token::TokenStore::new(
            common::redis::pool(&crate::redis_url()).expect("redis url"),
            common::redis::Keys::new(ns, test_platform::COMPONENT_APPID),
        ),
        client: common::wechat::WechatClient::new(
            api_base,
            test_platform::COMPONENT_APPID,
            Some(test_platform::COMPONENT_SECRET.to_owned().into()),
        )
        .expect("wechat client"),
        margin,
    }
}

/// [`token_service`] with a `component_verify_ticket` the simulator issued already stored, so
/// that the component token can be had at once.
pub async fn token_service_with_ticket(
    ns: &Namespace,
    sim: &crate::sim::SimHandle,
    margin: Duration,
) -> std::sync::Arc<common::token::TokenService> {
    let svc = token_service(ns, &sim.api_base(), margin);
    let ticket = sim.shared.state.lock().expect("sim state").issue_ticket();
    svc.store.save_ticket(&ticket).await.expect("ticket stored");
    std::sync::Arc::new(svc)
}

/// An ingress configured for the authorization flow against a simulator.
pub fn ingress_config_with_sim(
    ns: &Namespace,
    sim: &crate::sim::SimHandle,
    public_base_url: &str,
) -> IngressConfig {
    let mut c = test_config(ns, vec![crate::amqp_url()]);
    c.wechat_api_base = sim.api_base();
    c.wechat_page_base = sim.page_base();
    c.wechat_open_base = sim.page_base();
    c.public_base_url = public_base_url.to_owned();
    c.component_secret = Some(test_platform::COMPONENT_SECRET.to_owned().into());
    c
}

/// Starts a business worker with the platform's handlers in-process.
pub fn spawn_business(
    ns: &Namespace,
    tokens: std::sync::Arc<common::token::TokenService>,
) -> WorkerHandle {
    let config = workers::business::BusinessConfig {
        tokens,
        namespace: ns.clone(),
        raw_shards: common::amqp::RawShards::ONE,
        amqp_urls: vec![crate::amqp_url()],
        prefetch: 32,
        max_attempts: 12,
    };
    let registry = workers::business::default_registry(&config);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(workers::business::run(config, registry, rx));
    WorkerHandle { stop, task }
}

/// The bearer token of test admin APIs.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The test platform's credentials, as the roles read them.
pub fn test_platform_args() -> PlatformArgs {
    PlatformArgs {
        component_appid: Some(test_platform::COMPONENT_APPID.into()),
        component_secret: Some(test_platform::COMPONENT_SECRET.into()),
        token: Some(test_platform::TOKEN.into()),
        encoding_aes_key: Some(test_platform::ENCODING_AES_KEY.into()),
    }
}

/// Starts a scheduler replica (loop + admin API on a random port) in-process; returns the
/// handle and the admin API's base URL. The console's namespace is the token service's.
pub async fn spawn_scheduler(
    tokens: std::sync::Arc<common::token::TokenService>,
    concurrency: usize,
) -> (WorkerHandle, String) {
    let prefix = tokens.store.keys.prefix().to_owned();
    let ns: Namespace = prefix
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the token service's keys start with a namespace");
    spawn_scheduler_with(tokens, concurrency, console_config(&ns, None)).await
}

/// What a test console needs: the test broker and platform, and `public_base_url`.
pub fn console_config(
    ns: &Namespace,
    public_base_url: Option<String>,
) -> workers::scheduler::console::ConsoleConfig {
    workers::scheduler::console::ConsoleConfig {
        amqp_urls: vec![crate::amqp_url()],
        namespace: ns.clone(),
        raw_shards: common::amqp::RawShards::ONE,
        platform: test_platform_args(),
        public_base_url,
    }
}

/// [`spawn_scheduler`] with the console's settings.
pub async fn spawn_scheduler_with(
    tokens: std::sync::Arc<common::token::TokenService>,
    concurrency: usize,
    console: workers::scheduler::console::ConsoleConfig,
) -> (WorkerHandle, String) {
    spawn_scheduler_limited(
        tokens,
        concurrency,
        console,
        common::edge::Limits::default(),
    )
    .await
}

/// [`spawn_scheduler_with`] with the admin listener's limits.
pub async fn spawn_scheduler_limited(
    tokens: std::sync::Arc<common::token::TokenService>,
    concurrency: usize,
    console: workers::scheduler::console::ConsoleConfig,
    limits: common::edge::Limits,
) -> (WorkerHandle, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = workers::scheduler::SchedulerConfig {
        tokens: tokens.clone(),
        admin_addr: addr,
        admin_token: ADMIN_TOKEN.into(),
        refresh_concurrency: concurrency,
        list_sync: Duration::from_secs(3600),
        tick: Duration::from_millis(250),
        lease: Duration::from_secs(10),
        console,
        limits,
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let admin_rx = rx.clone();
    let task = tokio::spawn(async move {
        let admin_config = config.clone();
        let admin = tokio::spawn(async move {
            workers::scheduler::admin::serve(listener, &admin_config, admin_rx).await
        });
        workers::scheduler::run_loop(config, rx).await;
        let _ = admin.await;
    });
    (WorkerHandle { stop, task }, format!("http://{addr}"))
}

/// Starts a gateway (`workers gateway`) in-process on a random port for `tokens`'s platform,
/// calling `api_base` (a wechat-sim), accepting the test admin token; returns its base URL.
pub async fn spawn_gateway(
    tokens: std::sync::Arc<common::token::TokenService>,
    api_base: &str,
) -> (WorkerHandle, String) {
    spawn_gateway_limited(tokens, api_base, common::edge::Limits::default()).await
}

/// The test platform's 公众号开发域名 (`WXPIPE_WEB_DOMAINS` of the test gateways).
pub const WEB_DOMAIN: &str = "h5.wxpipe.test";

/// [`spawn_gateway`] with the listener's limits.
pub async fn spawn_gateway_limited(
    tokens: std::sync::Arc<common::token::TokenService>,
    api_base: &str,
    limits: common::edge::Limits,
) -> (WorkerHandle, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = workers::gateway::GatewayConfig {
        tokens,
        api_base: api_base.to_owned(),
        component_appid: test_platform::COMPONENT_APPID.into(),
        admin_token: Some(ADMIN_TOKEN.into()),
        max_body_bytes: 20 * 1024 * 1024,
        timeout: Duration::from_secs(10),
        limits,
        web_domains: common::jssdk::WebDomains::parse(WEB_DOMAIN).expect("literal"),
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _ = workers::gateway::serve(listener, config, rx).await;
    });
    (WorkerHandle { stop, task }, format!("http://{addr}"))
}

/// `GET {admin}{path}` with the test bearer: the status and the JSON body (null if none);
/// status 0 when the admin API cannot be reached (it may be starting or restarting).
pub async fn admin_get(admin: &str, path: &str) -> (u16, serde_json::Value) {
    let Ok(r) = crate::http()
        .get(format!("{admin}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
    else {
        return (0, serde_json::Value::Null);
    };
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The holder of each bucket's lease (the replica id inside the claim value), for the buckets
/// whose lease is held now.
pub async fn lease_holders(
    svc: &common::token::TokenService,
) -> std::collections::BTreeMap<u16, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(mut c) = svc.store.pool().get().await else {
        return out;
    };
    for b in 0..common::redis::BUCKETS {
        let v: Option<String> = deadpool_redis::redis::cmd("GET")
            .arg(svc.store.keys.bucket_lease(b))
            .query_async(&mut c)
            .await
            .unwrap_or(None);
        if let Some(v) = v
            && let Some(rest) = v.strip_prefix("claim:")
            && let Some((holder, _)) = rest.rsplit_once(':')
        {
            out.insert(b, holder.to_owned());
        }
    }
    out
}

/// Reads `appid`'s token from a scheduler's admin API at `admin` and uses it on the simulator
/// at `api` (`get_authorizer_option`), as a team would: false when the admin API served none
/// (unreachable, or not 200); panics when the simulator refuses a served token.
pub async fn use_served_token(admin: &str, api: &str, appid: &str) -> bool {
    let (status, tok) = admin_get(admin, &format!("/v1/authorizers/{appid}/access_token")).await;
    if status != 200 {
        return false;
    }
    let token = tok["access_token"].as_str().unwrap_or_default();
    let answer: serde_json::Value = crate::http()
        .post(format!(
            "{api}/cgi-bin/component/get_authorizer_option?access_token={token}"
        ))
        .json(&serde_json::json!({"option_name": "voice_recognize"}))
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("the simulator answers JSON");
    assert!(
        answer["errcode"].is_null() || answer["errcode"] == 0,
        "a served token was refused: {answer}"
    );
    true
}

/// `POST {url}` with `bearer` and a JSON body: the status and the JSON answer (null if none).
pub async fn post_json(
    url: &str,
    bearer: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = crate::http()
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url} does not answer: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `POST {admin}{path}` with the test bearer and a JSON body.
pub async fn admin_post(
    admin: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    post_json(&format!("{admin}{path}"), ADMIN_TOKEN, body).await
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether `{base}/readyz` (`base`: `http://host:port`) answered 200 within `within`: the
/// ingress's, a worker's (its `WXPIPE_METRICS_ADDR`), any role's.
pub async fn ready_within(base: &str, within: Duration) -> bool {
    let client = crate::http();
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `check` every 100 ms until it returns `Some`; panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole pipeline of one test, in-process: an ingress on `port` (so the simulator's
/// pushes find it), a decrypt worker, a business worker and a scheduler with its admin API,
/// all on the test's namespace and talking to `sim`. Stopping it stops every role gracefully;
/// dropping it (a failed test) tells them to stop. The namespace is cleaned up by its
/// [`crate::broker::TestNs`].
pub struct Pipeline {
    ingress: Option<IngressHandle>,
    /// `http://127.0.0.1:{port}`: the ingress and the authorization pages.
    pub base: String,
    /// The admin API's base URL.
    pub admin: String,
    pub tokens: std::sync::Arc<common::token::TokenService>,
    workers: Vec<WorkerHandle>,
}

/// Starts a [`Pipeline`] on `ns` with the refresh `margin`.
pub async fn spawn_pipeline(
    ns: &Namespace,
    sim: &crate::sim::SimHandle,
    port: u16,
    margin: Duration,
) -> Pipeline {
    let base = format!("http://127.0.0.1:{port}");
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the pipeline's port is free");
    let ingress = IngressHandle::start_on(listener, ingress_config_with_sim(ns, sim, &base)).await;
    assert!(
        ingress.wait_ready(Duration::from_secs(15)).await,
        "the ingress never became ready"
    );
    let tokens = std::sync::Arc::new(token_service(ns, &sim.api_base(), margin));
    let (scheduler, admin) =
        spawn_scheduler_with(tokens.clone(), 16, console_config(ns, Some(base.clone()))).await;
    let workers = vec![
        spawn_decrypt(decrypt_config(ns)),
        spawn_business(ns, tokens.clone()),
        scheduler,
    ];
    Pipeline {
        ingress: Some(ingress),
        base,
        admin,
        tokens,
        workers,
    }
}

/// A simulator pushing to a [`Pipeline`] on `ns` (refresh margin 600 s) that has its ticket and
/// component token.
pub async fn pipeline_with_sim(ns: &Namespace) -> (crate::sim::SimHandle, Pipeline) {
    let port = free_port();
    let sim = crate::sim::start(crate::sim::SimConfig::for_tests(&format!(
        "http://127.0.0.1:{port}"
    )))
    .await
    .expect("the simulator starts");
    let p = spawn_pipeline(ns, &sim, port, Duration::from_secs(600)).await;
    p.ticket_and_component_token(&sim).await;
    (sim, p)
}

/// Creates a gateway team key through the admin API at `admin`; returns the key.
pub async fn team_key(admin: &str, scope: serde_json::Value) -> String {
    let (s, v) = admin_post(admin, "/v1/gateway/keys", scope).await;
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().expect("the new key").to_owned()
}

/// A pipeline with a ticket, a component token, one authorized official account (its token
/// stored) and a gateway (the gateway tests' platform).
pub struct GatewayPlatform {
    pub sim: crate::sim::SimHandle,
    pub pipeline: Pipeline,
    /// The authorized account.
    pub appid: String,
    pub gateway: WorkerHandle,
    /// `http://127.0.0.1:{port}`.
    pub gw: String,
}

impl GatewayPlatform {
    pub async fn start(ns: &Namespace) -> Self {
        let (sim, pipeline) = pipeline_with_sim(ns).await;
        let appid = pipeline.authorize(&sim, false).await;
        let (gateway, gw) = spawn_gateway(pipeline.tokens.clone(), &sim.api_base()).await;
        Self {
            sim,
            pipeline,
            appid,
            gateway,
            gw,
        }
    }

    /// The gateway's address.
    pub fn gw_addr(&self) -> SocketAddr {
        self.gw
            .trim_start_matches("http://")
            .parse()
            .expect("the gateway's address")
    }

    /// Creates a team key through the admin API; returns the key.
    pub async fn key(&self, scope: serde_json::Value) -> String {
        team_key(&self.pipeline.admin, scope).await
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
        self.pipeline.stop().await;
        self.sim.stop().await;
    }
}

impl Pipeline {
    /// An account authorizes the platform in the simulator (its `authorized` push goes through
    /// the pipeline); waits until its token and profile are stored; returns its appid.
    pub async fn authorize(&self, sim: &crate::sim::SimHandle, mini_program: bool) -> String {
        let appid = sim
            .post(
                "/sim/authorize",
                serde_json::json!({ "mini_program": mini_program }),
            )
            .await["appid"]
            .as_str()
            .expect("the simulator names the account")
            .to_owned();
        eventually(
            Duration::from_secs(20),
            "the account's token and profile",
            || async {
                let (s, v) = admin_get(&self.admin, &format!("/v1/console/accounts/{appid}")).await;
                (s == 200 && v["profile"].is_object() && v["account"]["expires_at"].is_i64())
                    .then_some(())
            },
        )
        .await;
        appid
    }

    /// The simulator pushes a ticket; waits until the scheduler has the component token.
    pub async fn ticket_and_component_token(&self, sim: &crate::sim::SimHandle) {
        crate::http()
            .post(format!("{}/sim/push/ticket", sim.api_base()))
            .send()
            .await
            .expect("the simulator answers");
        eventually(Duration::from_secs(15), "the component token", || async {
            let (status, _) = admin_get(&self.admin, "/v1/component/access_token").await;
            (status == 200).then_some(())
        })
        .await;
    }

    /// Stops every role gracefully.
    pub async fn stop(mut self) {
        for w in std::mem::take(&mut self.workers) {
            w.stop().await;
        }
        if let Some(ingress) = self.ingress.take() {
            ingress.stop().await.expect("the ingress stopped cleanly");
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for w in &self.workers {
            w.stop.send_replace(true);
        }
    }
}
