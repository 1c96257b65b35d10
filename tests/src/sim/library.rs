//! The template library of a platform that develops mini programs (protocol.md §8): drafts
//! uploaded from WeChat DevTools, and templates promoted from them. These APIs take the
//! component token under the name **`access_token`**, as WeChat documents them; this simulator
//! takes it under that name only, so a caller sending it as `component_access_token` gets
//! 41001 (access_token missing), which is how a wrong rule shows on the wire.

use super::SimShared;
use super::api::{answer, parse_body};
use super::state::{ApiError, INVALID_ARGS, TOKEN_MISSING, TokenKind};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// 85064: no such draft.
const UNKNOWN_DRAFT: ApiError = ApiError {
    errcode: 85064,
    errmsg: "template not found",
};

/// Drafts and templates. Two drafts are there from the start (as if uploaded from DevTools).
pub struct Library {
    drafts: Vec<Value>,
    templates: Vec<Value>,
    next_template_id: u64,
}

impl Default for Library {
    fn default() -> Self {
        let draft = |id: u64, version: &str| {
            json!({ "draft_id": id, "user_version": version, "user_desc": format!("build {version}"),
                    "create_time": 1_700_000_000 + id, "source_miniprogram_appid": "wx00dev0000000001",
                    "developer": "sim-developer" })
        };
        Self {
            drafts: vec![draft(0, "1.0.0"), draft(1, "1.1.0")],
            templates: Vec::new(),
            next_template_id: 1,
        }
    }
}

impl Library {
    /// Promotes draft `draft_id` to a template (`template_type` 0 normal, 1 standard): its
    /// id, or `None` when there is no such draft.
    pub fn promote(&mut self, draft_id: u64, template_type: i64) -> Option<u64> {
        let mut template = self
            .drafts
            .iter()
            .find(|d| d["draft_id"] == draft_id)
            .cloned()?;
        let id = self.next_template_id;
        self.next_template_id += 1;
        template["template_id"] = json!(id);
        template["template_type"] = json!(template_type);
        self.templates.push(template);
        Some(id)
    }

    /// The template `id`, if the library has it.
    pub fn template(&self, id: u64) -> Option<&Value> {
        self.templates.iter().find(|t| t["template_id"] == id)
    }
}

pub fn routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/wxa/gettemplatedraftlist", get(draft_list))
        .route("/wxa/gettemplatelist", get(template_list))
        .route("/wxa/addtotemplate", post(add_to_template))
        .route("/wxa/deletetemplate", post(delete_template))
}

type Q = Query<HashMap<String, String>>;

/// The component token, under `access_token` only (see the module's note); counts the call.
fn component(sim: &SimShared, api: &str, q: &HashMap<String, String>) -> Result<(), ApiError> {
    let mut st = sim.state.lock().expect("sim state");
    let checked = st.count_call(api).and_then(|()| {
        let token = q.get("access_token").ok_or(TOKEN_MISSING)?;
        st.check_token(Some(token), TokenKind::Component)
            .map(|_| ())
    });
    if let Err(e) = &checked {
        st.count_error(api, e);
    }
    checked
}

async fn draft_list(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(component(&sim, "wxa_gettemplatedraftlist", &q).map(|()| {
        let lib = sim.library.lock().expect("library");
        json!({ "errcode": 0, "errmsg": "ok", "draft_list": lib.drafts })
    }))
}

async fn template_list(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(component(&sim, "wxa_gettemplatelist", &q).map(|()| {
        let lib = sim.library.lock().expect("library");
        let wanted = q.get("template_type").and_then(|t| t.parse::<i64>().ok());
        let list: Vec<&Value> = lib
            .templates
            .iter()
            .filter(|t| wanted.is_none_or(|w| t["template_type"] == w))
            .collect();
        json!({ "errcode": 0, "errmsg": "ok", "template_list": list })
    }))
}

/// `{draft_id, template_type?}`; the answer carries no template_id (list again), as WeChat's.
async fn add_to_template(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    answer(component(&sim, "wxa_addtotemplate", &q).and_then(|()| {
        let b = parse_body(&body)?;
        let draft_id = b["draft_id"].as_u64().ok_or(INVALID_ARGS)?;
        let template_type = b["template_type"].as_i64().unwrap_or(0);
        let mut lib = sim.library.lock().expect("library");
        lib.promote(draft_id, template_type).ok_or(UNKNOWN_DRAFT)?;
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    }))
}

async fn delete_template(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    answer(component(&sim, "wxa_deletetemplate", &q).and_then(|()| {
        let b = parse_body(&body)?;
        let id = b["template_id"].as_u64().ok_or(INVALID_ARGS)?;
        let mut lib = sim.library.lock().expect("library");
        let before = lib.templates.len();
        lib.templates.retain(|t| t["template_id"] != id);
        if lib.templates.len() == before {
            return Err(UNKNOWN_DRAFT);
        }
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    }))
}
