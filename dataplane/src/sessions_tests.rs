//! sessions.rs: every handshake of a burst to one peer resumes, in memory (rustls
//! connections pumped by hand, the core's own client and server configurations).

use super::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ConnectionCommon, HandshakeKind, ServerConnection};

const SNI: &str = "server.dst.hostmesh";

/// Records `from` has to send, delivered to `to`; false when there were none.
fn carry<A: rustls::SideData, B: rustls::SideData>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut r = &buf[..];
    while !r.is_empty() {
        to.read_tls(&mut r).unwrap();
        to.process_new_packets().unwrap();
    }
    !buf.is_empty()
}

/// Move records both ways until neither side has anything to send.
fn pump(c: &mut ClientConnection, s: &mut ServerConnection) {
    while carry(c, s) | carry(s, c) {}
}

#[test]
fn a_burst_of_handshakes_to_one_peer_all_resume() {
    let pki = pki();
    let shared = core(&pki, &[CLIENT]);
    let (chain, key) = pki.svid(SERVER);
    let ck = tls::certified_key(chain.as_bytes(), key.as_bytes()).unwrap();
    shared.ids.set(SERVER, SNI, ck);
    let server = shared.server_config().unwrap().pick(false);
    let client = shared.client_config(CLIENT, SERVER, false).unwrap();
    let name = ServerName::try_from(SNI).unwrap();
    let handshake = |c: &mut ClientConnection| {
        let mut s = ServerConnection::new(server.clone()).unwrap();
        pump(c, &mut s);
        assert!(!c.is_handshaking() && !s.is_handshaking());
        assert_eq!(c.handshake_kind(), s.handshake_kind());
        c.handshake_kind().unwrap()
    };
    let mut kinds = vec![];
    for _ in 0..20 {
        let mut c = ClientConnection::new(client.clone(), name.clone()).unwrap();
        kinds.push(handshake(&mut c));
    }
    assert_eq!(kinds[0], HandshakeKind::Full);
    assert!(kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed));
    // 16 handshakes start before any completes (connect-rate's 16 in flight): each
    // takes its own ticket; rustls' default cache (8 per peer) resumed only 8 of them
    let mut burst: Vec<ClientConnection> = (0..16)
        .map(|_| ClientConnection::new(client.clone(), name.clone()).unwrap())
        .collect();
    let kinds: Vec<HandshakeKind> = burst.iter_mut().map(handshake).collect();
    assert_eq!(kinds, vec![HandshakeKind::Resumed; 16]);
}

#[test]
fn tickets_are_bounded_per_peer() {
    let pki = pki();
    let shared = core(&pki, &[CLIENT]);
    let (chain, key) = pki.svid(SERVER);
    shared.ids.set(
        SERVER,
        SNI,
        tls::certified_key(chain.as_bytes(), key.as_bytes()).unwrap(),
    );
    let server = shared.server_config().unwrap().pick(false);
    let store = Arc::new(crate::sessions::Sessions::default());
    let mut cfg = (*shared.client_config(CLIENT, SERVER, false).unwrap()).clone();
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    let cfg = Arc::new(cfg);
    let name = ServerName::try_from(SNI).unwrap();
    for i in 0..crate::limits::TLS_TICKETS_PER_PEER + 10 {
        let mut c = ClientConnection::new(cfg.clone(), name.clone()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        pump(&mut c, &mut s);
        assert_eq!(
            store.tickets(&name),
            (i + 2).min(crate::limits::TLS_TICKETS_PER_PEER)
        );
    }
}
