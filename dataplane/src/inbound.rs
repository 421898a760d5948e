//! The tunnel listeners (:15008 on the node address and on local pods' addresses):
//! mutual TLS, then HBONE (ALPN h2: h2server.rs) or the HTTP/1.1 CONNECT request,
//! Python's decision, the upstream connect, the answer.
//!
//! Decides: the order of a tunnelled connection's life — the ClientHello read first and
//! the certificate chosen by the local address (a pod's, from the pod-identity map) or
//! else by SNI, the handshake within the handshake timeout (the peer's chain checked by
//! the SPIFFE verifier, failures counted by named reason), then by ALPN; one CONNECT head of at most 16 KiB read within the same timeout
//! (400/431 answered here), then Python decides; `200` is sent only after the upstream
//! connect succeeded (502 refused, 504 timed out). Must never: answer 200 before the
//! upstream exists, pass a byte to a pod before Python allowed it, or hold anything for
//! a handshake that does not complete.

use crate::connect;
use crate::events::{Event, Kind, TunnelInfo};
use crate::limits::MAX_CONNECT_HEAD;
use crate::outbound;
use crate::runtime::{Command, Shared};
use crate::sockopt;
use crate::tls;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

async fn answer(tls: &mut TlsStream<TcpStream>, status: u16, policy: Option<&str>) {
    let bytes = connect::response(status, policy);
    let send = async {
        tls.write_all(&bytes).await?;
        tls.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send).await;
}

/// The upstream exists: answer 200, deliver the bytes that followed the CONNECT head,
/// then bridge until the connection ends.
#[allow(clippy::too_many_arguments)]
async fn open_and_bridge<B>(
    shared: &Shared,
    id: u64,
    mode: &'static str,
    ends: (SocketAddr, SocketAddr),
    mut tls: TlsStream<TcpStream>,
    mut up: B,
    up_fd: RawFd,
    leftover: Vec<u8>,
) where
    B: AsyncRead + AsyncWrite + Unpin + 'static,
{
    if tls.write_all(&connect::response(200, None)).await.is_err() {
        return;
    }
    if !leftover.is_empty() && up.write_all(&leftover).await.is_err() {
        return;
    }
    shared.count("tunnel_status_200", 1);
    let fds = (tls.get_ref().0.as_raw_fd(), up_fd);
    let n = leftover.len() as u64;
    let (src, dst) = ends;
    shared
        .bridge(id, Kind::Tunnel, mode, src, dst, tls, up, fds, (n, 0))
        .await;
}

/// Read the ClientHello, pick the certificate (a pod's on its address, else by SNI),
/// finish the handshake within the handshake timeout; None (counted) when it fails.
async fn handshake(
    shared: &Shared,
    raw: TcpStream,
    pod: Option<&str>,
) -> Option<TlsStream<TcpStream>> {
    let fd = raw.as_raw_fd();
    let hs = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), raw)
            .await
            .map_err(|e| tls::handshake_reason(&e))?;
        let cfgs = match pod {
            Some(id) => shared.pod_server_config(id),
            None => shared.server_config(),
        };
        let Some(cfgs) = cfgs else {
            // nothing to present: a reset, set while `start` still owns the socket
            sockopt::reset_on_close(fd);
            drop(start);
            return Err("no_server_identity");
        };
        let cfg = cfgs.pick(tls::offers_h2(&start.client_hello()));
        start
            .into_stream(cfg)
            .await
            .map_err(|e| tls::handshake_reason(&e))
    };
    match tokio::time::timeout(shared.settings.handshake_timeout, hs).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(r)) => {
            shared.count(&format!("peer_rejected_{r}"), 1);
            None
        }
        Err(_) => {
            shared.count("peer_rejected_handshake_timeout", 1);
            None
        }
    }
}

/// `peer`: the address accept returned.
pub async fn serve_tunnel(shared: Arc<Shared>, raw: TcpStream, peer: std::net::SocketAddr) {
    let Ok(local) = raw.local_addr() else {
        return;
    };
    if shared.server_config().is_none() {
        shared.count("tunnel_refused_no_identity", 1);
        sockopt::reset_on_close(raw.as_raw_fd());
        return;
    }
    let pod = shared.pod_identity(local.ip());
    let Some(mut tls) = handshake(&shared, raw, pod.as_deref()).await else {
        return;
    };
    shared.count("server_handshakes", 1);
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        shared.count("server_resumptions", 1);
    }
    let Some(identity) = tls::peer_identity(tls.get_ref().1.peer_certificates()) else {
        shared.count("peer_rejected_no_certificate", 1);
        return;
    };
    if tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
        let pod_address = pod.map(|_| local.ip());
        crate::h2server::serve(shared, tls, (peer, local), identity, pod_address).await;
        return;
    }
    let timeout = shared.settings.handshake_timeout;
    // the CONNECT head, bounded in size and time
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let read = async {
        loop {
            let mut chunk = [0u8; 2048];
            let n = match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            match connect::parse_request(&buf) {
                Ok(None) if buf.len() <= MAX_CONNECT_HEAD + chunk.len() => continue,
                Ok(None) => {
                    return Some(Err(connect::Reject {
                        status: 431,
                        message: "header block over 16 KiB".into(),
                    }))
                }
                Ok(Some(r)) => return Some(Ok(r)),
                Err(rej) => return Some(Err(rej)),
            }
        }
    };
    let req = match tokio::time::timeout(timeout, read).await {
        Ok(Some(Ok(r))) => r,
        Ok(Some(Err(rej))) => {
            shared.count(&format!("tunnel_status_{}", rej.status), 1);
            answer(&mut tls, rej.status, None).await;
            return;
        }
        Ok(None) | Err(_) => {
            shared.count("tunnel_no_request", 1);
            return;
        }
    };
    let leftover = buf.split_off(req.head_len);
    let id = shared.next_id();
    let info = TunnelInfo {
        peer_identity: identity,
        target: req.target,
        forwarded_for: req.forwarded_for,
        traceparent: req.traceparent.clone(),
        protocol: "connect",
        baggage: None,
    };
    let ev = Event::Conn {
        id,
        kind: Kind::Tunnel,
        src: peer,
        dst: local,
        tunnel: Some(info),
    };
    let status = match shared.decide(id, ev).await {
        None => (503, None, "decision_unavailable".to_string()),
        Some(Command::Refuse {
            reason,
            status,
            policy,
        }) => (status, policy, reason),
        Some(Command::Connect { upstream, bind }) => {
            match sockopt::connect(upstream, bind, shared.settings.connect_timeout).await {
                Ok(up) => {
                    let fd = up.as_raw_fd();
                    let ends = (peer, upstream);
                    return open_and_bridge(&shared, id, "tunnel", ends, tls, up, fd, leftover)
                        .await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    (504, None, "upstream_timeout".into())
                }
                Err(e) => (
                    502,
                    None,
                    format!("upstream_failed: {}", sockopt::reason(&e)),
                ),
            }
        }
        Some(Command::Pipe { fd }) => {
            let Some(pipe) = outbound::pipe(fd) else {
                return;
            };
            let pfd = pipe.as_raw_fd();
            return open_and_bridge(&shared, id, "pipe", (peer, local), tls, pipe, pfd, leftover)
                .await;
        }
        Some(Command::Tunnel(_)) => (503, None, "tunnel_not_allowed_here".into()),
    };
    let (code, policy, reason) = status;
    shared.count(&format!("tunnel_status_{code}"), 1);
    answer(&mut tls, code, policy.as_deref()).await;
    shared.report_upstream_failure(id, code, reason);
}
