//! The core's runtime: the tokio threads, the shared state every connection task uses
//! (pending decisions, live connections, identities and trust, counters), and the
//! life of a bridged connection from its first byte to its finished record.
//!
//! Decides: how a connection waits for Python (a bounded table; overflow and timeouts
//! refuse it with a counted reason) and how many the core holds; the life of a bridged
//! connection is live.rs. Must never: wait for the GIL or block a runtime thread.

use crate::decisions::{Answer, Cache, FlowKey, Reply, Stored};
use crate::events::{Event, Queue};
use crate::limits::{DECISION_TIMEOUT, MAX_PENDING};
use crate::live::Live;
use crate::tls::{self, Identities, Trust};
use rustls::ClientConfig;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    /// HBONE (HTTP/2 CONNECT on a pooled connection) or one HTTP/1.1 CONNECT per TLS
    /// connection.
    pub hbone: bool,
    /// The outer socket's source address (HBONE: the source pod's, IP_TRANSPARENT).
    pub bind: Option<IpAddr>,
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
    /// Streams a peer may open on one HBONE server connection
    /// (limits::H2_SERVER_MAX_STREAMS; tests raise it to kill 1,000 streams at once).
    pub hbone_max_streams: u32,
}

pub struct Admitted(Arc<Shared>);

/// A connection waiting for Python: the answer's channel and its flow key, if any.
type Waiting = (oneshot::Sender<Command>, Option<FlowKey>);

/// A gauge counted up while this guard lives (HBONE connections and streams).
pub struct Gauge(Arc<Shared>, fn(&Shared) -> &AtomicU64);

impl Gauge {
    pub fn new(s: &Arc<Shared>, f: fn(&Shared) -> &AtomicU64) -> Self {
        f(s).fetch_add(1, Ordering::Relaxed);
        Gauge(s.clone(), f)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Shared {
    pub events: Arc<Queue>,
    pub settings: Settings,
    pub ids: Arc<Identities>,
    /// Waiting for Python: the answer's channel, and the flow key when Python may store
    /// its answer for repeat flows (decisions.rs).
    pending: Mutex<HashMap<u64, Waiting>>,
    /// Python's stored answers for repeat tunnel flows, valid for one generation.
    pub decisions: Cache,
    pub(crate) live: Mutex<HashMap<u64, Arc<Live>>>,
    trust: RwLock<Option<Arc<Trust>>>,
    server: RwLock<Option<tls::ServerConfigs>>,
    clients: Mutex<HashMap<(String, String, bool), Arc<ClientConfig>>>,
    /// Server configurations presenting one pod identity (HBONE on a pod's address).
    pod_servers: Mutex<HashMap<String, tls::ServerConfigs>>,
    /// Local pod address -> SPIFFE ID (Core.set_pod_identities).
    pod_ids: RwLock<HashMap<IpAddr, String>>,
    /// Pooled HBONE client connections.
    pub pool: crate::pool::Pool,
    /// Set on drain: HBONE server connections send GOAWAY.
    pub draining: tokio::sync::watch::Sender<bool>,
    pub hbone_connections: AtomicU64,
    pub hbone_streams: AtomicU64,
    /// L7 connections and their request heads waiting for Python (l7.rs).
    pub l7: crate::l7::Table,
    counters: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    open: AtomicU64,
    epoch: Instant,
    pub stop_accepting: Notify,
}

/// 24 random bytes (a traceparent's ids) from a per-thread block of 4 KiB of the
/// kernel's randomness, refilled when used up: one getrandom per 170 connections.
fn random24() -> [u8; 24] {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with(|p| {
        let (buf, at) = &mut *p.borrow_mut();
        if *at + 24 > buf.len() {
            buf.resize(4080, 0);
            let mut filled = 0;
            while filled < buf.len() {
                // SAFETY: writes at most the buffer's remaining length into it.
                let n = unsafe {
                    libc::getrandom(
                        buf[filled..].as_mut_ptr() as *mut libc::c_void,
                        buf.len() - filled,
                        0,
                    )
                };
                if n <= 0 {
                    break; // unreachable in practice (getrandom blocks only before boot entropy)
                }
                filled += n as usize;
            }
            *at = 0;
        }
        let mut out = [0u8; 24];
        out.copy_from_slice(&buf[*at..*at + 24]);
        *at += 24;
        out
    })
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
            decisions: Cache::default(),
            live: Mutex::new(HashMap::new()),
            trust: RwLock::new(None),
            server: RwLock::new(None),
            clients: Mutex::new(HashMap::new()),
            pod_servers: Mutex::new(HashMap::new()),
            pod_ids: RwLock::new(HashMap::new()),
            pool: crate::pool::Pool::default(),
            draining: tokio::sync::watch::channel(false).0,
            hbone_connections: AtomicU64::new(0),
            hbone_streams: AtomicU64::new(0),
            l7: crate::l7::Table::default(),
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

    /// How many connection ids were handed out (churn, for live.rs `Trim`).
    pub fn ids_issued(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed) - 1
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn count(&self, name: &str, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        // the name is copied only the first time (counted several times per connection)
        match c.get_mut(name) {
            Some(v) => *v += n,
            None => {
                c.insert(name.to_string(), n);
            }
        }
    }

    /// An inbound attempt Python allowed that failed here (its upstream): Python learns
    /// the outcome; answers the core gave on its own (400, refusals) stay silent.
    pub fn report_upstream_failure(&self, id: u64, status: u16, reason: String) {
        self.l7.unmark(id);
        if reason.starts_with("upstream") {
            self.events.push(Event::Failed {
                id,
                status,
                reason,
                policy: None,
            });
        }
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
        self.pod_servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.pool.retire(|_| true);
        Ok(())
    }

    /// Replace the whole map local pod address -> SPIFFE ID.
    pub fn set_pod_identities(&self, pairs: HashMap<IpAddr, String>) {
        *self.pod_ids.write().unwrap_or_else(|e| e.into_inner()) = pairs;
    }

    /// The pod identity a connection to `local` presents, if `local` is a pod's.
    pub fn pod_identity(&self, local: IpAddr) -> Option<String> {
        self.pod_ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&local.to_canonical())
            .cloned()
    }

    /// The server configuration presenting `spiffe_id`'s SVID; None when no SVID (or no
    /// trust bundle) was pushed for it.
    pub fn pod_server_config(&self, spiffe_id: &str) -> Option<tls::ServerConfigs> {
        let mut m = self.pod_servers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(spiffe_id) {
            return Some(c.clone());
        }
        let trust = self
            .trust
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let ck = self.ids.get(spiffe_id)?;
        let cfg = tls::fixed_server_config(ck, trust).ok()?;
        m.insert(spiffe_id.to_string(), cfg.clone());
        Some(cfg)
    }

    /// A new or renewed SVID: client configurations of that identity are rebuilt on
    /// next use (their sessions belonged to the old certificate).
    pub fn identity_changed(&self, spiffe_id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(src, _, _), _| src != spiffe_id);
        self.pod_servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(spiffe_id);
        self.pool.retire(|k| k.source == spiffe_id);
    }

