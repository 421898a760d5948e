//! The event queue to Python: one eventfd a trio task awaits, and a bounded queue it
//! drains in batches.
//!
//! Decides: what the core tells Python (a new connection to decide, an attempt that
//! failed, a finished connection, progress), when an event is dropped, and when Python
//! is woken: at once for what waits on Python (a decision, a failed attempt, an L7
//! request head), within limits::QUIET_DELAY for what does not (finished, progress),
//! and within limits::EXCHANGE_DELAY for an L7 exchange's record, which is only
//! counted and recorded; both under load ride along with the next decision (or the
//! connection's finished record) instead of costing a wake-up of their own. Must never:
//! block, wait for the GIL, drop anything but a progress record (decisions and finished
//! records are bounded elsewhere: limits.rs), or leave an event unsignalled.

use crate::limits::{EVENT_BATCH, EXCHANGE_DELAY, MAX_EVENTS, QUIET_DELAY};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// A connection the core answered from Python's stored answer `entry` (decisions.rs):
    /// Python records it as it would have after deciding it. Waits on nothing.
    Cached {
        id: u64,
        entry: u64,
        /// When the core answered it (wall clock): the record's start.
        at: f64,
        src: SocketAddr,
        dst: SocketAddr,
        /// A tunnel stream's CONNECT (the destination side).
        tunnel: Option<Box<TunnelInfo>>,
        /// The `traceparent` the core sent on a captured connection's tunnel.
        traceparent: Option<String>,
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
    /// and Envoy's response flags ("-", "DC", "UC"); `memo`: the token of the reused
    /// answer that allowed it (0: Python was asked, l7memo.rs); `told`: a told head's
    /// (method, target, first Host) of a watched connection (Mode::Tell, l7tap.rs).
    Exchange {
        id: u64,
        rid: u64,
        status: u16,
        req_bytes: u64,
        resp_bytes: u64,
        start: f64,
        end: f64,
        flags: &'static str,
        memo: u32,
        told: Option<Box<Told>>,
    },
    /// hyper refused an L7 request head (400, 431) and the connection closed.
    HttpRefused {
        id: u64,
        status: u16,
        reason: String,
        req_bytes: u64,
    },
}

/// What the record needs of a told head: method, target as received, the first Host.
pub type Told = (String, String, String);

impl Event {
    /// Only progress records may be dropped (see limits::MAX_EVENTS).
    fn droppable(&self) -> bool {
        matches!(self, Event::Progress { .. })
    }

    /// Something waits on Python's answer: wake it now. An L7 request head is one: its
    /// request is held until Python answers, so a quiet delay would be every request's.
    fn urgent(&self) -> bool {
        matches!(
            self,
            Event::Conn { .. } | Event::Failed { .. } | Event::Request { .. }
        )
    }

    /// How long a non-urgent event may wait for a wake-up: an exchange's record longest
    /// (nothing reads it but the counters and telemetry), the rest QUIET_DELAY.
    fn delay(&self) -> Duration {
        match self {
            Event::Exchange { .. } => EXCHANGE_DELAY,
            _ => QUIET_DELAY,
        }
    }
}

struct Inner {
    q: VecDeque<Event>,
    /// The eventfd was written and Python has not drained since.
    signalled: bool,
    /// When the earliest delayed signal scheduled fires (None: none is scheduled). A
    /// later one is only scheduled when it must fire earlier (a finished record after
    /// exchanges), so there are at most two in flight.
    nudge_at: Option<tokio::time::Instant>,
}

pub struct Queue {
    q: Mutex<Inner>,
    efd: OwnedFd,
    pub dropped: AtomicU64,
}

