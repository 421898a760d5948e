//! One HBONE stream as a byte stream: an HTTP/2 stream (h2's SendStream + RecvStream)
//! behind AsyncRead/AsyncBufRead/AsyncWrite (and owned-bytes sends, so the copy loop's
//! ways.rs hands h2 its chunks without a copy), so the copy loop (copy.rs) and the life of a bridged
//! connection (live.rs) carry it like any socket.
//!
//! Decides: flow control (received bytes are released to the peer's window only as the
//! copy loop takes them, and the copy loop takes more only after it wrote the last ones
//! to the socket, so a slow reader holds at most one window plus one copy buffer; we
//! send only what the peer's window allows), the ends (END_STREAM is read as EOF and a
//! write shutdown sends an empty DATA frame with END_STREAM; a received RST_STREAM
//! NO_ERROR is an EOF (RFC 9113 8.1: the peer needs no more), CANCEL or any other reason
//! a reset of the TCP leg, so a pod's reset reaches the far pod as a reset; ztunnel
//! reads CANCEL as an EOF, so the two stay compatible either way; a stream
//! dropped before both directions ended sends RST_STREAM(CANCEL), which is how a TCP
//! reset on the other leg reaches the peer). Must never: buffer more than the peer's
//! window for sending, release window for bytes not yet taken, or parse HTTP/2 itself.

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet handed to the reader (their window not yet released).
    pending: Bytes,
    read_done: bool,
    write_done: bool,
}

/// Why a stream ended early, carried inside the `io::Error` so the finished record (and
/// the access log) names it: sockopt::reason reads it back.
#[derive(Debug)]
pub struct Ended(pub &'static str);

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Ended {}

/// A received RST_STREAM (or connection error) as an I/O error: NO_ERROR ends the
/// stream (None), CANCEL and any other reason is a reset (issue 17: a TCP reset travels
/// as RST_STREAM(CANCEL) and comes out as a reset). The connection under the stream
/// lost (TLS/TCP closed or reset, no close_notify) is `tunnel_lost`, a GOAWAY with an
/// error `tunnel_goaway`, a protocol error `tunnel_error`: each a reset of the TCP leg,
/// never an EOF (the bytes may be cut short; the pod must not take them as complete).
fn as_io(e: h2::Error) -> Option<io::Error> {
    let why = match e.reason() {
        Some(Reason::NO_ERROR) if e.is_reset() => return None,
        _ if e.is_reset() => return Some(io::Error::new(io::ErrorKind::ConnectionReset, e)),
        _ if e.is_io() => "tunnel_lost",
        _ if e.is_go_away() => "tunnel_goaway",
        _ => "tunnel_error",
    };
    Some(io::Error::new(io::ErrorKind::ConnectionReset, Ended(why)))
}

fn send_error(e: h2::Error) -> io::Error {
    as_io(e).unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            read_done: false,
            write_done: false,
        }
    }

    /// How many of `want` bytes (at most H2_SEND_BUFFER) the stream takes now: what the
    /// peer's window and h2's send buffer allow.
    pub fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        let want = want.min(crate::limits::H2_SEND_BUFFER);
        self.send.reserve_capacity(want);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => return Poll::Ready(Ok(n.min(want))),
                Some(Err(e)) => return Poll::Ready(Err(send_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Send owned bytes, no more than poll_send_capacity allowed, without a copy.
    pub fn send_bytes(&mut self, b: Bytes) -> io::Result<()> {
        self.send.send_data(b, false).map_err(send_error)
    }
}

impl AsyncBufRead for H2Stream {
    /// The received DATA not yet taken (empty at the end of the stream).
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let me = self.get_mut();
        while me.pending.is_empty() && !me.read_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(b)) => me.pending = b,
                None => me.read_done = true,
                Some(Err(e)) => match as_io(e) {
                    None => me.read_done = true,
                    Some(e) => return Poll::Ready(Err(e)),
                },
            }
        }
        Poll::Ready(Ok(&me.pending[..]))
    }

    fn consume(mut self: Pin<&mut Self>, n: usize) {
        self.pending.advance(n);
        // the bytes are ours now: the peer may send as many again
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let held = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = held.len().min(buf.remaining());
        buf.put_slice(&held[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        self.send_bytes(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes what send_data queued
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_done {
            self.write_done = true;
            self.send.reserve_capacity(0);
            if self.send.send_data(Bytes::new(), true).is_err() {
                // the stream is gone (reset by the peer): nothing left to half-close
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // ended early (a reset on the other leg, Python's close, the idle timeout)
        if !(self.read_done && self.write_done) {
            self.send.send_reset(Reason::CANCEL);
        }
    }
}
