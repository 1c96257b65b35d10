//! Clients that misbehave on purpose: many connections from one loopback address, each
//! pipelining requests without end and never reading an answer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::OwnedReadHalf;

/// `n` connections to `to` from the address `from` (any of 127.0.0.0/8 on Linux), each with a
/// small receive buffer, each writing `request` `times` times in a row (pipelined; within
/// `for_at_most`, or until the server closes it) and reading nothing. Returns the read halves,
/// unread.
pub async fn never_reading(
    from: IpAddr,
    to: SocketAddr,
    n: usize,
    request: &'static [u8],
    times: usize,
    for_at_most: Duration,
) -> Vec<OwnedReadHalf> {
    let burst = request.repeat(64);
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(s) = TcpSocket::new_v4() else { continue };
        let _ = s.set_recv_buffer_size(4096);
        if s.bind(SocketAddr::new(from, 0)).is_err() {
            continue;
        }
        let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), s.connect(to)).await
        else {
            continue;
        };
        let (read, mut write) = stream.into_split();
        let burst = burst.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(for_at_most, async move {
                for _ in 0..times.div_ceil(64) {
                    if write.write_all(&burst).await.is_err() {
                        return;
                    }
                }
                // Everything sent: the connection stays open, unread, until the test ends.
                std::future::pending::<()>().await;
            })
            .await;
        });
        socks.push(read);
    }
    socks
}

/// Whether the server has closed the connection of `s`: reading to the end finishes (EOF or
/// reset) within `within`. Call it only after the server's deadline has passed: reading lets a
/// stalled server write again.
pub async fn closed_by_server(s: &mut OwnedReadHalf, within: Duration) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut sink))
        .await
        .is_ok()
}
