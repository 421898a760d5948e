//! One HBONE stream as a byte stream: an HTTP/2 stream (h2's SendStream + RecvStream)
//! behind AsyncRead/AsyncWrite, so the copy loop (copy.rs) and the life of a bridged
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            if !me.pending.is_empty() {
                let n = me.pending.len().min(buf.remaining());
                buf.put_slice(&me.pending[..n]);
                me.pending.advance(n);
                // the bytes are ours now: the peer may send as many again
                let _ = me.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if me.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(b)) => me.pending = b,
                None => me.read_done = true,
                Some(Err(e)) => match as_io(e) {
                    None => me.read_done = true,
                    Some(e) => return Poll::Ready(Err(e)),
                },
            }
        }
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
        let me = &mut *self;
        let want = buf.len().min(crate::limits::H2_SEND_BUFFER);
        me.send.reserve_capacity(want);
        let n = loop {
            match ready!(me.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n.min(want),
                Some(Err(e)) => {
                    return Poll::Ready(Err(
                        as_io(e).unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
                    ))
                }
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        me.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(|e| as_io(e).unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()))?;
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
