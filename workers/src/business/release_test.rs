//! The full-network release test (全网发布接入检测, protocol.md §5), through the general
//! mechanisms: the test accounts' pushes arrive as events with a `reply_to` (the ingress waits
//! on RabbitMQ's direct reply-to), and this handler answers them by publishing the plaintext
//! reply there.
//!
//! * text `TESTCOMPONENT_MSG_TYPE_TEXT` → passive reply `TESTCOMPONENT_MSG_TYPE_TEXT_callback`;
//! * text `QUERY_AUTH_CODE:<code>` → empty reply at once, then `api_query_auth` with the code
//!   and the customer-service text `<code>_from_api` to the sender, with the account's token;
//! * any event → passive reply `<Event>from_callback`;
//! * anything else from a test account → empty reply (no passive reply).

use super::registry::{EventHandler, HandlerError};
use common::amqp::ConfirmedPublisher;
use common::event::CloudEvent;
use common::token::{TokenError, TokenService};
use common::xml::reply::text_reply_xml;
use futures::future::BoxFuture;
use std::sync::Arc;

pub struct ReleaseTest {
    pub tokens: Arc<TokenService>,
    pub replies: ConfirmedPublisher,
}

fn text<'a>(event: &'a CloudEvent, name: &str) -> &'a str {
    event
        .data
        .get(name)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient {
        reason: "release_test",
        detail: e.to_string(),
    }
}

impl ReleaseTest {
    /// Publishes `body` (a plaintext reply, or empty) to the waiting ingress, if one waits.
    async fn reply(&self, event: &CloudEvent, body: &str) -> Result<(), HandlerError> {
        let (Some(reply_to), Some(id)) = (&event.reply_to, &event.correlation_id) else {
            return Ok(()); // nobody waits (not a sync-reply appid, or a replay)
        };
        let props = lapin::BasicProperties::default().with_correlation_id(id.as_str().into());
        // A late reply finds nobody and is dropped by the broker; that is fine.
        self.replies
            .publish_routed(
                "",
                reply_to,
                body.as_bytes(),
                props,
                common::amqp::publisher::Routing::AnyQueues,
            )
            .await
            .map_err(transient)
    }

    async fn query_auth_code(
        &self,
        event: &CloudEvent,
        appid: &common::ids::AppId,
        code: &str,
    ) -> Result<(), HandlerError> {
        self.reply(event, "").await?;
        let exchanged =
            self.tokens
                .exchange_code(code, Some(appid))
                .await
                .map_err(|e| match e {
                    TokenError::Wechat(w) if !w.is_transient() => HandlerError::Permanent {
                        reason: "release_test",
                        detail: w.to_string(),
                    },
                    other => transient(other),
                })?;
        let token = self
            .tokens
            .authorizer_token(&exchanged)
            .await
            .map_err(transient)?;
        self.tokens
            .client
            .send_custom_text(
                token.access_token.expose(),
                text(event, "FromUserName"),
                &format!("{code}_from_api"),
            )
            .await
            .map_err(transient)?;
        tracing::info!(
            appid = %appid,
            "full-network test: QUERY_AUTH_CODE answered through the customer-service API"
        );
        Ok(())
    }
}

impl EventHandler for ReleaseTest {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let appid = event
                .source
                .strip_prefix("/wechat/authorizers/")
                .unwrap_or_default();
            if !common::wechat::is_release_test_appid(appid) {
                return Ok(());
            }
            let Ok(appid) = appid.parse::<common::ids::AppId>() else {
                return Ok(());
            };
            let (openid, gh) = (text(event, "FromUserName"), text(event, "ToUserName"));
            let now = common::unix_now();
            let content = text(event, "Content");
            match text(event, "MsgType") {
                "text" if content == "TESTCOMPONENT_MSG_TYPE_TEXT" => {
                    self.reply(
                        event,
                        &text_reply_xml(openid, gh, now, "TESTCOMPONENT_MSG_TYPE_TEXT_callback"),
                    )
                    .await
                }
                "text" if content.starts_with("QUERY_AUTH_CODE:") => {
                    let code = content.trim_start_matches("QUERY_AUTH_CODE:").trim();
                    self.query_auth_code(event, &appid, code).await
                }
                "event" => {
                    let reply = format!("{}from_callback", text(event, "Event"));
                    self.reply(event, &text_reply_xml(openid, gh, now, &reply))
                        .await
                }
                _ => self.reply(event, "").await,
            }
        })
    }
}
