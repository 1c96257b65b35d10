//! What a release job is asked to do (`POST /v1/releases`), checked before anything is stored:
//! the template, the version, each account's `ext_json`, the audit's fields, how to release,
//! the pace and when to stop.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most accounts one job takes.
pub const MAX_TARGETS: usize = 50_000;
/// The most accounts one job works on at once (across replicas).
pub const MAX_CONCURRENCY: u32 = 200;

/// The body of `POST /v1/releases`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// A template of the platform's library (`wxa/gettemplatelist`).
    pub template_id: u64,
    /// The version users see (`user_version` of `wxa/commit`).
    pub user_version: String,
    #[serde(default)]
    pub user_desc: String,
    /// Every account's `ext_json`: an object (or a JSON text) in which `${appid}` in any string
    /// is replaced by the account's appid.
    #[serde(default)]
    pub ext_json: Option<Value>,
    /// An account's own `ext_json`, instead of [`Self::ext_json`].
    #[serde(default)]
    pub ext_json_by_appid: std::collections::BTreeMap<String, Value>,
    pub targets: Targets,
    /// Fields of `wxa/submit_audit` sent as given (`item_list`, `privacy_api_not_use`,
    /// `feedback_info`, …).
    #[serde(default)]
    pub audit: serde_json::Map<String, Value>,
    /// `auto` (release as soon as an audit passes), `manual` (stop at `audit_passed`), or
    /// `{"gray": [percentages]}` (`wxa/grayrelease` in growing steps, one every
    /// `gray_step_secs`, then the full release; accounts with no version online yet are
    /// released at once, as WeChat allows gray only over an online version).
    #[serde(default)]
    pub release: ReleaseMode,
    /// Seconds between gray steps (default 3600).
    #[serde(default = "default_gray_step")]
    pub gray_step_secs: u64,
    /// Accounts worked on at once, across replicas (1..=200, default 10).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Pause the job when the share of failed accounts among those finished exceeds this
    /// (0 < ratio ≤ 1; none: never).
    #[serde(default)]
    pub stop_when_failed_over: Option<f64>,
    /// An audit already pending at submit (85009): `adopt` it (default) or `undo` it
    /// (`wxa/undocodeaudit`, 5 a day and 10 a month per account) and submit anew.
    #[serde(default)]
    pub on_pending_audit: PendingAudit,
    /// Skip accounts whose version online is not older than `user_version` (read with
    /// `wxa/getversioninfo`; WeChat does not enforce it). Default true.
    #[serde(default = "yes")]
    pub check_version: bool,
}

fn default_gray_step() -> u64 {
    3600
}

fn default_concurrency() -> u32 {
    10
}

fn yes() -> bool {
    true
}

/// Which accounts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Targets {
    /// These accounts.
    Appids(Vec<String>),
    /// The accounts `GET /v1/authorizers` lists with these filters (by its names).
    Filter(TargetFilter),
}

/// `GET /v1/authorizers`'s filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetFilter {
    #[serde(rename = "type", default)]
    pub account_type: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub permission: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseMode {
    #[default]
    Auto,
    Manual,
    /// Gray steps (percentages, growing, 1..=100), then the full release.
    Gray(Vec<u8>),
}

