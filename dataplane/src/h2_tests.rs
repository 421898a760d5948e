//! HBONE end to end in one process over loopback TCP: the core's client (pool.rs,
//! h2client.rs) against the core's server (inbound.rs, h2server.rs), with rcgen SVIDs
//! and a decider playing Python; plus a raw h2 client for what a misbehaving peer sends.

use crate::events::{Event, Kind};
use crate::pool::Lease;
use crate::runtime::{Command, Settings, Shared, TunnelPlan};
use crate::tls;
use bytes::Bytes;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TD: &str = "cluster.local";
const SERVER: &str = "spiffe://cluster.local/ns/dst/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/src/sa/client";

struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    key: KeyPair,
}

fn pki() -> Pki {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    let key = KeyPair::generate().unwrap();
    let ca = p.self_signed(&key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca,
        key,
    }
}

impl Pki {
    /// (chain PEM, key PEM) of an SVID for `id`.
    fn svid(&self, id: &str) -> (String, String) {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = date_time_ymd(2021, 1, 1);
        p.not_after = date_time_ymd(2039, 1, 1);
        let key = KeyPair::generate().unwrap();
        let c = p.signed_by(&key, &self.ca, &self.key).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

fn core(pki: &Pki, ids: &[&str]) -> Arc<Shared> {
    core_with(pki, ids, crate::limits::H2_SERVER_MAX_STREAMS)
}

/// A core whose HBONE server lets a peer open `max_streams` streams per connection.
fn core_with(pki: &Pki, ids: &[&str], max_streams: u32) -> Arc<Shared> {
    let s = Shared::new(Settings {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10_000,
        hbone_max_streams: max_streams,
    })
    .unwrap();
    s.set_trust(tls::Trust::new(pki.ca_pem.as_bytes(), TD).unwrap())
        .unwrap();
    for id in ids {
        let (chain, key) = pki.svid(id);
        let ck = tls::certified_key(chain.as_bytes(), key.as_bytes()).unwrap();
        s.ids.set(id, id, ck);
    }
    s
}

/// Upstream: reads to EOF, then answers the bytes reversed and closes ("server
/// half-close after the client's").
async fn reverser() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // a killed stream resets us: nothing to answer then
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    got.reverse();
                    let _ = s.write_all(&got).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    a
}

/// Upstream: speaks first and half-closes, then reads what comes back to EOF and
/// checks it is the greeting doubled.
async fn speaker(greeting: Vec<u8>, ok: tokio::sync::mpsc::Sender<bool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&greeting).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = ok.send(got == [greeting.clone(), greeting].concat()).await;
    });
    a
}

/// The server core listening on 127.0.0.1 as the pod address of SERVER, and a decider:
/// ports in `refuse` get 401 with a policy, `hold` is never answered, the rest connect.
/// The other events (failed, finished) are collected in the third element.
async fn server(pki: &Pki, hold: u16) -> (Arc<Shared>, SocketAddr, Seen) {
    server_with(pki, hold, crate::limits::H2_SERVER_MAX_STREAMS).await
}

