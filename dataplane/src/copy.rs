//! The copy loop: bytes both ways between the two legs of a connection.
//!
//! Decides: the shape of a bridge (two directions, each a `Way` of moving bytes from
//! one leg to the other; ways.rs has the ways that copy less for TLS and HBONE legs),
//! buffering (a direction's buffer grows with use, 1 KiB -> 16 KiB -> 256 KiB,
//! and is released whenever the direction is drained and waiting, so an idle
//! connection holds no buffer), backpressure (a direction reads again only after its
//! bytes were written and flushed), half-close (EOF on one side becomes a shutdown of
//! the other's write side, close_notify on TLS) and what counts as a reset. Must never:
//! decide policy, hold bytes it has not been asked to carry, or end a connection
//! without saying why.

use crate::limits::BUFFER_SIZES;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A live connection's counters, read by stats and progress while it runs.
#[derive(Default)]
pub struct Counters {
    /// Bytes towards the destination (source side read, destination side written).
    pub sent: AtomicU64,
    /// Bytes back to the source.
    pub received: AtomicU64,
    /// Milliseconds (runtime clock) of the last byte moved either way.
    pub active_ms: AtomicU64,
}

/// Which side a failure came from: `A` is the source, `B` the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Where a direction counts what it moved.
pub(crate) struct Meter<'a> {
    pub(crate) moved: &'a AtomicU64,
    pub(crate) active: &'a AtomicU64,
    pub(crate) now_ms: &'a (dyn Fn() -> u64 + Sync),
}

impl Meter<'_> {
    pub(crate) fn add(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        self.active.store((self.now_ms)(), Ordering::Relaxed);
    }
}

/// One direction's way of moving bytes from `S` to `D`: Ready(Ok) once the source's EOF
/// became the destination's shutdown, or the side that failed (`Side::A` the source,
/// `B` the destination; the bridge flips them for the way back).
pub(crate) trait Way<S: ?Sized, D: ?Sized> {
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        m: &Meter<'_>,
    ) -> Poll<Result<(), (Side, io::Error)>>;
}

/// Through a copy buffer of ours: any source to any destination.
#[derive(Default)]
pub(crate) struct Direction {
    buf: Option<Box<[u8]>>,
    class: usize,
    grow: bool,
    start: usize,
    end: usize,
    flush: bool,
    eof: bool,
    shut: bool,
}

impl Direction {
    #[cfg(test)]
    /// Bytes held by this direction's buffer (0 when released).
    fn held(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }
}

/// A TLS peer that closes without close_notify ends its stream: treated as EOF, as
/// OpenSSL's ragged EOF was on the Python side.
pub(crate) fn read_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

impl<R, W> Way<R, W> for Direction
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        m: &Meter<'_>,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        poll_direction(cx, self, src, dst, m)
    }
}

fn poll_direction<R, W>(
    cx: &mut Context<'_>,
    d: &mut Direction,
    src: &mut R,
    dst: &mut W,
    m: &Meter<'_>,
) -> Poll<Result<(), (Side, io::Error)>>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    // Side of `src` is reported as A by the caller's mapping (see `bridge`).
    loop {
        if d.start < d.end {
            let buf = d.buf.as_ref().expect("bytes without a buffer");
            match Pin::new(&mut *dst).poll_write(cx, &buf[d.start..d.end]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err((Side::B, io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => {
                    d.start += n;
                    d.flush = true;
                    m.add(n);
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::B, e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if d.flush {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => d.flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::B, e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if d.eof {
            ready!(poll_shut(cx, &mut d.shut, dst))?;
            d.buf = None;
            return Poll::Ready(Ok(()));
        }
        if d.grow {
            d.grow = false;
            d.class = (d.class + 1).min(BUFFER_SIZES.len() - 1);
            d.buf = None;
        }
        let size = BUFFER_SIZES[d.class];
        let buf = d
            .buf
            .get_or_insert_with(|| vec![0u8; size].into_boxed_slice());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *src).poll_read(cx, &mut rb) {
            Poll::Pending => {
                // drained and waiting: hold nothing while idle
                d.buf = None;
                return Poll::Pending;
            }
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    d.eof = true;
                } else {
                    d.start = 0;
                    d.end = n;
                    d.grow = n == size && d.class + 1 < BUFFER_SIZES.len();
                }
            }
            Poll::Ready(Err(e)) if read_eof(&e) => d.eof = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::A, e))),
        }
    }
}

/// The destination's write side shut (a half-close carried); a destination already gone
/// is not this direction's failure (its own direction reports it).
pub(crate) fn poll_shut<W: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    shut: &mut bool,
    dst: &mut W,
) -> Poll<Result<(), (Side, io::Error)>> {
    if !*shut {
        match ready!(Pin::new(&mut *dst).poll_shutdown(cx)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => return Poll::Ready(Err((Side::B, e))),
        }
        *shut = true;
    }
    Poll::Ready(Ok(()))
}

fn flip(r: Poll<Result<(), (Side, io::Error)>>) -> Poll<Result<(), (Side, io::Error)>> {
    r.map_err(|(s, e)| {
        (
            match s {
                Side::A => Side::B,
                Side::B => Side::A,
            },
            e,
        )
    })
}

/// Copy both ways until both directions ended (Ok) or one side failed (the side and
/// its error; the caller resets both).
pub async fn bridge<A, B>(
    a: &mut A,
    b: &mut B,
    c: &Counters,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<(), (Side, io::Error)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    bridge_ways(a, b, Direction::default(), Direction::default(), c, now_ms).await
}

/// Drive `up` (a -> b, counted as sent) and `down` (b -> a, received) until both ended
/// or one failed.
pub(crate) async fn bridge_ways<A, B, U, D>(
    a: &mut A,
    b: &mut B,
    mut up: U,
    mut down: D,
    c: &Counters,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<(), (Side, io::Error)>
where
    A: ?Sized,
    B: ?Sized,
    U: Way<A, B>,
    D: Way<B, A>,
{
    let sent = Meter {
        moved: &c.sent,
        active: &c.active_ms,
        now_ms,
    };
    let received = Meter {
        moved: &c.received,
        active: &c.active_ms,
        now_ms,
    };
    let (mut up_done, mut down_done) = (false, false);
    poll_fn(|cx| {
        if !up_done {
            match up.poll_move(cx, a, b, &sent) {
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !down_done {
            match flip(down.poll_move(cx, b, a, &received)) {
                Poll::Ready(Ok(())) => down_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
