//! The full-network release test (全网发布接入检测, protocol.md §5), played against the
//! ingress as WeChat plays it: a ticket, an auto-authorized test account, then the text,
//! `QUERY_AUTH_CODE` and event checks, each answer checked as WeChat checks it.

use super::SimShared;
use super::pusher::{self, PushOutcome};
use common::xml::parse_fields;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The official-account test group: (original id, appid).
fn official_accounts() -> &'static [(&'static str, &'static str)] {
    &common::wechat::RELEASE_TEST_ACCOUNTS[..5]
}

/// The mini-program test group: (original id, appid).
fn mini_programs() -> &'static [(&'static str, &'static str)] {
    &common::wechat::RELEASE_TEST_ACCOUNTS[5..]
}

struct Report {
    steps: Vec<Value>,
}

impl Report {
    fn step(&mut self, name: &str, passed: bool, detail: impl Into<String>) -> bool {
        self.steps
            .push(json!({ "step": name, "passed": passed, "detail": detail.into() }));
        passed
    }
}

/// Decrypts an encrypted passive reply and returns its fields, or why it is not one.
pub fn open_reply(sim: &SimShared, outcome: &PushOutcome) -> Result<common::xml::Fields, String> {
    if outcome.status != Some(200) {
        return Err(format!(
            "answered {:?}: {}",
            outcome.status,
            outcome.body.trim()
        ));
    }
    let envelope = parse_fields(&outcome.body)
        .map_err(|e| format!("not an encrypted reply ({e}): {:?}", outcome.body))?;
    let get = |k: &str| {
        envelope
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let crypt = sim.pusher.builder.crypt();
    crypt
        .verify_msg_signature(
            &get("TimeStamp"),
            &get("Nonce"),
            &get("Encrypt"),
            &get("MsgSignature"),
        )
        .map_err(|e| format!("reply signature: {e}"))?;
    let plain = crypt
        .decrypt(&get("Encrypt"))
        .map_err(|e| format!("reply decryption: {e}"))?;
    parse_fields(&plain).map_err(|e| format!("reply plaintext: {e}"))
}

fn check_text_reply(
    sim: &SimShared,
    outcome: &PushOutcome,
    gh: &str,
    openid: &str,
    expected: &str,
    elapsed: Duration,
) -> Result<(), String> {
    if elapsed > Duration::from_secs(5) {
        return Err(format!("answered after {elapsed:?} (WeChat waits 5 s)"));
    }
    let f = open_reply(sim, outcome)?;
    let field = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("");
    if field("MsgType") != "text" || field("Content") != expected {
        return Err(format!(
            "reply is {:?} {:?}, expected text {expected:?}",
            field("MsgType"),
            field("Content")
        ));
    }
    if field("ToUserName") != openid || field("FromUserName") != gh {
        return Err(format!(
            "To/From are {:?}/{:?}; expected {openid:?}/{gh:?} (swapped?)",
            field("ToUserName"),
            field("FromUserName")
        ));
    }
    Ok(())
}

/// Runs the test with the official account `appid` (default: the first of the group).
pub async fn run(sim: &SimShared, appid: Option<&str>) -> Value {
    let (gh, appid) = match appid {
        Some(a) => match common::wechat::RELEASE_TEST_ACCOUNTS
            .iter()
            .find(|(_, id)| *id == a)
        {
            Some(pair) => *pair,
            None => {
                return json!({ "passed": false, "error": format!("{a} is not a full-network test account") });
            }
        },
        None => official_accounts()[0],
    };
    let openid = "ozy4qt5QUADNXORxCVipKMV9dss0";
    let mut r = Report { steps: Vec::new() };

    // (a) a ticket
    let (_, outcome) = sim.pusher.ticket().await;
    r.step(
        "ticket",
        outcome.status == Some(200) && outcome.body.trim() == "success",
        format!("{:?} {:?}", outcome.status, outcome.body.trim()),
    );

    // The test accounts are auto-authorized: the `authorized` push delivers their code.
    let (authorizer, code, existed) = {
        let mut st = sim.state.lock().expect("sim state");
        let (a, c, e) = st.authorize(
            Some(appid),
            mini_programs().iter().any(|(_, id)| *id == appid),
        );
        st.set_user_name(appid, gh);
        (a, c, e)
    };
    let outcome = sim.pusher.authorized(&authorizer, &code, "", existed).await;
    r.step(
        "authorized",
        outcome.acknowledged(),
        format!("{:?} {:?}", outcome.status, outcome.body.trim()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // (b) text → passive reply `TESTCOMPONENT_MSG_TYPE_TEXT_callback`
    let started = Instant::now();
    let outcome = sim
        .pusher
        .message(
            "release_text",
            appid,
            gh,
            openid,
            &pusher::text(gh, openid, "TESTCOMPONENT_MSG_TYPE_TEXT"),
            1,
        )
        .await;
    let verdict = check_text_reply(
        sim,
        &outcome,
        gh,
        openid,
        "TESTCOMPONENT_MSG_TYPE_TEXT_callback",
        started.elapsed(),
    );
    r.step(
        "text",
        verdict.is_ok(),
        verdict.err().unwrap_or_else(|| "ok".into()),
    );

    // (c) QUERY_AUTH_CODE → empty answer, then a customer-service message `<code>_from_api`
    let query_code = sim.state.lock().expect("sim state").auth_code_for(appid);
    let started = Instant::now();
    let outcome = sim
        .pusher
        .message(
            "release_query_auth_code",
            appid,
            gh,
            openid,
            &pusher::text(gh, openid, &format!("QUERY_AUTH_CODE:{query_code}")),
            1,
        )
        .await;
    let quick = outcome.status == Some(200)
        && matches!(outcome.body.trim(), "" | "success")
        && started.elapsed() <= Duration::from_secs(5);
    r.step(
        "query_auth_code answer",
        quick,
        format!(
            "{:?} {:?} after {:?}",
            outcome.status,
            outcome.body.trim(),
            started.elapsed()
        ),
    );
    let expected = format!("{query_code}_from_api");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = false;
    while Instant::now() < deadline {
        sent = sim
            .state
            .lock()
            .expect("sim state")
            .stats
            .custom_messages
            .iter()
            .any(|m| {
                m["touser"] == openid
                    && m["msgtype"] == "text"
                    && m["text"]["content"] == expected.as_str()
                    && m["authorizer_appid"] == appid
            });
        if sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.step(
        "query_auth_code custom message",
        sent,
        if sent {
            "ok".into()
        } else {
            format!("no customer-service text {expected:?} to {openid} within 15 s")
        },
    );

    // (d) event → `<Event>from_callback`
    let started = Instant::now();
    let outcome = sim
        .pusher
        .message(
            "release_event",
            appid,
            gh,
            openid,
            &pusher::event(gh, openid, "LOCATION", ""),
            1,
        )
        .await;
    let verdict = check_text_reply(
        sim,
        &outcome,
        gh,
        openid,
        "LOCATIONfrom_callback",
        started.elapsed(),
    );
    r.step(
        "event",
        verdict.is_ok(),
        verdict.err().unwrap_or_else(|| "ok".into()),
    );

    let passed = r.steps.iter().all(|s| s["passed"] == true);
    json!({ "passed": passed, "account": appid, "user_name": gh, "steps": r.steps })
}
