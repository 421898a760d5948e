//! The client side's TLS 1.3 session tickets: what a tunnel handshake resumes with.
//!
//! Decides: how many tickets are kept per peer (limits::TLS_TICKETS_PER_PEER) and for
//! how many peers (limits::TLS_TICKET_PEERS), newest used first. rustls' own memory
//! cache keeps 8 per peer: with more handshakes to one node in flight than that (16 in
//! connect-rate), the rest found no ticket and paid a full handshake (84% resumed,
//! measured). Must never: keep TLS 1.2 state (the core speaks TLS 1.3 only), hand a
//! ticket out twice (a ticket is taken, not copied), or grow past its bounds.

use crate::limits::{TLS_TICKETS_PER_PEER, TLS_TICKET_PEERS};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Default)]
struct Peer {
    kx_hint: Option<NamedGroup>,
    tickets: VecDeque<Tls13ClientSessionValue>,
}

/// One client configuration's tickets (a configuration is one source identity and one
/// expected destination identity, runtime.rs), keyed by the server name dialled.
#[derive(Default)]
pub struct Sessions {
    peers: Mutex<HashMap<ServerName<'static>, Peer>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive() // tickets are secrets
    }
}

impl Sessions {
    fn edit<T>(&self, name: ServerName<'static>, f: impl FnOnce(&mut Peer) -> T) -> T {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&name) && peers.len() >= TLS_TICKET_PEERS {
            // a peer more than the bound: forget one (its next handshake is a full one)
            if let Some(k) = peers.keys().next().cloned() {
                peers.remove(&k);
            }
        }
        f(peers.entry(name).or_default())
    }

    /// Tickets held for `name`.
    #[cfg(test)]
    pub fn tickets(&self, name: &ServerName<'_>) -> usize {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(name).map_or(0, |p| p.tickets.len())
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.edit(name, |p| p.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(name).and_then(|p| p.kx_hint)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.edit(name, |p| {
            if p.tickets.len() >= TLS_TICKETS_PER_PEER {
                p.tickets.pop_front(); // the oldest goes
            }
            p.tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get_mut(name).and_then(|p| p.tickets.pop_back())
    }
}
