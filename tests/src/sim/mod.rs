//! `wechat-sim`: a simulated WeChat that speaks the real wire format (protocol.md), for tests,
//! demos and load.
//!
//! * [`api`] — the component API on its own port (`WXPIPE_WECHAT_API_BASE` points at it), plus
//!   the `/sim/*` inspection and control routes of [`control`].
//! * [`pages`] — the authorization pages (`WXPIPE_WECHAT_PAGE_BASE` points at them).
//! * [`pusher`] — pushes to the ingress with WeChat's retries; a ticket every
//!   `ticket_interval`.
//! * [`release`] — the full-network release test.
//! * [`library`], [`code`] — the template library and the mini programs' code, audits and
//!   releases (protocol.md §8), audit results pushed like WeChat's.
//! * [`load`] — the load generator.
//! * [`state`] — what it remembers and the rules it enforces.

pub mod api;
pub mod code;
pub mod control;
pub mod library;
pub mod load;
pub mod oauth;
pub mod pages;
pub mod pusher;
pub mod release;
pub mod state;
pub mod tickets;
pub mod users;

use crate::push::PushBuilder;
use state::{Rules, State};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything the simulator is configured with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub api_addr: SocketAddr,
    pub page_addr: SocketAddr,
    /// Where pushes go: the ingress's base URL (`http://127.0.0.1:8080`).
    pub ingress_url: String,
    pub component_appid: String,
    pub component_secret: String,
    pub token: String,
    pub encoding_aes_key: String,
    /// A ticket is pushed at start and then this often; `None`: only on demand.
    pub ticket_interval: Option<Duration>,
    pub rules: Rules,
    /// Share of API calls answered `-1` (system busy).
    pub busy_rate: f64,
    /// Share of API calls answered after `slow_delay`.
    pub slow_rate: f64,
    pub slow_delay: Duration,
    /// When set, the authorization pages refuse visitors whose Referer is not on this host.
    pub referer_domain: Option<String>,
    /// The platform's 公众号开发域名: when set, web login's `redirect_uri` must be on it
    /// (10003 otherwise).
    pub web_domain: Option<String>,
}

impl SimConfig {
    /// The test platform's credentials ([`crate::test_platform`]), random ports, no ticket timer.
    pub fn for_tests(ingress_url: &str) -> Self {
        Self {
            api_addr: "127.0.0.1:0".parse().expect("literal"),
            page_addr: "127.0.0.1:0".parse().expect("literal"),
            ingress_url: ingress_url.to_owned(),
            component_appid: crate::test_platform::COMPONENT_APPID.into(),
            component_secret: crate::test_platform::COMPONENT_SECRET.into(),
            token: crate::test_platform::TOKEN.into(),
            encoding_aes_key: crate::test_platform::ENCODING_AES_KEY.into(),
            ticket_interval: None,
            rules: Rules::default(),
            busy_rate: 0.0,
            slow_rate: 0.0,
            slow_delay: Duration::from_secs(3),
            referer_domain: None,
            web_domain: None,
        }
    }
}

/// Random faults on API calls.
#[derive(Debug, Clone)]
pub struct Faults {
    busy_rate: f64,
    slow_rate: f64,
    slow_delay: Duration,
}

impl Faults {
    pub fn busy(&self) -> bool {
        self.busy_rate > 0.0 && rand::random::<f64>() < self.busy_rate
    }

    pub fn delay(&self) -> Option<Duration> {
        (self.slow_rate > 0.0 && rand::random::<f64>() < self.slow_rate).then_some(self.slow_delay)
    }
}

/// What the HTTP handlers share.
pub struct SimShared {
    pub state: Arc<Mutex<State>>,
    pub faults: Faults,
    pub pusher: pusher::Pusher,
    pub config: SimConfig,
    /// The platform's template library (protocol.md §8).
    pub library: Mutex<library::Library>,
    /// WeChat users' own tokens (web login, protocol.md §9).
    pub users: Mutex<users::Users>,
    /// The accounts' JS-SDK tickets (protocol.md §9).
    pub tickets: Mutex<tickets::Tickets>,
    /// Web logins in flight (protocol.md §9).
    pub logins: Mutex<oauth::Logins>,
    /// The mini programs' code, audits and releases, and the platform's audit quota
    /// (protocol.md §8).
    pub code: Mutex<code::CodeWorld>,
}

impl SimShared {
    pub fn auth_code_ttl_secs(&self) -> u64 {
        self.config.rules.auth_code_ttl.as_secs()
    }
}

