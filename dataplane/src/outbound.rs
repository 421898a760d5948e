//! Captured connections (:15001 from local pods, :15006 plaintext inbound) and the
//! source side of the mTLS tunnel.
//!
//! Decides: nothing about where a connection goes — it reports the connection (source,
//! original destination) and carries out Python's command: connect (local or
//! passthrough, the pod's source address kept), tunnel (HBONE: a stream on a pooled
//! HTTP/2 connection, h2client.rs; or TLS to the peer node's :15008 with the source
//! SVID, the expected destination identity checked, one HTTP/1.1 CONNECT), pipe
//! to Python, or refuse with a reset. A failed attempt is reported and the next
//! command awaited (Python's plan may hold other endpoints). Must never: send a byte of
//! the client's to anyone before Python said where, or keep a refused connection open.
//!
//! Memory: this task lives as long as its connection, and a task's future is as large as
//! its largest state, so every step but the bridge is boxed (the handshake and h2
//! set-up states were 7.4 KB held by every idle connection) and the command's strings
//! are dropped before bridging: an idle HBONE connection holds the bridge's ~0.7 KB.

use crate::connect;
use crate::events::{Event, Kind};
use crate::limits::MAX_CONNECT_HEAD;
use crate::runtime::{Command, Gauge, Shared, TunnelPlan};
use crate::sockopt;
use crate::tls;
use rustls::pki_types::ServerName;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why an attempt failed: the status a tunnel peer would answer, a reason, the policy.
pub(crate) struct Failure {
    pub status: u16,
    pub reason: String,
    pub policy: Option<String>,
}

pub(crate) fn fail(status: u16, reason: impl Into<String>) -> Failure {
    Failure {
        status,
        reason: reason.into(),
        policy: None,
    }
}

/// `src`: the peer address accept returned (no getpeername again).
pub async fn serve_captured(
    shared: Arc<Shared>,
    mut client: TcpStream,
    src: std::net::SocketAddr,
    kind: Kind,
) {
    let Ok(dst) = sockopt::original_dst(&client) else {
        return;
    };
    let id = shared.next_id();
    let ev = Event::Conn {
        id,
        kind,
        src,
        dst,
        tunnel: None,
    };
    // the decisions and attempts in their own scope: their storage (the command, the
    // plan) is not part of the HBONE bridge's state, which an idle connection keeps
    let (stream, lease, peer) = {
        let mut cmd = Box::pin(shared.decide(id, ev)).await;
        loop {
            let failure = match cmd {
                None | Some(Command::Refuse { .. }) => {
                    sockopt::reset_on_close(client.as_raw_fd());
                    return;
                }
                Some(Command::Connect { upstream, bind }) => {
                    match Box::pin(sockopt::connect(
                        upstream,
                        bind,
                        shared.settings.connect_timeout,
                    ))
                    .await
                    {
                        Ok(up) => {
                            let fds = (client.as_raw_fd(), up.as_raw_fd());
                            let mode = if kind == Kind::Plaintext {
                                "plaintext"
                            } else {
                                "direct"
                            };
                            Box::pin(shared.bridge(
                                id,
                                kind,
                                mode,
                                src,
                                upstream,
                                client,
                                up,
                                fds,
                                (0, 0),
                            ))
                            .await;
                            return;
                        }
                        Err(e) => {
                            let status = if e.kind() == std::io::ErrorKind::TimedOut {
                                504
                            } else {
                                502
                            };
                            fail(status, format!("connect_failed: {}", sockopt::reason(&e)))
                        }
                    }
                }
                Some(Command::Tunnel(plan)) if kind == Kind::Outbound && plan.hbone => {
                    let opened = Box::pin(crate::h2client::open(&shared, &plan)).await;
                    let peer = plan.peer;
                    drop(plan); // its strings were sent; an idle stream keeps none of them
                    match opened {
                        Ok((stream, lease)) => break (stream, lease, peer),
                        Err(f) => f,
                    }
                }
                Some(Command::Tunnel(plan)) if kind == Kind::Outbound => {
                    match Box::pin(connect_tunnel(&shared, id, src, client, plan)).await {
                        Ok(()) => return,
                        Err((c, f)) => {
                            client = c;
                            f
                        }
                    }
                }
                Some(Command::Tunnel(_)) => fail(503, "tunnel_not_allowed_here"),
                Some(Command::Pipe { fd }) => {
                    let Some(pipe) = pipe(fd) else {
                        return;
                    };
                    let fds = (client.as_raw_fd(), pipe.as_raw_fd());
                    Box::pin(shared.bridge(id, kind, "pipe", src, dst, client, pipe, fds, (0, 0)))
                        .await;
                    return;
                }
            };
            shared.count("attempts_failed", 1);
            let ev = Event::Failed {
                id,
                status: failure.status,
                reason: failure.reason,
                policy: failure.policy,
            };
            cmd = Box::pin(shared.decide(id, ev)).await;
        }
    };
    shared.count("hbone_streams_opened", 1);
    let _gauge = Gauge::new(&shared, |s| &s.hbone_streams);
    let _lease = lease;
    let fds = (client.as_raw_fd(), -1);
    shared
        .bridge(id, kind, "hbone", src, peer, client, stream, fds, (0, 0))
        .await;
}

