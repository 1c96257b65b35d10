//! Pushes to wxpipe's ingress exactly as WeChat sends them (signed query, encrypted envelope,
//! the component's credentials even for authorizer messages), with WeChat's retry behaviour:
//! no answer within 5 s, a failed connection or an error status → try again, 3 tries in all.

use super::state::{Authorizer, State};
use crate::push::{PushBuilder, SignedPush};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How WeChat waits for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per push, the first included.
pub const TRIES: u32 = 3;

/// The final answer to a push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushOutcome {
    /// HTTP status of the last try, `None` when it got no answer.
    pub status: Option<u16>,
    pub body: String,
    pub tries: u32,
}

impl PushOutcome {
    /// WeChat's notion of acknowledged: a 200 with `success`, an empty body, or a reply.
    pub fn acknowledged(&self) -> bool {
        self.status == Some(200)
    }
}

/// Sends pushes to one ingress.
#[derive(Clone)]
pub struct Pusher {
    client: reqwest::Client,
    ingress: String,
    pub builder: PushBuilder,
    state: Arc<Mutex<State>>,
}

fn now() -> i64 {
    common::unix_now()
}

fn nonce() -> String {
    (rand::random::<u32>() % 1_000_000_000).to_string()
}

impl Pusher {
    pub fn new(ingress: &str, builder: PushBuilder, state: Arc<Mutex<State>>) -> Self {
        Self {
            client: crate::http_builder()
                .timeout(ANSWER_TIMEOUT)
                .build()
                .expect("reqwest client"),
            ingress: ingress.trim_end_matches('/').to_owned(),
            builder,
            state,
        }
    }

    fn record(&self, kind: &str, answer: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.record_push(kind, answer);
        }
    }

    /// POSTs `push` to `path`, retrying like WeChat (`tries` in all).
    pub async fn send(&self, kind: &str, path: &str, push: &SignedPush, tries: u32) -> PushOutcome {
        let url = format!("{}{path}?{}", self.ingress, push.query);
        let mut last = PushOutcome {
            status: None,
            body: String::new(),
            tries: 0,
        };
        for attempt in 1..=tries.max(1) {
            last.tries = attempt;
            match self
                .client
                .post(&url)
                .header("content-type", "text/xml")
                .body(push.body.clone())
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    self.record(kind, &status.to_string());
                    last.status = Some(status);
                    last.body = body;
                    if status == 200 {
                        return last;
                    }
                }
                Err(e) => {
                    self.record(kind, if e.is_timeout() { "timeout" } else { "error" });
                    last.status = None;
                    last.body = e.to_string();
                }
            }
        }
        last
    }

    /// A `component_verify_ticket` push with a ticket the API will accept.
    pub async fn ticket(&self) -> (String, PushOutcome) {
        let (ticket, appid) = {
            let mut s = self.state.lock().expect("sim state");
            (s.issue_ticket(), s.component_appid.clone())
        };
        let plain = crate::push::ticket_event(&appid, now(), &ticket);
        let push = self.builder.component(&plain, now(), &nonce());
        let outcome = self.send("ticket", "/wechat/component", &push, TRIES).await;
        (ticket, outcome)
    }

    /// `authorized` (or `updateauthorized`) with the account's auth code.
    pub async fn authorized(
        &self,
        authorizer: &Authorizer,
        code: &str,
        pre_auth_code: &str,
        update: bool,
    ) -> PushOutcome {
        let appid = self.component_appid();
        let info_type = if update {
            "updateauthorized"
        } else {
            "authorized"
        };
        let t = now();
        let plain = format!(
            "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{t}</CreateTime><InfoType><![CDATA[{info_type}]]></InfoType><AuthorizerAppid><![CDATA[{}]]></AuthorizerAppid><AuthorizationCode><![CDATA[{code}]]></AuthorizationCode><AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime><PreAuthCode><![CDATA[{pre_auth_code}]]></PreAuthCode></xml>",
            authorizer.appid,
            t + 600
        );
        let push = self.builder.component(&plain, t, &nonce());
        self.send(info_type, "/wechat/component", &push, TRIES)
            .await
    }

    /// `unauthorized`.
    pub async fn unauthorized(&self, authorizer_appid: &str) -> PushOutcome {
        let appid = self.component_appid();
        let t = now();
        let plain = format!(
            "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{t}</CreateTime><InfoType><![CDATA[unauthorized]]></InfoType><AuthorizerAppid><![CDATA[{authorizer_appid}]]></AuthorizerAppid></xml>"
        );
        let push = self.builder.component(&plain, t, &nonce());
        self.send("unauthorized", "/wechat/component", &push, TRIES)
            .await
    }

    /// A message or event `plaintext` from a follower of `authorizer`, to the message URL.
    pub async fn message(
        &self,
        kind: &str,
        authorizer_appid: &str,
        gh_id: &str,
        openid: &str,
        plaintext: &str,
        tries: u32,
    ) -> PushOutcome {
        let push = self
            .builder
            .authorizer(gh_id, openid, plaintext, now(), &nonce());
        self.send(
            kind,
            &format!("/wechat/authorizers/{authorizer_appid}"),
            &push,
            tries,
        )
        .await
    }

    fn component_appid(&self) -> String {
        self.builder.crypt().appid().to_owned()
    }
}

/// A text message (protocol.md §4).
pub fn text(gh_id: &str, openid: &str, content: &str) -> String {
    let msg_id = rand::random::<u64>() >> 1;
    crate::push::text_message(gh_id, openid, now(), content, msg_id)
}

/// An event message (protocol.md §4). `LOCATION` carries coordinates.
pub fn event(gh_id: &str, openid: &str, event: &str, event_key: &str) -> String {
    let extra = if event == "LOCATION" {
        "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>"
    } else {
        ""
    };
    format!(
        "<xml><ToUserName><![CDATA[{gh_id}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{event_key}]]></EventKey>{extra}</xml>",
        now()
    )
}
