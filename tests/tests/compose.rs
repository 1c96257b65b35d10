//! `docker-compose.yml` against the Compose specification's JSON schema (no Docker engine runs
//! here), with `check-jsonschema`'s vendored copy of the schema (`./scripts/test` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `WXPIPE_CHECK_JSONSCHEMA`, else the virtualenv `./scripts/test` makes under the target
/// directory, else `check-jsonschema` on the PATH.
fn validator() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("tools/venv/bin/check-jsonschema");
    let path = std::env::var("WXPIPE_CHECK_JSONSCHEMA").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "check-jsonschema".into()
        }
    });
    wxpipe_tests::require_tool(
        &path,
        "run ./scripts/test (it installs check-jsonschema), or set WXPIPE_CHECK_JSONSCHEMA",
    )
}

fn validate(file: &Path) -> (bool, String) {
    let mut c = Command::new(validator());
    c.args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file);
    wxpipe_tests::run_tool(c)
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let (ok, report) = validate(&compose);
    assert!(ok, "{report}");

    // The validator does refuse a file that breaks the specification.
    let broken =
        std::env::temp_dir().join(format!("wxpipe-compose-broken-{}.yml", std::process::id()));
    std::fs::write(
        &broken,
        "services:\n  x:\n    image: 1\n    ports: not-a-list\n    restart: [always]\n",
    )
    .unwrap();
    let (ok, _) = validate(&broken);
    let _ = std::fs::remove_file(&broken);
    assert!(!ok, "a broken compose file must be refused");
}

#[test]
fn the_compose_file_runs_every_role() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml"),
    )
    .unwrap();
    for needle in [
        "image: rabbitmq:3.13-management",
        "\"--appendonly\", \"yes\"",
        "command: [\"ingress\"]",
        "command: [\"workers\", \"decrypt\"]",
        "replicas: 2",
        "command: [\"workers\", \"business\"]",
        "command: [\"workers\", \"scheduler\"]",
        "command: [\"wechat-sim\", \"serve\"]",
        "profiles: [\"sim\"]",
        "healthcheck:",
        "command: [\"workers\", \"gateway\"]",
        // The broker's node name, and with it its database, survives a recreated container.
        "hostname: rabbitmq",
        // scripts/demo's Docker branch and the host's tools reach the broker and Redis.
        "\"127.0.0.1:5672:5672\"",
        "\"127.0.0.1:6379:6379\"",
    ] {
        assert!(text.contains(needle), "docker-compose.yml lacks {needle}");
    }
    // `COPY . .` must not send the build output as the context: all of target/ is excluded but
    // target/image/, where scripts/compose-check puts the binaries of the Dockerfile's
    // `prebuilt` stage (scripts/compose-check builds with this file, so it would fail without
    // the exception).
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dockerignore"))
            .unwrap_or_default();
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        rules
            .iter()
            .any(|l| ["target/", "target", "target/*"].contains(l)),
        ".dockerignore must exclude target/: {ignore:?}"
    );
    assert_eq!(
        rules
            .iter()
            .filter(|l| l.starts_with('!'))
            .collect::<Vec<_>>(),
        [&"!target/image"],
        "the one exception is target/image: {ignore:?}"
    );
    assert!(
        text.contains("mode: replicated"),
        "podman-compose runs deploy.replicas only with deploy.mode written"
    );
    assert_eq!(
        text.matches("healthcheck:").count(),
        2,
        "RabbitMQ and Redis have health checks"
    );
}

/// Fail-closed: a forgotten credential stops `docker compose up` (`${VAR:?…}`) instead of
/// starting a platform on public sample values; only deploy/sim.env (the simulator's) has them.
#[test]
fn production_services_refuse_to_start_without_credentials() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    for var in [
        "WXPIPE_COMPONENT_APPID",
        "WXPIPE_COMPONENT_SECRET",
        "WXPIPE_TOKEN",
        "WXPIPE_ENCODING_AES_KEY",
        "WXPIPE_ADMIN_TOKEN",
        "WXPIPE_PUBLIC_BASE_URL",
    ] {
        assert!(
            text.contains(&format!("${{{var}:?")),
            "{var} must be required in docker-compose.yml"
        );
        assert!(
            !text.contains(&format!("${{{var}:-")),
            "{var} must have no default in docker-compose.yml"
        );
    }
    for sample in [
        wxpipe_tests::test_platform::TOKEN,
        wxpipe_tests::test_platform::ENCODING_AES_KEY,
        wxpipe_tests::test_platform::COMPONENT_SECRET,
    ] {
        assert!(
            !text.contains(&format!(":-{sample}}}")),
            "docker-compose.yml defaults a credential to a public sample value"
        );
    }
    let sim = std::fs::read_to_string(root.join("deploy/sim.env")).unwrap();
    assert!(sim.contains(&format!(
        "WXPIPE_ENCODING_AES_KEY={}",
        wxpipe_tests::test_platform::ENCODING_AES_KEY
    )));
}
