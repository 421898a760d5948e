//! A watched connection (the source's view for HTTP metrics, l7watch.rs): the copy
//! loop's own bridge (ways.rs, the ways that copy least for the tunnel leg), with the
//! pod's leg wrapped so that every byte read from it is shown to the watch as a request
//! byte and every byte written to it as a response byte, and each exchange that ended
//! reported as it ends (one `Exchange` event, batched as the served ones are).
//!
//! Decides: that the pod's leg is the one watched (it carries both streams in order,
//! with the times the pod sees), that an exchange is reported when its last byte was
//! written to the pod, and what is counted when a connection stops being watched.
//! Must never: change, hold or delay a byte, or fail a connection because its bytes
//! are not HTTP (a connection the watch cannot follow goes on as a plain one).

use crate::copy::{Counters, Side};
use crate::events::{Event, Queue};
use crate::l7watch::Watch;
use crate::runtime::{wall, Shared};
use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The pod's leg, watched.
struct Tapped<'a, T: ?Sized> {
    inner: &'a mut T,
    watch: Watch,
    id: u64,
    events: &'a Arc<Queue>,
}

impl<T: ?Sized> Tapped<'_, T> {
    fn report(&mut self) {
        for d in self.watch.done.drain(..) {
            self.events.push(Event::Exchange {
                id: self.id,
                rid: d.rid,
                status: d.status,
                req_bytes: d.req_bytes,
                resp_bytes: d.resp_bytes,
                start: d.start,
                end: d.end,
                flags: d.flags,
                memo: 0,
                told: Some(Box::new(d.told)),
            });
        }
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Tapped<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut *self.inner).poll_read(cx, buf))?;
        if self.watch.watching() {
            self.watch.requests(&buf.filled()[before..], wall());
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Tapped<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut *self.inner).poll_write(cx, buf))?;
        if self.watch.watching() {
            self.watch.responses(&buf[..n], wall());
            self.report();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Bridge connection `id`'s pod leg `a` to its tunnel leg `b` as ways.rs would, the
/// pod's leg watched.
pub async fn bridge_watched<A, B>(
    shared: &Shared,
    id: u64,
    a: &mut A,
    b: &mut B,
    c: &Counters,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<(), (Side, io::Error)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin + Any,
{
    shared.count("l7_watched", 1);
    let mut t = Tapped {
        inner: a,
        watch: Watch::default(),
        id,
        events: &shared.events,
    };
    let r = crate::ways::bridge_to(&mut t, b, c, now_ms).await;
    t.watch.end(r.as_ref().err().map(|e| e.0), wall());
    t.report();
    if t.watch.switched() {
        shared.count("l7_upgrades", 1); // as a served connection's (l7.rs)
    }
    if let Some(why) = t.watch.lost {
        shared.count(&format!("l7_watch_lost_{why}"), 1);
    }
    r
}

#[cfg(test)]
#[path = "l7tap_tests.rs"]
mod tests;
