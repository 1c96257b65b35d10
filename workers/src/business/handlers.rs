//! The platform's own business handlers (protocol.md §3): the ticket, authorizations (from the
//! push or from `/auth/callback`, exchanged exactly once), revocations and fast registrations.

use super::registry::{EventHandler, HandlerError, Registry};
use common::event::{CloudEvent, component_event_type};
use common::ids::AppId;
use common::token::{TokenError, TokenService};
use common::wire::auth_callback::{self, AuthCallback};
use common::xml::push::info_type;
use futures::future::BoxFuture;
use std::sync::Arc;

fn field<'a>(event: &'a CloudEvent, name: &'static str) -> Result<&'a str, HandlerError> {
    event
        .data
        .get(name)
        .and_then(|v| v.as_str())
        .filter(|v| !v.trim().is_empty())
        .ok_or(HandlerError::Permanent {
            reason: "missing_field",
            detail: format!("{} has no {name}", event.event_type),
        })
}

/// An appid field of an event, parsed: a malformed one is permanent (it never gets better).
fn appid_field(event: &CloudEvent, name: &'static str) -> Result<AppId, HandlerError> {
    field(event, name)?
        .trim()
        .parse()
        .map_err(|e: common::ids::IdError| HandlerError::Permanent {
            reason: "bad_appid",
            detail: format!("{} has {name} that is not an appid: {e}", event.event_type),
        })
}

fn classify(e: TokenError) -> HandlerError {
    match &e {
        TokenError::Redis(_) | TokenError::NoTicket | TokenError::Busy(_) => {
            HandlerError::Transient {
                reason: "not_ready",
                detail: e.to_string(),
            }
        }
        TokenError::Wechat(w) if w.is_transient() => HandlerError::Transient {
            reason: "wechat_unavailable",
            detail: e.to_string(),
        },
        // An invalid token was already retried once inside the token service; try later.
        TokenError::Wechat(w) if w.class() == common::wechat::ErrorClass::InvalidToken => {
            HandlerError::Transient {
                reason: "token_refused",
                detail: e.to_string(),
            }
        }
        _ => HandlerError::Permanent {
            reason: "wechat_refused",
            detail: e.to_string(),
        },
    }
}

struct Ticket(Arc<TokenService>);
impl EventHandler for Ticket {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let ticket = field(event, "ComponentVerifyTicket")?;
            self.0
                .store
                .save_ticket(ticket)
                .await
                .map_err(|e| classify(e.into()))?;
            tracing::info!("component_verify_ticket stored");
            metrics::counter!("wxpipe_tickets_stored_total").increment(1);
            Ok(())
        })
    }
}

/// `authorized` and `updateauthorized`: exchange `AuthorizationCode`.
struct Authorized(Arc<TokenService>);
impl EventHandler for Authorized {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let code = field(event, "AuthorizationCode")?;
            let appid = appid_field(event, "AuthorizerAppid").ok();
            self.0
                .exchange_code(code, appid.as_ref())
                .await
                .map_err(classify)?;
            Ok(())
        })
    }
}

/// `/auth/callback`: the same code, from the browser's redirect.
struct AuthCallbackHandler(Arc<TokenService>);
impl EventHandler for AuthCallbackHandler {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let callback = AuthCallback::from_event(event).ok_or(HandlerError::Permanent {
                reason: "missing_field",
                detail: format!("{} has no AuthorizationCode or AppId", event.event_type),
            })?;
            match self.0.exchange_code(&callback.code, None).await {
                Ok(_) => {}
                // A code from a browser that WeChat does not know (or knows as used) is
                // nobody's work to redo: count it, do not dead-letter it. The signed
                // `authorized` push carries every real code anyway.
                Err(TokenError::Wechat(w))
                    if w.class() == common::wechat::ErrorClass::CodeInvalid =>
                {
                    metrics::counter!("wxpipe_auth_codes_total", "outcome" => "invalid")
                        .increment(1);
                    tracing::warn!(error = %w, "an auth code from /auth/callback was refused by WeChat");
                }
                Err(e) => return Err(classify(e)),
            }
            Ok(())
        })
    }
}

struct Unauthorized(Arc<TokenService>);
impl EventHandler for Unauthorized {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let appid = appid_field(event, "AuthorizerAppid")?;
            self.0
                .store
                .revoke(&appid)
                .await
                .map_err(|e| classify(e.into()))?;
            tracing::info!(appid = %appid, "authorization revoked; tokens deleted");
            Ok(())
        })
    }
}

/// `notify_third_fasteregister` with status 0: exchange its `auth_code`.
struct FastRegister(Arc<TokenService>);
impl EventHandler for FastRegister {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if field(event, "status").ok().map(str::trim) != Some("0") {
                tracing::info!(
                    msg = field(event, "msg").unwrap_or(""),
                    "fast registration did not succeed; nothing to exchange"
                );
                return Ok(());
            }
            let code = field(event, "auth_code")?;
            let appid = appid_field(event, "appid").ok();
            self.0
                .exchange_code(code, appid.as_ref())
                .await
                .map_err(classify)?;
            Ok(())
        })
    }
}

/// Registers the token and authorization handlers.
pub fn register(registry: &mut Registry, tokens: Arc<TokenService>) {
    let on = |info: &str| component_event_type(info);
    registry.register(
        on(info_type::COMPONENT_VERIFY_TICKET),
        Arc::new(Ticket(tokens.clone())),
    );
    registry.register(
        on(info_type::AUTHORIZED),
        Arc::new(Authorized(tokens.clone())),
    );
    registry.register(
        on(info_type::UPDATE_AUTHORIZED),
        Arc::new(Authorized(tokens.clone())),
    );
    registry.register(
        auth_callback::event_type(),
        Arc::new(AuthCallbackHandler(tokens.clone())),
    );
    registry.register(
        on(info_type::UNAUTHORIZED),
        Arc::new(Unauthorized(tokens.clone())),
    );
    registry.register(
        on(info_type::NOTIFY_THIRD_FASTEREGISTER),
        Arc::new(FastRegister(tokens)),
    );
}
