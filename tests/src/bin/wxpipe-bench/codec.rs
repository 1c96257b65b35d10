//! `wxpipe-bench codec`: the decrypt worker's whole CPU path for one push, on one thread, on
//! the shared vector `official-message-push-component` (a real authorizer push with the test
//! platform's credentials): the raw message's headers → the envelope → `msg_signature` → AES
//! → the XML → the event's id and routing key → the CloudEvent JSON. The same functions the
//! worker calls (`workers::decrypt::decode`), then each stage alone, in pushes/s of one core.

use super::*;
use common::crypto::MsgCrypt;
use common::wire::raw::RawPush;
use common::xml::envelope::{Envelope, authorizer_envelope};
use common::xml::push::Push;
use workers::decrypt::decode::{decode_parts, event};

#[derive(clap::Args)]
pub struct CodecBench {
    /// Seconds of the whole-path measurement (each stage gets a third of it).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Run each measurement exactly this many times instead of for a time: for counting
    /// instructions per push under `valgrind --tool=callgrind`, which are repeatable where
    /// seconds on a shared machine are not.
    #[arg(long)]
    count: Option<u64>,
    /// The shared vectors.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/crypto.json"))]
    vectors: PathBuf,
}

/// Runs `f` for about `seconds` on this thread (or exactly `count` times); its rate per second.
fn rate(seconds: f64, count: Option<u64>, mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    let mut failed = 0u64;
    let more = |n: u64| match count {
        Some(count) => n < count,
        None => start.elapsed().as_secs_f64() < seconds,
    };
    while more(n) {
        let batch = count.map_or(256, |count| (count - n).min(256));
        for _ in 0..batch {
            if !std::hint::black_box(f()) {
                failed += 1;
            }
        }
        n += batch;
    }
    assert_eq!(failed, 0, "the path failed on a good push");
    n as f64 / start.elapsed().as_secs_f64()
}

pub async fn run(b: CodecBench) -> anyhow::Result<()> {
    let vectors: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&b.vectors).with_context(|| format!("reading {}", b.vectors.display()))?,
    )?;
    let v = vectors
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|v| v["name"] == "official-message-push-component")
        })
        .context("the vector official-message-push-component")?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let crypt = MsgCrypt::new(s("token").into(), &s("encoding_aes_key"), s("appid"))?;
    let raw = RawPush {
        route: RawRoute::Authorizer,
        timestamp: s("timestamp"),
        nonce: s("nonce"),
        msg_signature: s("msg_signature"),
        signature: Some(s("signature")),
        encrypt_type: Some("aes".into()),
        openid: None,
        appid: Some(s("authorizer_appid_in_url")),
        received_at_ms: Some(1_715_943_329_000),
    };
    let props = raw.to_properties();
    let body = authorizer_envelope(&s("to_user_name"), &s("encrypt")).into_bytes();
    let key = RawRoute::Authorizer.routing_key();
    let appid = crypt.appid().to_owned();
    // The whole path once, to show what it makes.
    let decoded = decode_parts(&crypt, key, &props, &body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (address, json) = event(&decoded, &appid).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "push: {} bytes raw, {} bytes of plaintext XML → {} bytes of CloudEvent ({})",
        body.len(),
        s("plaintext").len(),
        json.len(),
        address.routing_key
    );
    let whole = rate(b.seconds, b.count, || {
        decode_parts(&crypt, key, &props, &body)
            .ok()
            .and_then(|d| event(&d, &appid).ok())
            .is_some()
    });
    println!(
        "whole path, one thread: {whole:.0} pushes/s ({:.2} µs each)",
        1e6 / whole
    );
    println!("figures: codec_rate={whole:.0}");
    let stage = b.seconds / 3.0;
    let plaintext = s("plaintext");
    let envelope = Envelope::parse(&body)?;
    let stages: Vec<(&str, f64)> = vec![
        (
            "headers (RawPush::from_properties)",
            rate(stage, b.count, || {
                RawPush::from_properties(key, &props).is_ok()
            }),
        ),
        (
            "envelope (XML)",
            rate(stage, b.count, || Envelope::parse(&body).is_ok()),
        ),
        (
            "msg_signature (SHA-1)",
            rate(stage, b.count, || {
                crypt
                    .verify_msg_signature(
                        &raw.timestamp,
                        &raw.nonce,
                        envelope.encrypt(),
                        &raw.msg_signature,
                    )
                    .is_ok()
            }),
        ),
        (
            "decrypt (base64 + AES-256-CBC)",
            rate(stage, b.count, || crypt.decrypt(envelope.encrypt()).is_ok()),
        ),
        (
            "parse the plaintext XML",
            rate(stage, b.count, || Push::parse(&plaintext).is_ok()),
        ),
        (
            "event id, routing key and JSON",
            rate(stage, b.count, || event(&decoded, &appid).is_ok()),
        ),
    ];
    for (name, r) in &stages {
        println!("  {name:<38} {r:>12.0}/s  {:>7.2} µs", 1e6 / r);
    }
    Ok(())
}
