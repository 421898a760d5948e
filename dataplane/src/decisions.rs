//! Python's answers for repeat flows (decisions/0005): a tunnel stream whose decision
//! inputs Python has already judged under the current generation is answered here,
//! without a round trip to Python.
//!
//! Decides: which connections may be answered from the table (a tunnel stream, keyed by
//! everything Python's decision reads from the event: protocol, verified peer identity,
//! peer address, local address, target, the address a `forwarded` claim names, baggage),
//! and whether an entry is still valid (stored under the generation that is current
//! now). Python bumps the generation on every policy, registry, traffic-rule or config
//! change before anything else can be decided, and a bump empties the table, so an
//! answer is never used across a change. Python stores only allow answers that carry a
//! plain connect (no L7 serving, no per-connection choice such as load balancing).
//! Must never: store an answer for a generation that is not current, answer for a key it
//! was not given, hold more than `MAX_CACHED_DECISIONS` entries, or decide anything of
//! its own: every entry is a copy of an answer Python gave. Pure: no I/O, no clock.

use crate::events::{Event, Kind, TunnelInfo};
use crate::limits::MAX_CACHED_DECISIONS;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What Python's decision for a tunnel stream reads from the event. The source port,
/// the `forwarded` port and `traceparent` vary per connection and are not part of it:
/// Python's decision reads only the addresses (a workload is an address, policies match
/// addresses, never ports of the source).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowKey {
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
            _ => None,
        }
    }

    fn tunnel(src: SocketAddr, dst: SocketAddr, t: &TunnelInfo) -> FlowKey {
        FlowKey {
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

/// Python's answer, as stored: the connect it commanded, and the entry id Python knows
/// the decision by (its record template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub entry: u64,
    pub generation: u64,
    pub upstream: SocketAddr,
    pub bind: Option<IpAddr>,
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
        m.get(key).copied().filter(|a| a.generation == g)
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
mod tests {
    use super::*;

    fn ev(peer: &str, identity: &str, target: &str) -> Event {
        Event::Conn {
            id: 7,
            kind: Kind::Tunnel,
            src: peer.parse().unwrap(),
            dst: "10.0.0.2:15008".parse().unwrap(),
            tunnel: Some(TunnelInfo {
                peer_identity: identity.into(),
                target: target.parse().unwrap(),
                forwarded_for: Some(peer.parse().unwrap()),
                traceparent: Some("00-aa-bb-01".into()),
                protocol: "hbone",
                baggage: None,
            }),
        }
    }

    fn answer(g: u64) -> Answer {
        Answer {
            entry: 3,
            generation: g,
            upstream: "10.0.0.2:8080".parse().unwrap(),
            bind: Some("10.1.0.2".parse().unwrap()),
        }
    }

    const ID: &str = "spiffe://cluster.local/ns/default/sa/a";

    #[test]
    fn a_repeat_flow_is_answered_whatever_its_ports_and_trace() {
        let c = Cache::default();
        c.set_generation(1);
        let k = FlowKey::of(&ev("10.1.0.2:40000", ID, "10.0.0.2:8080")).unwrap();
        assert_eq!(c.put(k, answer(1)), Stored::Yes);
        let again = FlowKey::of(&ev("10.1.0.2:40001", ID, "10.0.0.2:8080")).unwrap();
        assert_eq!(c.get(&again), Some(answer(1)));
    }

    #[test]
    fn another_identity_address_or_target_is_not_the_same_flow() {
        let c = Cache::default();
        c.set_generation(1);
        c.put(
            FlowKey::of(&ev("10.1.0.2:1", ID, "10.0.0.2:8080")).unwrap(),
            answer(1),
        );
        for e in [
            ev("10.1.0.2:1", "spiffe://cluster.local/ns/default/sa/b", "10.0.0.2:8080"),
            ev("10.1.0.3:1", ID, "10.0.0.2:8080"),
            ev("10.1.0.2:1", ID, "10.0.0.2:8081"),
        ] {
            assert_eq!(c.get(&FlowKey::of(&e).unwrap()), None);
        }
    }

    #[test]
    fn a_generation_bump_invalidates_every_answer() {
        let c = Cache::default();
        c.set_generation(1);
        let k = FlowKey::of(&ev("10.1.0.2:1", ID, "10.0.0.2:8080")).unwrap();
        c.put(k.clone(), answer(1));
        c.set_generation(2);
        assert_eq!(c.get(&k), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_answer_decided_under_an_older_generation_is_never_stored() {
        let c = Cache::default();
        c.set_generation(5);
        let k = FlowKey::of(&ev("10.1.0.2:1", ID, "10.0.0.2:8080")).unwrap();
        assert_eq!(c.put(k.clone(), answer(4)), Stored::Stale);
        assert_eq!(c.get(&k), None);
    }

    #[test]
    fn only_tunnel_streams_have_a_key() {
        let captured = Event::Conn {
            id: 1,
            kind: Kind::Outbound,
            src: "10.1.0.2:1".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            tunnel: None,
        };
        assert_eq!(FlowKey::of(&captured), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let c = Cache::default();
        c.set_generation(1);
        for i in 0..MAX_CACHED_DECISIONS as u32 + 1 {
            let ip = std::net::Ipv4Addr::from(0x0a01_0000 + i);
            let k = FlowKey::of(&ev(&format!("{ip}:1"), ID, "10.0.0.2:8080")).unwrap();
            let s = c.put(k, answer(1));
            assert_eq!(
                s,
                if i as usize == MAX_CACHED_DECISIONS {
                    Stored::Evicted
                } else {
                    Stored::Yes
                }
            );
        }
        assert_eq!(c.len(), 1);
    }
}
