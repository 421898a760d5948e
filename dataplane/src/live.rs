//! Bridged connections: their life from the first byte to the finished record, the
//! idle sweep and progress reports.
//!
//! Decides: what a live connection shows (kind, ends, byte counts), when it is closed
//! (its copy loop ended, a reset, Python's close, the idle timeout) and that a reset on
//! one side resets the other; when freed heap goes back to the OS (`Trim`). Must never:
//! let a bridged connection end without its finished record, or keep a connection after
//! its record was sent.

use crate::copy::{Counters, Side};
use crate::events::{Event, Kind};
use crate::limits::{PROGRESS_EVERY, SWEEP_EVERY, TRIM_CHURN, TRIM_EVERY, TRIM_QUIET};
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
    /// then report it. `fa`/`fb`: their TCP fds, for resets. An `async` block, not an
    /// `async fn`: an async fn's future keeps its arguments twice (as passed and as
    /// bound), and this future is what every idle connection holds.
    #[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
    pub fn bridge<'s, A, B>(
        &'s self,
        id: u64,
        kind: Kind,
        mode: &'static str,
        src: SocketAddr,
        dst: SocketAddr,
        mut a: A,
        mut b: B,
        fds: (RawFd, RawFd),
        already: (u64, u64),
    ) -> impl std::future::Future<Output = ()> + 's
    where
        A: AsyncRead + AsyncWrite + Unpin + 'static,
        B: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        async move {
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
                match http {
                    // the source's view: watched as the bytes pass (l7tap.rs); boxed, as the
                    // served ones below, so a plain connection's task stays as small
                    Some(crate::l7::Mode::Tell) => {
                        Box::pin(crate::l7tap::bridge_watched(
                            self,
                            id,
                            &mut a,
                            &mut b,
                            &live.counters,
                            &now,
                        ))
                        .await
                    }
                    // boxed: the HTTP server's state never widens every plain connection's task
                    Some(crate::l7::Mode::Ask) => {
                        Box::pin(crate::l7::serve(
                            self,
                            id,
                            &mut a,
                            &mut b,
                            &live.counters,
                            &now,
                        ))
                        .await
                    }
                    None => crate::ways::bridge_legs(&mut a, &mut b, &live.counters, &now).await,
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
    }

    /// Once per SWEEP_EVERY: idle connections are closed, long-lived ones report
    /// their bytes every PROGRESS_EVERY.
    pub async fn sweep(self: Arc<Self>) {
        let idle = self.settings.idle_timeout.as_millis() as u64;
        let every = PROGRESS_EVERY.as_millis() as u64;
        let mut trim = Trim::default();
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let now = self.now_ms();
            let live = self.live();
            if trim.due(live.len(), self.ids_issued(), now) {
                self.count("heap_trims", 1);
                tokio::task::spawn_blocking(release_free_heap);
            }
            for l in live {
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

/// When freed heap goes back to the OS (limits.rs, TRIM_*): after TRIM_CHURN of movement
/// (the live count's change plus the connections started) and then a still sweep (both
/// moved by less than TRIM_QUIET), at most once per TRIM_EVERY; and once TRIM_EVERY after
/// start. Connections started count because a load of short connections at a constant
/// live count (connect-rate: 16 at a time) frees every set-up's heap too.
#[derive(Default)]
pub(crate) struct Trim {
    at: (usize, u64),
    last: (usize, u64),
    last_ms: Option<u64>,
}

impl Trim {
    pub(crate) fn due(&mut self, live: usize, started: u64, now_ms: u64) -> bool {
        let moved =
            |from: (usize, u64)| live.abs_diff(from.0) as u64 + started.saturating_sub(from.1);
        let quiet = moved(self.last) < TRIM_QUIET as u64;
        self.last = (live, started);
        let every = TRIM_EVERY.as_millis() as u64;
        let due = match self.last_ms {
            None => now_ms >= every,
            Some(t) => now_ms.saturating_sub(t) >= every && moved(self.at) >= TRIM_CHURN as u64,
        };
        if due && quiet {
            self.at = (live, started);
            self.last_ms = Some(now_ms);
        }
        due && quiet
    }
}

/// glibc keeps freed chunks inside its arenas; `malloc_trim` returns their whole pages.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and madvises the allocator's own free lists
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod trim_tests {
    use super::Trim;

    #[test]
    fn trims_once_after_start_then_after_a_burst_has_settled() {
        let mut t = Trim::default();
        assert!(!t.due(0, 0, 9_000), "not before start-up is over");
        assert!(t.due(0, 0, 10_000), "once after start");
        assert!(!t.due(0, 0, 11_000));
        // a burst: the count moves, so not yet
        assert!(!t.due(3000, 3000, 21_000));
        assert!(!t.due(8000, 8000, 22_000));
        assert!(t.due(8010, 8010, 23_000), "settled after 8,010 set-ups");
        assert!(!t.due(8010, 8010, 40_000), "nothing moved since");
        // the connections end: trimmed once the count is still again, 10 s after the last
        assert!(!t.due(0, 8010, 41_000));
        assert!(t.due(0, 8010, 42_000));
    }

    #[test]
    fn steady_churn_trims_once_it_stops_never_while_it_lasts() {
        let mut t = Trim::default();
        assert!(t.due(16, 0, 10_000));
        for s in 11..200u64 {
            // 2,000 short connections a second, 16 at a time
            assert!(!t.due(16 + (s as usize % 3), s * 2000, s * 1000));
        }
        assert!(
            t.due(0, 199 * 2000, 200_000),
            "the load is over: its set-ups' heap goes back"
        );
        assert!(!t.due(0, 199 * 2000, 300_000), "nothing moved since");
    }

    #[test]
    fn at_most_once_per_interval() {
        let mut t = Trim::default();
        assert!(t.due(0, 0, 10_000));
        assert!(!t.due(2000, 2000, 11_000));
        assert!(
            !t.due(2000, 2000, 12_000),
            "moved and still, but only 2 s after the last"
        );
        assert!(t.due(2000, 2000, 20_000));
    }
}
