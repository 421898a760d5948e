//! The HBONE server: one HTTP/2 connection on an accepted tunnel TLS session (ALPN h2),
//! each CONNECT stream decided by Python and bridged to its upstream.
//!
//! Decides: the connection's life (ztunnel's settings, PING keepalive, GOAWAY on drain,
//! every stream ended when the connection dies) and a stream's: 400 answered here for a
//! request hbone.rs refuses (counted `hbone_refused_<reason>`, no event), then one
//! "conn" event; `200` only after the upstream connect succeeded (503 when it failed,
//! reported as a failed attempt), Python's refusal answered with its status (and
//! `x-hostmesh-policy`), the stream ended. Must never: answer 200 before the upstream
//! exists, pass a byte to a pod before Python allowed it, or let one stream's failure
//! end the connection or another stream.

use crate::events::{Event, Kind, TunnelInfo};
use crate::h2stream::H2Stream;
use crate::hbone;
use crate::outbound;
use crate::runtime::{Command, Gauge, Shared};
use crate::sockopt;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// What a stream shares with its connection: the TLS peer and where it arrived.
#[derive(Clone)]
struct Origin {
    peer: SocketAddr,
    local: SocketAddr,
    identity: String,
    pod_address: Option<IpAddr>,
}

/// Serve HTTP/2 on `tls` until the peer closes, the keepalive fails, or the connection
/// errs; `pod_address`: the local address when it is a pod's (authority must match).
pub async fn serve(
    shared: Arc<Shared>,
    mut tls: TlsStream<TcpStream>,
    ends: (SocketAddr, SocketAddr),
    identity: String,
    pod_address: Option<IpAddr>,
) {
    // rustls takes up to this much plaintext per write (h2 hands it whole frames)
    tls.get_mut()
        .1
        .set_buffer_limit(Some(crate::limits::H2_TLS_BUFFER));
    let hs = hbone::server_builder(shared.settings.hbone_max_streams).handshake::<_, Bytes>(tls);
    let mut conn = match tokio::time::timeout(shared.settings.handshake_timeout, hs).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) | Err(_) => {
            shared.count("hbone_refused_h2_handshake", 1);
            return;
        }
    };
    shared.count("hbone_connections_opened", 1);
    let _gauge = Gauge::new(&shared, |s| &s.hbone_connections);
    let origin = Origin {
        peer: ends.0,
        local: ends.1,
        identity,
        pod_address,
    };
    let keepalive = conn.ping_pong().map(hbone::keepalive);
    let keepalive = async move {
        match keepalive {
            Some(k) => k.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(keepalive);
    let mut draining = shared.draining.subscribe();
    let mut drained = false;
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    tokio::spawn(stream(shared.clone(), origin.clone(), req, respond));
                }
                Some(Err(e)) => {
                    if !e.is_go_away() || e.reason() != Some(h2::Reason::NO_ERROR) {
                        shared.count("hbone_connection_errors", 1);
                    }
                    break;
                }
                None => break,
            },
            _ = draining.wait_for(|d| *d), if !drained => {
                drained = true;
                conn.graceful_shutdown();
            }
            r = &mut keepalive => {
                shared.count(&format!("hbone_connection_{r}"), 1);
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                break;
            }
        }
    }
    // the connection's task owns the TLS session: streams still bridged end with it
    drop(conn);
}

fn respond_status(respond: &mut SendResponse<Bytes>, status: u16, policy: Option<&str>) {
    let mut b = Response::builder().status(status);
    if let Some(p) = policy {
        // a header value must be visible text: control characters are dropped
        let clean: String = p.chars().filter(|c| !c.is_control()).collect();
        if let Ok(v) = http::HeaderValue::from_str(&clean) {
            b = b.header("x-hostmesh-policy", v);
        }
    }
    if let Ok(r) = b.body(()) {
        let _ = respond.send_response(r, true);
    }
}

async fn stream(
    shared: Arc<Shared>,
    o: Origin,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let Some(_admitted) = shared.admit() else {
        shared.count("hbone_refused_max_connections", 1);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    };
    let parsed = hbone::parse_request(
        req.method(),
        req.uri().authority().map(|a| a.as_str()),
        req.extensions().get::<h2::ext::Protocol>().is_some(),
        req.headers(),
        o.pod_address,
    );
    let r = match parsed {
        Ok(r) => r,
        Err(refusal) => {
            shared.count(&format!("hbone_refused_{}", refusal.as_str()), 1);
            shared.count("hbone_status_400", 1);
            respond_status(&mut respond, 400, None);
            return;
        }
    };
    shared.count("hbone_streams_opened", 1);
    let _gauge = Gauge::new(&shared, |s| &s.hbone_streams);
    let body = req.into_body();
    let id = shared.next_id();
    let ev = Event::Conn {
        id,
        kind: Kind::Tunnel,
        src: o.peer,
        dst: o.local,
        tunnel: Some(TunnelInfo {
            peer_identity: o.identity.clone(),
            target: r.target,
            forwarded_for: r.forwarded_for,
            traceparent: r.traceparent,
            protocol: "hbone",
            baggage: r.baggage,
        }),
    };
    let (code, policy, reason) = match shared.decide(id, ev).await {
        None => (503, None, "decision_unavailable".to_string()),
        Some(Command::Refuse {
            reason,
            status,
            policy,
        }) => (status, policy, reason),
        Some(Command::Connect { upstream, bind }) => {
            match sockopt::connect(upstream, bind, shared.settings.connect_timeout).await {
                Ok(up) => {
                    let ends = (o.peer, upstream);
                    return open_and_bridge(&shared, id, "hbone", ends, respond, body, up).await;
                }
                Err(e) => (
                    503,
                    None,
                    format!("upstream_failed: {}", sockopt::reason(&e)),
                ),
            }
        }
        Some(Command::Pipe { fd }) => {
            let Some(pipe) = outbound::pipe(fd) else {
                return;
            };
            let ends = (o.peer, o.local);
            return open_and_bridge(&shared, id, "pipe", ends, respond, body, pipe).await;
        }
        Some(Command::Tunnel(_)) => (503, None, "tunnel_not_allowed_here".into()),
    };
    shared.count(&format!("hbone_status_{code}"), 1);
    respond_status(&mut respond, code, policy.as_deref());
    shared.report_upstream_failure(id, code, reason);
}

/// The upstream (or Python's pipe) exists: answer 200, then bridge the stream to it
/// until both ends are done.
async fn open_and_bridge<U>(
    shared: &Shared,
    id: u64,
    mode: &'static str,
    ends: (SocketAddr, SocketAddr),
    mut respond: SendResponse<Bytes>,
    body: RecvStream,
    up: U,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + AsRawFd,
{
    let Some(ok) = Response::builder().status(200).body(()).ok() else {
        return;
    };
    let Ok(send) = respond.send_response(ok, false) else {
        return;
    };
    shared.count("hbone_status_200", 1);
    let s = H2Stream::new(send, body);
    let fd = up.as_raw_fd();
    let (src, dst) = ends;
    shared
        .bridge(id, Kind::Tunnel, mode, src, dst, s, up, (-1, fd), (0, 0))
        .await;
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
