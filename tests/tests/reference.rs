//! The generated references and the code agree (issue 33): `docs/reference/configuration.md`
//! holds, verbatim, what `ingress --config-reference` and `workers config-reference` print from
//! the clap definitions; `docs/reference/metrics.md` what `workers metrics-reference` prints
//! from the metrics catalog (held to the source by `tests/tests/monitoring.rs`) and every alert
//! rule. Run `scripts/reference` after changing a setting, a metric or an alert.

use wxpipe_tests::harness::workspace_bin;

fn printed(bin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(workspace_bin(bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin} does not run: {e}"));
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_configuration_reference_is_the_codes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/reference/configuration.md"
    );
    let committed = std::fs::read_to_string(path).expect("docs/reference/configuration.md");
    for (bin, args) in [
        ("ingress", &["--config-reference"][..]),
        ("workers", &["config-reference"][..]),
    ] {
        let part = printed(bin, args);
        assert!(part.lines().count() > 10, "{bin}: {part}");
        assert!(
            committed.contains(&part),
            "docs/reference/configuration.md differs from what `{bin}` prints: run scripts/reference"
        );
    }
    // Every setting README's table names is in the reference (README keeps the common ones).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for var in readme
        .lines()
        .filter(|l| l.starts_with("| `WXPIPE_"))
        .filter_map(|l| l.split('`').nth(1))
    {
        assert!(
            committed.contains(&format!("`{var}`")),
            "README's {var} is not a setting of either binary"
        );
    }
}

#[test]
fn the_metrics_reference_is_the_catalogs_and_names_every_alert() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let committed = std::fs::read_to_string(format!("{root}/docs/reference/metrics.md"))
        .expect("docs/reference/metrics.md");
    let part = printed("workers", &["metrics-reference"]);
    assert!(
        committed.contains(&part),
        "docs/reference/metrics.md differs from the metrics catalog: run scripts/reference"
    );
    let rules =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/wxpipe.rules.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() > 10, "{alerts:?}");
    for alert in alerts {
        assert!(
            committed.contains(&format!("| `{alert}` |")),
            "the alert {alert} is not in docs/reference/metrics.md: run scripts/reference"
        );
    }
}
