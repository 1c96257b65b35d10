//! # wxpipe-tests
//!
//! Helpers for wxpipe's integration tests and benchmarks, which talk to the real local
//! RabbitMQ and Redis:
//!
//! * [`push`] builds pushes exactly as WeChat sends them (signed query, encrypted envelope).
//! * [`broker`] gives each test its own namespace and deletes what it declared when dropped,
//!   reads messages back, and closes a named connection from the broker side.
//! * [`proxy`] is a TCP proxy that can sever every connection and refuse new ones, to take the
//!   broker away from one process without disturbing the others.
//! * [`intake`] sends numbered pushes per account and reads the intake's shards back.
//! * [`cluster`] finds the local clusters of `scripts/cluster` and kills or restarts their nodes.
//! * [`node_loss`] loses one of their RabbitMQ nodes under load and measures what it cost.
//! * [`redis_nodes`] runs a test's own Redis master, replica and Sentinel.
//! * [`harness`] starts a real ingress (and workers) in-process on a random port.
//! * [`sim`] is `wechat-sim`, the simulated WeChat (also a binary).

pub mod broker;
pub mod browser;
pub mod cluster;
pub mod faults;
pub mod flood;
pub mod harness;
pub mod http1;
pub mod intake;
pub mod node_loss;
pub mod proxy;
pub mod push;
pub mod redis_nodes;
pub mod sim;

/// The platform credentials used by tests: the official example's (protocol.md §1.5, zero key).
pub mod test_platform {
    pub const COMPONENT_APPID: &str = "wx134c8103faa5a59e";
    pub const TOKEN: &str = "AAAAA";
    pub const ENCODING_AES_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    /// The AppSecret `wechat-sim` expects by default.
    pub const COMPONENT_SECRET: &str = "wxpipe-sim-secret";
}

/// Logs of the code under test into the test's captured output (printed only when it fails):
/// `RUST_LOG` if set, else `default_filter`. For the tests whose failure would otherwise not say
/// which path was taken; once per test binary (later calls keep the first filter).
pub fn log_to_test_output(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(common::telemetry::env_filter(default_filter))
        .with_test_writer()
        .try_init();
}

/// `WXPIPE_AMQP_URL` if set, else the local broker.
pub fn amqp_url() -> String {
    std::env::var("WXPIPE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `WXPIPE_REDIS_URL` if set, else the local Redis.
pub fn redis_url() -> String {
    std::env::var("WXPIPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A reqwest client builder with TLS ready: reqwest is built without a default crypto provider
/// (wxpipe uses ring, like its AMQP client), so one is installed first.
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A default reqwest client (see [`http_builder`]).
pub fn http() -> reqwest::Client {
    http_builder().build().expect("reqwest client")
}

/// `GET url` with [`http`]: the body as text, whatever the status.
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    http()
        .get(url)
        .send()
        .await
        .expect("the server answers")
        .text()
        .await
        .expect("a text body")
}

/// The value of one series in a Prometheus text exposition (`name{labels}` exactly as
/// exported); `None` when the series is absent or its value is not a number.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// `path` when it runs (`{path} --version` succeeds); otherwise the test stops saying how to get
/// it (`install`).
pub fn require_tool(path: &str, install: &str) -> std::path::PathBuf {
    let runs = std::process::Command::new(path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(runs, "{path} is missing: {install}");
    std::path::PathBuf::from(path)
}

/// Runs a command to its end: whether it succeeded, and what it printed (stdout then stderr).
pub fn run_tool(mut command: std::process::Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
