//! The HTTP surface: WeChat's two push URLs, the authorization pages, web login on behalf of
//! accounts, health and metrics.

pub mod auth;
pub mod auth_page;
mod health;
pub mod oauth;
mod push;

use crate::state::SharedState;
use axum::Router;
use axum::routing::get;

/// Every route of the ingress.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route(
            "/wechat/component",
            get(push::verify_component_url).post(push::component_push),
        )
        .route(
            "/wechat/authorizers/{appid}",
            get(push::verify_authorizer_url).post(push::authorizer_push),
        )
        .route("/auth", get(auth::entry))
        .route("/auth/start", get(auth::start_pc))
        .route("/auth/start/mobile", get(auth::start_mobile))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/done", get(auth::done))
        .route("/oauth/{appid}/start", get(oauth::start))
        .route("/oauth/callback", get(oauth::callback))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
