//! L7 connections' shared table: which connections Python asked the core to serve as
//! HTTP (and how), and the request heads waiting for Python's answer.
//!
//! Decides: that a mark is used once and only for its upstream, that a waiting head
//! leaves the table however its wait ends. Must never: block on Python or hold a lock
//! across an await.

use crate::l7head::Answer;
use crate::l7memo::Generation;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// How the core serves a connection as HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every head waits for Python's answer (per-request rules at the destination).
    Ask,
    /// Watched, not served: the bytes go on as they are and each exchange is told to
    /// Python with its head (the source's view for HTTP metrics, l7tap.rs: the
    /// destination judges them).
    Tell,
}

/// Connections Python asked the core to serve as HTTP, and the heads waiting for an
/// answer.
#[derive(Default)]
pub struct Table {
    /// id -> the upstream it must be bridged to (None: whatever Python's command opens,
    /// a tunnel), and how
    marked: Mutex<HashMap<u64, (Option<SocketAddr>, Mode)>>,
    pub(crate) pending: Mutex<HashMap<(u64, u64), oneshot::Sender<Answer>>>,
    /// The policy generation memos must be of (Core.http_generation, l7memo.rs).
    pub generation: Generation,
}

impl Table {
    /// Python: when connection `id` is bridged (to `upstream`, when given), serve it
    /// as HTTP. A new decision for `id` clears the mark (runtime.rs `decide`).
    pub fn mark(&self, id: u64, upstream: Option<SocketAddr>, mode: Mode) {
        self.marked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (upstream, mode));
    }

    /// Forget a mark (the connection waits for another decision or is gone).
    pub fn unmark(&self, id: u64) {
        self.marked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// How connection `id`, bridged to `dst`, is served as HTTP (None: it is not; the
    /// mark is used up either way).
    pub fn take(&self, id: u64, dst: SocketAddr) -> Option<Mode> {
        let m = self
            .marked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)?;
        (m.0.is_none() || m.0 == Some(dst)).then_some(m.1)
    }

    /// Python's answer for head `rid` of `id`; false when nobody waits for it.
    pub fn answer(&self, id: u64, rid: u64, a: Answer) -> bool {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(id, rid));
        tx.is_some_and(|tx| tx.send(a).is_ok())
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes a waiting head from the table however its wait ends.
pub(crate) struct Waiting<'t>(pub &'t Table, pub (u64, u64));

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}
