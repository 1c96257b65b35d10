//! The ingress against the real local RabbitMQ and Redis. Each test owns a namespace (deleted
//! when the test ends), so the tests run in parallel without touching each other.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use wxpipe_tests::broker::{TestNs, close_connections_named, drain, message_count};
use wxpipe_tests::harness::{IngressHandle, test_config};
use wxpipe_tests::proxy::Proxy;
use wxpipe_tests::push::{PushBuilder, SignedPush, text_message, ticket_event};
use wxpipe_tests::{amqp_url, test_platform};

const AUTHORIZER: &str = "wxba5fad812f8e6fb9";

async fn ready_ingress(t: &TestNs) -> IngressHandle {
    let ingress = IngressHandle::start(test_config(&t.ns, vec![amqp_url()])).await;
    assert!(
        ingress.wait_ready(Duration::from_secs(15)).await,
        "ingress never became ready"
    );
    ingress
}

fn client() -> reqwest::Client {
    wxpipe_tests::http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let r = client
        .post(url)
        .body(body)
        .send()
        .await
        .expect("request sent");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A text message push with unique content `n`, to the message URL.
fn numbered_push(builder: &PushBuilder, n: u64) -> SignedPush {
    let now = common::unix_now();
    let plain = text_message(
        "gh_97417a04a28d",
        "o-follower",
        now,
        &format!("message {n}"),
        n,
    );
    builder.authorizer(
        "gh_97417a04a28d",
        "o-follower",
        &plain,
        now,
        &format!("nonce{n}"),
    )
}

#[tokio::test]
async fn signed_pushes_land_byte_identical_with_their_headers() {
    let t = TestNs::new("t-ingress-land");
    let ingress = ready_ingress(&t).await;
    let b = PushBuilder::test_platform();
    let http = client();
    let now = common::unix_now();

    let component = b.component(
        &ticket_event(test_platform::COMPONENT_APPID, now, "ticket-1"),
        now,
        "n1",
    );
    let (status, text) = post(
        &http,
        &ingress.url(&format!("/wechat/component?{}", component.query)),
        component.body.clone(),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "success"));

    let message = numbered_push(&b, 7);
    let url = ingress.url(&format!(
        "/wechat/authorizers/{AUTHORIZER}?{}",
        message.query
    ));
    let (status, text) = post(&http, &url, message.body.clone()).await;
    assert_eq!((status, text.as_str()), (200, "success"));

    let taken = drain(&t.ns.raw(), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    let c = taken
        .iter()
        .find(|m| m.routing_key == "component")
        .expect("component push");
    assert_eq!(c.body, component.body.as_bytes());
    assert!(c.persistent);
    let query: Vec<(String, String)> = url::form_urlencoded::parse(component.query.as_bytes())
        .into_owned()
        .collect();
    for (k, v) in &query {
        assert_eq!(c.headers.get(k), Some(v), "header {k}");
    }
    assert!(!c.headers.contains_key("appid"));
    let received_at: i64 = c.headers["received_at"].parse().unwrap();
    assert!((received_at / 1000 - now).abs() < 60);

    let m = taken
        .iter()
        .find(|m| m.routing_key == "authorizer")
        .expect("authorizer push");
    assert_eq!(m.body, message.body.as_bytes());
    assert_eq!(m.headers["appid"], AUTHORIZER);
    assert_eq!(m.headers["openid"], "o-follower");
    assert_eq!(m.headers["encrypt_type"], "aes");

    // The ingress's own metrics say what happened.
    let metrics = http
        .get(ingress.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wxpipe_ingress_pushes_total{route=\"component\",outcome=\"accepted\"}")
    );
    assert!(metrics.contains("wxpipe_ingress_publish_seconds_bucket"));
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn bad_signatures_get_401_and_nothing_is_published() {
    let t = TestNs::new("t-ingress-sig");
    let ingress = ready_ingress(&t).await;
    let b = PushBuilder::test_platform();
    let other = PushBuilder::new(
        "another-token",
        test_platform::ENCODING_AES_KEY,
        test_platform::COMPONENT_APPID,
    );
    let http = client();
    let push = numbered_push(&b, 1);
    let path = format!("/wechat/authorizers/{AUTHORIZER}");

    // msg_signature of another token
    let forged = numbered_push(&other, 1);
    let (status, _) = post(
        &http,
        &ingress.url(&format!("{path}?{}", forged.query)),
        forged.body,
    )
    .await;
    assert_eq!(status, 401);
    // a valid query with a body whose Encrypt was changed
    let tampered = push.body.replacen("<![CDATA[", "<![CDATA[A", 2);
    let (status, _) = post(
        &http,
        &ingress.url(&format!("{path}?{}", push.query)),
        tampered,
    )
    .await;
    assert_eq!(status, 401);
    // valid msg_signature but a wrong `signature`
    let sig = url::form_urlencoded::parse(push.query.as_bytes())
        .find(|(k, _)| k == "signature")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let wrong_sig = push.query.replace(&sig, &"0".repeat(40));
    let (status, _) = post(
        &http,
        &ingress.url(&format!("{path}?{wrong_sig}")),
        push.body.clone(),
    )
    .await;
    assert_eq!(status, 401);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(message_count(&t.ns.raw()).await.unwrap(), 0);
    let metrics = http
        .get(ingress.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"bad_signature\""));
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_nothing_is_published() {
    let t = TestNs::new("t-ingress-bad");
    let mut config = test_config(&t.ns, vec![amqp_url()]);
    config.max_body_bytes = 8 * 1024;
    let ingress = IngressHandle::start(config).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    let b = PushBuilder::test_platform();
    let http = client();
    let push = numbered_push(&b, 1);
    let url = ingress.url(&format!("/wechat/authorizers/{AUTHORIZER}?{}", push.query));

    let half = &push.body[..push.body.len() / 2];
    let doctype = format!("<!DOCTYPE xml [<!ENTITY e \"x\">]>{}", push.body);
    let cases: Vec<(&str, reqwest::Body, u16)> = vec![
        ("empty", "".into(), 400),
        ("truncated", half.to_owned().into(), 400),
        ("not XML", "hello, world".into(), 400),
        ("JSON", "{\"Encrypt\":\"x\"}".into(), 400),
        ("non-UTF-8", vec![0xff, 0xfe, 0x3c, 0x78].into(), 400),
        ("DOCTYPE", doctype.into(), 400),
        ("oversized", vec![b'a'; 9 * 1024].into(), 413),
    ];
    for (what, body, expected) in cases {
        let (status, text) = post(&http, &url, body).await;
        assert_eq!(status, expected, "{what}: {text}");
        assert!(!text.trim().is_empty(), "{what}: the answer says why");
    }

    // Stale: a correctly signed push from an hour ago (a replay).
    let old = common::unix_now() - 3600;
    let stale = b.authorizer(
        "gh_1",
        "o",
        &text_message("gh_1", "o", old, "x", 1),
        old,
        "n",
    );
    let (status, text) = post(
        &http,
        &ingress.url(&format!("/wechat/authorizers/{AUTHORIZER}?{}", stale.query)),
        stale.body,
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("timestamp"), "{text}");

    // Malformed queries.
    for q in [
        "",
        "timestamp=1&nonce=2",
        "timestamp=abc&nonce=2&msg_signature=x",
        "timestamp=1&nonce=2&encrypt_type=raw&msg_signature=0000000000000000000000000000000000000000",
    ] {
        let (status, _) = post(
            &http,
            &ingress.url(&format!("/wechat/component?{q}")),
            push.body.clone(),
        )
        .await;
        assert_eq!(status, 400, "query {q:?}");
    }

    // The {appid} segment must be an appid.
    for bad in [
        "wxZZZZ",
        "gh_97417a04a28d",
        "WXBA5FAD812F8E6FB9",
        "wxba5fad812f8e6fb9x",
    ] {
        let (status, _) = post(
            &http,
            &ingress.url(&format!("/wechat/authorizers/{bad}?{}", push.query)),
            push.body.clone(),
        )
        .await;
        assert_eq!(status, 404, "{bad}");
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(message_count(&t.ns.raw()).await.unwrap(), 0);
    let metrics = http
        .get(ingress.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["malformed", "too_large", "stale", "bad_query", "not_found"] {
        assert!(
            metrics.contains(&format!("outcome=\"{outcome}\"")),
            "metric for {outcome}"
        );
    }
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn echostr_url_verification() {
    let t = TestNs::new("t-ingress-echo");
    let ingress = ready_ingress(&t).await;
    let http = client();
    let ts = common::unix_now().to_string();
    let sig = common::crypto::sha1_sorted(&[test_platform::TOKEN, &ts, "n"]);
    for path in [
        "/wechat/component".to_owned(),
        format!("/wechat/authorizers/{AUTHORIZER}"),
    ] {
        let ok = http
            .get(ingress.url(&format!(
                "{path}?signature={sig}&timestamp={ts}&nonce=n&echostr=hello123"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), "hello123");
        let bad = http
            .get(ingress.url(&format!(
                "{path}?signature={}&timestamp={ts}&nonce=n&echostr=hello123",
                "1".repeat(40)
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401);
    }
    ingress.stop().await.unwrap();
}

/// Posts `push` and returns (status, elapsed). Connection errors count as status 0.
async fn timed_post(http: &reqwest::Client, url: &str, body: String) -> (u16, Duration) {
    let started = Instant::now();
    let status = match http.post(url).body(body).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    (status, started.elapsed())
}

#[tokio::test]
async fn broker_outage_gives_503_quickly_and_publishing_resumes_by_itself() {
    let t = TestNs::new("t-ingress-outage");
    let upstream = "127.0.0.1:5672".parse().unwrap();
    let proxy = Proxy::start(upstream).await.unwrap();
    let ingress = IngressHandle::start(test_config(&t.ns, vec![proxy.amqp_url()])).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    let b = PushBuilder::test_platform();
    let http = client();
    let url =
        |p: &SignedPush| ingress.url(&format!("/wechat/authorizers/{AUTHORIZER}?{}", p.query));
    let mut accepted = HashSet::new();

    let p = numbered_push(&b, 0);
    assert_eq!(timed_post(&http, &url(&p), p.body.clone()).await.0, 200);
    accepted.insert(p.body);

    proxy.sever();
    // Every push during the outage is answered 503 (or, for one in flight at the cut, 200 only
    // if confirmed), and never later than the 2 s confirm deadline plus slack.
    let mut saw_503 = false;
    for n in 1..=20 {
        let p = numbered_push(&b, n);
        let (status, elapsed) = timed_post(&http, &url(&p), p.body.clone()).await;
        assert!(
            elapsed < Duration::from_millis(3000),
            "push {n} hung for {elapsed:?}"
        );
        match status {
            200 => {
                accepted.insert(p.body);
            }
            503 => saw_503 = true,
            other => panic!("push {n} answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_503, "pushes during the outage must be refused with 503");
    let ready = http.get(ingress.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready = ready.json::<serde_json::Value>().await.unwrap();
    assert_eq!(ready["broker"], false, "{ready}");
    assert_eq!(ready["replies"], false, "{ready}");

    proxy.restore();
    // Without restarting anything, pushes are accepted again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 100;
    loop {
        let p = numbered_push(&b, n);
        n += 1;
        let (status, _) = timed_post(&http, &url(&p), p.body.clone()).await;
        if status == 200 {
            accepted.insert(p.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing did not resume after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ingress.wait_ready(Duration::from_secs(5)).await);

    // Nothing acknowledged was lost.
    let stored: HashSet<String> = drain(&t.ns.raw(), Duration::from_millis(500))
        .await
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.body).unwrap())
        .collect();
    for body in &accepted {
        assert!(
            stored.contains(body),
            "an acknowledged push is missing from the queue"
        );
    }
    let metrics = http
        .get(ingress.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"broker_unavailable\""));
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn connections_closed_by_the_broker_are_reestablished() {
    let t = TestNs::new("t-ingress-closed");
    let ingress = ready_ingress(&t).await;
    let b = PushBuilder::test_platform();
    let http = client();
    let url =
        |p: &SignedPush| ingress.url(&format!("/wechat/authorizers/{AUTHORIZER}?{}", p.query));
    let mut accepted = HashSet::new();

    // Closed by the broker (rabbitmqctl close_connection), by name: only this test's ingress.
    let closed = close_connections_named(&format!("wxpipe-ingress {} ", t.name()))
        .expect("rabbitmqctl is needed to close a connection from the broker's side");
    assert_eq!(
        closed, 2,
        "expected to close this ingress's two connections (publishes, sync replies)"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let mut ok_after_close = 0;
    while ok_after_close < 5 {
        let p = numbered_push(&b, n);
        n += 1;
        let (status, elapsed) = timed_post(&http, &url(&p), p.body.clone()).await;
        assert!(
            elapsed < Duration::from_millis(3000),
            "push hung for {elapsed:?}"
        );
        match status {
            200 => {
                accepted.insert(p.body);
                ok_after_close += 1;
            }
            503 => {}
            other => panic!("answered {other}"),
        }
        assert!(Instant::now() < deadline, "publishing did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored: HashSet<String> = drain(&t.ns.raw(), Duration::from_millis(500))
        .await
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.body).unwrap())
        .collect();
    assert!(
        accepted.is_subset(&stored),
        "an acknowledged push is missing"
    );
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_cluster_node_is_skipped() {
    let t = TestNs::new("t-ingress-nodes");
    // The first node refuses connections; the second is the real broker.
    let urls = vec!["amqp://guest:guest@127.0.0.1:1/%2f".to_owned(), amqp_url()];
    let ingress = IngressHandle::start(test_config(&t.ns, urls)).await;
    assert!(ingress.wait_ready(Duration::from_secs(20)).await);
    let p = numbered_push(&PushBuilder::test_platform(), 1);
    let (status, _) = post(
        &client(),
        &ingress.url(&format!("/wechat/authorizers/{AUTHORIZER}?{}", p.query)),
        p.body,
    )
    .await;
    assert_eq!(status, 200);
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_pushes() {
    let t = TestNs::new("t-ingress-drain");
    let ingress = ready_ingress(&t).await;
    let b = PushBuilder::test_platform();
    let http = client();
    let base = ingress.url(&format!("/wechat/authorizers/{AUTHORIZER}"));
    let answered = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut sends = Vec::new();
    for n in 0..300 {
        let p = numbered_push(&b, n);
        let (http, url, answered) = (
            http.clone(),
            format!("{base}?{}", p.query),
            answered.clone(),
        );
        sends.push(tokio::spawn(async move {
            let status = match http.post(url).body(p.body.clone()).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            answered.notify_one();
            (status, p.body)
        }));
    }
    // Stop as soon as the first answer is back: the others are in flight.
    answered.notified().await;
    ingress.stop().await.unwrap();
    let mut accepted = HashSet::new();
    for s in sends {
        let (status, body) = s.await.unwrap();
        assert!(matches!(status, 0 | 200 | 503), "answered {status}");
        if status == 200 {
            accepted.insert(body);
        }
    }
    let stored: HashSet<String> = drain(&t.ns.raw(), Duration::from_millis(500))
        .await
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.body).unwrap())
        .collect();
    assert!(
        !accepted.is_empty(),
        "some pushes were in flight and finished"
    );
    assert!(
        accepted.is_subset(&stored),
        "a push answered success was lost at shutdown"
    );
}