impl ReleaseMode {
    /// The gray step after `current` (none yet: the first), if any is left.
    pub fn next_gray(&self, current: Option<u8>) -> Option<u8> {
        match self {
            ReleaseMode::Gray(steps) => steps
                .iter()
                .copied()
                .find(|p| current.is_none_or(|c| *p > c)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PendingAudit {
    #[default]
    Adopt,
    Undo,
}

/// A spec that cannot run, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl ReleaseSpec {
    /// Checks everything that needs neither WeChat nor Redis.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError(m));
        let v = self.user_version.trim();
        if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
            return bad("user_version must be 1 to 64 printable characters".into());
        }
        if self.user_desc.chars().count() > 1000
            || self.user_desc.chars().any(|c| c.is_control() && c != '\n')
        {
            return bad(
                "user_desc must be at most 1000 characters without control characters".into(),
            );
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return bad(format!("concurrency must be 1 to {MAX_CONCURRENCY}"));
        }
        if let Some(r) = self.stop_when_failed_over
            && !(r > 0.0 && r <= 1.0)
        {
            return bad("stop_when_failed_over must be a ratio above 0 and at most 1".into());
        }
        if let ReleaseMode::Gray(steps) = &self.release
            && (steps.is_empty()
                || steps.len() > 10
                || steps.iter().any(|p| !(1..=100).contains(p))
                || steps.windows(2).any(|w| w[0] >= w[1]))
        {
            return bad("release.gray must list 1 to 10 growing percentages from 1 to 100".into());
        }
        if !(1..=7 * 86_400).contains(&self.gray_step_secs)
            && matches!(self.release, ReleaseMode::Gray(_))
        {
            return bad("gray_step_secs must be 1 to 604800".into());
        }
        if let Targets::Appids(list) = &self.targets {
            if list.is_empty() || list.len() > MAX_TARGETS {
                return bad(format!(
                    "targets.appids must list 1 to {MAX_TARGETS} accounts"
                ));
            }
            for a in list {
                if a.parse::<crate::ids::AppId>().is_err() {
                    return bad(format!("targets.appids: {a:?} is not an appid"));
                }
            }
        }
        for (appid, ext) in &self.ext_json_by_appid {
            if appid.parse::<crate::ids::AppId>().is_err() {
                return bad(format!("ext_json_by_appid: {appid:?} is not an appid"));
            }
            ext_json_text(ext).map_err(|e| SpecError(format!("ext_json_by_appid.{appid}: {e}")))?;
        }
        if let Some(ext) = &self.ext_json {
            ext_json_text(ext).map_err(|e| SpecError(format!("ext_json: {e}")))?;
        }
        for key in self.audit.keys() {
            if !AUDIT_FIELDS.contains(&key.as_str()) {
                return bad(format!(
                    "audit.{key} is not a field of wxa/submit_audit (known: {})",
                    AUDIT_FIELDS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The `ext_json` text committed for `appid`: its own, or the common one with `${appid}`
    /// replaced in every string (empty when there is none).
    pub fn ext_json_for(&self, appid: &str) -> Result<String, SpecError> {
        if let Some(own) = self.ext_json_by_appid.get(appid) {
            return ext_json_text(own).map_err(SpecError);
        }
        match &self.ext_json {
            None => Ok(String::new()),
            Some(v) => {
                let mut v = match v {
                    Value::String(s) => serde_json::from_str(s)
                        .map_err(|e| SpecError(format!("ext_json is not JSON: {e}")))?,
                    other => other.clone(),
                };
                substitute(&mut v, appid);
                Ok(v.to_string())
            }
        }
    }
}

/// The fields of `wxa/submit_audit` a job may set (protocol.md §8 and WeChat's page).
pub const AUDIT_FIELDS: [&str; 8] = [
    "item_list",
    "preview_info",
    "version_desc",
    "feedback_info",
    "feedback_stuff",
    "ugc_declare",
    "privacy_api_not_use",
    "order_path",
];

/// An `ext_json` given as an object or as a JSON text of one, as the text to send.
fn ext_json_text(v: &Value) -> Result<String, String> {
    match v {
        Value::Object(_) => Ok(v.to_string()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(_)) => Ok(s.clone()),
            _ => Err("must be a JSON object (or the text of one)".into()),
        },
        _ => Err("must be a JSON object (or the text of one)".into()),
    }
}

fn substitute(v: &mut Value, appid: &str) {
    match v {
        Value::String(s) if s.contains("${appid}") => *s = s.replace("${appid}", appid),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, appid)),
        Value::Object(o) => o.values_mut().for_each(|x| substitute(x, appid)),
        _ => {}
    }
}

/// Compares two versions by their dot-separated numbers (`1.10.0` > `1.9.3`); parts that are
/// not numbers compare as text. `None` when either has no number at all.
pub fn version_cmp(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let parts = |s: &str| -> Vec<String> {
        s.trim()
            .trim_start_matches(['v', 'V'])
            .split('.')
            .map(str::to_owned)
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    if pa.iter().chain(&pb).all(|p| p.parse::<u64>().is_err()) {
        return None;
    }
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).map(String::as_str).unwrap_or("0"),
            pb.get(i).map(String::as_str).unwrap_or("0"),
        );
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o.is_ne() {
            return Some(o);
        }
    }
    Some(std::cmp::Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cmp::Ordering::*;

    fn spec(v: Value) -> Result<ReleaseSpec, String> {
        let s: ReleaseSpec = serde_json::from_value(v).map_err(|e| e.to_string())?;
        s.check().map_err(|e| e.0)?;
        Ok(s)
    }

    fn base() -> Value {
        json!({"template_id": 1, "user_version": "1.2.0", "targets": {"appids": ["wx0123456789abcdef"]}})
    }

    #[test]
    fn gray_steps_grow() {
        let g = ReleaseMode::Gray(vec![5, 20, 50]);
        assert_eq!(g.next_gray(None), Some(5));
        assert_eq!(g.next_gray(Some(5)), Some(20));
        assert_eq!(g.next_gray(Some(50)), None);
        assert_eq!(ReleaseMode::Auto.next_gray(None), None);
        let v: ReleaseSpec = serde_json::from_value(json!({"template_id": 1, "user_version": "1",
            "targets": {"appids": ["wx0123456789abcdef"]}, "release": {"gray": [10, 50]}}))
        .unwrap();
        assert_eq!(v.release, ReleaseMode::Gray(vec![10, 50]));
    }

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(version_cmp("1.10.0", "1.9.3"), Some(Greater));
        assert_eq!(version_cmp("1.2", "1.2.0"), Some(Equal));
        assert_eq!(version_cmp("v2.0.0", "1.99"), Some(Greater));
        assert_eq!(version_cmp("1.2.0-beta", "1.2.0"), Some(Greater));
        assert_eq!(version_cmp("abc", "def"), None);
    }

    #[test]
    fn ext_json_is_rendered_per_account() {
        let mut v = base();
        v["ext_json"] = json!({"extAppid": "${appid}", "ext": {"shop": "s-${appid}", "n": 3}});
        let s = spec(v).unwrap();
        let text = s.ext_json_for("wx0123456789abcdef").unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["extAppid"], "wx0123456789abcdef");
        assert_eq!(back["ext"]["shop"], "s-wx0123456789abcdef");
        assert_eq!(back["ext"]["n"], 3);
    }