/// Carry a captured connection through its own HTTP/1.1 CONNECT tunnel until it ends;
/// a failed attempt gives the client back with the failure. Boxed by the caller: its
/// TLS states would size every connection's task.
async fn connect_tunnel(
    shared: &Arc<Shared>,
    id: u64,
    src: std::net::SocketAddr,
    mut client: TcpStream,
    plan: TunnelPlan,
) -> Result<(), (TcpStream, Failure)> {
    let (tls, leftover) = match open_tunnel(shared, &plan).await {
        Ok(t) => t,
        Err(f) => return Err((client, f)),
    };
    let peer = plan.peer;
    drop(plan);
    if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
        return Ok(());
    }
    let fds = (client.as_raw_fd(), tls.get_ref().0.as_raw_fd());
    let n = leftover.len() as u64;
    drop(leftover);
    shared
        .bridge(
            id,
            Kind::Outbound,
            "tunnel",
            src,
            peer,
            client,
            tls,
            fds,
            (0, n),
        )
        .await;
    Ok(())
}

/// Python's socket pair end, as a tokio stream (None: it could not be registered).
pub fn pipe(fd: OwnedFd) -> Option<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).ok()?;
    UnixStream::from_std(std).ok()
}

/// The client handshake within the handshake timeout, failures counted by reason
/// (`status` for a refused handshake, 504 for a timeout). `first`: plaintext rustls
/// holds until the handshake is complete (the server verified, or resumed with the
/// ticket it issued) and then sends in the same write as the client's Finished (never
/// as 0-RTT data: early data is off), so a CONNECT head costs no write and no segment
/// of its own and the server reads Finished and head in one wake-up.
pub(crate) async fn handshake(
    shared: &Shared,
    cfg: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
    status: u16,
    first: &[u8],
) -> Result<TlsStream<TcpStream>, Failure> {
    let mut held = Ok(());
    let hs = TlsConnector::from(cfg).connect_with(name, tcp, |c| {
        if !first.is_empty() {
            held = std::io::Write::write_all(&mut c.writer(), first);
        }
    });
    if let Err(e) = held {
        return Err(fail(502, format!("tunnel_write: {}", sockopt::reason(&e))));
    }
    let tls = match tokio::time::timeout(shared.settings.handshake_timeout, hs).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let r = tls::handshake_reason(&e);
            shared.count(&format!("tunnel_handshake_failed_{r}"), 1);
            return Err(fail(status, format!("tls: {r}")));
        }
        Err(_) => {
            shared.count("tunnel_handshake_failed_handshake_timeout", 1);
            return Err(fail(504, "tls: handshake_timeout"));
        }
    };
    shared.count("client_handshakes", 1);
    Ok(tls)
}

/// TLS to the peer node with the source SVID, then CONNECT; the TLS stream and the
/// bytes that followed the `200` (the stream's first bytes back).
async fn open_tunnel(
    shared: &Shared,
    plan: &TunnelPlan,
) -> Result<(TlsStream<TcpStream>, Vec<u8>), Failure> {
    let head = connect::request(&plan.authority, &plan.headers)
        .ok_or_else(|| fail(400, "bad CONNECT authority or header"))?;
    let cfg = shared
        .client_config(&plan.source_identity, &plan.expected_identity, false)
        .map_err(|e| fail(503, format!("no_certificate: {e}")))?;
    let tcp = sockopt::connect(plan.peer, None, shared.settings.connect_timeout)
        .await
        .map_err(|e| fail(502, format!("connect_failed: {}", sockopt::reason(&e))))?;
    let name = ServerName::try_from(plan.sni.clone())
        .map_err(|_| fail(503, format!("bad SNI {}", plan.sni)))?;
    // the head rides with the client's Finished (see handshake)
    let mut tls = handshake(shared, cfg, name, tcp, 503, &head).await?;
    drop(head);
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        shared.count("client_resumptions", 1);
    }
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            let mut chunk = [0u8; 2048];
            let n = tls
                .read(&mut chunk)
                .await
                .map_err(|e| fail(502, format!("tunnel_read: {}", sockopt::reason(&e))))?;
            if n == 0 {
                return Err(fail(502, "tunnel_closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
            match connect::parse_response(&buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) if buf.len() <= MAX_CONNECT_HEAD => continue,
                Ok(None) => return Err(fail(502, "CONNECT response head over 16 KiB")),
                Err(e) => return Err(fail(502, e)),
            }
        }
    };
    let resp = match tokio::time::timeout(shared.settings.connect_timeout * 2, read).await {
        Ok(r) => r?,
        Err(_) => return Err(fail(504, "tunnel_timeout")),
    };
    if resp.status != 200 {
        return Err(Failure {
            status: resp.status,
            reason: format!("tunnel_status_{}", resp.status),
            policy: resp.policy,
        });
    }
    let leftover = buf.split_off(resp.head_len);
    Ok((tls, leftover))
}
