//! The business handlers, by event type. Handlers are registered by the roles that own them
//! (tokens and authorization, the full-network test); an event nobody handles is acked and
//! counted.

use common::event::CloudEvent;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (WeChat busy, Redis down, …).
    #[error("{reason}: {detail}")]
    Transient {
        reason: &'static str,
        detail: String,
    },
    /// Will fail the same way every time: dead-letter it.
    #[error("{reason}: {detail}")]
    Permanent {
        reason: &'static str,
        detail: String,
    },
}

/// One business handler.
pub trait EventHandler: Send + Sync {
    fn handle<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Handlers by CloudEvent `type` (e.g. `wechat.component.component_verify_ticket`).
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn EventHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for events of `event_type`, replacing any earlier one.
    pub fn register(&mut self, event_type: impl Into<String>, handler: Arc<dyn EventHandler>) {
        self.handlers.insert(event_type.into(), handler);
    }

    pub fn get(&self, event_type: &str) -> Option<&Arc<dyn EventHandler>> {
        self.handlers.get(event_type)
    }

    /// The registered event types, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }
}
