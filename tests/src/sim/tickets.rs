//! JS-SDK tickets (protocol.md §9): `cgi-bin/ticket/getticket` with an account's token, as
//! users report WeChat answers it — the **same** ticket while it is valid, each time with the
//! full `expires_in` (so a client that trusts `expires_in` serves a dead ticket), a new one once
//! it expired (the old one is not revoked by it), a daily quota per account (45009 beyond),
//! `wx_card` only for accounts with permission set 8 — and the signature check `wx.config`
//! makes (`POST /sim/jssdk/verify`), which refuses a ticket that has expired.

use super::SimShared;
use super::api::answer;
use super::state::{ApiError, INVALID_ARGS, QUOTA_REACHED, TokenKind};
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Json;
use axum::routing::get;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// 48001: the account may not use this ticket (a mini program, `wx_card` without set 8).
const UNAUTHORIZED: ApiError = ApiError {
    errcode: 48001,
    errmsg: "api unauthorized",
};

/// One ticket issued.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    pub kind: String,
    pub ticket: String,
    /// When it was issued and when it expires (ms since the epoch).
    pub issued_ms: i64,
    pub expires_ms: i64,
}

#[derive(Default)]
pub struct Tickets {
    /// Every ticket issued, per account, in order.
    pub issued: BTreeMap<String, Vec<Issued>>,
    /// `getticket` calls per account today, and the day.
    calls_today: HashMap<String, u64>,
    day: i64,
    /// `getticket` calls per account, in all.
    pub calls: BTreeMap<String, u64>,
    /// Signatures checked: (verified, refused).
    pub verified: (u64, u64),
    serial: u64,
}

impl Tickets {
    /// The live ticket of `kind` of `appid`, if any.
    fn live(&self, appid: &str, kind: &str, now_ms: i64) -> Option<&Issued> {
        self.issued
            .get(appid)?
            .iter()
            .rev()
            .find(|i| i.kind == kind && i.expires_ms > now_ms)
    }
}

pub fn routes() -> Router<Arc<SimShared>> {
    Router::new().route("/cgi-bin/ticket/getticket", get(getticket))
}

type Q = Query<HashMap<String, String>>;

/// `GET cgi-bin/ticket/getticket?access_token=AUTHORIZER_TOKEN&type=jsapi|wx_card`.
async fn getticket(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    const API: &str = "getticket";
    let result = {
        let mut st = sim.state.lock().expect("sim state");
        *st.stats.calls.entry(API.to_owned()).or_default() += 1;
        let checked = (|| {
            if sim.faults.busy() || st.take_busy() {
                return Err(super::state::BUSY);
            }
            let owner = st
                .check_token(
                    q.get("access_token").map(String::as_str),
                    TokenKind::Authorizer,
                )?
                .ok_or(INVALID_ARGS)?;
            let kind = q.get("type").map(String::as_str).unwrap_or("jsapi");
            let account = st.authorizers.get(&owner).ok_or(INVALID_ARGS)?;
            match kind {
                "jsapi" if !account.mini_program => {}
                "wx_card" if !account.mini_program && account.card => {}
                "jsapi" | "wx_card" => return Err(UNAUTHORIZED),
                _ => return Err(INVALID_ARGS),
            }
            let ttl = st.rules.js_ticket_ttl;
            let quota = st.rules.getticket_daily_quota;
            let mut t = sim.tickets.lock().expect("tickets");
            let today = common::unix_now() / 86_400;
            if today != t.day {
                t.calls_today.clear();
                t.day = today;
            }
            *t.calls.entry(owner.clone()).or_default() += 1;
            let used = t.calls_today.entry(owner.clone()).or_default();
            if *used >= quota {
                return Err(QUOTA_REACHED);
            }
            *used += 1;
            let now_ms = common::unix_now_ms();
            let ticket = match t.live(&owner, kind, now_ms) {
                Some(live) => live.ticket.clone(),
                None => {
                    t.serial += 1;
                    let ticket = format!(
                        "sim-{kind}-ticket-{}-{}",
                        t.serial,
                        &uuid::Uuid::new_v4().simple().to_string()[..16]
                    );
                    t.issued.entry(owner.clone()).or_default().push(Issued {
                        kind: kind.to_owned(),
                        ticket: ticket.clone(),
                        issued_ms: now_ms,
                        expires_ms: now_ms + ttl.as_millis() as i64,
                    });
                    ticket
                }
            };
            // The full lifetime every time, as users report: not the time this ticket has left.
            Ok(
                json!({ "errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": ttl.as_secs().max(1) }),
            )
        })();
        if let Err(e) = &checked {
            st.count_error(API, e);
        }
        checked
    };
    answer(result)
}

/// The JS-SDK signature of protocol.md §9: SHA-1 of the four pairs in key order, the URL
/// without its fragment.
pub fn signature(ticket: &str, noncestr: &str, timestamp: &str, url: &str) -> String {
    let url = url.split('#').next().unwrap_or(url);
    let plain =
        format!("jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={url}");
    hex::encode(Sha1::digest(plain.as_bytes()))
}

/// `POST /sim/jssdk/verify {appid, url, nonceStr, timestamp, signature}`: what `wx.config`
/// checks — the signature made with one of the account's `jsapi` tickets that has not expired,
/// for the page's URL (its fragment dropped, as the page's `location.href.split('#')[0]`).
pub async fn verify(State(sim): State<Arc<SimShared>>, Json(body): Json<Value>) -> Json<Value> {
    let field = |k: &str| {
        body.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    let (appid, url, nonce, timestamp, signature) = (
        field("appid"),
        field("url"),
        field("nonceStr"),
        field("timestamp"),
        field("signature"),
    );
    let now_ms = common::unix_now_ms();
    let mut t = sim.tickets.lock().expect("tickets");
    let tickets: Vec<&Issued> = t
        .issued
        .get(&appid)
        .map(|v| v.iter().filter(|i| i.kind == "jsapi").collect())
        .unwrap_or_default();
    let matching = tickets.iter().find(|i| {
        signature::eq(
            &self::signature(&i.ticket, &nonce, &timestamp, &url),
            &signature,
        )
    });
    let verdict = match matching {
        None => Err("invalid signature"),
        Some(i) if i.expires_ms <= now_ms => Err("the ticket it was made with has expired"),
        Some(_) => Ok(()),
    };
    match verdict {
        Ok(()) => {
            t.verified.0 += 1;
            Json(json!({ "ok": true }))
        }
        Err(reason) => {
            t.verified.1 += 1;
            Json(json!({ "ok": false, "reason": reason }))
        }
    }
}

mod signature {
    /// Plain comparison (the simulator has nothing to keep secret from a timing attack).
    pub fn eq(a: &str, b: &str) -> bool {
        a.eq_ignore_ascii_case(b)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_of_wechats_own_example() {
        // JS-SDK appendix 1: this ticket, nonce, timestamp and URL sign to this value.
        assert_eq!(
            super::signature(
                "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
                "Wm3WZYTPz0wzccnW",
                "1414587457",
                "http://mp.weixin.qq.com?params=value#fragment",
            ),
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
        );
    }
}
