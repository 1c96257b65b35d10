//! Audit results as WeChat pushes them (`weapp_audit_success` / `_fail` / `_delay`, protocol.md
//! §8), consumed from the role's own queue `{ns}.releases`: each is stored for its account and
//! wakes the job whose audit it is. The job's step reads it (and polls `get_auditstatus` for
//! results that never arrive).

use common::amqp::consumer::{Disposition, Handler};
use common::event::CloudEvent;
use common::releases::{AuditResult, ReleaseStore};
use common::wechat::code::audit_status;
use lapin::message::Delivery;

/// The events `{ns}.releases` is bound to (`authorizer.*.event.<event>`).
pub const AUDIT_EVENTS: [&str; 3] = [
    "weapp_audit_success",
    "weapp_audit_fail",
    "weapp_audit_delay",
];

/// The queue's binding patterns.
pub fn bindings() -> Vec<String> {
    AUDIT_EVENTS
        .iter()
        .map(|e| format!("authorizer.*.event.{e}"))
        .collect()
}

pub struct AuditHandler {
    pub store: ReleaseStore,
}

fn count(event: &str, outcome: &'static str) {
    metrics::counter!("wxpipe_release_audit_events_total", "event" => event.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// The account and result of an audit event; `Err` with why it is not one.
pub fn parse(event: &CloudEvent) -> Result<(String, AuditResult), String> {
    let appid = event
        .source
        .strip_prefix("/wechat/authorizers/")
        .filter(|a| a.parse::<common::ids::AppId>().is_ok())
        .ok_or_else(|| format!("source {:?} is not an authorizer", event.source))?
        .to_owned();
    let data = serde_json::to_value(&event.data).map_err(|e| e.to_string())?;
    let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let time = |k: &str| text(k).and_then(|t| t.trim().parse::<i64>().ok());
    let kind = text("Event").unwrap_or_default();
    let result = match kind.as_str() {
        "weapp_audit_success" => AuditResult {
            status: audit_status::PASSED,
            reason: None,
            screenshots: Vec::new(),
            at: time("SuccTime").ok_or("no SuccTime")?,
        },
        "weapp_audit_fail" => AuditResult {
            status: audit_status::FAILED,
            reason: text("Reason"),
            screenshots: text("ScreenShot")
                .unwrap_or_default()
                .split('|')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            at: time("FailTime").ok_or("no FailTime")?,
        },
        "weapp_audit_delay" => AuditResult {
            status: audit_status::DELAYED,
            reason: text("Reason"),
            screenshots: Vec::new(),
            at: time("DelayTime").ok_or("no DelayTime")?,
        },
        other => return Err(format!("{other:?} is not an audit event")),
    };
    Ok((appid, result))
}

impl Handler for AuditHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let event = match crate::role::cloud_event(delivery) {
            Ok(e) => e,
            Err(dead) => {
                count("?", "dead");
                return dead;
            }
        };
        let (appid, result) = match parse(&event) {
            Ok(x) => x,
            Err(detail) => {
                count(&event.event_type, "dead");
                return Disposition::DeadLetter {
                    reason: "not_an_audit_event",
                    detail,
                };
            }
        };
        // Stored first, then the job looked up (see the submit step for why this order).
        let stored = async {
            self.store.save_audit_result(&appid, &result).await?;
            if let Some(job) = self.store.audit_job(&appid).await? {
                self.store.poke(&job, &appid).await?;
            }
            Ok::<_, common::redis::RedisError>(())
        }
        .await;
        match stored {
            Ok(()) => {
                count(&event.event_type, "stored");
                tracing::info!(%appid, status = result.status, "audit result received");
                Disposition::Ack
            }
            Err(e) => {
                count(&event.event_type, "retry");
                tracing::warn!(%appid, error = %e, "cannot store an audit result; it is redelivered");
                Disposition::Requeue
            }
        }
    }
}
