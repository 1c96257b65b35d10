//! The monitoring files in `deploy/` (issue 14): Prometheus' alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the compose profile's
//! Prometheus configuration passes `promtool check config`, the Grafana dashboard is well
//! formed, and every wxpipe metric a rule or a panel names is one the code exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `WXPIPE_PROMTOOL`, else `promtool` on the PATH (Debian's `prometheus` package, which
/// `./scripts/test` installs).
fn promtool() -> Command {
    let path = std::env::var("WXPIPE_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let path = wxpipe_tests::require_tool(
        &path,
        "`apt-get install prometheus` (./scripts/test installs it), or set WXPIPE_PROMTOOL",
    );
    let mut c = Command::new(path);
    c.current_dir(root().join("deploy/prometheus"));
    c
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    let mut check = promtool();
    check.args(["check", "rules", "wxpipe.rules.yml"]);
    let (ok, out) = wxpipe_tests::run_tool(check);
    assert!(ok, "{out}");
    let mut test = promtool();
    test.args(["test", "rules", "wxpipe.rules.test.yml"]);
    let (ok, out) = wxpipe_tests::run_tool(test);
    assert!(ok, "{out}");

    // The unit tests can fail: an alert expected before its `for` has elapsed is refused.
    let wrong = std::env::temp_dir().join(format!("wxpipe-rules-wrong-{}.yml", std::process::id()));
    std::fs::write(
        &wrong,
        format!(
            "rule_files: [{}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'wxpipe_ticket_age_seconds'\n        values: '1900+60x10'\n    alert_rule_test:\n      - eval_time: 2m\n        alertname: WxpipeTicketStale\n        exp_alerts:\n          - exp_labels: {{severity: warning}}\n",
            root().join("deploy/prometheus/wxpipe.rules.yml").display()
        ),
    )
    .unwrap();
    let mut test = promtool();
    test.arg("test").arg("rules").arg(&wrong);
    let (ok, out) = wxpipe_tests::run_tool(test);
    let _ = std::fs::remove_file(&wrong);
    assert!(!ok, "a wrong expectation passed: {out}");
}

#[test]
fn the_compose_prometheus_configuration_is_valid() {
    let mut check = promtool();
    check.args(["check", "config", "prometheus.yml"]);
    let (ok, out) = wxpipe_tests::run_tool(check);
    assert!(ok, "{out}");
    let config = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap();
    for job in [
        "wxpipe-ingress",
        "wxpipe-decrypt",
        "wxpipe-business",
        "wxpipe-scheduler",
    ] {
        assert!(
            config.contains(&format!("job_name: {job}")),
            "{job} is not scraped"
        );
    }
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(compose.contains("./deploy/prometheus:/etc/prometheus:ro"));
    assert!(compose.contains("./deploy/grafana/provisioning:/etc/grafana/provisioning:ro"));
}

/// Every `wxpipe_…` metric the code records: `counter!`, `gauge!` and `histogram!` calls with
/// a literal name, and whether it is a histogram.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["common/src", "ingress/src", "workers/src"]
        .iter()
        .map(|d| root().join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for kind in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(kind) {
                    let rest = text[i + kind.len()..].trim_start();
                    let Some(rest) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if name.starts_with("wxpipe_") {
                        if kind == "histogram!(" {
                            histograms.insert(name.clone());
                        }
                        all.insert(name);
                    }
                }
            }
            // The listeners' metric names (`common::edge::Names`): spelled as fields of
            // constants and recorded through them.
            for line in text.lines() {
                let line = line.trim();
                for field in ["connections: \"", "timeouts: \"", "refused: \""] {
                    if let Some(rest) = line.strip_prefix(field) {
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if name.starts_with("wxpipe_") {
                            all.insert(name);
                        }
                    }
                }
            }
        }
    }
    (all, histograms)
}

