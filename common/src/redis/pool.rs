//! One pool type for the three ways Redis is deployed, chosen by `WXPIPE_REDIS_URL`:
//!
//! | URL | deployment |
//! |---|---|
//! | `redis://[user:pass@]host:port[/db]` (`rediss://` for TLS) | one server (or a proxy) |
//! | `redis-cluster://[user:pass@]host:port,host:port,…` | Redis Cluster: any seed nodes |
//! | `redis-sentinel://[user:pass@]host:port,host:port,…/master-name[/db]` | Sentinel: the Sentinels and the monitored master's name |
//!
//! The credentials are those of the data nodes (Sentinels are asked without). Every caller
//! gets a [`Connection`] that runs commands, pipelines and scripts alike; on a cluster each
//! command goes to the node that owns its key's slot (scripts' keys share a slot by their hash
//! tags, see [`super::Keys`]), and with Sentinel a broken connection is replaced by one to the
//! master Sentinel names now.

use super::RedisError;
use deadpool_redis::redis::{self, aio::ConnectionLike};

/// Where Redis is, parsed from `WXPIPE_REDIS_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Single(String),
    /// Seed node URLs (`redis://…`).
    Cluster(Vec<String>),
    Sentinel {
        /// Sentinel URLs (`redis://host:port`).
        sentinels: Vec<String>,
        master: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(url) => write!(f, "Single({})", crate::config::redact_url(url)),
            Target::Cluster(seeds) => f
                .debug_tuple("Cluster")
                .field(
                    &seeds
                        .iter()
                        .map(|s| crate::config::redact_url(s))
                        .collect::<Vec<_>>(),
                )
                .finish(),
            Target::Sentinel {
                sentinels, master, ..
            } => write!(f, "Sentinel({sentinels:?}, master {master})"),
        }
    }
}

const CLUSTER: &str = "redis-cluster://";
const SENTINEL: &str = "redis-sentinel://";

impl Target {
    /// Parses a `WXPIPE_REDIS_URL`. Errors never repeat the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Self, RedisError> {
        let url = url.trim();
        let bad = |why: &str| RedisError::Config(why.to_owned());
        if let Some(rest) = url.strip_prefix(CLUSTER) {
            let (auth, hosts, path) = split_authority(rest);
            if !path.is_empty() {
                return Err(bad("a redis-cluster:// URL names nodes only (no /path)"));
            }
            let seeds = hosts
                .iter()
                .map(|h| format!("redis://{auth}{h}"))
                .collect::<Vec<_>>();
            if seeds.is_empty() {
                return Err(bad("a redis-cluster:// URL needs at least one host:port"));
            }
            return Ok(Target::Cluster(seeds));
        }
        if let Some(rest) = url.strip_prefix(SENTINEL) {
            let (auth, hosts, path) = split_authority(rest);
            let mut parts = path.split('/').filter(|p| !p.is_empty());
            let master = parts
                .next()
                .ok_or_else(|| bad("a redis-sentinel:// URL ends with /master-name"))?
                .to_owned();
            let db = match parts.next() {
                Some(d) => d
                    .parse()
                    .map_err(|_| bad("the database after the master name is a number"))?,
                None => 0,
            };
            if hosts.is_empty() {
                return Err(bad(
                    "a redis-sentinel:// URL needs at least one Sentinel host:port",
                ));
            }
            let (username, password) = match auth.trim_end_matches('@').split_once(':') {
                Some((u, p)) if !auth.is_empty() => (
                    Some(u.to_owned()).filter(|u| !u.is_empty()),
                    Some(p.to_owned()),
                ),
                _ if !auth.is_empty() => (None, Some(auth.trim_end_matches('@').to_owned())),
                _ => (None, None),
            };
            return Ok(Target::Sentinel {
                sentinels: hosts.iter().map(|h| format!("redis://{h}")).collect(),
                master,
                db,
                username,
                password,
            });
        }
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("redis" | "rediss" | "unix" | "redis+unix") => Ok(Target::Single(url.to_owned())),
            _ => Err(bad(
                "expected redis://, rediss://, redis-cluster:// or redis-sentinel://",
            )),
        }
    }
}

/// `user:pass@h1:p1,h2:p2/path` → (`user:pass@`, [h1:p1, h2:p2], `path`).
fn split_authority(rest: &str) -> (String, Vec<String>, String) {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (auth, hosts) = match authority.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), authority),
    };
    let hosts = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    (auth, hosts, path.to_owned())
}

