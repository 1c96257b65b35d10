//! `workers crypto sign|encrypt|decrypt` on the shared vectors, and its failures.

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn vectors() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../common/tests/data/crypto.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_workers"))
        .args(args)
        .env_remove("WXPIPE_TOKEN")
        .env_remove("WXPIPE_ENCODING_AES_KEY")
        .env_remove("WXPIPE_COMPONENT_APPID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap()
}

#[test]
fn decrypt_every_vector_from_its_envelope() {
    for v in vectors() {
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            s(&v, "encrypt")
        );
        let out = run(
            &[
                "crypto",
                "decrypt",
                "--token",
                s(&v, "token"),
                "--aes-key",
                s(&v, "encoding_aes_key"),
                "--appid",
                s(&v, "appid"),
                "--timestamp",
                s(&v, "timestamp"),
                "--nonce",
                s(&v, "nonce"),
                "--msg-signature",
                s(&v, "msg_signature"),
            ],
            &body,
        );
        assert!(
            out.status.success(),
            "{}: {}",
            s(&v, "name"),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{}\n", s(&v, "plaintext"))
        );
    }
}

#[test]
fn encrypt_reproduces_vectors_with_a_fixed_random() {
    for v in vectors().iter().filter(|v| v["random"].is_string()) {
        let out = run(
            &[
                "crypto",
                "encrypt",
                "--token",
                s(v, "token"),
                "--aes-key",
                s(v, "encoding_aes_key"),
                "--appid",
                s(v, "appid"),
                "--timestamp",
                s(v, "timestamp"),
                "--nonce",
                s(v, "nonce"),
                "--random",
                s(v, "random"),
            ],
            s(v, "plaintext"),
        );
        assert!(out.status.success());
        let xml = String::from_utf8(out.stdout).unwrap();
        assert!(
            xml.contains(&format!(
                "<Encrypt><![CDATA[{}]]></Encrypt>",
                s(v, "encrypt")
            )),
            "{xml}"
        );
        assert!(xml.contains(&format!(
            "<MsgSignature><![CDATA[{}]]></MsgSignature>",
            s(v, "msg_signature")
        )));
    }
}

#[test]
fn sign_prints_the_signature() {
    let out = run(&["crypto", "sign", "c", "a", "b"], "");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "a9993e364706816aba3e25717850c26c9cd0d89d\n"
    );
}

#[test]
fn failures_exit_non_zero_with_one_line_naming_what_failed() {
    let v = &vectors()[0];
    let base = [
        "crypto",
        "decrypt",
        "--token",
        s(v, "token"),
        "--aes-key",
        s(v, "encoding_aes_key"),
        "--appid",
        s(v, "appid"),
        "--timestamp",
        s(v, "timestamp"),
        "--nonce",
        s(v, "nonce"),
    ];
    let zeros = "0".repeat(40);
    let cases: Vec<(Vec<&str>, String, &str)> = vec![
        (
            [&base[..], &["--msg-signature", &zeros]].concat(),
            s(v, "encrypt").to_owned(),
            "signature mismatch",
        ),
        (
            [&base[..], &["--msg-signature", s(v, "msg_signature")]].concat(),
            "<xml><Encrypt>".to_owned(),
            "reading the push body",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = run(&args, &stdin);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(
            !err.contains(s(v, "encoding_aes_key")),
            "never echo the key"
        );
    }
    // Wrong appid: the trailing appid check fails.
    let sig = s(v, "msg_signature");
    let out = run(
        &[
            "crypto",
            "decrypt",
            "--token",
            s(v, "token"),
            "--aes-key",
            s(v, "encoding_aes_key"),
            "--appid",
            "wx0000000000000000",
            "--timestamp",
            s(v, "timestamp"),
            "--nonce",
            s(v, "nonce"),
            "--msg-signature",
            sig,
        ],
        s(v, "encrypt"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("does not match")
    );
    // A bad key is refused without echoing it.
    let out = run(
        &[
            "crypto",
            "encrypt",
            "--token",
            "t",
            "--aes-key",
            "secret-short",
            "--appid",
            "wx1",
        ],
        "hi",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--aes-key") && !err.contains("secret-short"),
        "{err}"
    );
}
