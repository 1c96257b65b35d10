//! Decrypt workers against the real RabbitMQ and Redis: each shape of push becomes the right
//! event, duplicates give one event, poison is dead-lettered and replayable, a Redis outage
//! delays without loss, and a killed worker loses nothing.

use common::event::CloudEvent;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use wxpipe_tests::broker::{
    Taken, TestNs, bind_queue, collect, headers, message_count, publish_raw,
};
use wxpipe_tests::harness::{
    IngressHandle, decrypt_config, spawn_decrypt, spawn_decrypt_process, test_config,
};
use wxpipe_tests::intake::queue_burst;
use wxpipe_tests::proxy::Proxy;
use wxpipe_tests::push::{PushBuilder, SignedPush, text_message, ticket_event};
use wxpipe_tests::{amqp_url, test_platform};

const AUTHORIZER: &str = "wxba5fad812f8e6fb9";
const GH: &str = "gh_97417a04a28d";

fn event(m: &Taken) -> CloudEvent {
    serde_json::from_slice(&m.body).expect("a CloudEvent")
}

/// A subscriber queue bound to every event of the namespace.
async fn subscriber(t: &TestNs) -> String {
    let q = t.queue("all");
    bind_queue(&q, &t.ns.events(), &["#"]).await.unwrap();
    q
}

async fn post(ingress: &IngressHandle, path: &str, push: &SignedPush) -> u16 {
    wxpipe_tests::http()
        .post(ingress.url(&format!("{path}?{}", push.query)))
        .body(push.body.clone())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn subscribe_event(openid: &str, create_time: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{GH}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[]]></EventKey></xml>"
    )
}