/// A pool of connections to wherever Redis is. Cheap to clone; nothing connects until used, so
/// a process starts while Redis is down.
#[derive(Clone)]
pub enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pool::Single(_) => "Pool::Single",
            Pool::Cluster(_) => "Pool::Cluster",
            Pool::Sentinel(_) => "Pool::Sentinel",
        })
    }
}

/// One pooled connection of a [`Pool`].
pub enum Connection {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
    Sentinel(SentinelConnection),
}

/// A connection to the master Sentinel named when it was made. After a failover it may lead
/// to a replica (the old master, back again): the first `READONLY` answer marks it, and it is
/// then dropped instead of going back to the pool, so the next one asks Sentinel again.
pub struct SentinelConnection {
    conn: Option<deadpool_redis::sentinel::Connection>,
    stale: bool,
}

impl Drop for SentinelConnection {
    fn drop(&mut self) {
        if self.stale
            && let Some(conn) = self.conn.take()
        {
            tracing::info!("dropping a Redis connection to a former master");
            drop(deadpool_redis::sentinel::Connection::take(conn));
        }
    }
}

/// Whether an answer says the server is a replica now.
fn is_read_only(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY") || e.to_string().contains("READONLY")
}

impl Pool {
    /// A pool for `url` (see the module's table).
    pub fn new(url: &str) -> Result<Self, RedisError> {
        let runtime = deadpool_redis::Runtime::Tokio1;
        let failed = |e: &dyn std::fmt::Display| RedisError::Config(e.to_string());
        Ok(match Target::parse(url)? {
            Target::Single(url) => {
                // `TCP_NODELAY`, which redis-rs leaves off: with Nagle on, a small request
                // written while earlier bytes are unacknowledged can wait for the server's
                // delayed ACK (up to 40 ms on Linux), and a multiplexed connection shared by
                // many tasks writes exactly like that.
                let info =
                    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| failed(&e))?;
                let tcp = info.tcp_settings().clone().set_nodelay(true);
                let manager = deadpool_redis::Manager::new(info.set_tcp_settings(tcp))
                    .map_err(|e| failed(&e))?;
                Pool::Single(
                    deadpool_redis::Pool::builder(manager)
                        .runtime(runtime)
                        .build()
                        .map_err(|e| failed(&e))?,
                )
            }
            Target::Cluster(seeds) => Pool::Cluster(
                deadpool_redis::cluster::Config::from_urls(seeds)
                    .create_pool(Some(runtime))
                    .map_err(|e| failed(&e))?,
            ),
            Target::Sentinel {
                sentinels,
                master,
                db,
                username,
                password,
            } => {
                let node = deadpool_redis::sentinel::SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                        db,
                        username,
                        password,
                        protocol: Default::default(),
                    }),
                };
                Pool::Sentinel(
                    deadpool_redis::sentinel::Config::from_urls(
                        sentinels,
                        master,
                        deadpool_redis::sentinel::SentinelServerType::Master,
                    )
                    .with_node_connection_info(Some(node))
                    .create_pool(Some(runtime))
                    .map_err(|e| failed(&e))?,
                )
            }
        })
    }

    /// A connection, or why none could be had.
    pub async fn get(&self) -> Result<Connection, String> {
        match self {
            Pool::Single(p) => p
                .get()
                .await
                .map(Connection::Single)
                .map_err(|e| e.to_string()),
            Pool::Cluster(p) => p
                .get()
                .await
                .map(Connection::Cluster)
                .map_err(|e| e.to_string()),
            Pool::Sentinel(p) => p
                .get()
                .await
                .map(|conn| {
                    Connection::Sentinel(SentinelConnection {
                        conn: Some(conn),
                        stale: false,
                    })
                })
                .map_err(|e| e.to_string()),
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Pool::Cluster(_))
    }

    /// Whether writes have replicas to wait for (a Redis Cluster or a Sentinel's master).
    pub fn has_replicas(&self) -> bool {
        !matches!(self, Pool::Single(_))
    }
}

/// How long a write waits for a replica (`WAIT 1 <ms>`). Below redis-rs's 500 ms response
/// timeout: at 500 the two raced, and a replica too slow to answer came back as a client-side
/// "timed out" error about as often as Redis's own "0 replicas".
pub const REPLICA_WAIT_MS: u64 = 400;

