//! Logs and metrics, set up the same way by every binary.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// The variables logging reads itself (not flags), for the configuration reference:
/// (variable, default, meaning).
pub const LOG_VARIABLES: [(&str, &str, &str); 2] = [
    (
        "RUST_LOG",
        "info",
        "Log filter (`tracing` directives, e.g. `info,lapin=warn`); the command-line tools default to warnings",
    ),
    (
        "WXPIPE_LOG_FORMAT",
        "text",
        "`json` for one JSON object per line",
    ),
];

/// Initialises logging: `RUST_LOG` filters (default `info`), `WXPIPE_LOG_FORMAT=json` switches
/// to one JSON object per line. Logs go to stderr so that tools can print results on stdout.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// [`init_logging`] with another default filter than `info` when `RUST_LOG` is unset (the
/// command-line tools default to warnings only).
pub fn init_logging_with_default(default: &str) {
    let filter = env_filter(default);
    let json = std::env::var("WXPIPE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `RUST_LOG`'s filter if it is set, else `default` (the integration tests' logs use it too).
pub fn env_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the process-wide Prometheus recorder once and returns its handle (`/metrics`
/// renders it). Later calls, e.g. from several test servers in one process, share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ],
                )
                .expect("bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    crate::metrics_catalog::describe();
                    handle
                }
                // Another recorder is installed (only possible in tests that install their
                // own); keep a detached one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
