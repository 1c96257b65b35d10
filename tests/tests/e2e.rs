//! The newcomer's story end to end, multi-process, over real HTTP, RabbitMQ and Redis: the
//! `ingress`, `workers all` and `wechat-sim serve` binaries as separate processes; a ticket is
//! pushed and stored, the component token fetched, an administrator authorizes through the
//! pages, the account's tokens appear, followers send messages, decoded events reach a
//! downstream queue, a poison push is dead-lettered and replayed, and every process stops
//! cleanly on SIGTERM. The wxpipe processes log at `debug` to files, and no configured secret,
//! no access token and no refresh token may appear in them.

use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, bind_queue, collect};
use wxpipe_tests::harness::{ChildProcess, eventually, free_port, ready_within, workspace_bin};
use wxpipe_tests::{http_builder, test_platform};

const ADMIN: &str = "e2e-admin-token-0123456789";
/// Credentials of this run only, distinctive so that a leak is found by a plain search.
const SECRET: &str = "e2e-secret-must-never-be-logged-3b9f07";
const TOKEN: &str = "e2eTokenNeverLogged9c41";
const AES_KEY: &str = "E2eKeyMustNeverBeLoggedAnywhere0123456789ab";

/// The processes of the story, each killed when dropped (a failing test leaves none behind).
struct Processes(Vec<(&'static str, ChildProcess)>);

impl Processes {
    /// SIGTERM to each, then each must exit 0 within 15 s.
    async fn stop(mut self) {
        for (name, child) in &mut self.0 {
            let status = child.terminate(Duration::from_secs(15)).await;
            assert!(
                status.is_some(),
                "{name} did not stop within 15 s of SIGTERM"
            );
            assert!(
                status.is_some_and(|s| s.success()),
                "{name} exited with {status:?} after SIGTERM"
            );
        }
    }
}

#[tokio::test]
async fn the_whole_story_across_processes() {
    let t = TestNs::new("t-e2e");
    let (ingress_port, admin_port, api_port, page_port) =
        (free_port(), free_port(), free_port(), free_port());
    let base = format!("http://127.0.0.1:{ingress_port}");
    let (api, pages, admin) = (
        format!("http://127.0.0.1:{api_port}"),
        format!("http://127.0.0.1:{page_port}"),
        format!("http://127.0.0.1:{admin_port}"),
    );
    let env = |c: &mut Command| {
        c.env("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID)
            .env("WXPIPE_COMPONENT_SECRET", SECRET)
            .env("WXPIPE_TOKEN", TOKEN)
            .env("WXPIPE_ENCODING_AES_KEY", AES_KEY)
            .env("WXPIPE_NAMESPACE", t.name())
            .env("WXPIPE_AMQP_URL", wxpipe_tests::amqp_url())
            .env("WXPIPE_REDIS_URL", wxpipe_tests::redis_url())
            .env("WXPIPE_WECHAT_API_BASE", &api)
            .env("WXPIPE_WECHAT_PAGE_BASE", &pages)
            .env("WXPIPE_PUBLIC_BASE_URL", &base)
            .env("WXPIPE_INGRESS_ADDR", format!("127.0.0.1:{ingress_port}"))
            .env("WXPIPE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("WXPIPE_ADMIN_TOKEN", ADMIN)
            .env("WXPIPE_SIM_API_ADDR", format!("127.0.0.1:{api_port}"))
            .env("WXPIPE_SIM_PAGE_ADDR", format!("127.0.0.1:{page_port}"))
            .env("WXPIPE_SIM_INGRESS_URL", &base)
            .env("WXPIPE_SIM_REFERER_DOMAIN", "127.0.0.1")
            .env("WXPIPE_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null());
    };
    let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(t.name());
    std::fs::create_dir_all(&log_dir).unwrap();
    let spawn = |name: &'static str, bin: std::path::PathBuf, args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args);
        env(&mut c);
        // wxpipe's own processes log to files that are searched for secrets at the end.
        let log = if name == "wechat-sim" {
            Stdio::null()
        } else {
            Stdio::from(
                std::fs::File::create(log_dir.join(format!("{}.log", name.replace(' ', "-"))))
                    .unwrap(),
            )
        };
        c.stderr(log);
        (
            name,
            ChildProcess::new(c.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"))),
        )
    };
    // A downstream team's queue, bound before anything flows.
    let downstream = t.queue("downstream");
    bind_queue(&downstream, &t.ns.events(), &["authorizer.#"])
        .await
        .unwrap();

    let mut procs = Processes(Vec::new());
    procs
        .0
        .push(spawn("ingress", workspace_bin("ingress"), &[]));
    procs
        .0
        .push(spawn("workers all", workspace_bin("workers"), &["all"]));
    let http = http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(
        ready_within(&base, Duration::from_secs(30)).await,
        "timed out waiting for the ingress to be ready"
    );
    // The sim pushes a ticket as soon as it starts.
    procs.0.push(spawn(
        "wechat-sim",
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_wechat-sim")),
        &["serve"],
    ));

    // 1. ticket pushed and stored → component token fetched
    let token = eventually(Duration::from_secs(30), "the component token", || async {
        let r = http
            .get(format!("{admin}/v1/component/access_token"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await;
    assert!(token["access_token"].is_string());

    // 2. an administrator authorizes from the entry page (the sim checks the Referer)
    let start = http
        .get(format!("{base}/auth/start?auth_type=1"))
        .send()
        .await
        .unwrap();
    let wechat_page = start.headers()["location"].to_str().unwrap().to_owned();
    let scanned = http
        .get(&wechat_page)
        .header("referer", format!("{base}/auth"))
        .send()
        .await
        .unwrap();
    let callback = scanned.headers()["location"].to_str().unwrap().to_owned();
    let handed = http.get(&callback).send().await.unwrap();
    let done = format!("{base}{}", handed.headers()["location"].to_str().unwrap());
    eventually(
        Duration::from_secs(30),
        "the account named on /auth/done",
        || async {
            let body = http.get(&done).send().await.ok()?.text().await.ok()?;
            body.contains("id=\"account\"").then_some(())
        },
    )
    .await;

    // 3. the account's tokens appear
    let appid = eventually(
        Duration::from_secs(30),
        "the authorizer's token",
        || async {
            let list: Value = http
                .get(format!("{admin}/v1/authorizers"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let a = list["authorizers"].as_array()?.first()?.clone();
            a["expires_at"]
                .is_i64()
                .then(|| a["appid"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await;

    // 4. followers send messages → 5. decoded events on the downstream queue
    for (i, content) in ["你好", "hello", "订单查询"].iter().enumerate() {
        let r: Value = http
            .post(format!("{api}/sim/push/text"))
            .json(&json!({"appid": appid, "content": content, "openid": format!("o-follower-{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["outcome"]["status"], 200, "{r}");
    }
    let r: Value = http
        .post(format!("{api}/sim/push/event"))
        .json(&json!({"appid": appid, "event": "subscribe"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["outcome"]["status"], 200, "{r}");
    let events = collect(&downstream, 4, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    let keys: Vec<&str> = events.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(".text")).count(),
        3,
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("authorizer.{appid}.event.subscribe").as_str()),
        "{keys:?}"
    );

    // 6. a poison push (encrypted for another platform's appid, correctly signed) → dead letter
    let stranger = wxpipe_tests::push::PushBuilder::new(TOKEN, AES_KEY, "wx0000000000000000");
    let now = common::unix_now();
    let poison = stranger.authorizer(
        "gh_x",
        "o-x",
        &wxpipe_tests::push::text_message("gh_x", "o-x", now, "poison", 1),
        now,
        "poison",
    );
    let r = http
        .post(format!(
            "{base}/wechat/authorizers/{appid}?{}",
            poison.query
        ))
        .body(poison.body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the signature is valid, so the ingress stores it"
    );
    let dlq = |args: &[&str]| {
        let mut c = Command::new(workspace_bin("workers"));
        c.arg("dlq").args(args);
        env(&mut c);
        c.stdout(Stdio::piped()).output().unwrap()
    };
    let listing = eventually(
        Duration::from_secs(30),
        "the poison in the dead-letter queue",
        || async {
            let out = dlq(&["list"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("appid_mismatch").then_some(text)
        },
    )
    .await;
    assert!(listing.contains(&t.ns.raw()), "{listing}");
    let replay = dlq(&["replay", "--reason", "appid_mismatch"]);
    assert!(replay.status.success());
    assert!(
        String::from_utf8_lossy(&replay.stdout).starts_with("replayed 1 dead letters"),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
    // The cause (a foreign appid) is not fixed, so it dies again — visibly, not silently.
    eventually(
        Duration::from_secs(30),
        "the replayed poison dead again",
        || async {
            String::from_utf8_lossy(&dlq(&["list"]).stdout)
                .contains("appid_mismatch")
                .then_some(())
        },
    )
    .await;

    // Metrics tell the same story.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"accepted\""));

    // The tokens of this run, to be looked for in the logs.
    let token_of = |path: String| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(path)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["access_token"].as_str().unwrap().to_owned()
        }
    };
    let component_token = token_of(format!("{admin}/v1/component/access_token")).await;
    let authorizer_token = token_of(format!("{admin}/v1/authorizers/{appid}/access_token")).await;
    let store = common::token::TokenStore::new(
        common::redis::pool(&wxpipe_tests::redis_url()).unwrap(),
        common::redis::Keys::new(&t.ns, test_platform::COMPONENT_APPID),
    );
    let refresh_token = store
        .authorizer(&appid.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .refresh_token
        .unwrap()
        .expose()
        .to_owned();

    // 7. every process stops cleanly on SIGTERM
    procs.stop().await;

    // 8. no secret and no token in any log line of wxpipe's processes
    let mut logs = String::new();
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        logs.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(
        logs.contains("authorization code exchanged") && logs.lines().count() > 20,
        "the logs were written ({} lines)",
        logs.lines().count()
    );
    // One push can be followed from the ingress to the business worker (docs/operating.md, "Following one
    // push"): the ingress's nonce is on the decrypt worker's line with the event id, which the
    // business worker's lines carry.
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let said = |l: &Value, m: &str| l["fields"]["message"] == m;
    let followed = lines
        .iter()
        .filter(|l| said(l, "push accepted") && l["fields"]["route"] == "component")
        .any(|accepted| {
            lines.iter().any(|published| {
                said(published, "event published")
                    && published["fields"]["nonce"] == accepted["fields"]["nonce"]
                    && lines.iter().any(|handled| {
                        said(handled, "event handled")
                            && handled["span"]["id"] == published["fields"]["id"]
                            && handled["span"]["source"] == published["fields"]["source"]
                    })
            })
        });
    assert!(
        followed,
        "no component push could be followed through the logs in {}",
        log_dir.display()
    );
    for (what, value) in [
        ("the AppSecret", SECRET),
        ("the message token", TOKEN),
        ("the EncodingAESKey", AES_KEY),
        ("the admin bearer token", ADMIN),
        ("the component access token", component_token.as_str()),
        ("the authorizer access token", authorizer_token.as_str()),
        ("the refresh token", refresh_token.as_str()),
    ] {
        assert!(
            !logs.contains(value),
            "{what} appears in the logs in {}",
            log_dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&log_dir);
}
