//! A minimal keep-alive HTTP/1.1 client on hyper, for load generation.

/// One keep-alive HTTP/1.1 connection driven by hyper directly: the lightest client there is,
/// so that the load generator takes as little of the shared cores as possible.
pub struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl HttpConn {
    /// Connects to `addr`.
    pub async fn open(addr: impl tokio::net::ToSocketAddrs) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    /// POSTs and reads the whole answer; true on 200.
    pub async fn post(&mut self, path: &str, body: bytes::Bytes) -> bool {
        self.post_status(path, body).await == Some(200)
    }

    /// POSTs and reads the whole answer; its status, or `None` when the connection failed.
    pub async fn post_status(&mut self, path: &str, body: bytes::Bytes) -> Option<u16> {
        use http_body_util::BodyExt;
        let req = hyper::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "text/xml")
            .body(http_body_util::Full::new(body));
        let req = req.ok()?;
        self.sender.ready().await.ok()?;
        let resp = self.sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    }
}

/// Sends `head` (a request line and headers, without the blank line) and `body` byte for byte
/// on a new connection — no client library normalises the target — and reads the answer until
/// the server closes: its status (0 if none) and body text.
pub async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, "connect failed".into());
    };
    let mut req = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    if s.write_all(&req).await.is_err() {
        return (0, "write failed".into());
    }
    let mut out = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    if !matches!(read, Ok(Ok(_))) && out.is_empty() {
        return (0, "no answer".into());
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
