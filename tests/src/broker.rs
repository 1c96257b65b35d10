//! Per-test namespaces on the real broker, reading messages back, and closing connections from
//! the broker's side.

use common::ids::Namespace;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// A namespace of its own for one test. Dropping it deletes every exchange and queue the
/// namespace may own, so tests run in parallel and leave nothing behind.
pub struct TestNs {
    pub ns: Namespace,
    extra_queues: std::sync::Mutex<Vec<String>>,
    /// The broker the namespace lives on.
    amqp_url: String,
}

impl TestNs {
    /// `prefix` + 8 random hex digits, e.g. `t-ingress-1a2b3c4d`, on the test broker.
    pub fn new(prefix: &str) -> Self {
        Self::on(prefix, &crate::amqp_url())
    }

    /// [`TestNs::new`] on the broker at `amqp_url` (a cluster's nodes, comma-separated: the
    /// first one that answers cleans up).
    pub fn on(prefix: &str, amqp_url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ns = format!("{prefix}-{}", &id[..8])
            .parse()
            .expect("valid namespace");
        Self {
            ns,
            extra_queues: Default::default(),
            amqp_url: amqp_url.to_owned(),
        }
    }

    /// The name of a test's own queue, `{ns}.test.{suffix}`, deleted with the namespace.
    pub fn queue(&self, suffix: &str) -> String {
        let name = format!("{}.test.{suffix}", self.ns);
        if let Ok(mut q) = self.extra_queues.lock() {
            q.push(name.clone());
        }
        name
    }

    pub fn name(&self) -> &str {
        self.ns.as_str()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let ns = self.ns.clone();
        let url = self.amqp_url.clone();
        let extra = self
            .extra_queues
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default();
        on_own_runtime(async move {
            let Some(conn) = connect_any(&url).await else {
                eprintln!("cleanup of namespace {ns}: no broker node answers");
                return;
            };
            if let Err(e) = delete_queues_on(&conn, &extra).await {
                eprintln!("cleanup of the test queues of {ns} failed: {e}");
            }
            if let Err(e) = delete_namespace_on(&conn, &ns).await {
                eprintln!("cleanup of namespace {ns} failed: {e}");
            }
            let _ = conn.close(200, "cleanup done".into()).await;
            if let Err(e) = delete_redis_keys(&format!("{ns}:")).await {
                eprintln!("cleanup of the Redis keys of {ns} failed: {e}");
            }
        });
    }
}

/// Runs `cleanup` to the end on a thread with a runtime of its own: a `Drop` cannot be async,
/// and it may run on a runtime's thread (or while a test panics).
pub fn on_own_runtime(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(cleanup);
    })
    .join();
}

/// The most intake shards a test declares ([`delete_namespace`] removes that many).
pub const TEST_MAX_SHARDS: u16 = 4;

/// Deletes every exchange and queue of `ns` (with up to [`TEST_MAX_SHARDS`] intake shards).
pub async fn delete_namespace(ns: &Namespace) -> Result<(), lapin::Error> {
    let conn = connect().await?;
    let done = delete_namespace_on(&conn, ns).await;
    let _ = conn.close(200, "cleanup done".into()).await;
    done
}

/// The first node of a comma-separated list that accepts a connection.
async fn connect_any(urls: &str) -> Option<Connection> {
    for url in urls.split(',').map(str::trim) {
        if let Ok(c) = Connection::connect(url, ConnectionProperties::default()).await {
            return Some(c);
        }
    }
    None
}