impl Connection {
    /// With replicas, waits until one replica has every write made on this connection so far
    /// (`WAIT 1`, at most [`REPLICA_WAIT_MS`]; on a cluster every master is asked).
    /// `Ok(false)`: no replica confirmed in time (counted as
    /// `wxpipe_redis_unreplicated_writes_total{what}`); an error: the master is gone, and so may
    /// be the writes. Without replicas, `Ok(true)` at once.
    pub async fn replicated(&mut self, what: &'static str) -> redis::RedisResult<bool> {
        if matches!(self, Connection::Single(_)) {
            return Ok(true);
        }
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT_MS)
            .query_async(self)
            .await?;
        if acked < 1 {
            tracing::debug!(
                what,
                "a write was not confirmed by a replica within {REPLICA_WAIT_MS} ms"
            );
            metrics::counter!("wxpipe_redis_unreplicated_writes_total", "what" => what)
                .increment(1);
        }
        Ok(acked >= 1)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(s) => Box::pin(async move {
                let Some(c) = s.conn.as_mut() else {
                    return Err(redis::RedisError::from(std::io::Error::other(
                        "connection dropped",
                    )));
                };
                let r = c.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    s.stale |= is_read_only(e);
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => {
                if cmd.is_transaction() {
                    return c.req_packed_commands(cmd, offset, count);
                }
                let conn: redis::cluster_async::ClusterConnection = (**c).clone();
                Box::pin(cluster_pipeline(conn, cmd, offset, count))
            }
            Connection::Sentinel(s) => Box::pin(async move {
                let Some(c) = s.conn.as_mut() else {
                    return Err(redis::RedisError::from(std::io::Error::other(
                        "connection dropped",
                    )));
                };
                let r = c.req_packed_commands(cmd, offset, count).await;
                if let Err(e) = &r {
                    s.stale |= is_read_only(e);
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(s) => s.conn.as_ref().map_or(0, |c| c.get_db()),
        }
    }
}

/// A pipeline on a Redis Cluster, whose pipelines must stay within one slot: its commands are
/// grouped by their key's slot (keeping their order within a group), each group sent as a
/// pipeline of its own, the groups at once; the answers come back in the pipeline's order.
async fn cluster_pipeline(
    mut conn: redis::cluster_async::ClusterConnection,
    pipeline: &redis::Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut groups: Vec<(Option<redis::cluster_routing::Slot>, Vec<usize>)> = Vec::new();
    let cmds: Vec<&redis::Cmd> = pipeline.cmd_iter().collect();
    for (i, cmd) in cmds.iter().enumerate() {
        let slot = first_key(cmd).map(redis::cluster_routing::Slot::for_key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    if groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let sent = groups.iter().map(|(_, members)| {
        let mut part = redis::Pipeline::new();
        for i in members {
            part.add_command(cmds[*i].clone());
        }
        let mut conn = conn.clone();
        async move {
            let n = part.len();
            conn.req_packed_commands(&part, 0, n).await
        }
    });
    let answers = futures::future::try_join_all(sent).await?;
    let mut out = vec![redis::Value::Nil; cmds.len()];
    for ((_, members), values) in groups.iter().zip(answers) {
        for (i, v) in members.iter().zip(values) {
            out[*i] = v;
        }
    }
    Ok(out.into_iter().skip(offset).take(count).collect())
}

/// The key a command is routed by: `EVAL`/`EVALSHA`'s first key, else its first argument
/// (`None` for a command without one).
fn first_key(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        let _script = args.next()?;
        let keys = args.next()?;
        if keys == b"0" {
            return None;
        }
    }
    args.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys() {
        let mut c = redis::cmd("SET");
        c.arg("k1").arg("v");
        assert_eq!(first_key(&c), Some(&b"k1"[..]));
        let mut e = redis::cmd("EVALSHA");
        e.arg("abc").arg(2).arg("k2").arg("k3").arg("a");
        assert_eq!(first_key(&e), Some(&b"k2"[..]));
        let mut none = redis::cmd("EVAL");
        none.arg("return 1").arg(0);
        assert_eq!(first_key(&none), None);
        assert_eq!(first_key(&redis::cmd("PING")), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0").unwrap(),
            Target::Single("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            Target::parse("redis-cluster://:pw@a:7001, b:7002").unwrap(),
            Target::Cluster(vec![
                "redis://:pw@a:7001".into(),
                "redis://:pw@b:7002".into()
            ])
        );
        assert_eq!(
            Target::parse("redis-sentinel://u:pw@s1:26379,s2:26379/mymaster/2").unwrap(),
            Target::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "mymaster".into(),
                db: 2,
                username: Some("u".into()),
                password: Some("pw".into()),
            }
        );
        for bad in [
            "http://x",
            "redis-sentinel://s1:26379",
            "redis-cluster://",
            "redis-sentinel://:secret@s1:1/m/x",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
        let shown = format!(
            "{:?}",
            Target::parse("redis-cluster://:secret@a:1").unwrap()
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
}