    pub fn server_config(&self) -> Option<tls::ServerConfigs> {
        self.server
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `hbone`: ALPN h2 and no SNI.
    pub fn client_config(
        &self,
        src: &str,
        expected: &str,
        hbone: bool,
    ) -> Result<Arc<ClientConfig>, String> {
        let key = (src.to_string(), expected.to_string(), hbone);
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
        let cfg = tls::client_config(ck, trust, expected, hbone)?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, cfg.clone());
        Ok(cfg)
    }

    // ---- decisions --------------------------------------------------------------
    /// Send `ev` and wait for Python's command; None when the table is full or Python
    /// took too long (both counted). A repeat tunnel flow whose answer Python stored
    /// under the current generation is answered at once, and Python is told (a
    /// `Cached` event: it records the connection as if it had decided it).
    pub async fn decide(&self, id: u64, ev: Event) -> Option<Command> {
        self.l7.unmark(id); // a new decision: an earlier L7 mark no longer applies
        let key = FlowKey::of(&ev);
        if let Some(a) = key.as_ref().and_then(|k| self.decisions.get(k)) {
            if let Event::Conn {
                src, dst, tunnel, ..
            } = ev
            {
                let (cmd, traceparent) = a.reply.command(src, random24());
                self.count("decision_cache_hits", 1);
                self.events.push(Event::Cached {
                    id,
                    entry: a.entry,
                    at: wall(),
                    src,
                    dst,
                    tunnel: tunnel.map(Box::new),
                    traceparent,
                });
                return Some(cmd);
            }
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_PENDING {
                drop(p);
                self.count("refused_pending_full", 1);
                return None;
            }
            p.insert(id, (tx, key));
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
        self.command_remembered(id, cmd, None)
    }

    /// `command`, and with `remember` = (generation, entry) a connect answer is stored
    /// for the connection's repeat flows (only a tunnel stream has a flow key; an answer
    /// decided under another generation than the current one is dropped).
    pub fn command_remembered(&self, id: u64, cmd: Command, remember: Option<(u64, u64)>) -> bool {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let Some((tx, key)) = pending else {
            return false;
        };
        if let (Some(key), Some((generation, entry))) = (key, remember) {
            if let Some(reply) = Reply::of(&cmd) {
                let a = Answer {
                    entry,
                    generation,
                    reply,
                };
                match self.decisions.put(key, a) {
                    Stored::Yes => self.count("decision_cache_stored", 1),
                    Stored::Stale => self.count("decision_cache_stale", 1),
                    Stored::Evicted => {
                        self.count("decision_cache_stored", 1);
                        self.count("decision_cache_evicted", 1)
                    }
                }
            }
        }
        tx.send(cmd).is_ok()
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
}
