//! The bytes of an L7 connection's exchanges: the pod side's counts, the response body
//! that notes when its exchange ended, and what is reported of it (l7.rs pushes it).
//!
//! Decides: which bytes belong to which exchange (the pod's bytes read up to its end,
//! the bytes written from its response's start to the next one's) and its flags (`-`,
//! `UC` when the workload's body failed, `DC` when it was dropped unfinished, `DPE` for
//! the core's own 400). Must never: hold a body's bytes, or report an exchange twice.

use crate::events::Event;
use crate::runtime::wall;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

pub type Reply = Either<Full<Bytes>, Incoming>;

/// Bytes of the pod side, and the exchange that ended and waits for its last bytes.
#[derive(Default)]
pub struct Meter {
    pub read: AtomicU64,
    pub written: AtomicU64,
    pub read_mark: AtomicU64,
    pub ended: Mutex<Option<Ended>>,
    /// Requests whose response has not ended.
    pub in_flight: AtomicU64,
}

pub struct Ended {
    pub rid: u64,
    pub status: u16,
    pub start: f64,
    pub end: f64,
    pub req_bytes: u64,
    pub written_mark: u64,
    pub flags: &'static str,
    pub memo: u32,
}

impl Meter {
    /// The exchange that ended before this point, as its event, once all its bytes
    /// were written (its response bytes: those written since its start).
    pub fn ended_event(&self, id: u64) -> Option<Event> {
        let e = self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let written = self.written.load(Ordering::Relaxed);
        Some(Event::Exchange {
            id,
            rid: e.rid,
            status: e.status,
            req_bytes: e.req_bytes,
            resp_bytes: written.saturating_sub(e.written_mark),
            start: e.start,
            end: e.end,
            flags: e.flags,
            memo: e.memo,
            told: None,
        })
    }
}

/// What an exchange's record gets besides its bytes: the memo that allowed it.
#[derive(Default)]
pub struct Note {
    pub memo: u32,
}

/// An exchange whose response is being written.
pub struct Ex {
    pub rid: u64,
    pub start: f64,
    pub written_mark: u64,
    pub memo: u32,
}

/// A response body that notes when it ended (or was dropped before its end).
pub struct Tracked {
    pub inner: Reply,
    pub ex: Option<Ex>,
    pub status: u16,
    pub meter: Arc<Meter>,
}

impl Tracked {
    fn finish(&mut self, flags: &'static str) {
        let Some(ex) = self.ex.take() else {
            return;
        };
        // a 400 is a request the core could not frame: Envoy's DPE (downstream protocol error)
        let flags = if self.status == 400 { "DPE" } else { flags };
        let m = &self.meter;
        let read = m.read.load(Ordering::Relaxed);
        let req_bytes = read.saturating_sub(m.read_mark.swap(read, Ordering::Relaxed));
        *m.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ended {
            rid: ex.rid,
            status: self.status,
            start: ex.start,
            end: wall(),
            req_bytes,
            written_mark: ex.written_mark,
            flags,
            memo: ex.memo,
        });
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.finish("-"),
            Poll::Ready(Some(Err(_))) => self.finish("UC"),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // hyper drops a body it needs no more of (HEAD, a length reached) or one whose
        // client went away
        let flags = if self.inner.is_end_stream() {
            "-"
        } else {
            "DC"
        };
        self.finish(flags);
    }
}
