//! Sharded intake (`WXPIPE_RAW_SHARDS`, docs/scaling-out.md).
//!
//! With K = 1 (the default) the intake is today's `{ns}.raw`: a direct exchange and one quorum
//! queue of the same name. With K > 1, `{ns}.raw` is a consistent-hash exchange (the
//! `rabbitmq_consistent_hash_exchange` plugin) that hashes each push's
//! [`H_SHARD`](crate::wire::raw::H_SHARD) header — the authorizer's appid, or `component` for the
//! platform's own pushes — onto K quorum queues `{ns}.raw.0 … {ns}.raw.{K-1}`, each bound with
//! weight 1 and placed by the broker's `balanced` leader locator. Every push of one account thus
//! lands in one shard, in the order the ingress published it, and each shard has its own leader
//! (its own core, on a cluster its own node).

use crate::ids::Namespace;
use std::fmt;

/// The largest K accepted: more shards than this only add queues to watch.
pub const MAX_SHARDS: u16 = 64;

/// How many quorum queues the intake is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawShards(u16);

/// Why a shard setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("must be between 1 and {MAX_SHARDS}")]
    Count,
    #[error("{0:?} is not a shard number below {1}")]
    NotAShard(String, u16),
    #[error("names no shard")]
    Empty,
}

impl Default for RawShards {
    fn default() -> Self {
        Self::ONE
    }
}

impl RawShards {
    /// One queue, named as before sharding existed.
    pub const ONE: RawShards = RawShards(1);

    pub fn new(count: u16) -> Result<Self, ShardError> {
        if (1..=MAX_SHARDS).contains(&count) {
            Ok(Self(count))
        } else {
            Err(ShardError::Count)
        }
    }

    pub fn count(self) -> u16 {
        self.0
    }

    /// Whether `{ns}.raw` is a consistent-hash exchange over several queues.
    pub fn is_sharded(self) -> bool {
        self.0 > 1
    }

    /// The queue of shard `i` (`{ns}.raw` when not sharded).
    pub fn queue(self, ns: &Namespace, i: u16) -> String {
        if self.is_sharded() {
            format!("{}.{i}", ns.raw())
        } else {
            ns.raw()
        }
    }

    /// Every intake queue, shard 0 first.
    pub fn queues(self, ns: &Namespace) -> Vec<String> {
        (0..self.0).map(|i| self.queue(ns, i)).collect()
    }

    /// The shards a consumer takes: every one (`None` or `*`), or a comma-separated list such as
    /// `0,2`.
    pub fn select(self, spec: Option<&str>) -> Result<Vec<u16>, ShardError> {
        let spec = spec.map(str::trim).unwrap_or("*");
        if spec.is_empty() || spec == "*" {
            return Ok((0..self.0).collect());
        }
        let mut out = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let i: u16 = part
                .parse()
                .ok()
                .filter(|i| *i < self.0)
                .ok_or_else(|| ShardError::NotAShard(part.to_owned(), self.0))?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        if out.is_empty() {
            return Err(ShardError::Empty);
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl fmt::Display for RawShards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_old_name() {
        let ns: Namespace = "wxpipe".parse().unwrap();
        assert_eq!(RawShards::ONE.queues(&ns), ["wxpipe.raw"]);
        let three = RawShards::new(3).unwrap();
        assert_eq!(
            three.queues(&ns),
            ["wxpipe.raw.0", "wxpipe.raw.1", "wxpipe.raw.2"]
        );
        assert_eq!(RawShards::new(0), Err(ShardError::Count));
        assert_eq!(RawShards::new(MAX_SHARDS + 1), Err(ShardError::Count));
    }

    #[test]
    fn subsets() {
        let k = RawShards::new(4).unwrap();
        assert_eq!(k.select(None).unwrap(), [0, 1, 2, 3]);
        assert_eq!(k.select(Some("*")).unwrap(), [0, 1, 2, 3]);
        assert_eq!(k.select(Some("2, 0,2")).unwrap(), [0, 2]);
        assert!(matches!(
            k.select(Some("4")),
            Err(ShardError::NotAShard(..))
        ));
        assert!(matches!(
            k.select(Some("x")),
            Err(ShardError::NotAShard(..))
        ));
        assert_eq!(k.select(Some(",")), Err(ShardError::Empty));
    }
}
