//! What happened to one request: its HTTP answer and its metric label, in one place, so that
//! every outcome is counted and none is answered without being counted.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The fate of one push (or URL verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Published and confirmed by the broker: answered `success`.
    Accepted,
    /// Published, confirmed, and answered with a passive reply produced downstream.
    Replied,
    /// `echostr` URL verification passed.
    Verified,
    /// Missing or malformed query parameters.
    BadQuery,
    /// `timestamp` outside the freshness window.
    Stale,
    /// Signature mismatch.
    BadSignature,
    /// Body larger than the limit.
    TooLarge,
    /// The body did not arrive within `WXPIPE_BODY_TIMEOUT_MS`.
    SlowBody,
    /// Empty, non-UTF-8 or non-XML body, DOCTYPE or entities, no `Encrypt`.
    Malformed,
    /// The broker is unreachable, nacked, or did not confirm in time.
    BrokerUnavailable,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Replied => "replied",
            Outcome::Verified => "verified",
            Outcome::BadQuery => "bad_query",
            Outcome::Stale => "stale",
            Outcome::BadSignature => "bad_signature",
            Outcome::TooLarge => "too_large",
            Outcome::SlowBody => "slow_body",
            Outcome::Malformed => "malformed",
            Outcome::BrokerUnavailable => "broker_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted | Outcome::Replied | Outcome::Verified => StatusCode::OK,
            Outcome::BadQuery | Outcome::Stale | Outcome::Malformed => StatusCode::BAD_REQUEST,
            Outcome::BadSignature => StatusCode::UNAUTHORIZED,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Outcome::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Counts this outcome for `route` and builds the answer with a one-line `detail`.
    pub fn respond(self, route: &'static str, detail: impl Into<String>) -> Response {
        metrics::counter!("wxpipe_ingress_pushes_total", "route" => route, "outcome" => self.label())
            .increment(1);
        let mut detail = detail.into();
        if self.status().is_client_error() || self.status().is_server_error() {
            tracing::debug!(route, outcome = self.label(), %detail, "push refused");
            detail.push('\n');
        }
        (
            self.status(),
            [("content-type", "text/plain; charset=utf-8")],
            detail,
        )
            .into_response()
    }
}
