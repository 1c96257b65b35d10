//! The local clusters `scripts/cluster up` starts (a 3-node RabbitMQ cluster, a Redis Cluster,
//! Redis with Sentinel), as the scale tests find them: through `target/cluster/env` (or
//! `$WXPIPE_CLUSTER_DIR/env`). Without it a cluster test is skipped, saying why — unless
//! `WXPIPE_REQUIRE_CLUSTERS=1` (set by `scripts/test` once it has started them), when a missing
//! cluster fails the test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// The clusters' addresses.
#[derive(Debug, Clone)]
pub struct Clusters {
    /// The three RabbitMQ nodes, comma-separated, as `WXPIPE_AMQP_URL` takes them.
    pub amqp_url: String,
    /// The Redis Cluster's seed nodes, as `WXPIPE_REDIS_URL` takes them.
    pub redis_cluster_url: String,
    /// The Sentinels and the master name, as `WXPIPE_REDIS_URL` takes them.
    pub sentinel_url: String,
    pub dir: PathBuf,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

impl Clusters {
    /// The clusters if `scripts/cluster up` ran; otherwise `None` after printing why the caller
    /// skips (or a panic when `WXPIPE_REQUIRE_CLUSTERS=1`).
    pub fn find(test: &str) -> Option<Self> {
        let dir = std::env::var_os("WXPIPE_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/cluster"));
        let file = dir.join("env");
        let Ok(text) = std::fs::read_to_string(&file) else {
            let why = format!(
                "{test}: skipped, no local clusters ({} is missing; `scripts/cluster up` starts them)",
                file.display()
            );
            assert!(
                std::env::var("WXPIPE_REQUIRE_CLUSTERS").as_deref() != Ok("1"),
                "{why}, but WXPIPE_REQUIRE_CLUSTERS=1"
            );
            eprintln!("{why}");
            return None;
        };
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| panic!("{} has no {k}", file.display()))
        };
        Some(Self {
            amqp_url: get("WXPIPE_CLUSTER_AMQP_URL"),
            redis_cluster_url: get("WXPIPE_CLUSTER_REDIS_URL"),
            sentinel_url: get("WXPIPE_SENTINEL_REDIS_URL"),
            dir,
        })
    }

    /// The RabbitMQ nodes' URLs.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.amqp_url.split(',').map(str::to_owned).collect()
    }

    fn script(&self, args: &[&str]) {
        let (ok, out) = crate::run_tool({
            let mut c = Command::new(workspace().join("scripts/cluster"));
            c.args(args).env("WXPIPE_CLUSTER_DIR", &self.dir);
            c
        });
        assert!(ok, "scripts/cluster {args:?} failed: {out}");
    }

    /// SIGKILLs RabbitMQ node `n` (1-3).
    pub fn kill_rabbit(&self, n: u8) {
        self.script(&["kill-rabbit", &n.to_string()]);
    }

    /// Starts RabbitMQ node `n` again and waits until it runs (it rejoins the cluster).
    pub fn start_rabbit(&self, n: u8) {
        self.script(&["start-rabbit", &n.to_string()]);
    }

    /// Freezes RabbitMQ node `n` (SIGSTOP): its peers see a partition.
    pub fn freeze_rabbit(&self, n: u8) {
        self.script(&["freeze-rabbit", &n.to_string()]);
    }

    /// Resumes a frozen RabbitMQ node `n` (SIGCONT).
    pub fn thaw_rabbit(&self, n: u8) {
        self.script(&["thaw-rabbit", &n.to_string()]);
    }

    /// SIGKILLs the Redis process on `port`.
    pub fn kill_redis(&self, port: u16) {
        self.script(&["kill-redis", &port.to_string()]);
    }

    /// Starts the Redis process on `port` again (a cluster node rejoins as a replica).
    pub fn start_redis(&self, port: u16) {
        self.script(&["start-redis", &port.to_string()]);
    }

    /// The Redis Cluster's data nodes.
    pub const REDIS_CLUSTER_PORTS: [u16; 6] = [7001, 7002, 7003, 7004, 7005, 7006];

    /// The ports of the Redis Cluster's current masters, asked of any node that answers.
    pub async fn redis_masters(&self) -> Vec<u16> {
        for port in Self::REDIS_CLUSTER_PORTS {
            let Ok(client) =
                deadpool_redis::redis::Client::open(format!("redis://127.0.0.1:{port}"))
            else {
                continue;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let Ok(nodes) = deadpool_redis::redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
            else {
                continue;
            };
            return nodes
                .lines()
                .filter(|l| {
                    let flags = l.split_whitespace().nth(2).unwrap_or_default();
                    flags.contains("master") && !flags.contains("fail")
                })
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|addr| addr.split('@').next()?.rsplit(':').next()?.parse().ok())
                .collect();
        }
        Vec::new()
    }

    /// Deletes the keys starting with `prefix` from the Redis Cluster and from Sentinel's
    /// master when the guard is dropped: at the end of the test, and when it panics.
    pub fn delete_keys_on_drop(&self, prefix: &str) -> KeysGuard {
        KeysGuard {
            redis_cluster_url: self.redis_cluster_url.clone(),
            sentinel_url: self.sentinel_url.clone(),
            prefix: prefix.to_owned(),
        }
    }

    /// `rabbitmqctl` on node `n` of the cluster, with the cluster's cookie.
    pub fn rabbitmqctl(&self, n: u8, args: &[&str]) -> (bool, String) {
        self.rabbitmq_tool("rabbitmqctl", n, args)
    }

    /// `rabbitmq-queues` on node `n` of the cluster (leader placement, rebalancing).
    pub fn rabbitmq_queues(&self, n: u8, args: &[&str]) -> (bool, String) {
        self.rabbitmq_tool("rabbitmq-queues", n, args)
    }

    fn rabbitmq_tool(&self, tool: &str, n: u8, args: &[&str]) -> (bool, String) {
        let home = self.dir.join(format!("rabbit-{n}"));
        let mut c = Command::new(format!("/usr/lib/rabbitmq/bin/{tool}"));
        c.env("HOME", &home)
            .args(["-n", &format!("wxpipe-c{n}@localhost")])
            .args(args);
        crate::run_tool(c)
    }
}

