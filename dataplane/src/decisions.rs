//! Python's answers for repeat flows (decisions/0006): a connection whose decision
//! inputs Python has already judged under the current generation is answered here,
//! without a round trip to Python.
//!
//! Decides: which connections may be answered from the table, keyed by everything
//! Python's decision reads from the event (a tunnel stream: protocol, verified peer
//! identity, peer address, local address, target, the address a `forwarded` claim
//! names, baggage; a captured connection: source and original destination addresses),
//! what a stored tunnel answer sends per connection (its own `forwarded`, a fresh
//! `traceparent`), and whether an entry is still valid (stored under the generation
//! that is current now). Python bumps the generation on every policy, registry, traffic-rule or config
//! change before anything else can be decided, and a bump empties the table, so an
//! answer is never used across a change. Python stores only answers without a
//! per-connection choice: an allowed plain connect at the destination, a tunnel to one
//! pod (no service VIP: no load balancing, outlier detection or connection limits) at
//! the source; never L7 serving.
//! Must never: store an answer for a generation that is not current, answer for a key it
//! was not given, hold more than `MAX_CACHED_DECISIONS` entries, or decide anything of
//! its own: every entry is a copy of an answer Python gave. Pure: no I/O, no clock.

use crate::events::{Event, Kind, TunnelInfo};
use crate::limits::MAX_CACHED_DECISIONS;
use crate::runtime::{Command, TunnelPlan};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What Python's decision for a tunnel stream reads from the event. The source port,
/// the `forwarded` port and `traceparent` vary per connection and are not part of it:
/// Python's decision reads only the addresses (a workload is an address, policies match
/// addresses, never ports of the source).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub kind: Kind,
    pub protocol: &'static str,
    pub peer_identity: String,
    pub peer_ip: IpAddr,
    pub local_ip: IpAddr,
    pub target: SocketAddr,
    pub forwarded_ip: Option<IpAddr>,
    pub baggage: Option<String>,
}

impl FlowKey {
    /// The key of a decision event, or None when it is not one the table serves.
    pub fn of(ev: &Event) -> Option<FlowKey> {
        match ev {
            Event::Conn {
                kind: Kind::Tunnel,
                src,
                dst,
                tunnel: Some(t),
                ..
            } => Some(Self::tunnel(*src, *dst, t)),
            Event::Conn {
                kind: Kind::Outbound,
                src,
                dst,
                tunnel: None,
                ..
            } => Some(FlowKey {
                kind: Kind::Outbound,
                protocol: "",
                peer_identity: String::new(),
                peer_ip: src.ip().to_canonical(),
                local_ip: dst.ip().to_canonical(),
                target: *dst,
                forwarded_ip: None,
                baggage: None,
            }),
            _ => None,
        }
    }

    fn tunnel(src: SocketAddr, dst: SocketAddr, t: &TunnelInfo) -> FlowKey {
        FlowKey {
            kind: Kind::Tunnel,
            protocol: t.protocol,
            peer_identity: t.peer_identity.clone(),
            peer_ip: src.ip().to_canonical(),
            local_ip: dst.ip().to_canonical(),
            target: t.target,
            forwarded_ip: t.forwarded_for.map(|a| a.ip().to_canonical()),
            baggage: t.baggage.clone(),
        }
    }
}

/// Python's answer, as stored: the command it gave, and the entry id Python knows the
/// decision by (its record template).
#[derive(Debug, Clone)]
pub struct Answer {
    pub entry: u64,
    pub generation: u64,
    pub reply: Reply,
}

#[derive(Debug, Clone)]
pub enum Reply {
    Connect {
        upstream: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// The tunnel plan without its per-connection headers (`forwarded`, `traceparent`).
    Tunnel(Arc<TunnelPlan>),
}

/// Headers a tunnel command carries that belong to one connection only.
const PER_CONNECTION: [&str; 2] = ["forwarded", "traceparent"];

impl Reply {
    /// What is stored of `cmd`: a connect or a tunnel (its per-connection headers left
    /// out); None for anything else.
    pub fn of(cmd: &Command) -> Option<Reply> {
        match cmd {
            Command::Connect { upstream, bind } => Some(Reply::Connect {
                upstream: *upstream,
                bind: *bind,
            }),
            Command::Tunnel(p) => {
                let mut p = p.clone();
                p.headers
                    .retain(|(k, _)| !PER_CONNECTION.contains(&k.to_ascii_lowercase().as_str()));
                Some(Reply::Tunnel(Arc::new(p)))
            }
            _ => None,
        }
    }

    /// The command for one connection from `src`: a tunnel gets `forwarded` and
    /// `traceparent` first, as Python sends them (returned too: the record's trace ids).
    pub fn command(&self, src: SocketAddr, random: [u8; 24]) -> (Command, Option<String>) {
        match self {
            Reply::Connect { upstream, bind } => (
                Command::Connect {
                    upstream: *upstream,
                    bind: *bind,
                },
                None,
            ),
            Reply::Tunnel(p) => {
                let tp = traceparent(random);
                let mut plan = TunnelPlan::clone(p);
                let mut headers = Vec::with_capacity(plan.headers.len() + 2);
                headers.push(("forwarded".to_string(), format!("for=\"{src}\"")));
                headers.push(("traceparent".to_string(), tp.clone()));
                headers.append(&mut plan.headers);
                plan.headers = headers;
                (Command::Tunnel(plan), Some(tp))
            }
        }
    }
}

/// A W3C traceparent (version 00, sampled) from 16 bytes of trace id and 8 of span id;
/// an all-zero id (invalid) gets its last bit set.
pub fn traceparent(mut r: [u8; 24]) -> String {
    if r[..16].iter().all(|b| *b == 0) {
        r[15] = 1;
    }
    if r[16..].iter().all(|b| *b == 0) {
        r[23] = 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    for (i, b) in r.iter().enumerate() {
        if i == 16 {
            s.push('-');
        }
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s.push_str("-01");
    s
}

#[derive(Default)]
pub struct Cache {
    generation: AtomicU64,
    map: Mutex<HashMap<FlowKey, Answer>>,
}

/// What `put` did with an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Decided under another generation than the current one: dropped.
    Stale,
    /// The table was full: emptied, then stored.
    Evicted,
}

impl Cache {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A new generation: every stored answer is gone before this returns.
    pub fn set_generation(&self, g: u64) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.store(g, Ordering::Release);
        m.clear();
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn get(&self, key: &FlowKey) -> Option<Answer> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.generation.load(Ordering::Acquire);
        m.get(key).filter(|a| a.generation == g).cloned()
    }

    pub fn put(&self, key: FlowKey, a: Answer) -> Stored {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // read under the lock: set_generation clears under it too, so a stale answer
        // can never slip in after the clear
        if a.generation != self.generation.load(Ordering::Acquire) {
            return Stored::Stale;
        }
        let mut stored = Stored::Yes;
        if m.len() >= MAX_CACHED_DECISIONS && !m.contains_key(&key) {
            m.clear();
            stored = Stored::Evicted;
        }
        m.insert(key, a);
        stored
    }
}

#[cfg(test)]
#[path = "decisions_tests.rs"]
mod tests;