/// The `wxpipe_…` names in `text`.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("wxpipe_") {
        // Not part of a longer word (e.g. a job or a file name).
        if i > 0 {
            let before = text.as_bytes()[i - 1];
            if before.is_ascii_alphanumeric() || before == b'_' || before == b'-' || before == b'.'
            {
                continue;
            }
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// The names in `used` that no code exports (a histogram's `_bucket`, `_sum`, `_count` count
/// as the histogram).
fn unknown(used: &BTreeSet<String>) -> Vec<String> {
    let (all, histograms) = exported();
    used.iter()
        .filter(|name| {
            !all.contains(*name)
                && !["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|base| histograms.contains(base))
                })
        })
        .cloned()
        .collect()
}

#[test]
fn every_metric_a_rule_or_a_panel_names_is_exported() {
    let (all, histograms) = exported();
    // The scan finds what it should (so an empty scan cannot pass everything).
    for name in [
        "wxpipe_ingress_pushes_total",
        "wxpipe_queue_messages",
        "wxpipe_push_to_event_seconds",
    ] {
        assert!(all.contains(name), "{name} not found among {all:?}");
    }
    assert!(histograms.contains("wxpipe_ingress_publish_seconds"));
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/wxpipe.rules.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(root().join("deploy/grafana/dashboards/wxpipe.json")).unwrap();
    let mut used = named(&rules);
    used.extend(named(&dashboard));
    assert!(used.len() > 15, "{used:?}");
    let missing = unknown(&used);
    assert!(missing.is_empty(), "named but never exported: {missing:?}");
    // And the check does refuse a name nobody exports.
    let made_up = BTreeSet::from([
        "wxpipe_made_up_total".to_owned(),
        "wxpipe_queue_messages_bucket".to_owned(),
    ]);
    assert_eq!(unknown(&made_up).len(), 2);
}

#[test]
fn the_dashboard_is_well_formed_and_uses_the_provisioned_data_source() {
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/dashboards/wxpipe.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "wxpipe-overview");
    let datasources = std::fs::read_to_string(
        root().join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(datasources.contains("uid: wxpipe-prometheus"));
    let mut ids = BTreeSet::new();
    let panels = d["panels"].as_array().unwrap();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "wxpipe-prometheus",
            "{}",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for t in targets {
            assert!(!t["expr"].as_str().unwrap().is_empty());
        }
    }
    // What the issue asks the dashboard to show.
    for topic in [
        "wxpipe_ingress_pushes_total",
        "wxpipe_ingress_publish_seconds_bucket",
        "wxpipe_push_to_event_seconds_bucket",
        "wxpipe_queue_messages",
        "wxpipe_dead_letters_total",
        "wxpipe_token_refreshes_total",
        "wxpipe_wechat_calls_total",
        "wxpipe_component_token_expires_in_seconds",
        "wxpipe_authorizer_token_expires_in_min_seconds",
        "wxpipe_scheduler_buckets_held",
        "wxpipe_redis_unreplicated_writes_total",
        "wxpipe_ingress_reply_fallbacks_total",
    ] {
        assert!(text.contains(topic), "no panel shows {topic}");
    }
}

#[test]
fn every_recorded_metric_is_in_the_catalog_and_every_catalogued_one_is_recorded() {
    let (recorded, histograms) = exported();
    let catalog: BTreeSet<String> = common::metrics_catalog::METRICS
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    let missing: Vec<_> = recorded.difference(&catalog).collect();
    assert!(
        missing.is_empty(),
        "recorded but not in common/src/metrics_catalog.rs: {missing:?}"
    );
    let stale: Vec<_> = catalog.difference(&recorded).collect();
    assert!(
        stale.is_empty(),
        "catalogued but no longer recorded: {stale:?}"
    );
    for m in common::metrics_catalog::METRICS {
        assert_eq!(
            histograms.contains(m.name),
            m.kind == common::metrics_catalog::Kind::Histogram,
            "{}: its type",
            m.name
        );
    }
}
