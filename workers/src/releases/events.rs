//! `release.<state>` events on `{ns}.events`, one per account transition, so teams can react.
//!
//! A transition queues its event in the job's outbox in the same script that writes it, so no
//! transition is left without its event; one replica at a time (a lock per job) publishes the
//! outbox with publisher confirms and trims what the broker confirmed. A replica that dies
//! between the confirm and the trim makes the next one publish those again: events are
//! at-least-once, and their `id` (`{job}:{appid}:{version}`) names each transition once.

use common::amqp::ConfirmedPublisher;
use common::amqp::publisher::Routing;
use common::redis::claim::{Claim, Taken};
use common::releases::{AccountRecord, AccountState, Job, ReleaseStore};
use serde_json::json;
use std::time::Duration;

/// The routing key of an account's move to `state`.
pub fn routing_key(state: AccountState) -> String {
    format!("release.{state}")
}

/// The outbox entry of `next` (from `from`, at version `seq`): `{routing_key, event}`, the
/// event a CloudEvents 1.0 envelope like every event of `{ns}.events`.
pub fn event(job: &Job, from: AccountState, next: &AccountRecord, seq: u64) -> String {
    let id = format!("{}:{}:{}", job.id, next.appid, seq + 1);
    json!({
        "routing_key": routing_key(next.state),
        "event": {
            "specversion": "1.0",
            "id": id,
            "source": format!("/wxpipe/releases/{}", job.id),
            "type": format!("wxpipe.release.{}", next.state),
            "time": common::event::rfc3339(next.updated_ms / 1000),
            "datacontenttype": "application/json",
            "data": {
                "job": job.id,
                "appid": next.appid,
                "template_id": job.spec.template_id,
                "user_version": job.spec.user_version,
                "from": from,
                "state": next.state,
                "reason": next.reason,
                "auditid": next.auditid,
                "screenshots": next.screenshots,
            },
        },
    })
    .to_string()
}

/// Publishes `job`'s outbox if no other replica does; returns how many were published.
pub async fn drain(
    store: &ReleaseStore,
    pool: &common::redis::Pool,
    publisher: &ConfirmedPublisher,
    exchange: &str,
    job: &str,
) -> Result<usize, String> {
    // Most rounds find nothing to publish: no lock is taken for that.
    if store
        .outbox(job, 1)
        .await
        .map_err(|e| e.to_string())?
        .is_empty()
    {
        return Ok(0);
    }
    let key = store.lock_key(job, "outbox");
    let claim = match Claim::take(pool, &key, Duration::from_secs(30)).await {
        Ok(Taken::Won(c)) => c,
        Ok(_) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut published = 0;
    let result = async {
        loop {
            let batch = store.outbox(job, 100).await.map_err(|e| e.to_string())?;
            if batch.is_empty() {
                return Ok(published);
            }
            for entry in &batch {
                let v: serde_json::Value = match serde_json::from_str(entry) {
                    Ok(v) => v,
                    Err(e) => {
                        // Written by this code only; a broken entry is dropped with a metric.
                        metrics::counter!("wxpipe_release_events_total", "outcome" => "malformed").increment(1);
                        tracing::error!(%job, error = %e, "a release event in the outbox is not JSON: dropped");
                        continue;
                    }
                };
                let key = v["routing_key"].as_str().unwrap_or("release.unknown");
                let body = v["event"].to_string();
                let props = common::wire::event::EventProperties {
                    id: v["event"]["id"].as_str().unwrap_or_default().to_owned(),
                    event_type: v["event"]["type"].as_str().unwrap_or_default().to_owned(),
                    received_at_ms: None,
                    reply: None,
                }
                .to_properties();
                publisher
                    .publish_routed(exchange, key, body.as_bytes(), props, Routing::AnyQueues)
                    .await
                    .map_err(|e| format!("publishing a release event: {e}"))?;
                metrics::counter!("wxpipe_release_events_total", "outcome" => "published").increment(1);
            }
            store
                .outbox_done(job, batch.len())
                .await
                .map_err(|e| e.to_string())?;
            published += batch.len();
        }
    }
    .await;
    let _ = claim.release().await;
    result
}
