//! The event queue to Python: one eventfd a trio task awaits, and a bounded queue it
//! drains in batches.
//!
//! Decides: what the core tells Python (a new connection to decide, an attempt that
//! failed, a finished connection, progress) and when an event is dropped. Must never:
//! block, wait for the GIL, or drop anything but a progress record (decisions and
//! finished records are bounded elsewhere: limits.rs).

use crate::limits::MAX_EVENTS;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Outbound,
    Plaintext,
    Tunnel,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Outbound => "outbound",
            Kind::Plaintext => "plaintext",
            Kind::Tunnel => "tunnel",
        }
    }
}

/// The CONNECT request of a tunnel connection, with the peer's verified identity.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    pub peer_identity: String,
    pub target: SocketAddr,
    pub forwarded_for: Option<SocketAddr>,
    pub traceparent: Option<String>,
    /// "hbone" (an HTTP/2 stream) or "connect" (HTTP/1.1 CONNECT).
    pub protocol: &'static str,
    pub baggage: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A connection waits for a decision.
    Conn {
        id: u64,
        kind: Kind,
        src: SocketAddr,
        dst: SocketAddr,
        tunnel: Option<TunnelInfo>,
    },
    /// What Python chose did not work; the connection waits for another decision.
    Failed {
        id: u64,
        status: u16,
        reason: String,
        policy: Option<String>,
    },
    /// A bridged connection ended.
    Finished {
        id: u64,
        sent: u64,
        received: u64,
        start: f64,
        end: f64,
        reason: String,
    },
    /// A live connection's bytes so far.
    Progress { id: u64, sent: u64, received: u64 },
    /// An L7 request head waits for Python's answer (l7.rs; bounded by MAX_L7_PENDING).
    Request {
        id: u64,
        rid: u64,
        method: String,
        target: String,
        version: &'static str,
        headers: Vec<(bytes::Bytes, bytes::Bytes)>,
    },
    /// An L7 exchange ended: its status, bytes each way (as on the pod's wire), times,
    /// and Envoy's response flags ("-", "DC", "UC").
    Exchange {
        id: u64,
        rid: u64,
        status: u16,
        req_bytes: u64,
        resp_bytes: u64,
        start: f64,
        end: f64,
        flags: &'static str,
    },
    /// hyper refused an L7 request head (400, 431) and the connection closed.
    HttpRefused {
        id: u64,
        status: u16,
        reason: String,
        req_bytes: u64,
    },
}

impl Event {
    /// Only progress records may be dropped (see limits::MAX_EVENTS).
    fn droppable(&self) -> bool {
        matches!(self, Event::Progress { .. })
    }
}

pub struct Queue {
    q: Mutex<VecDeque<Event>>,
    efd: OwnedFd,
    pub dropped: AtomicU64,
}

impl Queue {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Queue {
            q: Mutex::new(VecDeque::new()),
            // SAFETY: `fd` was just created and is owned here only.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            dropped: AtomicU64::new(0),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Queue `ev`; the eventfd is written when the queue was empty (Python drains
    /// until empty after each wake-up, so one signal per batch is enough).
    pub fn push(&self, ev: Event) {
        let was_empty = {
            let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_EVENTS && ev.droppable() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_back(ev);
            q.len() == 1
        };
        if was_empty {
            self.signal();
        }
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our own eventfd.
        unsafe {
            libc::write(
                self.efd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }

    /// Reset the eventfd, then take up to `max` events.
    pub fn drain(&self, max: usize) -> Vec<Event> {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from our own non-blocking eventfd.
        unsafe {
            libc::read(
                self.efd.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            );
        }
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(max);
        let out: Vec<Event> = q.drain(..n).collect();
        if !q.is_empty() {
            drop(q);
            self.signal(); // more than one batch: wake Python again
        }
        out
    }

    pub fn len(&self) -> usize {
        self.q.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
