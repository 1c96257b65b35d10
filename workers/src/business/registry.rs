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
    /// Handlers of every type starting with a prefix (`wechat.authorizer.`), longest first.
    prefixes: Vec<(String, Arc<dyn EventHandler>)>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for events of `event_type`, replacing any earlier one.
    pub fn register(&mut self, event_type: impl Into<String>, handler: Arc<dyn EventHandler>) {
        self.handlers.insert(event_type.into(), handler);
    }

    /// Registers `handler` for every event type starting with `prefix` (exact registrations
    /// win).
    pub fn register_prefix(&mut self, prefix: impl Into<String>, handler: Arc<dyn EventHandler>) {
        self.prefixes.push((prefix.into(), handler));
        self.prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    pub fn get(&self, event_type: &str) -> Option<&Arc<dyn EventHandler>> {
        self.handlers.get(event_type).or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| event_type.starts_with(p.as_str()))
                .map(|(_, h)| h)
        })
    }

    /// The registered event types, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self
            .handlers
            .keys()
            .map(String::as_str)
            .chain(self.prefixes.iter().map(|(p, _)| p.as_str()))
            .collect();
        t.sort_unstable();
        t
    }
}