/// Publishes `push` onto `{ns}.raw` exactly as the ingress stores a message-URL push.
async fn publish_push(t: &TestNs, push: &SignedPush) {
    publish_raw(
        &t.ns,
        "authorizer",
        push.body.as_bytes(),
        push.raw_headers(AUTHORIZER),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn each_shape_of_push_becomes_the_right_event() {
    let t = TestNs::new("t-decrypt-shapes");
    let events = subscriber(&t).await;
    let ingress = IngressHandle::start(test_config(&t.ns, vec![amqp_url()])).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    let worker = spawn_decrypt(decrypt_config(&t.ns));
    let b = PushBuilder::test_platform();
    let now = common::unix_now();
    let msg_path = format!("/wechat/authorizers/{AUTHORIZER}");

    let ticket = b.component(
        &ticket_event(test_platform::COMPONENT_APPID, now, "ticket@@@abc"),
        now,
        "n1",
    );
    assert_eq!(post(&ingress, "/wechat/component", &ticket).await, 200);
    let text = b.authorizer(
        GH,
        "o-alice",
        &text_message(GH, "o-alice", now, "你好 & <hi>", 6054768590064713728),
        now,
        "n2",
    );
    assert_eq!(post(&ingress, &msg_path, &text).await, 200);
    let sub = b.authorizer(GH, "o-bob", &subscribe_event("o-bob", now), now, "n3");
    assert_eq!(post(&ingress, &msg_path, &sub).await, 200);
    // The official push example, straight onto {ns}.raw with its own (old) query, as the
    // ingress would have stored it.
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../common/tests/data/crypto.json")).unwrap();
    let v = &vectors[2];
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    let body = common::xml::envelope::authorizer_envelope(&s("to_user_name"), &s("encrypt"));
    publish_raw(
        &t.ns,
        "authorizer",
        body.as_bytes(),
        headers([
            ("timestamp", s("timestamp").as_str()),
            ("nonce", &s("nonce")),
            ("msg_signature", &s("msg_signature")),
            ("appid", AUTHORIZER),
        ]),
    )
    .await
    .unwrap();

    let got = collect(&events, 4, Duration::from_secs(15)).await.unwrap();
    assert_eq!(got.len(), 4, "{got:?}");
    let by_key: HashMap<&str, &Taken> = got.iter().map(|m| (m.routing_key.as_str(), m)).collect();

    let e = event(by_key["component.component_verify_ticket"]);
    assert_eq!(e.specversion, "1.0");
    assert_eq!(e.event_type, "wechat.component.component_verify_ticket");
    assert_eq!(
        e.id,
        format!("component:component_verify_ticket:ticket@@@abc:{now}")
    );
    assert_eq!(
        e.source,
        format!("/wechat/component/{}", test_platform::COMPONENT_APPID)
    );
    assert_eq!(e.datacontenttype, "application/json");
    assert_eq!(e.data["ComponentVerifyTicket"], "ticket@@@abc");

    let m = by_key[format!("authorizer.{AUTHORIZER}.text").as_str()];
    let e = event(m);
    assert_eq!(
        e.id,
        format!("authorizer:{AUTHORIZER}:msg:6054768590064713728")
    );
    assert_eq!(e.data["Content"], "你好 & <hi>");
    assert_eq!(e.data["MsgId"], "6054768590064713728");
    assert_eq!(e.time, common::event::rfc3339(now));
    assert!(m.persistent);
    assert!(m.headers.contains_key("received_at"));

    let e = event(by_key[format!("authorizer.{AUTHORIZER}.event.subscribe").as_str()]);
    assert_eq!(
        e.id,
        format!("authorizer:{AUTHORIZER}:o-bob:{now}:subscribe")
    );
    assert_eq!(e.data["Event"], "subscribe");

    let e = event(by_key[format!("authorizer.{AUTHORIZER}.event.debug_demo").as_str()]);
    assert_eq!(e.data["debug_str"], "hello world");
    assert_eq!(e.time, "2024-05-17T10:55:29Z");

    // Platform events also reach the business queue.
    assert_eq!(message_count(&t.ns.business()).await.unwrap(), 1);
    worker.stop().await;
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn retries_sent_concurrently_to_two_replicas_give_one_event_each() {
    let t = TestNs::new("t-decrypt-dedup");
    let events = subscriber(&t).await;
    let ingress = IngressHandle::start(test_config(&t.ns, vec![amqp_url()])).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    let (w1, w2) = (
        spawn_decrypt(decrypt_config(&t.ns)),
        spawn_decrypt(decrypt_config(&t.ns)),
    );
    let b = PushBuilder::test_platform();
    let now = common::unix_now();
    let path = format!("/wechat/authorizers/{AUTHORIZER}");
    let mut sends = Vec::new();
    for n in 0..100u64 {
        // A text message and an event (no MsgId) each sent three times at once, as WeChat's
        // retries would be — each retry a separate request with its own encryption.
        let plain = if n % 2 == 0 {
            text_message(GH, "o-carol", now, &format!("hello {n}"), 1000 + n)
        } else {
            subscribe_event(&format!("o-{n}"), now)
        };
        for attempt in 0..3 {
            let push = b.authorizer(GH, "o", &plain, now, &format!("nonce-{n}-{attempt}"));
            let ingress_url = ingress.url(&format!("{path}?{}", push.query));
            sends.push(tokio::spawn(async move {
                wxpipe_tests::http()
                    .post(ingress_url)
                    .body(push.body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
    }
    for s in sends {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    let got = collect(&events, 100, Duration::from_secs(20))
        .await
        .unwrap();
    // Let any (wrong) extra event arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = collect(&events, 1, Duration::from_millis(300))
        .await
        .unwrap();
    let ids: HashSet<String> = got.iter().chain(&extra).map(|m| event(m).id).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(
        got.len() + extra.len(),
        100,
        "a retry produced a second event"
    );
    assert_eq!(
        message_count(&t.ns.raw()).await.unwrap(),
        0,
        "every raw message was acked"
    );
    w1.stop().await;
    w2.stop().await;
    ingress.stop().await.unwrap();
}

/// Runs `workers dlq …` in-process against this test's namespace.
async fn dlq_run(t: &TestNs, args: &[&str]) -> anyhow::Result<String> {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Dlq(workers::dlq::DlqArgs),
    }
    let mut full = vec!["workers", "dlq", "--namespace", t.name()];
    full.extend_from_slice(args);
    let Cmd::Dlq(args) = Cli::try_parse_from(full)?.cmd;
    workers::dlq::run(args).await
}

#[tokio::test]
async fn poison_is_dead_lettered_with_its_reason_and_replay_processes_it_once_fixed() {
    let t = TestNs::new("t-decrypt-poison");
    let events = subscriber(&t).await;
    let ingress = IngressHandle::start(test_config(&t.ns, vec![amqp_url()])).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    // A worker misconfigured with another platform's appid: every push is an appid mismatch.
    let mut wrong = decrypt_config(&t.ns);
    wrong.crypt = common::crypto::MsgCrypt::new(
        test_platform::TOKEN.to_owned().into(),
        test_platform::ENCODING_AES_KEY,
        "wx0000000000000000",
    )
    .unwrap();
    let worker = spawn_decrypt(wrong);
    let b = PushBuilder::test_platform();
    let now = common::unix_now();
    for n in 0..3 {
        let push = b.authorizer(
            GH,
            "o-dave",
            &text_message(GH, "o-dave", now, "x", 500 + n),
            now,
            &format!("p{n}"),
        );
        assert_eq!(
            post(
                &ingress,
                &format!("/wechat/authorizers/{AUTHORIZER}"),
                &push
            )
            .await,
            200
        );
    }
    // Garbage that is poison for any configuration.
    publish_raw(
        &t.ns,
        "component",
        b"<xml><Encrypt>bm90IGEgcHVzaA==</Encrypt></xml>",
        headers([
            ("timestamp", "1"),
            ("nonce", "2"),
            ("msg_signature", "0000000000000000000000000000000000000000"),
        ]),
    )
    .await
    .unwrap();
    let dead = t.ns.dead();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while message_count(&dead).await.unwrap() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "poison never reached {dead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;

    let listing = dlq_run(&t, &["list"]).await.unwrap();
    assert!(
        listing.contains("appid_mismatch") && listing.contains("bad_signature"),
        "{listing}"
    );
    assert!(listing.contains(&t.ns.raw()), "{listing}");
    let shown = dlq_run(&t, &["show", "1"]).await.unwrap();
    assert!(
        shown.contains("reason:") && shown.contains("body ("),
        "{shown}"
    );
    let dry = dlq_run(&t, &["replay", "--reason", "appid_mismatch", "--dry-run"])
        .await
        .unwrap();
    assert!(dry.starts_with("would replay 3 of 4"), "{dry}");
    // Letters given back reach the quorum queue again within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while message_count(&dead).await.unwrap() != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dry run changes nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let purge = dlq_run(&t, &["purge"]).await;
    assert!(purge.unwrap_err().to_string().contains("--yes"));

    // The cause is fixed: a correctly configured worker, then the replay.
    let worker = spawn_decrypt(decrypt_config(&t.ns));
    let replayed = dlq_run(
        &t,
        &["replay", "--reason", "appid_mismatch", "--since", "1h"],
    )
    .await
    .unwrap();
    assert!(
        replayed.starts_with("replayed 3 dead letters; 1 left"),
        "{replayed}"
    );
    let got = collect(&events, 3, Duration::from_secs(15)).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|m| m.routing_key == format!("authorizer.{AUTHORIZER}.text"))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while message_count(&dead).await.unwrap() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only the real poison is left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let purged = dlq_run(&t, &["purge", "--yes"]).await.unwrap();
    assert!(purged.contains("purged 1"), "{purged}");
    worker.stop().await;
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn a_redis_outage_delays_processing_without_loss() {
    let t = TestNs::new("t-decrypt-redis");
    let events = subscriber(&t).await;
    let redis_proxy = Proxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let mut config = decrypt_config(&t.ns);
    config.redis_url = format!("redis://{}/0", redis_proxy.addr);
    let worker = spawn_decrypt(config);
    let b = PushBuilder::test_platform();
    let now = common::unix_now();

    redis_proxy.sever();
    for n in 0..20u64 {
        let p = b.authorizer(
            GH,
            "o",
            &text_message(GH, "o-erin", now, "x", 7000 + n),
            now,
            "n",
        );
        publish_push(&t, &p).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        collect(&events, 1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty(),
        "no event without Redis"
    );
    assert_eq!(
        message_count(&t.ns.dead()).await.unwrap(),
        0,
        "nothing dead-lettered during a short outage"
    );

    redis_proxy.restore();
    let got = collect(&events, 20, Duration::from_secs(30)).await.unwrap();
    let ids: HashSet<String> = got.iter().map(|m| event(m).id).collect();
    assert_eq!(
        ids.len(),
        20,
        "every push became an event once Redis was back"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_burst_loses_nothing() {
    let t = TestNs::new("t-decrypt-kill");
    let events = subscriber(&t).await;
    const N: u64 = 3000;
    // The burst is already queued when the worker starts.
    queue_burst(&t.ns, N, 90_000, "burst").await;
    let spawn = || spawn_decrypt_process(&t, &[("WXPIPE_DEDUP_CLAIM_SECS", "5")]);
    let mut first = spawn();
    // Kill it (SIGKILL: no goodbye) as soon as it is into the burst.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while message_count(&t.ns.raw()).await.unwrap() > (N - 200) as u32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = message_count(&t.ns.raw()).await.unwrap();
    assert!(
        left > 0,
        "the worker finished before it was killed: the test proves nothing; raise N"
    );
    let mut second = spawn();
    let seen: Vec<Taken> = Vec::new();
    let mut ids: HashSet<String> = seen.iter().map(|m| event(m).id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < N as usize && tokio::time::Instant::now() < deadline {
        for m in collect(&events, 1, Duration::from_millis(200))
            .await
            .unwrap()
        {
            ids.insert(event(&m).id);
        }
    }
    second.kill();
    assert_eq!(
        ids.len(),
        N as usize,
        "every queued push became an event (duplicates allowed, same id)"
    );
}

/// The dedup's states against the real Redis, as two workers see them: a claim is won once,
/// seen held by everyone (its owner included) until it is marked done, then seen done; a
/// released claim can be won again. A claim costs one `SET NX`, and a `GET` only when not won.
#[tokio::test]
async fn dedup_claims_are_won_once_then_held_then_done() {
    use workers::decrypt::dedup::{Claim, Dedup};
    let t = TestNs::new("t-dedup-states");
    let pool = common::redis::pool(&wxpipe_tests::redis_url()).unwrap();
    let keys = common::redis::Keys::new(&t.ns, test_platform::COMPONENT_APPID);
    let (claim, keep) = (Duration::from_secs(30), Duration::from_secs(60));
    let a = Dedup::new(pool.clone(), keys.clone(), claim, keep);
    let b = Dedup::new(pool, keys, claim, keep);

    assert_eq!(a.claim("push-1").await.unwrap(), Claim::Won);
    assert_eq!(b.claim("push-1").await.unwrap(), Claim::HeldByOther);
    assert_eq!(a.claim("push-1").await.unwrap(), Claim::HeldByOther);
    a.mark_done("push-1").await.unwrap();
    assert_eq!(b.claim("push-1").await.unwrap(), Claim::Done);
    assert_eq!(a.claim("push-1").await.unwrap(), Claim::Done);

    assert_eq!(b.claim("push-2").await.unwrap(), Claim::Won);
    // Only the owner's release frees it.
    a.release("push-2").await.unwrap();
    assert_eq!(a.claim("push-2").await.unwrap(), Claim::HeldByOther);
    b.release("push-2").await.unwrap();
    assert_eq!(a.claim("push-2").await.unwrap(), Claim::Won);

    // Many at once share pipelines and still get their own answers.
    let claims: Vec<_> = (0..200)
        .map(|i| {
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                let id = format!("many-{}", i / 2);
                if i % 2 == 0 {
                    a.claim(&id).await
                } else {
                    b.claim(&id).await
                }
            })
        })
        .collect();
    let mut won = 0;
    for c in claims {
        match c.await.unwrap().unwrap() {
            Claim::Won => won += 1,
            Claim::HeldByOther => {}
            Claim::Done => panic!("nothing was marked done"),
        }
    }
    assert_eq!(won, 100, "each of the 100 ids is won exactly once");
}
