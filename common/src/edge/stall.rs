//! A write deadline for one connection: a response that makes no progress for the deadline
//! (the client reads nothing, so the socket's buffers stay full) ends the connection with
//! `TimedOut`. Hyper has a header-read timeout but no write timeout; without one, a client
//! that pipelines requests and never reads their answers holds its connection — and a
//! connection slot — forever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with a deadline on every write that cannot proceed.
pub struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    fired: Arc<AtomicBool>,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; `fired` turns true when the deadline ended the connection.
    pub fn new(inner: T, limit: Duration, fired: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
            fired,
        }
    }

    /// A write made progress (or failed): the clock stops. A write that waits starts the
    /// clock (if it is not running) and fails once it runs out.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    self.timer.as_mut().reset(Instant::now() + self.limit);
                    self.armed = true;
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.fired.store(true, Ordering::Relaxed);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client read nothing within the write timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_deadline_and_one_that_proceeds_does_not() {
        // A pipe of 64 bytes whose other end reads nothing.
        let (a, _b) = tokio::io::duplex(64);
        let fired = Arc::new(AtomicBool::new(false));
        let mut w = WriteDeadline::new(a, Duration::from_millis(200), fired.clone());
        let started = std::time::Instant::now();
        let e = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(fired.load(Ordering::Relaxed));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{took:?}"
        );

        // A reader that keeps reading, slower than the writer but within the deadline each
        // time: the writes go on.
        let (a, mut b) = tokio::io::duplex(64);
        let fired = Arc::new(AtomicBool::new(false));
        let mut w = WriteDeadline::new(a, Duration::from_millis(300), fired.clone());
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got += b.read(&mut buf).await.unwrap();
            }
            got
        });
        w.write_all(&[0u8; 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 1024);
        assert!(!fired.load(Ordering::Relaxed));
    }
}