async fn delete_namespace_on(conn: &Connection, ns: &Namespace) -> Result<(), lapin::Error> {
    let shards = common::amqp::RawShards::new(TEST_MAX_SHARDS).expect("a valid count");
    let (exchanges, mut queues) = common::amqp::topology::all_names(ns, shards);
    queues.push(ns.raw());
    for q in queues {
        // A fresh channel each time: deleting something absent is fine, but an error closes
        // the channel.
        let ch = conn.create_channel().await?;
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let ch = conn.create_channel().await?;
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    Ok(())
}

/// Deletes the given queues.
pub async fn delete_queues(queues: &[String]) -> Result<(), lapin::Error> {
    if queues.is_empty() {
        return Ok(());
    }
    let conn = connect().await?;
    let done = delete_queues_on(&conn, queues).await;
    let _ = conn.close(200, "cleanup done".into()).await;
    done
}

async fn delete_queues_on(conn: &Connection, queues: &[String]) -> Result<(), lapin::Error> {
    for q in queues {
        let ch = conn.create_channel().await?;
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    Ok(())
}

/// Deletes every Redis key starting with `prefix`.
pub async fn delete_redis_keys(prefix: &str) -> Result<(), String> {
    delete_redis_keys_at(&crate::redis_url(), prefix).await
}

/// Deletes every key starting with `prefix` from the Redis at `url` (a single Redis, or
/// Sentinel's master; a Redis Cluster's keys: `cluster::delete_cluster_keys`). The keys found
/// before a failed scan are deleted too.
pub async fn delete_redis_keys_at(url: &str, prefix: &str) -> Result<(), String> {
    let pool = common::redis::pool(url).map_err(|e| e.to_string())?;
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    let scanned = scan_keys(&mut conn, prefix, &mut keys).await;
    for batch in keys.chunks(1000) {
        deadpool_redis::redis::cmd("DEL")
            .arg(batch)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    scanned.map_err(|e| e.to_string())
}

/// Appends to `keys` every key starting with `prefix` that `SCAN` finds on `conn`'s node; on an
/// error, what was found before it stays in `keys`.
pub async fn scan_keys(
    conn: &mut impl deadpool_redis::redis::aio::ConnectionLike,
    prefix: &str,
    keys: &mut Vec<String>,
) -> deadpool_redis::redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Declares a test queue bound to `exchange` with each of `patterns`.
pub async fn bind_queue(
    queue: &str,
    exchange: &str,
    patterns: &[&str],
) -> Result<(), lapin::Error> {
    bind(&crate::amqp_url(), queue, exchange, patterns, false).await
}

/// [`bind_queue`] on the broker at `url`, as a quorum queue (so that a cluster keeps it whole
/// when a node dies).
pub async fn bind_quorum_queue_at(
    url: &str,
    queue: &str,
    exchange: &str,
    patterns: &[&str],
) -> Result<(), lapin::Error> {
    bind(url, queue, exchange, patterns, true).await
}

async fn bind(
    url: &str,
    queue: &str,
    exchange: &str,
    patterns: &[&str],
    quorum: bool,
) -> Result<(), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await?;
    let mut args = lapin::types::FieldTable::default();
    if quorum {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    for p in patterns {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            (*p).into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    }
    let _ = conn.close(200, "bound".into()).await;
    Ok(())
}

/// Takes messages from `queue` until `expected` have arrived or `timeout` has passed.
pub async fn collect(
    queue: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<Taken>, lapin::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut all = Vec::new();
    while all.len() < expected && tokio::time::Instant::now() < deadline {
        all.extend(drain(queue, Duration::from_millis(50)).await?);
        if all.len() < expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(all)
}

/// A header table of strings, as the ingress writes a raw message's (see
/// [`crate::push::SignedPush::raw_headers`] for a signed push's).
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(k.into(), lapin::types::AMQPValue::LongString(v.into()));
    }
    table
}

/// The properties of a raw message as the ingress stores it: persistent, with `headers`.
pub fn raw_properties(headers: FieldTable) -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Publishes a raw message to `{ns}.raw` as the ingress does (headers = the signed query).
pub async fn publish_raw(
    ns: &Namespace,
    routing_key: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), lapin::Error> {
    let conn = connect().await?;
    common::amqp::topology::declare(
        &conn,
        ns,
        &common::amqp::topology::Part::Raw(common::amqp::RawShards::ONE),
    )
    .await
    .map_err(|e| match e {
        common::amqp::AmqpError::Broker { source, .. } => source,
        other => panic!("{other}"),
    })?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    ch.basic_publish(
        ns.raw().as_str().into(),
        routing_key.into(),
        Default::default(),
        body,
        raw_properties(headers),
    )
    .await?
    .await?;
    let _ = conn.close(200, "published".into()).await;
    Ok(())
}

/// A plain connection to the test broker.
pub async fn connect() -> Result<Connection, lapin::Error> {
    Connection::connect(&crate::amqp_url(), ConnectionProperties::default()).await
}

/// One message taken from a queue.
#[derive(Debug, Clone)]
pub struct Taken {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub persistent: bool,
}

/// Takes (and acknowledges) every message in `queue`, waiting up to `settle` after the last one
/// for stragglers.
pub async fn drain(queue: &str, settle: Duration) -> Result<Vec<Taken>, lapin::Error> {
    drain_at(&crate::amqp_url(), queue, settle).await
}

/// [`drain`] on the broker at `url`.
pub async fn drain_at(
    url: &str,
    queue: &str,
    settle: Duration,
) -> Result<Vec<Taken>, lapin::Error> {
    let mut out = Vec::new();
    drain_into(url, queue, settle, &mut out).await?;
    Ok(out)
}

/// [`drain_at`] into `out`, which keeps every message taken before an error (they are taken
/// without acknowledgement, so they exist nowhere else) or before the future is dropped, as by
/// a timeout.
pub async fn drain_into(
    url: &str,
    queue: &str,
    settle: Duration,
    out: &mut Vec<Taken>,
) -> Result<(), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            Some(msg) => {
                out.push(taken(&msg.data, &msg.routing_key, &msg.properties));
                idle_since = tokio::time::Instant::now();
            }
            None if idle_since.elapsed() >= settle => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _ = conn.close(200, "drained".into()).await;
    Ok(())
}

/// Takes every message of `queue` on the broker at `url` into `out` through a consumer that
/// acknowledges each message only once it is in `out`: a connection lost mid-drain (a node
/// rejoining) gives what was not acknowledged back to the queue instead of losing it, as a
/// `basic.get` without acknowledgement would for a message on the wire. Ends once nothing has
/// arrived for `settle`.
pub async fn drain_acked(
    url: &str,
    queue: &str,
    settle: Duration,
    out: &mut Vec<Taken>,
) -> Result<(), lapin::Error> {
    use futures::StreamExt;
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(500, Default::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "wxpipe-tests-drain".into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    // Acknowledged in batches (`multiple`), each after its messages are in `out`.
    let mut unacked = None;
    let mut count = 0usize;
    loop {
        match tokio::time::timeout(settle, consumer.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                out.push(taken(
                    &delivery.data,
                    &delivery.routing_key,
                    &delivery.properties,
                ));
                unacked = Some(delivery.delivery_tag);
                count += 1;
                if count.is_multiple_of(200) {
                    ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                    unacked = None;
                }
            }
        }
    }
    if let Some(tag) = unacked {
        ch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let _ = conn.close(200, "drained".into()).await;
    Ok(())
}

fn taken(
    body: &[u8],
    routing_key: &lapin::types::ShortString,
    properties: &lapin::BasicProperties,
) -> Taken {
    let headers = properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_value_to_string(v)))
                .collect()
        })
        .unwrap_or_default();
    Taken {
        body: body.to_vec(),
        routing_key: routing_key.to_string(),
        headers,
        persistent: *properties.delivery_mode() == Some(2),
    }
}