    /// Hostile or malformed specs are refused with a reason, before anything is stored.
    #[test]
    fn hostile_specs_are_refused() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"user_version": ""}), "user_version"),
            (json!({"user_version": "1.0\u{0}"}), "user_version"),
            (json!({"user_version": "x".repeat(65)}), "user_version"),
            (json!({"concurrency": 0}), "concurrency"),
            (json!({"concurrency": 100000}), "concurrency"),
            (
                json!({"stop_when_failed_over": 0.0}),
                "stop_when_failed_over",
            ),
            (
                json!({"stop_when_failed_over": 1.5}),
                "stop_when_failed_over",
            ),
            (json!({"targets": {"appids": []}}), "targets.appids"),
            (
                json!({"targets": {"appids": ["wx1\r\nX: y"]}}),
                "not an appid",
            ),
            (
                json!({"targets": {"appids": ["../../etc"]}}),
                "not an appid",
            ),
            (json!({"ext_json": [1, 2]}), "ext_json"),
            (json!({"ext_json": "not json"}), "ext_json"),
            (json!({"ext_json_by_appid": {"nope": {}}}), "not an appid"),
            (
                json!({"audit": {"access_token": "x"}}),
                "audit.access_token",
            ),
            (json!({"release": "sometimes"}), "unknown variant"),
            (json!({"release": {"gray": []}}), "release.gray"),
            (json!({"release": {"gray": [50, 10]}}), "release.gray"),
            (json!({"release": {"gray": [0, 10]}}), "release.gray"),
            (json!({"release": {"gray": [10, 101]}}), "release.gray"),
            (json!({"release": {"gray": [10, 256]}}), "invalid value"),
            (
                json!({"release": {"gray": [10]}, "gray_step_secs": 0}),
                "gray_step_secs",
            ),
            (json!({"surprise": 1}), "unknown field"),
            (
                json!({"targets": {"filter": {"type": "mini_program", "evil": 1}}}),
                "unknown field",
            ),
        ];
        for (patch, expect) in cases {
            let mut v = base();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let err = spec(v.clone()).expect_err(&format!("{v} must be refused"));
            assert!(err.contains(expect), "{v}: {err}");
        }
    }
}
