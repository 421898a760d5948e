//! The core's runtime: the tokio threads, the shared state every connection task uses
//! (pending decisions, live connections, identities and trust, counters), and the
//! life of a bridged connection from its first byte to its finished record.
//!
//! Decides: how a connection waits for Python (a bounded table; overflow and timeouts
//! refuse it with a counted reason), how it is bridged, closed on request, swept for
//! idleness and reported. Must never: wait for the GIL, block a runtime thread, or let
//! a connection end without a finished record (once it was bridged).

use crate::copy::{self, Counters, Side};
use crate::events::{Event, Kind, Queue};
use crate::limits::{DECISION_TIMEOUT, MAX_PENDING, PROGRESS_EVERY, SWEEP_EVERY};
use crate::tls::{self, Identities, Trust};
use rustls::{ClientConfig, ServerConfig};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Notify};

/// What Python decided for a connection.
#[derive(Debug)]
pub enum Command {
    /// Connect to `upstream` (bound to `bind` with IP_TRANSPARENT when given) and bridge.
    Connect {
        upstream: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// Open an mTLS tunnel to a peer node's :15008 and CONNECT through it.
    Tunnel(TunnelPlan),
    /// Refuse: a reset for captured connections, `status` for a CONNECT.
    Refuse {
        reason: String,
        status: u16,
        policy: Option<String>,
    },
    /// Bridge the connection to this socket, whose other end Python serves (the HTTP
    /// inspector for ports with per-request rules).
    Pipe { fd: OwnedFd },
}

#[derive(Debug, Clone)]
pub struct TunnelPlan {
    pub peer: SocketAddr,
    pub source_identity: String,
    pub expected_identity: String,
    pub sni: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
}

/// Settings from the agent's config (dataplane, identity sections).
#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connections the core holds at once (accepted, not yet ended); past it new ones
    /// are reset (`refused_max_connections`). dataplane.max_connections.
    pub max_connections: usize,
}

pub struct Live {
    pub id: u64,
    pub kind: Kind,
    pub mode: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub start: f64,
    pub counters: Counters,
    close: Notify,
    close_reason: Mutex<Option<String>>,
    reported: AtomicU64,
    reported_at_ms: AtomicU64,
}

pub struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Shared {
    pub events: Queue,
    pub settings: Settings,
    pub ids: Arc<Identities>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Command>>>,
    live: Mutex<HashMap<u64, Arc<Live>>>,
    trust: RwLock<Option<Arc<Trust>>>,
    server: RwLock<Option<Arc<ServerConfig>>>,
    clients: Mutex<HashMap<(String, String), Arc<ClientConfig>>>,
    counters: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    open: AtomicU64,
    epoch: Instant,
    pub stop_accepting: Notify,
}

pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Shared {
    pub fn new(settings: Settings) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Shared {
            events: Queue::new()?,
            settings,
            ids: Arc::new(Identities::default()),
            pending: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            trust: RwLock::new(None),
            server: RwLock::new(None),
            clients: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            open: AtomicU64::new(0),
            epoch: Instant::now(),
            stop_accepting: Notify::new(),
        }))
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Count an accepted connection in; None (and counted) when at the bound. The
    /// guard counts it out when the connection's task ends, however it ends.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        if n as usize >= self.settings.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.count("refused_max_connections", 1);
            return None;
        }
        Some(Admitted(self.clone()))
    }

    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn count(&self, name: &str, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(name.to_string()).or_insert(0) += n;
    }

    pub fn counters(&self) -> HashMap<String, u64> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    // ---- identities and trust ---------------------------------------------------
    pub fn set_trust(&self, t: Trust) -> Result<(), String> {
        let t = Arc::new(t);
        let server = tls::server_config(self.ids.clone(), t.clone())?;
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
        *self.server.write().unwrap_or_else(|e| e.into_inner()) = Some(server);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// A new or renewed SVID: client configurations of that identity are rebuilt on
    /// next use (their sessions belonged to the old certificate).
    pub fn identity_changed(&self, spiffe_id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(src, _), _| src != spiffe_id);
    }

    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn client_config(&self, src: &str, expected: &str) -> Result<Arc<ClientConfig>, String> {
        let key = (src.to_string(), expected.to_string());
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let trust = self
            .trust
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("no trust bundle")?;
        let ck = self
            .ids
            .get(src)
            .ok_or_else(|| format!("no SVID for {src}"))?;
        let cfg = tls::client_config(ck, trust, expected)?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, cfg.clone());
        Ok(cfg)
    }

    // ---- decisions --------------------------------------------------------------
    /// Send `ev` and wait for Python's command; None when the table is full or Python
    /// took too long (both counted).
    pub async fn decide(&self, id: u64, ev: Event) -> Option<Command> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_PENDING {
                drop(p);
                self.count("refused_pending_full", 1);
                return None;
            }
            p.insert(id, tx);
        }
        self.events.push(ev);
        match tokio::time::timeout(DECISION_TIMEOUT, rx).await {
            Ok(Ok(cmd)) => Some(cmd),
            _ => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                self.count("refused_decision_timeout", 1);
                None
            }
        }
    }

    /// Python's answer for `id`; false when nobody waits for one (timed out, gone).
    pub fn command(&self, id: u64, cmd: Command) -> bool {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match tx {
            Some(tx) => tx.send(cmd).is_ok(),
            None => false,
        }
    }

    // ---- live connections -------------------------------------------------------
    pub fn close(&self, id: u64, reason: &str) -> bool {
        let live = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match live {
            Some(l) => {
                l.close_reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| reason.to_string());
                l.close.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn live(&self) -> Vec<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn close_all(&self, reason: &str) {
        for l in self.live() {
            self.close(l.id, reason);
        }
    }

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
        let outcome = tokio::select! {
            r = copy::bridge(&mut a, &mut b, &live.counters, &now) => match r {
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
