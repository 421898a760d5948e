//! The HBONE client pool: HTTP/2 connections to peers, shared by the streams that
//! go the same way.
//!
//! Decides: which connection a new stream rides — one of the key (source identity,
//! expected destination identity, peer address, bind address) that is not retired and
//! carries fewer streams than one short of the peer's limit (ztunnel's rule), else a new
//! connection, opened one at a time per key (others wait for it, then share it); when a
//! connection leaves the pool (GOAWAY or an error seen by its driver, unused for
//! POOL_IDLE, a renewed SVID or reloaded bundle: `retire`). A retired connection
//! carries its open streams to their end, takes no new one, and closes when the last
//! one ends. Must never: do I/O itself, hand a stream a retired connection, or open two
//! connections for one key at once.

use bytes::Bytes;
use h2::client::SendRequest;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OwnedMutexGuard;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub source: String,
    pub expected: String,
    pub peer: SocketAddr,
    pub bind: Option<IpAddr>,
}

/// One pooled HTTP/2 connection (its driver task owns the connection itself).
pub struct Conn {
    pub id: u64,
    send: SendRequest<Bytes>,
    streams: AtomicUsize,
    retired: AtomicBool,
    /// Milliseconds since `born` when the last stream ended.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl Conn {
    pub fn new(id: u64, send: SendRequest<Bytes>) -> Arc<Self> {
        Arc::new(Conn {
            id,
            send,
            streams: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// Streams a connection takes: one short of the peer's limit (at least one).
    fn capacity(&self) -> usize {
        self.send
            .current_max_send_streams()
            .saturating_sub(1)
            .max(1)
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// No stream for `idle`: the driver closes it.
    pub fn idle_for(&self, idle: Duration) -> bool {
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.streams.load(Ordering::Relaxed) == 0 && self.born.elapsed() >= since + idle
    }
}

/// A stream's claim on its connection; dropping it frees the slot.
pub struct Lease(Arc<Conn>);

impl Lease {
    pub fn send_request(&self) -> SendRequest<Bytes> {
        self.0.send.clone()
    }
    pub fn conn(&self) -> &Arc<Conn> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let c = &self.0;
        c.idle_since_ms
            .store(c.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        c.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last failed attempt to open a connection for a key: streams that waited for
/// that attempt fail with it instead of each trying again in turn.
pub type LastFailure = Option<(Instant, u16, String)>;

type Opener = Arc<tokio::sync::Mutex<LastFailure>>;

#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, Vec<Arc<Conn>>>>,
    opening: Mutex<HashMap<Key, Opener>>,
}

impl Pool {
    /// A slot on a pooled connection of `key`, if one has room.
    pub fn take(&self, key: &Key) -> Option<Lease> {
        let m = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for c in m.get(key)? {
            if c.retired() {
                continue;
            }
            let cap = c.capacity();
            let got = c
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                })
                .is_ok();
            if got {
                return Some(Lease(c.clone()));
            }
        }
        None
    }

    /// The right to open a connection for `key`: one opener at a time; the others
    /// wait here and then look again (`take`), or fail with the failure of the attempt
    /// they waited for (the guard holds it).
    pub async fn opener(&self, key: &Key) -> OwnedMutexGuard<LastFailure> {
        let m = self
            .opening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Pool a new connection and take its first slot.
    pub fn insert(&self, key: &Key, c: Arc<Conn>) -> Lease {
        c.streams.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .push(c.clone());
        Lease(c)
    }

    /// Take one connection out of the pool (GOAWAY, error, idle); its streams go on.
    pub fn remove(&self, key: &Key, id: u64) {
        let mut m = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get_mut(key) {
            v.retain(|c| {
                if c.id == id {
                    c.retired.store(true, Ordering::Relaxed);
                }
                c.id != id
            });
            if v.is_empty() {
                m.remove(key);
                self.forget_opener(key);
            }
        }
    }

    /// Retire every connection whose key matches (a renewed SVID, a new bundle).
    pub fn retire(&self, matches: impl Fn(&Key) -> bool) {
        let mut m = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|k, v| {
            if matches(k) {
                for c in v.iter() {
                    c.retired.store(true, Ordering::Relaxed);
                }
                false
            } else {
                true
            }
        });
    }

    fn forget_opener(&self, key: &Key) {
        let mut o = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        // only when nobody holds or waits for it
        if o.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            o.remove(key);
        }
    }

    /// Pooled connections (all keys).
    pub fn len(&self) -> usize {
        let m = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        m.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