/// A running simulator.
pub struct SimHandle {
    pub api_addr: SocketAddr,
    pub page_addr: SocketAddr,
    pub shared: Arc<SimShared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// Authorizes a new account and exchanges its code directly in the simulator's state (as
    /// if a platform had done it before wxpipe knew the account: its refresh token is in
    /// `api_get_authorizer_list`); returns its appid.
    pub fn authorized_account(&self) -> String {
        let mut st = self.shared.state.lock().expect("sim state");
        let (_, code, _) = st.authorize(None, false);
        let r = st
            .query_auth(crate::test_platform::COMPONENT_APPID, &code)
            .expect("a fresh code exchanges");
        r["authorization_info"]["authorizer_appid"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `http://api_addr`: the value for `WXPIPE_WECHAT_API_BASE`.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// `http://page_addr`: the value for `WXPIPE_WECHAT_PAGE_BASE`.
    pub fn page_base(&self) -> String {
        format!("http://{}", self.page_addr)
    }

    /// `POST {api_base}{path}` with a JSON body (the `/sim/*` controls): the JSON answer.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = crate::http()
            .post(format!("{}{path}", self.api_base()))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the simulator does not answer {path}: {e}"));
        r.json()
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer JSON: {e}"))
    }

    /// Every API request that arrived so far (the first [`state::MAX_RECORDED`]).
    pub fn requests(&self) -> Vec<state::ApiRequest> {
        self.shared
            .state
            .lock()
            .expect("sim state")
            .stats
            .requests
            .clone()
    }

    /// The API requests the gateway sent (by its `User-Agent`), not the scheduler's own.
    pub fn gateway_requests(&self) -> Vec<state::ApiRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.user_agent.as_deref() == Some(workers::gateway::proxy::USER_AGENT))
            .collect()
    }

    /// How many API requests arrived so far.
    pub fn requests_total(&self) -> u64 {
        self.shared
            .state
            .lock()
            .expect("sim state")
            .stats
            .requests_total
    }

    /// `/sim/stats`, directly.
    pub fn stats(&self) -> serde_json::Value {
        self.shared.state.lock().expect("sim state").stats_json()
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds both ports and starts serving (and the ticket timer, when configured).
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let state = Arc::new(Mutex::new(State::new(
        &config.component_appid,
        &config.component_secret,
        config.rules.clone(),
    )));
    let builder = PushBuilder::new(
        &config.token,
        &config.encoding_aes_key,
        &config.component_appid,
    );
    let shared = Arc::new(SimShared {
        state: state.clone(),
        faults: Faults {
            busy_rate: config.busy_rate,
            slow_rate: config.slow_rate,
            slow_delay: config.slow_delay,
        },
        pusher: pusher::Pusher::new(&config.ingress_url, builder, state),
        config: config.clone(),
        library: Mutex::default(),
        users: Mutex::default(),
        tickets: Mutex::default(),
        logins: Mutex::default(),
        code: Mutex::default(),
    });
    let api_listener = TcpListener::bind(config.api_addr).await?;
    let page_listener = TcpListener::bind(config.page_addr).await?;
    let (api_addr, page_addr) = (api_listener.local_addr()?, page_listener.local_addr()?);
    let (stop, _) = watch::channel(false);
    let serve = |listener: TcpListener, app: axum::Router| {
        let mut rx = stop.subscribe();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        })
    };
    let api = api::routes()
        .merge(control::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::record,
        ))
        // WeChat takes media of up to 10 MB (20 MB for some): more than axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024))
        .with_state(shared.clone());
    let pages = pages::routes()
        .merge(oauth::page_routes())
        .with_state(shared.clone());
    let mut tasks = vec![serve(api_listener, api), serve(page_listener, pages)];
    if let Some(every) = config.ticket_interval {
        let (pusher, mut rx) = (shared.pusher.clone(), stop.subscribe());
        tasks.push(tokio::spawn(async move {
            loop {
                let (_, outcome) = pusher.ticket().await;
                tracing::info!(status = ?outcome.status, tries = outcome.tries, "ticket pushed");
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = rx.wait_for(|s| *s) => return,
                }
            }
        }));
    }
    tracing::info!(%api_addr, %page_addr, ingress = %config.ingress_url, "wechat-sim serving");
    Ok(SimHandle {
        api_addr,
        page_addr,
        shared,
        stop,
        tasks,
    })
}
