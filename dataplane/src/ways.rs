//! The copy loop's ways that copy less (copy.rs drives them): which way each direction
//! of a bridge moves its bytes, chosen by the kinds of its two legs.
//!
//! Decides: a direction whose source keeps its own buffer (a TLS session's decrypted
//! plaintext, an HBONE stream's received DATA) is written to the destination straight
//! from that buffer (`FromBuf`; no copy into a buffer of ours, and an HBONE stream
//! releases window only for what was written); a direction into an HBONE stream reads
//! the source into a chunk of its own that h2 sends as it is (`IntoH2`; h2 takes owned
//! bytes, so a copy buffer would be copied once more); anything else goes through
//! copy.rs's buffer. Chunks grow as copy.rs's buffer does (BUFFER_SIZES) and nothing is
//! held while a source has nothing to read. Must never: change a byte, its order or an
//! end (EOF, shutdown, reset) from what copy.rs's `Direction` does, or hold a chunk
//! while waiting for the source.

use crate::copy::{
    bridge, bridge_ways, poll_shut, read_eof, Counters, Direction, Meter, Side, Way,
};
use crate::h2stream::H2Stream;
use crate::limits::BUFFER_SIZES;
use bytes::{Bytes, BytesMut};
use std::any::Any;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// Straight from the source's own buffer to the destination.
#[derive(Default)]
pub(crate) struct FromBuf {
    flush: bool,
    eof: bool,
    shut: bool,
}

impl<R, W> Way<R, W> for FromBuf
where
    R: AsyncBufRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        m: &Meter<'_>,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        while !self.eof {
            let held = match Pin::new(&mut *src).poll_fill_buf(cx) {
                Poll::Ready(Ok([])) => {
                    self.eof = true;
                    break;
                }
                Poll::Ready(Ok(b)) => b,
                Poll::Ready(Err(e)) if read_eof(&e) => {
                    self.eof = true;
                    break;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::A, e))),
                Poll::Pending => {
                    // nothing more for now: what was written goes out before we wait
                    if self.flush {
                        ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(|e| (Side::B, e))?;
                        self.flush = false;
                    }
                    return Poll::Pending;
                }
            };
            match ready!(Pin::new(&mut *dst).poll_write(cx, held)) {
                Ok(0) => return Poll::Ready(Err((Side::B, io::ErrorKind::WriteZero.into()))),
                Ok(n) => {
                    Pin::new(&mut *src).consume(n);
                    self.flush = true;
                    m.add(n);
                }
                Err(e) => return Poll::Ready(Err((Side::B, e))),
            }
        }
        if self.flush {
            ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(|e| (Side::B, e))?;
            self.flush = false;
        }
        poll_shut(cx, &mut self.shut, dst)
    }
}

/// From any source into an HBONE stream, in owned chunks.
#[derive(Default)]
pub(crate) struct IntoH2 {
    out: Bytes,
    class: usize,
    eof: bool,
    shut: bool,
}

impl IntoH2 {
    #[cfg(test)]
    pub(crate) fn class(&self) -> usize {
        self.class
    }
}

impl<R> Way<R, H2Stream> for IntoH2
where
    R: AsyncRead + Unpin + ?Sized,
{
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut H2Stream,
        m: &Meter<'_>,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        loop {
            if !self.out.is_empty() {
                let n =
                    ready!(dst.poll_send_capacity(cx, self.out.len())).map_err(|e| (Side::B, e))?;
                dst.send_bytes(self.out.split_to(n))
                    .map_err(|e| (Side::B, e))?;
                m.add(n);
                continue;
            }
            if self.eof {
                return poll_shut(cx, &mut self.shut, dst);
            }
            let size = BUFFER_SIZES[self.class];
            let mut chunk = BytesMut::with_capacity(size);
            let mut rb = ReadBuf::uninit(&mut chunk.spare_capacity_mut()[..size]);
            // Pending drops the chunk: nothing is held while the source is quiet
            match ready!(Pin::new(&mut *src).poll_read(cx, &mut rb)) {
                Ok(()) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                        continue;
                    }
                    // SAFETY: ReadBuf::filled is the initialised prefix of the spare capacity
                    unsafe { chunk.set_len(n) };
                    if n == size && self.class + 1 < BUFFER_SIZES.len() {
                        self.class += 1;
                    }
                    self.out = chunk.freeze();
                }
                Err(e) if read_eof(&e) => self.eof = true,
                Err(e) => return Poll::Ready(Err((Side::A, e))),
            }
        }
    }
}

/// copy.rs's `bridge`, each direction by the way that copies least for the two legs
/// (`a` the source side, `b` the destination side).
pub async fn bridge_legs<A, B>(
    a: &mut A,
    b: &mut B,
    c: &Counters,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<(), (Side, io::Error)>
where
    A: AsyncRead + AsyncWrite + Unpin + Any,
    B: AsyncRead + AsyncWrite + Unpin + Any,
{
    let (da, db) = (a as &mut dyn Any, b as &mut dyn Any);
    // a destination leg of its own kind decides first (bridge_to)
    let plain_b = !db.is::<H2Stream>() && !db.is::<ClientTls>();
    if da.is::<H2Stream>() && !db.is::<H2Stream>() {
        // the HBONE server: the stream's DATA -> the workload (or Python's pipe), and back
        let (h2, b) = (cast::<H2Stream>(da), cast::<B>(db));
        return bridge_ways(h2, b, FromBuf::default(), IntoH2::default(), c, now_ms).await;
    }
    if da.is::<ServerTls>() && plain_b {
        let (tls, b) = (cast::<ServerTls>(da), cast::<B>(db));
        return bridge_ways(tls, b, FromBuf::default(), Direction::default(), c, now_ms).await;
    }
    bridge_to(cast::<A>(da), cast::<B>(db), c, now_ms).await
}

/// `bridge_legs` by the destination leg's kind alone, for a source leg of any type (a
/// watched pod leg, l7tap.rs, is no `'static` type to tell apart).
pub(crate) async fn bridge_to<A, B>(
    a: &mut A,
    b: &mut B,
    c: &Counters,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<(), (Side, io::Error)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + Any,
{
    let db = b as &mut dyn Any;
    if db.is::<H2Stream>() {
        // the HBONE client: the pod's socket -> the stream, and back from its DATA
        let h2 = cast::<H2Stream>(db);
        return bridge_ways(a, h2, IntoH2::default(), FromBuf::default(), c, now_ms).await;
    }
    if db.is::<ClientTls>() {
        // a CONNECT tunnel's client: the plaintext back is written from rustls's buffer
        let tls = cast::<ClientTls>(db);
        return bridge_ways(a, tls, Direction::default(), FromBuf::default(), c, now_ms).await;
    }
    bridge(a, cast::<B>(db), c, now_ms).await
}

fn cast<T: Any>(x: &mut dyn Any) -> &mut T {
    x.downcast_mut::<T>().expect("the leg's type was checked")
}

#[cfg(test)]
#[path = "ways_tests.rs"]
mod tests;