/// `server`, letting a peer open `max_streams` streams per connection.
async fn server_with(pki: &Pki, hold: u16, max_streams: u32) -> (Arc<Shared>, SocketAddr, Seen) {
    let s = core_with(pki, &[SERVER], max_streams);
    s.set_pod_identities([("127.0.0.1".parse().unwrap(), SERVER.to_string())].into());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(crate::listen::accept_loop(s.clone(), l, Kind::Tunnel));
    let (d, seen) = (s.clone(), Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            for ev in d.events.drain(512) {
                let Event::Conn {
                    id,
                    tunnel: Some(t),
                    ..
                } = ev
                else {
                    seen2.lock().unwrap().push(ev);
                    continue;
                };
                {
                    assert_eq!((t.peer_identity.as_str(), t.protocol), (CLIENT, "hbone"));
                    let cmd = match t.target.port() {
                        p if p == hold => continue,
                        8 => Command::Pipe {
                            fd: flow::echo_pipe(),
                        },
                        7 => Command::Refuse {
                            reason: "denied".into(),
                            status: 401,
                            policy: Some("ns/deny".into()),
                        },
                        _ => Command::Connect {
                            upstream: t.target,
                            bind: None,
                        },
                    };
                    d.command(id, cmd);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (s, addr, seen)
}

type Seen = Arc<std::sync::Mutex<Vec<Event>>>;

fn plan(peer: SocketAddr, target: SocketAddr) -> TunnelPlan {
    TunnelPlan {
        hbone: true,
        bind: None,
        peer,
        source_identity: CLIENT.into(),
        expected_identity: SERVER.into(),
        sni: String::new(),
        authority: target.to_string(),
        headers: vec![
            ("forwarded".into(), "for=\"127.0.0.1:1\"".into()),
            ("baggage".into(), "k8s.namespace.name=src".into()),
        ],
    }
}

async fn open(
    c: &Arc<Shared>,
    p: &TunnelPlan,
) -> Result<(crate::h2stream::H2Stream, Lease), (u16, Option<String>)> {
    crate::h2client::open(c, p)
        .await
        .map_err(|f| (f.status, f.policy))
}

fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(seed) % 251) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_share_one_connection_byte_exact_with_half_close() {
    let pki = pki();
    let (srv, addr, seen) = server(&pki, 0).await;
    let up = reverser().await;
    let cli = core(&pki, &[CLIENT]);
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let (cli, p) = (cli.clone(), plan(addr, up));
        tasks.push(tokio::spawn(async move {
            let (mut s, _lease) = open(&cli, &p).await.unwrap();
            let sent = data(300_000 + i as usize * 70_001, 7 + i);
            s.write_all(&sent).await.unwrap();
            s.shutdown().await.unwrap(); // END_STREAM: the upstream sees EOF
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap(); // its FIN: our EOF
            got.reverse();
            assert!(got == sent, "stream {i}: bytes differ");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = srv.counters();
    assert_eq!(c.get("hbone_connections_opened"), Some(&1), "{c:?}");
    assert_eq!(c.get("hbone_streams_opened"), Some(&8));
    assert_eq!(c.get("hbone_status_200"), Some(&8));
    assert_eq!(cli.pool.len(), 1);
    // every stream's finished record carries its bytes
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done: Vec<_> = std::mem::take(&mut *seen.lock().unwrap())
        .into_iter()
        .filter_map(|e| match e {
            Event::Finished {
                sent,
                received,
                reason,
                ..
            } => Some((sent, received, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 8);
    for (sent, received, reason) in done {
        assert_eq!((sent, reason.as_str()), (received, "closed"));
    }
    // a renewed SVID retires the pooled connection
    cli.identity_changed(CLIENT);
    assert_eq!(cli.pool.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_side_half_closes_first() {
    let pki = pki();
    let (_srv, addr, _) = server(&pki, 0).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let greeting = data(100_000, 3);
    let up = speaker(greeting.clone(), tx).await;
    let cli = core(&pki, &[CLIENT]);
    let (mut s, _lease) = open(&cli, &plan(addr, up)).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap(); // upstream FIN -> END_STREAM -> EOF
    assert!(got == greeting);
    s.write_all(&[got.clone(), got].concat()).await.unwrap(); // still writable
    s.shutdown().await.unwrap();
    assert_eq!(rx.recv().await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_status_and_policy() {
    let pki = pki();
    let (srv, addr, _) = server(&pki, 0).await;
    let cli = core(&pki, &[CLIENT]);
    let denied: SocketAddr = "127.0.0.1:7".parse().unwrap();
    let r = open(&cli, &plan(addr, denied)).await.err();
    assert_eq!(r, Some((401, Some("ns/deny".into()))));
    // a closed port: connect refused -> 503
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let r = open(&cli, &plan(addr, closed_addr)).await.err();
    assert_eq!(r, Some((503, None)));
    // the authority names another address than the pod's: 400, no event
    let other: SocketAddr = "10.9.9.9:80".parse().unwrap();
    let r = open(&cli, &plan(addr, other)).await.err();
    assert_eq!(r, Some((400, None)));
    let c = srv.counters();
    assert_eq!(c.get("hbone_refused_authority_mismatch"), Some(&1));
    assert_eq!(c.get("hbone_status_401"), Some(&1));
    assert_eq!(c.get("hbone_status_503"), Some(&1));
    // all three rode one connection
    assert_eq!(c.get("hbone_connections_opened"), Some(&1));
    // headers HTTP/2 cannot carry are refused before anything is sent
    let mut p = plan(addr, denied);
    p.headers.push(("connection".into(), "close".into()));
    assert_eq!(open(&cli, &p).await.err(), Some((400, None)));
    // the wrong server identity is refused by the client
    let mut p = plan(addr, denied);
    p.expected_identity = "spiffe://cluster.local/ns/x/sa/y".into();
    assert_eq!(open(&cli, &p).await.err().map(|e| e.0), Some(502));
    let n = cli.counters();
    assert_eq!(
        n.get("tunnel_handshake_failed_unexpected_identity"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_the_open_stream_goes_on_and_new_ones_take_a_new_connection() {
    let pki = pki();
    let (srv, addr, _) = server(&pki, 0).await;
    let up = reverser().await;
    let cli = core(&pki, &[CLIENT]);
    let (mut a, _la) = open(&cli, &plan(addr, up)).await.unwrap();
    a.write_all(b"before").await.unwrap();
    srv.draining.send_replace(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.draining.send_replace(false); // the next connection is not drained
    let (mut b, _lb) = open(&cli, &plan(addr, up)).await.unwrap();
    a.write_all(b" after").await.unwrap();
    a.shutdown().await.unwrap();
    let mut got = Vec::new();
    a.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"retfa erofeb");
    b.write_all(b"new").await.unwrap();
    b.shutdown().await.unwrap();
    let mut got = Vec::new();
    b.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"wen");
    let c = srv.counters();
    assert_eq!(c.get("hbone_connections_opened"), Some(&2), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_ends_the_stream_and_is_recorded() {
    let pki = pki();
    let (_srv, addr, seen) = server(&pki, 0).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        crate::sockopt::reset_on_close(std::os::fd::AsRawFd::as_raw_fd(&s));
    });
    let cli = core(&pki, &[CLIENT]);
    let (mut s, _l) = open(&cli, &plan(addr, up)).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut sink = Vec::new();
    // RST_STREAM(CANCEL) reaches our side as a reset of the captured connection
    let end = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
    let err = end
        .expect("the stream did not end")
        .expect_err("a reset, not an EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reasons: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Finished { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["reset (destination)"]);
}

#[path = "h2_raw_tests.rs"]
mod raw;

#[path = "h2_flow_tests.rs"]
mod flow;

#[path = "sessions_tests.rs"]
mod sessions;
