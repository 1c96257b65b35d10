//! The `ingress` binary itself: configuration errors and SIGTERM.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn ingress() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ingress"));
    for var in [
        "WXPIPE_COMPONENT_APPID",
        "WXPIPE_TOKEN",
        "WXPIPE_ENCODING_AES_KEY",
        "WXPIPE_NAMESPACE",
    ] {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn a_missing_variable_is_named_in_one_line() {
    let out = ingress().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("WXPIPE_COMPONENT_APPID is not set"), "{err}");
}

#[test]
fn a_malformed_secret_is_named_but_never_echoed() {
    let out = ingress()
        .env("WXPIPE_COMPONENT_APPID", "wx134c8103faa5a59e")
        .env("WXPIPE_TOKEN", "tok")
        .env("WXPIPE_ENCODING_AES_KEY", "my-secret-key-too-short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("WXPIPE_ENCODING_AES_KEY is invalid"), "{err}");
    assert!(!err.contains("my-secret-key"), "{err}");
}

#[test]
fn help_documents_every_variable() {
    let out = ingress()
        .arg("--help")
        .env("WXPIPE_AMQP_URL", "amqp://u:topsecret@h:5672/%2f")
        .env("WXPIPE_TOKEN", "token-secret")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "WXPIPE_COMPONENT_APPID",
        "WXPIPE_TOKEN",
        "WXPIPE_ENCODING_AES_KEY",
        "WXPIPE_AMQP_URL",
        "WXPIPE_REDIS_URL",
        "WXPIPE_NAMESPACE",
        "WXPIPE_INGRESS_ADDR",
        "WXPIPE_PUBLISH_TIMEOUT_MS",
        "WXPIPE_MAX_BODY_BYTES",
        "WXPIPE_TIMESTAMP_WINDOW_SECS",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
    assert!(
        !help.contains("topsecret"),
        "--help must not show the broker password"
    );
    assert!(
        !help.contains("token-secret"),
        "--help must not show the token"
    );
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn sigterm_stops_it_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ns = format!("t-cli-{}", std::process::id());
    let mut child = ingress()
        .env("WXPIPE_COMPONENT_APPID", "wx134c8103faa5a59e")
        .env("WXPIPE_TOKEN", "AAAAA")
        .env("WXPIPE_ENCODING_AES_KEY", KEY)
        .env("WXPIPE_NAMESPACE", &ns)
        .env("WXPIPE_INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let healthz = get(port, "/healthz").unwrap();
    assert!(healthz.starts_with("HTTP/1.1 200"));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    delete_namespace(&ns);
    assert!(!err.contains("panicked"), "{err}");
}

/// Deletes what the ingress declared for `ns`.
fn delete_namespace(ns: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = std::env::var("WXPIPE_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let conn = lapin::Connection::connect(&url, Default::default())
            .await
            .unwrap();
        let ns: common::ids::Namespace = ns.parse().unwrap();
        let (exchanges, queues) =
            common::amqp::topology::all_names(&ns, common::amqp::RawShards::ONE);
        for q in queues {
            let ch = conn.create_channel().await.unwrap();
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for x in exchanges {
            let ch = conn.create_channel().await.unwrap();
            let _ = ch
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
        }
    });
}
