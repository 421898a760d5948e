//! hyper's I/O traits over tokio's, counting the bytes each way (hyper-util's TokioIo,
//! a few lines, plus the counters a live connection shows).
//!
//! Decides: which counter a read or a write of one side adds to, and that any byte
//! moved marks the connection active (the idle sweep). Must never: buffer, reorder or
//! look at the bytes it carries.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// One side of an L7 connection for hyper: `read`/`written` count its bytes.
pub struct Io<'c, T> {
    pub inner: T,
    pub read: Option<&'c AtomicU64>,
    pub written: &'c [&'c AtomicU64],
    pub active: &'c AtomicU64,
    pub now_ms: &'c (dyn Fn() -> u64 + Sync),
}

impl<T> Io<'_, T> {
    fn moved(&self) {
        self.active.store((self.now_ms)(), Ordering::Relaxed);
    }

    /// A write's result, counted when it moved bytes.
    fn wrote(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = r {
            for c in self.written {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.moved();
        }
        r
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: tokio's ReadBuf only ever writes initialized bytes into the cursor's
        // spare capacity and reports how many; the cursor is advanced by that count.
        let n = unsafe {
            let mut tbuf = tokio::io::ReadBuf::uninit(buf.as_mut());
            match Pin::new(&mut self.inner).poll_read(cx, &mut tbuf) {
                Poll::Ready(Ok(())) => tbuf.filled().len(),
                other => return other,
            }
        };
        // SAFETY: `n` bytes were initialized by the read above.
        unsafe { buf.advance(n) };
        if n > 0 {
            if let Some(c) = self.read {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.moved();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