/// Number of messages ready in `queue` (a passive declare).
pub async fn message_count(queue: &str) -> Result<u32, lapin::Error> {
    let conn = connect().await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    let _ = conn.close(200, "counted".into()).await;
    Ok(q.message_count())
}

fn amqp_value_to_string(v: &lapin::types::AMQPValue) -> String {
    use lapin::types::AMQPValue::*;
    match v {
        LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        ShortString(s) => s.to_string(),
        LongLongInt(i) => i.to_string(),
        LongInt(i) => i.to_string(),
        Timestamp(t) => t.to_string(),
        other => format!("{other:?}"),
    }
}

/// Closes, from the broker's side, every connection whose `connection_name` contains `needle`
/// (`rabbitmqctl close_connection`), and returns how many it closed. Other tests' connections
/// are left alone, unlike `close_all_connections`.
pub fn close_connections_named(needle: &str) -> Result<usize, String> {
    let out = rabbitmqctl()
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .map_err(|e| format!("running rabbitmqctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl list_connections: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // One line per connection: `<rabbit@host.N.N.N>\t[{"capabilities",…},{"connection_name",…}]`.
    // (The JSON formatter prints pids as `#PID<…>`, which close_connection does not take.)
    let mut closed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((pid, props)) = line.split_once('\t') else {
            continue;
        };
        if !pid.starts_with('<') || !props.contains(needle) {
            continue;
        }
        let status = rabbitmqctl()
            .args(["close_connection", pid, "closed by a wxpipe test"])
            .output()
            .map_err(|e| format!("running rabbitmqctl: {e}"))?;
        if status.status.success() {
            closed += 1;
        }
    }
    Ok(closed)
}

/// `rabbitmqctl` needs the broker's Erlang cookie: run it directly as root, else through
/// `sudo -n` (scripts/test installs the broker the same way).
pub fn rabbitmqctl() -> std::process::Command {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if is_root {
        std::process::Command::new("rabbitmqctl")
    } else {
        let mut c = std::process::Command::new("sudo");
        c.args(["-n", "rabbitmqctl"]);
        c
    }
}
