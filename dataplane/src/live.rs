//! Bridged connections: their life from the first byte to the finished record, the
//! idle sweep and progress reports.
//!
//! Decides: what a live connection shows (kind, ends, byte counts), when it is closed
//! (its copy loop ended, a reset, Python's close, the idle timeout) and that a reset on
//! one side resets the other. Must never: let a bridged connection end without its
//! finished record, or keep a connection after its record was sent.

use crate::copy::{self, Counters, Side};
use crate::events::{Event, Kind};
use crate::limits::{PROGRESS_EVERY, SWEEP_EVERY};
use crate::runtime::{wall, Shared};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

pub struct Live {
    pub id: u64,
    pub kind: Kind,
    pub mode: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub start: f64,
    pub counters: Counters,
    pub(crate) close: Notify,
    pub(crate) close_reason: Mutex<Option<String>>,
    reported: AtomicU64,
    reported_at_ms: AtomicU64,
}

impl Shared {
    /// Bridge `a` (source side) and `b` (destination side) until the connection ends,
    /// then report it. `fa`/`fb`: their TCP fds, for resets.
    #[allow(clippy::too_many_arguments)]
    pub async fn bridge<A, B>(
        &self,
        id: u64,
        kind: Kind,
        mode: &'static str,
        src: SocketAddr,
        dst: SocketAddr,
        mut a: A,
        mut b: B,
        fds: (RawFd, RawFd),
        already: (u64, u64),
    ) where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let live = Arc::new(Live {
            id,
            kind,
            mode,
            src,
            dst,
            start: wall(),
            counters: Counters::default(),
            close: Notify::new(),
            close_reason: Mutex::new(None),
            reported: AtomicU64::new(0),
            reported_at_ms: AtomicU64::new(self.now_ms()),
        });
        live.counters.sent.store(already.0, Ordering::Relaxed);
        live.counters.received.store(already.1, Ordering::Relaxed);
        live.counters
            .active_ms
            .store(self.now_ms(), Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, live.clone());
        self.count("connections_bridged", 1);
        let now = || self.now_ms();
        let http = self.l7.take(id, dst); // an HTTP port with per-request rules: l7.rs
        let moved = async {
            if let Some(mode) = http {
                crate::l7::serve(self, id, mode, &mut a, &mut b, &live.counters, &now).await
            } else {
                copy::bridge(&mut a, &mut b, &live.counters, &now).await
            }
        };
        let outcome = tokio::select! {
            r = moved => match r {
                Ok(()) => None,
                Err((side, e)) => {
                    self.count("resets", 1);
                    let r = crate::sockopt::reason(&e);
                    Some(match side { Side::A => format!("{r} (source)"), Side::B => format!("{r} (destination)") })
                }
            },
            _ = live.close.notified() => Some(
                live.close_reason.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| "closed".into())
            ),
        };
        let reason = match outcome {
            None => "closed".to_string(),
            Some(r) => {
                crate::sockopt::reset_on_close(fds.0);
                crate::sockopt::reset_on_close(fds.1);
                r
            }
        };
        drop(a);
        drop(b);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let c = &live.counters;
        let (sent, received) = (
            c.sent.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
        );
        self.count("bytes_sent", sent);
        self.count("bytes_received", received);
        self.events.push(Event::Finished {
            id,
            sent,
            received,
            start: live.start,
            end: wall(),
            reason,
        });
    }

    /// Once per SWEEP_EVERY: idle connections are closed, long-lived ones report
    /// their bytes every PROGRESS_EVERY.
    pub async fn sweep(self: Arc<Self>) {
        let idle = self.settings.idle_timeout.as_millis() as u64;
        let every = PROGRESS_EVERY.as_millis() as u64;
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let now = self.now_ms();
            for l in self.live() {
                let c = &l.counters;
                if now.saturating_sub(c.active_ms.load(Ordering::Relaxed)) > idle {
                    self.count("idle_closed", 1);
                    self.close(l.id, "idle_timeout");
                    continue;
                }
                if now.saturating_sub(l.reported_at_ms.load(Ordering::Relaxed)) >= every {
                    let (s, r) = (
                        c.sent.load(Ordering::Relaxed),
                        c.received.load(Ordering::Relaxed),
                    );
                    l.reported_at_ms.store(now, Ordering::Relaxed);
                    if s + r != l.reported.swap(s + r, Ordering::Relaxed) {
                        self.events.push(Event::Progress {
                            id: l.id,
                            sent: s,
                            received: r,
                        });
                    }
                }
            }
        }
    }
}
