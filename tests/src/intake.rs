//! Traffic for the intake: numbered pushes per account, sent as WeChat sends them (one
//! account's next push after the previous one is answered, retried until `success` like WeChat
//! retries), the check that an intake kept each account in one shard, in order, and a backlog
//! queued on `{ns}.raw` before any worker runs ([`queue_burst`]).

use crate::push::{PushBuilder, text_message};
use common::amqp::RawShards;
use common::ids::Namespace;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The `gh_` id every test account's envelope names.
pub const GH: &str = "gh_97417a04a28d";

/// `n` distinct authorizer appids, spread over the whole appid space.
pub fn appids(n: u64) -> Vec<String> {
    (1..=n)
        .map(|i| format!("wx{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect()
}

/// The `Content` (and the nonce) of push `seq` of `appid` in run `tag`: `{tag}:{appid}:{seq}`.
pub fn content(tag: &str, appid: &str, seq: usize) -> String {
    format!("{tag}:{appid}:{seq}")
}

/// How one account's pushes went.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Contents answered `success` (in the order sent).
    pub accepted: Vec<String>,
    /// Answers other than `success` (each retried), e.g. 503 while a broker node was down.
    pub refused: usize,
}

/// Sends pushes `0..n` for `appid` to the ingress at `base` (`http://host:port`), each retried up
/// to `tries` times until answered `success`, `pause` between pushes.
pub async fn send_account(
    base: &str,
    appid: &str,
    n: usize,
    tag: &str,
    tries: usize,
    pause: Duration,
) -> Sent {
    let b = PushBuilder::test_platform();
    let http = crate::http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut sent = Sent::default();
    for seq in 0..n {
        let content = content(tag, appid, seq);
        for _ in 0..tries.max(1) {
            let (_, ok) = send_once(&http, &b, base, appid, tag, seq).await;
            if ok {
                sent.accepted.push(content.clone());
                break;
            }
            sent.refused += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    sent
}

/// One attempt at push `seq` of `appid` in run `tag` (signed and encrypted afresh, as WeChat
/// sends a retry): the HTTP status (`None`: no answer) and whether it was `success`.
pub async fn send_once(
    http: &reqwest::Client,
    b: &PushBuilder,
    base: &str,
    appid: &str,
    tag: &str,
    seq: usize,
) -> (Option<u16>, bool) {
    let content = content(tag, appid, seq);
    let now = common::unix_now();
    let push = b.authorizer(
        GH,
        "o-user",
        &text_message(GH, "o-user", now, &content, 7_000_000_000 + seq as u64),
        now,
        &content.replace(':', "-"),
    );
    let answered = http
        .post(format!("{base}/wechat/authorizers/{appid}?{}", push.query))
        .body(push.body)
        .send()
        .await;
    let status = answered.as_ref().ok().map(|r| r.status().as_u16());
    let ok = match answered {
        Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "success"),
        _ => false,
    };
    (status, ok)
}

/// [`send_account`] for every account at once; the results by appid.
pub async fn send_all(
    base: &str,
    appids: &[String],
    n: usize,
    tag: &str,
    tries: usize,
    pause: Duration,
) -> BTreeMap<String, Sent> {
    let mut tasks = tokio::task::JoinSet::new();
    for appid in appids {
        let (base, appid, tag) = (base.to_owned(), appid.clone(), tag.to_owned());
        tasks.spawn(async move {
            let sent = send_account(&base, &appid, n, &tag, tries, pause).await;
            (appid, sent)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (appid, sent) = done.expect("a sending task");
        out.insert(appid, sent);
    }
    out
}

/// What the shards held.
#[derive(Debug, Default)]
pub struct ShardContents {
    /// Messages per shard.
    pub per_shard: Vec<usize>,
    /// The shard of each account's pushes.
    pub shard_of: HashMap<String, usize>,
    /// Each account's push numbers in queue order.
    pub sequence: BTreeMap<String, Vec<usize>>,
    /// The shard of the component pushes, if any arrived.
    pub component_in: Option<usize>,
}

/// Drains every shard of `ns` on the broker at `url`, checking as it goes that each message
/// carries its shard key and that no account appears in two shards.
pub async fn drain_shards(url: &str, ns: &Namespace, shards: RawShards) -> ShardContents {
    let mut out = ShardContents {
        per_shard: vec![0; shards.count() as usize],
        ..Default::default()
    };
    for (i, queue) in shards.queues(ns).iter().enumerate() {
        let taken = crate::broker::drain_at(url, queue, Duration::from_millis(300))
            .await
            .unwrap_or_else(|e| panic!("draining {queue}: {e}"));
        for m in taken {
            out.per_shard[i] += 1;
            assert!(m.persistent, "a persistent push");
            if m.routing_key == "component" {
                assert_eq!(m.headers["shard"], "component");
                out.component_in = Some(i);
                continue;
            }
            assert_eq!(m.routing_key, "authorizer");
            let appid = m.headers["appid"].clone();
            assert_eq!(m.headers["shard"], appid, "the shard key is the appid");
            let previous = out.shard_of.insert(appid.clone(), i);
            assert!(
                previous.is_none_or(|p| p == i),
                "{appid} is in shards {previous:?} and {i}"
            );
            let seq: usize = m.headers["nonce"]
                .rsplit('-')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("a numbered nonce");
            out.sequence.entry(appid).or_default().push(seq);
        }
    }
    out
}

impl ShardContents {
    /// Every account of `appids` holds pushes `0..n` in order.
    pub fn assert_in_order(&self, appids: &[String], n: usize) {
        assert_eq!(self.sequence.len(), appids.len(), "{:?}", self.per_shard);
        for (appid, seqs) in &self.sequence {
            assert_eq!(seqs, &(0..n).collect::<Vec<_>>(), "{appid} out of order");
        }
    }
}

/// The authorizer appid of [`queue_burst`]'s pushes.
pub const BURST_APPID: &str = "wxba5fad812f8e6fb9";

/// Queues `n` distinct signed text pushes for [`BURST_APPID`] (MsgIds from `first_msg_id`) on
/// `{ns}.raw` exactly as the ingress stores them (body, signature headers, `appid`,
/// persistent), confirmed, declaring the topology first.
pub async fn queue_burst(ns: &Namespace, n: u64, first_msg_id: u64, content: &str) {
    let burst = Burst::open(ns).await;
    burst.queue(n, first_msg_id, content).await;
    burst.close().await;
}

/// A connection that queues bursts of pushes like [`queue_burst`], several times, without the
/// set-up in between (a connection, the topology, a confirm channel: tens of milliseconds).
pub struct Burst {
    ns: Namespace,
    conn: lapin::Connection,
    ch: lapin::Channel,
}

impl Burst {
    /// Connects, declares the topology, opens a confirm channel.
    pub async fn open(ns: &Namespace) -> Self {
        let conn = crate::broker::connect().await.expect("RabbitMQ");
        common::amqp::topology::declare(
            &conn,
            ns,
            &common::amqp::topology::Part::everything(RawShards::ONE),
        )
        .await
        .expect("the topology");
        let ch = conn.create_channel().await.expect("a channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirm mode");
        Self {
            ns: ns.clone(),
            conn,
            ch,
        }
    }

    /// Queues `n` pushes (MsgIds from `first_msg_id`) and waits for their confirms.
    pub async fn queue(&self, n: u64, first_msg_id: u64, content: &str) {
        let b = PushBuilder::test_platform();
        let now = common::unix_now();
        for i in 0..n {
            let p = b.authorizer(
                GH,
                "o",
                &text_message(GH, "o-frank", now, content, first_msg_id + i),
                now,
                "n",
            );
            let _confirm = self
                .ch
                .basic_publish(
                    self.ns.raw().as_str().into(),
                    "authorizer".into(),
                    Default::default(),
                    p.body.as_bytes(),
                    crate::broker::raw_properties(p.raw_headers(BURST_APPID)),
                )
                .await
                .expect("a publish");
        }
        self.ch
            .wait_for_confirms()
            .await
            .expect("every publish confirmed");
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "burst queued".into()).await;
    }
}
