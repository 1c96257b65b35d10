//! Every subcommand of `workers` has a `--help` that names its settings, `--version` works,
//! and a missing required variable is named in one line.

use std::process::Command;

fn workers(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_workers"));
    c.args(args);
    for var in [
        "WXPIPE_COMPONENT_APPID",
        "WXPIPE_COMPONENT_SECRET",
        "WXPIPE_TOKEN",
        "WXPIPE_ENCODING_AES_KEY",
        "WXPIPE_ADMIN_TOKEN",
    ] {
        c.env_remove(var);
    }
    c.output().unwrap()
}

#[test]
fn every_subcommand_explains_itself() {
    let cases: [(&[&str], &[&str]); 10] = [
        (
            &["--help"],
            &["decrypt", "business", "scheduler", "all", "dlq", "crypto"],
        ),
        (
            &["decrypt", "--help"],
            &[
                "WXPIPE_DECRYPT_PREFETCH",
                "WXPIPE_DEDUP_TTL_SECS",
                "WXPIPE_AMQP_URL",
                "WXPIPE_REDIS_URL",
            ],
        ),
        (
            &["business", "--help"],
            &["WXPIPE_BUSINESS_PREFETCH", "WXPIPE_WECHAT_API_BASE"],
        ),
        (
            &["scheduler", "--help"],
            &[
                "WXPIPE_ADMIN_ADDR",
                "WXPIPE_ADMIN_TOKEN",
                "WXPIPE_REFRESH_MARGIN_SECS",
            ],
        ),
        (
            &["all", "--help"],
            &[
                "WXPIPE_ADMIN_TOKEN",
                "WXPIPE_DECRYPT_PREFETCH",
                "WXPIPE_RELEASES_TICK_MS",
            ],
        ),
        (
            &["releases", "--help"],
            &["WXPIPE_RELEASES_AUDIT_POLL_SECS", "--releases-lease-secs"],
        ),
        (&["dlq", "--help"], &["list", "show", "replay", "purge"]),
        (
            &["dlq", "replay", "--help"],
            &["--source", "--reason", "--since", "--limit", "--dry-run"],
        ),
        (&["crypto", "--help"], &["sign", "encrypt", "decrypt"]),
        (
            &["crypto", "encrypt", "--help"],
            &["--random", "--timestamp"],
        ),
    ];
    for (args, needles) in cases {
        let out = workers(args);
        assert!(out.status.success(), "workers {args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        for n in needles {
            assert!(
                help.contains(n),
                "`workers {}` does not mention {n}",
                args.join(" ")
            );
        }
    }
    let version = workers(&["--version"]);
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .starts_with("workers ")
    );
}

#[test]
fn a_missing_variable_is_named_in_one_line() {
    let out = workers(&["scheduler"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("WXPIPE_ADMIN_TOKEN is not set")
            || err.contains("WXPIPE_COMPONENT_APPID is not set"),
        "{err}"
    );
}