/// Deletes every key starting with `prefix` from the Redis Cluster at `url` (each node
/// scanned, each key deleted where it lives).
pub async fn delete_cluster_keys(url: &str, prefix: &str) {
    let mut keys: Vec<String> = Vec::new();
    for port in Clusters::REDIS_CLUSTER_PORTS {
        let Ok(client) = deadpool_redis::redis::Client::open(format!("redis://127.0.0.1:{port}"))
        else {
            continue;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        // A node that fails mid-scan keeps what it listed; the others are scanned still.
        let _ = crate::broker::scan_keys(&mut c, prefix, &mut keys).await;
    }
    keys.sort_unstable();
    keys.dedup();
    let Ok(pool) = common::redis::pool(url) else {
        return;
    };
    let Ok(mut c) = pool.get().await else {
        return;
    };
    for batch in keys.chunks(500) {
        let mut p = deadpool_redis::redis::pipe();
        for k in batch {
            p.cmd("DEL").arg(k).ignore();
        }
        let _ = p.query_async::<()>(&mut c).await;
    }
}

/// See [`Clusters::delete_keys_on_drop`].
pub struct KeysGuard {
    redis_cluster_url: String,
    sentinel_url: String,
    prefix: String,
}

impl Drop for KeysGuard {
    fn drop(&mut self) {
        let (cluster, sentinel, prefix) = (
            self.redis_cluster_url.clone(),
            self.sentinel_url.clone(),
            self.prefix.clone(),
        );
        crate::broker::on_own_runtime(async move {
            delete_cluster_keys(&cluster, &prefix).await;
            if let Err(e) = crate::broker::delete_redis_keys_at(&sentinel, &prefix).await {
                eprintln!("cleanup of {prefix}* on Sentinel's master failed: {e}");
            }
        });
    }
}
