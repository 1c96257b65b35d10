//! Every metric wxpipe records — name, type, labels, where it comes from and what it means —
//! in one list. The recorder is given each one's help text (`# HELP` at `/metrics`),
//! `workers metrics-reference` prints it as `docs/reference/metrics.md`, and a test reads the
//! source for every `counter!`/`gauge!`/`histogram!` name and fails when one is missing here
//! or one listed here is no longer recorded (`tests/tests/monitoring.rs`).

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    /// The roles that record it.
    pub from: &'static str,
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    from: &'static str,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        from,
        help,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric, by name.
pub const METRICS: &[Metric] = &[
    m(
        "wxpipe_admin_connections",
        G,
        &[],
        "scheduler",
        "Open connections of the admin API's listener.",
    ),
    m(
        "wxpipe_admin_refused_connections_total",
        C,
        &["reason"],
        "scheduler",
        "Connections to the admin API closed at once (`per_client`: over one address's share).",
    ),
    m(
        "wxpipe_admin_requests_total",
        C,
        &["outcome"],
        "scheduler",
        "Admin API requests refused (`unauthorized`, `bad_request`, `refresh_limited`).",
    ),
    m(
        "wxpipe_admin_timeouts_total",
        C,
        &["what"],
        "scheduler",
        "Admin API connections closed for a timeout (`header`, `write`).",
    ),
    m(
        "wxpipe_amqp_ack_frames_total",
        C,
        &["kind"],
        "decrypt, business",
        "Acknowledgement frames sent (`multiple`: one for a run of deliveries, `single`).",
    ),
    m(
        "wxpipe_amqp_channels_replaced_total",
        C,
        &["connection"],
        "every role that publishes",
        "Confirm channels replaced because the broker kept refusing them.",
    ),
    m(
        "wxpipe_amqp_connected",
        G,
        &["connection"],
        "every role",
        "1 while the named RabbitMQ connection is up.",
    ),
    m(
        "wxpipe_amqp_delivery_batches_total",
        C,
        &[],
        "decrypt, business",
        "Groups of deliveries started together (see `WXPIPE_DECRYPT_LINGER_US`).",
    ),
    m(
        "wxpipe_amqp_legacy_queues_total",
        C,
        &["queue"],
        "every role",
        "Queues of an older wxpipe found at start and kept (with a warning).",
    ),
    m(
        "wxpipe_amqp_reconnects_total",
        C,
        &["connection"],
        "every role",
        "RabbitMQ reconnections.",
    ),
    m(
        "wxpipe_amqp_settle_failures_total",
        C,
        &["what"],
        "decrypt, business",
        "Acks, nacks or rejects the broker did not take (the delivery comes back).",
    ),
    m(
        "wxpipe_amqp_unroutable_total",
        C,
        &["exchange"],
        "every role that publishes",
        "Mandatory publishes the broker returned as unroutable.",
    ),
    m(
        "wxpipe_auth_codes_total",
        C,
        &["outcome"],
        "business",
        "Authorization codes exchanged (`ok`, `duplicate`, `invalid`, …).",
    ),
    m(
        "wxpipe_auth_pages_total",
        C,
        &["outcome"],
        "ingress",
        "Authorization pages served (`started`, `callback`, `bad_state`, `rate_limited`, `error`).",
    ),
    m(
        "wxpipe_authorizations_total",
        C,
        &[],
        "business",
        "`authorized` and `updateauthorized` events handled.",
    ),
    m(
        "wxpipe_authorizer_token_expires_in_min_seconds",
        G,
        &[],
        "scheduler",
        "The soonest expiry among the active accounts' tokens, seconds from now.",
    ),
    m(
        "wxpipe_authorizers",
        G,
        &["status"],
        "scheduler",
        "Accounts by status (`active`, `revoked`, `refresh_failing`).",
    ),
    m(
        "wxpipe_business_events_total",
        C,
        &["type", "outcome"],
        "business",
        "Platform events handled, by event type and outcome.",
    ),
    m(
        "wxpipe_component_token_expires_in_seconds",
        G,
        &[],
        "scheduler",
        "Seconds until the component token expires (negative or absent: none).",
    ),
    m(
        "wxpipe_dead_letters_total",
        C,
        &["queue", "reason"],
        "decrypt, business",
        "Messages dead-lettered, by queue and reason.",
    ),
    m(
        "wxpipe_decrypt_mark_done_failures_total",
        C,
        &[],
        "decrypt",
        "Pushes published whose dedup state could not be marked done (a retry may publish again; the event id dedupes).",
    ),
    m(
        "wxpipe_decrypt_messages_total",
        C,
        &["outcome"],
        "decrypt",
        "Raw pushes handled (`published`, `duplicate`, `bad_signature`, …).",
    ),
    m(
        "wxpipe_gateway_call_seconds",
        H,
        &["team"],
        "gateway",
        "Duration of a gateway call, WeChat's answer included.",
    ),
    m(
        "wxpipe_gateway_calls_total",
        C,
        &["team", "path", "outcome"],
        "gateway",
        "Gateway calls by team, the key's path pattern and outcome (`ok`, WeChat's errcode, or the refusal).",
    ),
    m(
        "wxpipe_gateway_connections",
        G,
        &[],
        "gateway",
        "Open connections of the gateway's listener.",
    ),
    m(
        "wxpipe_gateway_refused_connections_total",
        C,
        &["reason"],
        "gateway",
        "Gateway connections closed at once (`per_client`).",
    ),
    m(
        "wxpipe_gateway_retries_total",
        C,
        &["team", "reason"],
        "gateway",
        "Gateway calls retried (`refused_token`, `busy`).",
    ),
    m(
        "wxpipe_gateway_timeouts_total",
        C,
        &["what"],
        "gateway",
        "Gateway connections closed for a timeout (`header`, `write`).",
    ),
    m(
        "wxpipe_handler_panics_total",
        C,
        &[],
        "decrypt, business",
        "Message handlers that panicked (the delivery is dead-lettered).",
    ),
    m(
        "wxpipe_ingress_connections",
        G,
        &[],
        "ingress",
        "Open connections of the ingress.",
    ),
    m(
        "wxpipe_ingress_late_replies_total",
        C,
        &[],
        "ingress",
        "Passive replies that arrived after their push was answered.",
    ),
    m(
        "wxpipe_ingress_publish_seconds",
        H,
        &["route"],
        "ingress",
        "From a push's arrival to the broker's confirm.",
    ),
    m(
        "wxpipe_ingress_pushes_total",
        C,
        &["route", "outcome"],
        "ingress",
        "Pushes answered, by route (`component`, `authorizer`) and outcome.",
    ),
    m(
        "wxpipe_ingress_refused_connections_total",
        C,
        &["reason"],
        "ingress",
        "Ingress connections closed at once (`per_client`).",
    ),
    m(
        "wxpipe_ingress_reply_fallbacks_total",
        C,
        &["reason"],
        "ingress",
        "Sync-reply pushes answered `success` without a reply (`timeout`, `unavailable`, …).",
    ),
    m(
        "wxpipe_ingress_reply_timeouts_total",
        C,
        &[],
        "ingress",
        "Sync-reply pushes whose reply did not come in time.",
    ),
    m(
        "wxpipe_ingress_reply_waiters",
        G,
        &[],
        "ingress",
        "Pushes waiting for a passive reply now.",
    ),
    m(
        "wxpipe_ingress_timeouts_total",
        C,
        &["what"],
        "ingress",
        "Ingress connections closed for a timeout (`header`, `write`).",
    ),
    m(
        "wxpipe_jssdk_signatures_total",
        C,
        &["team"],
        "gateway",
        "`wx.config` signatures made, by team.",
    ),
    m(
        "wxpipe_profile_refreshes_total",
        C,
        &["outcome"],
        "scheduler",
        "Account profiles fetched again by the daily sync.",
    ),
    m(
        "wxpipe_push_to_event_seconds",
        H,
        &[],
        "decrypt",
        "From a push's arrival at the ingress to its event's publish.",
    ),
    m(
        "wxpipe_queue_consumers",
        G,
        &["queue"],
        "scheduler",
        "Consumers of each of the platform's queues.",
    ),
    m(
        "wxpipe_queue_messages",
        G,
        &["queue"],
        "scheduler",
        "Messages ready in each of the platform's queues.",
    ),
    m(
        "wxpipe_redis_bad_values_total",
        C,
        &["key"],
        "every role",
        "Values read from Redis that could not be parsed (ignored).",
    ),
    m(
        "wxpipe_redis_unreplicated_writes_total",
        C,
        &["what"],
        "every role that writes tokens",
        "Writes no replica confirmed in time (with replicas: the master could lose them).",
    ),
    m(
        "wxpipe_redis_write_retries_total",
        C,
        &["what"],
        "every role that writes tokens",
        "Writes retried while Redis was unavailable.",
    ),
    m(
        "wxpipe_release_accounts",
        G,
        &["state"],
        "scheduler",
        "Accounts of the open release jobs by state (`pending`, `committed`, `audit_submitted`, …).",
    ),
    m(
        "wxpipe_release_audit_events_total",
        C,
        &["event", "outcome"],
        "releases",
        "Audit results pushed by WeChat (`weapp_audit_*`) by outcome (`stored`, `retry`, `dead`).",
    ),
    m(
        "wxpipe_release_audit_polls_total",
        C,
        &[],
        "releases",
        "Audit statuses read with `wxa/get_auditstatus` because no push had come.",
    ),
    m(
        "wxpipe_release_audit_results_total",
        C,
        &["source"],
        "releases",
        "Audit results applied to a release account, by where they came from (`pushed`, `polled`).",
    ),
    m(
        "wxpipe_release_calls_unanswered_total",
        C,
        &[],
        "releases",
        "Release calls (commit, submit, release, undo) with no answer: read back from WeChat later.",
    ),
    m(
        "wxpipe_release_events_total",
        C,
        &["outcome"],
        "releases",
        "`release.*` events published from the jobs' outboxes (`published`, `malformed`).",
    ),
    m(
        "wxpipe_release_jobs",
        G,
        &["status"],
        "scheduler",
        "Open release jobs by status (`running`, `paused`).",
    ),
    m(
        "wxpipe_release_jobs_total",
        C,
        &["outcome"],
        "scheduler, releases",
        "Release jobs `created`, `finished`, or `paused_failures` (paused by their stop_when_failed_over ratio).",
    ),
    m(
        "wxpipe_release_overdue_accounts",
        G,
        &[],
        "scheduler",
        "Accounts of running release jobs due for over 5 minutes: no releases replica works on them.",
    ),
    m(
        "wxpipe_release_reconciled_total",
        C,
        &[],
        "releases",
        "Release calls left without an outcome (a replica died, no answer) and read back from WeChat.",
    ),
    m(
        "wxpipe_release_step_errors_total",
        C,
        &[],
        "releases",
        "Release steps that failed (Redis unavailable); tried again later.",
    ),
    m(
        "wxpipe_release_transitions_total",
        C,
        &["state"],
        "releases",
        "Release accounts moved by the releases role, by the state they moved to.",
    ),
    m(
        "wxpipe_retries_total",
        C,
        &["what", "reason"],
        "decrypt, business",
        "Transient failures retried before a message is settled.",
    ),
    m(
        "wxpipe_scheduler_buckets_held",
        G,
        &[],
        "scheduler",
        "Buckets of accounts this replica holds.",
    ),
    m(
        "wxpipe_scheduler_errors_total",
        C,
        &[],
        "scheduler",
        "Scheduler ticks that failed.",
    ),
    m(
        "wxpipe_scheduler_replicas",
        G,
        &[],
        "scheduler",
        "Live scheduler replicas.",
    ),
    m(
        "wxpipe_ticket_age_seconds",
        G,
        &[],
        "scheduler",
        "Age of the component_verify_ticket.",
    ),
    m(
        "wxpipe_ticket_present",
        G,
        &[],
        "scheduler",
        "1 when a component_verify_ticket is stored.",
    ),
    m(
        "wxpipe_ticket_refreshes_total",
        C,
        &["kind", "outcome"],
        "scheduler, gateway",
        "JS-SDK ticket fetches (`jsapi`, `wx_card`) by outcome (`ok`, WeChat's errcode, `lost_lock`, …).",
    ),
    m(
        "wxpipe_tickets_stored_total",
        C,
        &[],
        "business",
        "component_verify_tickets stored.",
    ),
    m(
        "wxpipe_token_invalidations_total",
        C,
        &["kind"],
        "scheduler, gateway, business",
        "Tokens compare-and-invalidated after WeChat refused them.",
    ),
    m(
        "wxpipe_token_refreshes_total",
        C,
        &["kind", "outcome"],
        "scheduler, gateway, business",
        "Token refreshes (`component`, `authorizer`) by outcome.",
    ),
    m(
        "wxpipe_web_logins_total",
        C,
        &["outcome"],
        "ingress, gateway",
        "Web logins (`started`, `completed`, `denied`, `bad_return_to`, `bad_state`, …; `redeemed`, `redeem_refused`).",
    ),
    m(
        "wxpipe_wechat_call_seconds",
        H,
        &["api"],
        "every role that calls WeChat",
        "Duration of a call to WeChat's API.",
    ),
    m(
        "wxpipe_wechat_calls_skipped_total",
        C,
        &["api", "reason"],
        "every role that calls WeChat",
        "Calls not made because the API's daily quota is known to be used up.",
    ),
    m(
        "wxpipe_wechat_calls_total",
        C,
        &["api", "outcome"],
        "every role that calls WeChat",
        "Calls to WeChat's API by outcome (`ok` or the errcode).",
    ),
    m(
        "wxpipe_wechat_quota_exhausted_total",
        C,
        &["api"],
        "every role that calls WeChat",
        "45009 answers: an API's daily quota used up.",
    ),
    m(
        "wxpipe_wechat_retries_total",
        C,
        &["errcode"],
        "every role that calls WeChat",
        "Calls to WeChat retried (-1, 45011, unreachable).",
    ),
];

/// Gives the recorder every metric's help text (`# HELP` at `/metrics`).
pub fn describe() {
    for x in METRICS {
        match x.kind {
            Kind::Counter => metrics::describe_counter!(x.name, x.help),
            Kind::Gauge => metrics::describe_gauge!(x.name, x.help),
            Kind::Histogram => metrics::describe_histogram!(x.name, x.help),
        }
    }
}

/// The catalog as a Markdown table.
pub fn markdown() -> String {
    let mut out =
        String::from("| metric | type | labels | recorded by | meaning |\n|---|---|---|---|---|\n");
    for x in METRICS {
        let labels = if x.labels.is_empty() {
            "—".to_owned()
        } else {
            x.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {labels} | {} | {} |\n",
            x.name,
            x.kind.as_str(),
            x.from,
            x.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_sorted_unique_and_prometheus_shaped() {
        let names: Vec<&str> = super::METRICS.iter().map(|m| m.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted and unique");
        for m in super::METRICS {
            assert!(m.name.starts_with("wxpipe_"), "{}", m.name);
            assert_eq!(
                m.kind == super::Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
        }
    }
}