impl Queue {
    pub fn new() -> std::io::Result<Arc<Self>> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Queue {
            q: Mutex::new(Inner {
                q: VecDeque::new(),
                signalled: false,
                nudge_at: None,
            }),
            // SAFETY: `fd` was just created and is owned here only.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            dropped: AtomicU64::new(0),
        }))
    }

    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `ev`. Python drains until empty after each wake-up, so one signal per
    /// batch is enough: an urgent event signals unless a signal is already pending; any
    /// other is signalled within its delay (QUIET_DELAY, EXCHANGE_DELAY: by the next
    /// urgent event, a full batch, or a delayed nudge on the runtime; at once outside one).
    pub fn push(self: &Arc<Self>, ev: Event) {
        let (now, later) = {
            let mut g = self.lock();
            if g.q.len() >= MAX_EVENTS && ev.droppable() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let urgent = ev.urgent() || g.q.len() + 1 >= EVENT_BATCH;
            let delay = ev.delay();
            g.q.push_back(ev);
            if g.signalled {
                (false, None)
            } else if urgent {
                g.signalled = true;
                (true, None)
            } else {
                (false, Some(delay))
            }
        };
        if now {
            self.signal();
        } else if let Some(delay) = later {
            self.nudge(delay);
        }
    }

    /// Signal within `delay` unless something else does first.
    fn nudge(self: &Arc<Self>, delay: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.signal_pending();
        };
        let at = tokio::time::Instant::now() + delay;
        {
            let mut g = self.lock();
            if g.nudge_at.is_some_and(|t| t <= at) {
                return; // one is on its way, soon enough
            }
            g.nudge_at = Some(at);
        }
        let me = self.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(at).await;
            {
                let mut g = me.lock();
                if g.nudge_at == Some(at) {
                    g.nudge_at = None;
                }
            }
            me.signal_pending();
        });
    }

    /// Signal if events wait and no signal is pending.
    fn signal_pending(&self) {
        let now = {
            let mut g = self.lock();
            let now = !g.signalled && !g.q.is_empty();
            g.signalled |= now;
            now
        };
        if now {
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
        let mut g = self.lock();
        let n = g.q.len().min(max);
        let out: Vec<Event> = g.q.drain(..n).collect();
        // more than one batch: wake Python again; else the next push signals
        g.signalled = !g.q.is_empty();
        let again = g.signalled;
        drop(g);
        if again {
            self.signal();
        }
        out
    }

    pub fn len(&self) -> usize {
        self.lock().q.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(q: &Queue) -> bool {
        let mut p = libc::pollfd {
            fd: q.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, no wait.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    fn conn(id: u64) -> Event {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Event::Conn {
            id,
            kind: Kind::Outbound,
            src: a,
            dst: a,
            tunnel: None,
        }
    }

    fn finished(id: u64) -> Event {
        Event::Finished {
            id,
            sent: 1,
            received: 2,
            start: 0.0,
            end: 0.0,
            reason: "eof".into(),
        }
    }

    #[test]
    fn a_decision_wakes_python_at_once() {
        let q = Queue::new().unwrap();
        q.push(conn(1));
        assert!(readable(&q));
        q.push(conn(2)); // already signalled: one wake-up for the batch
        let got = q.drain(512);
        assert_eq!(got.len(), 2);
        assert!(!readable(&q));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_head_wakes_python_at_once_and_a_record_waits() {
        let q = Queue::new().unwrap();
        q.push(finished(1)); // quiet: a nudge is scheduled, nothing signalled yet
        assert!(!readable(&q));
        q.push(Event::Request {
            id: 2,
            rid: 1,
            method: "GET".into(),
            target: "/".into(),
            version: "HTTP/1.1",
            headers: vec![],
        });
        assert!(
            readable(&q),
            "a held request must not wait for the quiet delay"
        );
        assert_eq!(q.drain(512).len(), 2);
    }

    #[test]
    fn a_finished_record_outside_a_runtime_is_signalled_at_once() {
        let q = Queue::new().unwrap();
        q.push(finished(1));
        assert!(readable(&q));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_finished_record_rides_with_the_next_decision_or_is_signalled_soon() {
        let q = Queue::new().unwrap();
        q.push(finished(1));
        assert!(!readable(&q)); // nothing waits on Python yet
        q.push(conn(2));
        assert!(readable(&q)); // the decision carries it along
        let got = q.drain(512);
        assert!(matches!(
            got[..],
            [Event::Finished { id: 1, .. }, Event::Conn { id: 2, .. }]
        ));
        q.push(finished(3));
        q.push(finished(4));
        assert!(!readable(&q));
        tokio::time::sleep(QUIET_DELAY * 10).await;
        assert!(readable(&q)); // never left unsignalled
        assert_eq!(q.drain(512).len(), 2);
        assert!(!readable(&q));
        q.push(finished(5)); // a second nudge after the first one fired
        tokio::time::sleep(QUIET_DELAY * 10).await;
        assert!(readable(&q));
    }

    fn exchange(id: u64) -> Event {
        Event::Exchange {
            id,
            rid: 1,
            status: 200,
            req_bytes: 1,
            resp_bytes: 2,
            start: 0.0,
            end: 0.0,
            flags: "-",
            memo: 1,
            told: None,
        }
    }

    /// The earliest delayed signal, as a delay from now.
    fn nudge_in(q: &Queue) -> Option<Duration> {
        let at = q.lock().nudge_at?;
        Some(at.saturating_duration_since(tokio::time::Instant::now()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exchanges_wait_longer_and_a_finished_record_takes_them_along() {
        let q = Queue::new().unwrap();
        q.push(exchange(1));
        q.push(exchange(1));
        assert!(!readable(&q));
        let d = nudge_in(&q).unwrap();
        assert!(d > QUIET_DELAY && d <= EXCHANGE_DELAY, "{d:?}");
        q.push(finished(1)); // the connection ended: its records go within QUIET_DELAY
        assert!(nudge_in(&q).unwrap() <= QUIET_DELAY);
        tokio::time::sleep(QUIET_DELAY * 10).await;
        assert!(readable(&q));
        let got = q.drain(512);
        assert!(matches!(
            got[..],
            [
                Event::Exchange { .. },
                Event::Exchange { .. },
                Event::Finished { .. }
            ]
        ));
        q.push(exchange(2)); // never left unsignalled
        tokio::time::sleep(EXCHANGE_DELAY * 3).await;
        assert!(readable(&q));
        assert_eq!(q.drain(512).len(), 1);
        assert_eq!(nudge_in(&q), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_batch_of_exchanges_wakes_python_at_once() {
        let q = Queue::new().unwrap();
        for _ in 0..EVENT_BATCH - 1 {
            q.push(exchange(1));
        }
        assert!(!readable(&q));
        q.push(exchange(1));
        assert!(readable(&q));
        assert_eq!(q.drain(EVENT_BATCH).len(), EVENT_BATCH);
    }

    #[test]
    fn more_than_a_batch_wakes_python_again() {
        let q = Queue::new().unwrap();
        for i in 0..5 {
            q.push(conn(i));
        }
        assert_eq!(q.drain(3).len(), 3);
        assert!(readable(&q));
        assert_eq!(q.drain(3).len(), 2);
        assert!(!readable(&q));
    }
}
