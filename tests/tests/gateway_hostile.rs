//! The gateway against hostile teams (issue 32): a key reaches only what its scope names, the
//! path checked is the path sent, no request leaves for another host, no caller's own token
//! reaches WeChat, and no caller-chosen string becomes a metric label. Every request here is
//! sent byte for byte (no client library normalises it first) to the real gateway, and what
//! arrived is read from the simulated WeChat's record of every request.

use percent_encoding::percent_decode_str;
use proptest::strategy::{Strategy, ValueTree};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{GatewayPlatform, admin_get};
use wxpipe_tests::http1::raw_exchange;

const LIST: &str = "cgi-bin/component/api_get_authorizer_list";

/// A listener on another port that counts the connections it gets (none may come).
async fn elsewhere() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

async fn send(
    g: &GatewayPlatform,
    key: &str,
    method: &str,
    target: &str,
    extra_headers: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!("{method} {target} HTTP/1.1\r\nAuthorization: Bearer {key}{extra_headers}");
    raw_exchange(g.gw_addr(), &head, body).await
}

#[tokio::test]
async fn hostile_paths_are_refused_and_reach_no_one() {
    let t = TestNs::new("t-gw-hostile");
    let g = GatewayPlatform::start(&t.ns).await;
    let a = g.appid.clone();
    // docs/integrating.md's own "mp" example: the component's wxa/* APIs, nothing else.
    let mp = g
        .key(json!({ "team": "mp", "appids": ["component"], "paths": ["wxa/*"], "rate_per_sec": 10000 }))
        .await;
    let getter = g
        .key(json!({ "team": "getter", "appids": ["*"], "paths": ["cgi-bin/*/get"], "rate_per_sec": 10000 }))
        .await;
    // Every path of one account: only the path rules stand between it and another host.
    let wide = g
        .key(json!({ "team": "wide", "appids": [a], "paths": ["*"], "rate_per_sec": 10000 }))
        .await;
    let (evil, evil_hits) = elsewhere().await;

    let rows: Vec<(&str, String)> = vec![
        // Climbing out of wxa/ to the list of every account's refresh token.
        (&mp, format!("/v1/wechat/component/wxa/../{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%2e%2e/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%2E%2E/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%2e%2E/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/.%2e/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%2e./{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%252e%252e/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/.%09./{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/.%0a./{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/.%0d./{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%09../{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/..%5C{LIST}")),
        (
            &mp,
            "/v1/wechat/component/wxa%5C..%5Ccgi-bin%5Ccomponent%5Capi_get_authorizer_list".into(),
        ),
        (
            &mp,
            "/v1/wechat/component/wxa/%2e%2e%2fcgi-bin%2fcomponent%2fapi_get_authorizer_list"
                .into(),
        ),
        (&mp, format!("/v1/wechat/component/wxa/%c0%ae%c0%ae/{LIST}")),
        (
            &mp,
            format!("/v1/wechat/component/wxa/%e0%80%ae%e0%80%ae/{LIST}"),
        ),
        (&mp, format!("/v1/wechat/component/wxa//../{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/x/../../{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/./../{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%2e/%2e%2e/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/..;/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%2e%2e%3b/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/..%00/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/%u002e%u002e/{LIST}")),
        (&mp, format!("/v1/wechat/component/wxa/...%2f{LIST}")),
        // `component` spelled with escapes is still the component, which `*` is not.
        (
            &getter,
            "/v1/wechat/%63omponent/cgi-bin/component/get".into(),
        ),
        (
            &getter,
            "/v1/wechat/%43OMPONENT/cgi-bin/component/get".into(),
        ),
        // `?`/`#` smuggled into the path to turn `cgi-bin/*/get` into any API.
        (&getter, format!("/v1/wechat/{a}/{LIST}%3F/get")),
        (
            &getter,
            format!("/v1/wechat/{a}/cgi-bin/user/info%3Fx=/get"),
        ),
        (
            &getter,
            format!("/v1/wechat/{a}/cgi-bin/menu/delete%23/get"),
        ),
        (&getter, format!("/v1/wechat/{a}/cgi-bin/menu/delete?/get")),
        (&getter, format!("/v1/wechat/{a}/cgi-bin/menu/delete#/get")),
        // Another host, with the account's token attached.
        (&wide, format!("/v1/wechat/{a}/http:{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/http:%2F%2F{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/https:{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/%68ttp:{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/%2F%2F{evil}/x")),
        (&wide, format!("/v1/wechat/{a}//{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/%5C%5C{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/%5C{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/x@{evil}")),
        (&wide, format!("/v1/wechat/{a}/%40{evil}/x")),
        (&wide, format!("/v1/wechat/{a}/..%2F..%2F..%2F{evil}")),
    ];
    assert!(rows.len() >= 30);
    // Only the gateway's calls: the pipeline's scheduler calls WeChat on its own schedule.
    let before = g.sim.gateway_requests().len();
    let mut wrong = Vec::new();
    for (key, target) in &rows {
        for method in ["GET", "POST"] {
            let (status, body) = send(&g, key, method, target, "", b"{}").await;
            if status != 400 && status != 403 {
                wrong.push(format!("{method} {target}: {status} {body}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answered other than 400/403:\n{}",
        wrong.join("\n")
    );
    let after = g.sim.gateway_requests();
    assert_eq!(
        after.len(),
        before,
        "WeChat was called: {:?}",
        &after[before..]
    );
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "another host was called"
    );

    // A refusal says why.
    let (s, v) = send(
        &g,
        &mp,
        "GET",
        &format!("/v1/wechat/component/wxa/.%09./{LIST}"),
        "",
        b"",
    )
    .await;
    assert_eq!(s, 400);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert!(v["error"].as_str().unwrap().contains("\\t"), "{v}");
    g.stop().await;
}

#[tokio::test]
async fn no_token_of_the_callers_own_reaches_wechat() {
    let t = TestNs::new("t-gw-own-token");
    let g = GatewayPlatform::start(&t.ns).await;
    let a = g.appid.clone();
    let key = g
        .key(json!({ "team": "crm", "appids": [a], "paths": ["cgi-bin/*"], "rate_per_sec": 10000 }))
        .await;
    let (_, stored) = admin_get(
        &g.pipeline.admin,
        &format!("/v1/authorizers/{a}/access_token"),
    )
    .await;
    let ours = stored["access_token"].as_str().unwrap().to_owned();
    const FORM: &str = "\r\nContent-Type: application/x-www-form-urlencoded";
    let rows: Vec<(&str, String, &str, &str)> = vec![
        ("GET", "?access_token=forged&openid=o1".into(), "", ""),
        (
            "GET",
            "?openid=o1&access_token=forged&access_token=forged2".into(),
            "",
            "",
        ),
        ("GET", "?access%5Ftoken=forged&openid=o1".into(), "", ""),
        ("GET", "?%61ccess_token=forged".into(), "", ""),
        ("GET", "?component_access_token=forged".into(), "", ""),
        ("GET", "?access_token&openid=o1".into(), "", ""),
        ("GET", "?access_token=".into(), "", ""),
        ("GET", "?openid=x%26access_token%3Dforged".into(), "", ""),
        ("GET", "?openid=x&&&access_token=forged;".into(), "", ""),
        ("POST", "".into(), FORM, "access_token=forged&openid=o1"),
        (
            "POST",
            "?openid=o1".into(),
            FORM,
            "openid=o1&component_access_token=forged",
        ),
        ("POST", "".into(), FORM, "access%5Ftoken=forged"),
    ];
    let mut wrong = Vec::new();
    for (method, query, headers, body) in &rows {
        let before = g.sim.gateway_requests().len();
        let target = format!("/v1/wechat/{a}/cgi-bin/user/info{query}");
        let (status, answer) = send(&g, &key, method, &target, headers, body.as_bytes()).await;
        let seen = g.sim.gateway_requests();
        let arrived: Vec<_> = seen[before..].iter().collect();
        let ok = status == 200
            && arrived.len() == 1
            && arrived[0].tokens == vec![ours.clone()]
            && arrived[0].path == "/cgi-bin/user/info";
        if !ok {
            wrong.push(format!(
                "{method} {query} {body}: {status} {answer} → {arrived:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    g.stop().await;
}

/// Pieces of paths, harmless and hostile, for the property below.
const PIECES: &[&str] = &[
    "wxa",
    "commit",
    "cgi-bin",
    "component",
    "api_get_authorizer_list",
    "x",
    ".",
    "..",
    "%2e",
    "%2E",
    "%252e",
    "/",
    "/",
    "/",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "%09",
    "%0a",
    "%3f",
    "%3F",
    "%23",
    "%3a",
    ":",
    "http:",
    "~",
    "-",
    "_",
    "%41",
    "%c0%ae",
    "%e4%b8%ad",
    "@",
    ";",
    "%00",
    "%25",
    "%",
    "%2",
    "+",
    "%20",
];

#[tokio::test]
async fn whatever_the_gateway_forwards_arrives_at_the_path_the_scope_matched() {
    let t = TestNs::new("t-gw-property");
    let g = GatewayPlatform::start(&t.ns).await;
    let mp = g
        .key(json!({ "team": "mp", "appids": ["component"], "paths": ["wxa/*"], "rate_per_sec": 100000 }))
        .await;
    let cases: usize = std::env::var("WXPIPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let strategy = proptest::collection::vec(proptest::sample::select(PIECES), 1..10)
        .prop_map(|p| format!("wxa/{}", p.concat()));
    let mut runner = proptest::test_runner::TestRunner::default();
    let (mut forwarded, mut refused) = (0, 0);
    for _ in 0..cases {
        let tail = strategy.new_tree(&mut runner).unwrap().current();
        let before = g.sim.gateway_requests().len();
        let (status, answer) = send(
            &g,
            &mp,
            "GET",
            &format!("/v1/wechat/component/{tail}"),
            "",
            b"",
        )
        .await;
        let seen = g.sim.gateway_requests();
        let arrived = &seen[before..];
        match arrived {
            [] => {
                assert!(
                    status == 400 || status == 403 || status == 404,
                    "{tail}: {status} {answer}"
                );
                refused += 1;
            }
            [one] => {
                // Decoded once, as the gateway's router does: what arrived is exactly that,
                // under wxa/, with no segment that a URL parser would resolve.
                let decoded = percent_decode_str(&tail).decode_utf8().unwrap();
                assert_eq!(one.path, format!("/{decoded}"), "{tail}");
                assert!(
                    workers::gateway::keys::glob("wxa/*", &one.path[1..]),
                    "{tail} → {}",
                    one.path
                );
                assert!(
                    one.path[1..]
                        .split('/')
                        .all(|s| !s.is_empty() && !s.chars().all(|c| c == '.')),
                    "{tail} → {}",
                    one.path
                );
                forwarded += 1;
            }
            more => panic!("{tail}: one call became {}: {more:?}", more.len()),
        }
    }
    println!("{cases} paths: {forwarded} forwarded, {refused} refused");
    assert!(forwarded > 0 && refused > 0, "the pieces should give both");
    g.stop().await;
}

#[tokio::test]
async fn five_thousand_invented_paths_make_no_new_metric_series() {
    let t = TestNs::new("t-gw-labels");
    let g = GatewayPlatform::start(&t.ns).await;
    let a = g.appid.clone();
    let key = g
        .key(json!({ "team": "inventor", "appids": [a], "paths": ["cgi-bin/*"], "rate_per_sec": 100000 }))
        .await;
    let client = wxpipe_tests::http();
    let paths: Vec<String> = (0..5000)
        .map(|i| format!("cgi-bin/invented/p{i}"))
        .collect();
    use futures::StreamExt;
    let statuses: Vec<u16> = futures::stream::iter(paths)
        .map(|p| {
            let (client, gw, key, a) = (client.clone(), g.gw.clone(), key.clone(), a.clone());
            async move {
                client
                    .post(format!("{gw}/v1/wechat/{a}/{p}"))
                    .bearer_auth(key)
                    .json(&json!({}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses
            .iter()
            .filter(|s| **s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    let done_ms = common::unix_now_ms();

    let metrics = wxpipe_tests::get_text(format!("{}/metrics", g.gw)).await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("wxpipe_gateway_calls_total{"))
        .collect();
    assert!(
        !metrics.contains("invented"),
        "a caller's path became a label"
    );
    assert!(series.len() <= 40, "{} series: {series:#?}", series.len());
    assert!(
        series
            .iter()
            .any(|l| l.contains("team=\"inventor\",path=\"cgi-bin/*\",outcome=\"ok\"")),
        "the calls are counted under the key's pattern: {series:#?}"
    );

    // The beacon's copy in Redis (what the console reads) is as bounded.
    let store = &g.pipeline.tokens.store;
    let announced = wxpipe_tests::harness::eventually(
        Duration::from_secs(15),
        "an announcement made after the calls",
        || async {
            let all = common::beacon::read_all(store.pool(), &store.keys)
                .await
                .ok()?;
            all.into_iter()
                .find(|a| a.role.contains("gateway") && a.at_ms > done_ms)
        },
    )
    .await;
    let calls: Vec<_> = announced
        .series
        .iter()
        .filter(|s| s.name == "wxpipe_gateway_calls_total")
        .collect();
    assert!(calls.len() <= 40, "{} series in Redis", calls.len());
    assert!(
        calls
            .iter()
            .all(|s| s.labels.values().all(|v| !v.contains("invented"))),
        "a caller's path in Redis"
    );
    g.stop().await;
}
