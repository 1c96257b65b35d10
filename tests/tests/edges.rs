//! Clients that never read (issue 32): every listener clients reach — the ingress, the gateway,
//! the admin API — is served by `common::edge`, which closes a connection whose answers nobody
//! reads within `WXPIPE_WRITE_TIMEOUT_MS` and gives one client address at most its share of
//! `WXPIPE_MAX_CONNECTIONS`. Before: the gateway and the admin API ran `axum::serve` (no limit
//! at all) and the ingress had neither rule, so one address holding its pipelined, never-read
//! sockets stopped `accept` for everyone.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::flood::{closed_by_server, never_reading};
use wxpipe_tests::harness::{
    IngressHandle, console_config, spawn_gateway_limited, spawn_scheduler_limited, test_config,
    token_service,
};
use wxpipe_tests::push::{PushBuilder, text_message};

/// The header timeout is long, so that only the write timeout can close a connection within
/// the tests' waits.
fn limits() -> common::edge::Limits {
    common::edge::Limits {
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(2),
        max_connections: 200,
        max_per_client: 50,
    }
}

/// Another loopback address than the well-behaved client's 127.0.0.1.
const FLOODER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// 600 never-reading connections from [`FLOODER`] (three times the connection limit), each
/// pipelining 2,000 requests; then `probe` (another client's request) must succeed within
/// 1 s, and the flooding address holds at most its share of connections (every other one was
/// closed at once: a reading client gets EOF or a reset).
async fn flood_then<F, Fut>(listener: &str, addr: SocketAddr, probe: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let opened = Instant::now();
    let mut flood = never_reading(FLOODER, addr, 600, HEALTHZ, 2000, Duration::from_secs(20)).await;
    println!(
        "{listener}: {} flood connections in {:?}",
        flood.len(),
        opened.elapsed()
    );
    assert!(
        flood.len() >= 500,
        "{listener}: only {} flood connections",
        flood.len()
    );
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(5), probe()).await;
    let took = started.elapsed();
    match answered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{listener}: the other client's request failed: {e}"),
        Err(_) => panic!("{listener}: the other client had no answer within 5 s"),
    }
    assert!(
        took < Duration::from_secs(1),
        "{listener}: the other client waited {took:?}"
    );
    let open = still_open(&mut flood).await;
    assert!(
        open <= limits().max_per_client,
        "{listener}: one address holds {open} connections"
    );
}

/// How many of `socks` the server has not closed (each read for up to 2 s, all at once).
async fn still_open(socks: &mut [tokio::net::tcp::OwnedReadHalf]) -> usize {
    let checks = socks
        .iter_mut()
        .map(|s| closed_by_server(s, Duration::from_secs(2)));
    futures::future::join_all(checks)
        .await
        .into_iter()
        .filter(|closed| !closed)
        .count()
}

#[tokio::test]
async fn the_ingress_answers_pushes_while_one_address_never_reads() {
    let t = TestNs::new("t-edge-ingress");
    let mut config = test_config(&t.ns, vec![wxpipe_tests::amqp_url()]);
    config.limits = limits();
    let ingress = IngressHandle::start(config).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    let b = PushBuilder::test_platform();
    let now = common::unix_now();
    let p = b.authorizer(
        "gh_97417a04a28d",
        "o-1",
        &text_message("gh_97417a04a28d", "o-1", now, "past the flood", 1),
        now,
        "n1",
    );
    let url = ingress.url(&format!(
        "/wechat/authorizers/wxba5fad812f8e6fb9?{}",
        p.query
    ));
    flood_then("ingress", ingress.addr, || async move {
        let r = wxpipe_tests::http()
            .post(url)
            .body(p.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(()),
            s => Err(format!("{s}: {}", r.text().await.unwrap_or_default())),
        }
    })
    .await;
    ingress.stop().await.unwrap();
}

async fn healthz(base: String) -> Result<(), String> {
    let r = wxpipe_tests::http()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() == 200 {
        Ok(())
    } else {
        Err(r.status().to_string())
    }
}

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test]
async fn the_gateway_answers_while_one_address_never_reads() {
    let t = TestNs::new("t-edge-gateway");
    let tokens = Arc::new(token_service(
        &t.ns,
        "http://127.0.0.1:9",
        Duration::from_secs(600),
    ));
    let (gw, base) = spawn_gateway_limited(tokens, "http://127.0.0.1:9", limits()).await;
    assert!(wxpipe_tests::harness::ready_within(&base, Duration::from_secs(10)).await);
    flood_then("gateway", addr_of(&base), || healthz(base.clone())).await;
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_api_answers_while_one_address_never_reads() {
    let t = TestNs::new("t-edge-admin");
    let tokens = Arc::new(token_service(
        &t.ns,
        "http://127.0.0.1:9",
        Duration::from_secs(600),
    ));
    let (sched, base) =
        spawn_scheduler_limited(tokens, 1, console_config(&t.ns, None), limits()).await;
    assert!(wxpipe_tests::harness::ready_within(&base, Duration::from_secs(10)).await);
    flood_then("admin", addr_of(&base), || healthz(base.clone())).await;
    sched.stop().await;
}

/// A few connections that ask for far more than the socket buffers hold (20 answers of 1 MiB
/// each, pipelined — a media download read by no one is the same) and read none: each is
/// closed once its answers have made no progress for the write timeout (the header timeout,
/// 60 s, cannot be what closes them). Served by `common::edge::serve`, the loop of all three
/// listeners above.
#[tokio::test]
async fn a_connection_nobody_reads_is_closed_after_the_write_timeout() {
    let app = axum::Router::new().route(
        "/big",
        axum::routing::get(|| async { vec![b'x'; 1024 * 1024] }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(common::edge::serve(
        listener,
        app,
        limits(),
        common::edge::ADMIN,
        async {
            let _ = stopped.await;
        },
    ));
    const BIG: &[u8] = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut socks = never_reading(FLOODER, addr, 4, BIG, 20, Duration::from_secs(60)).await;
    assert_eq!(socks.len(), 4);
    // Long enough for the answers to fill the buffers, plus the write timeout.
    tokio::time::sleep(Duration::from_secs(2) + limits().write_timeout).await;
    assert_eq!(
        still_open(&mut socks).await,
        0,
        "connections nobody reads stay open"
    );
    let _ = stop.send(());
    server.await.unwrap();
}
