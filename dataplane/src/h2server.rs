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
use crate::runtime::{Admitted, Command, Gauge, Shared};
use crate::sockopt;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::net::{TcpStream, UnixStream};
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

/// One stream's task. A task's future is as large as its largest state and lives as long
/// as the stream, so the set-up (decision, upstream connect, answer) is boxed and freed
/// before the bridge: an idle stream holds the bridge's state (~0.9 KB), not the
/// set-up's (2.2 KB).
fn stream(
    shared: Arc<Shared>,
    o: Origin,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> impl std::future::Future<Output = ()> {
    let setup = Box::pin(open_stream(shared, o, req, respond));
    async move {
        let Some(b) = setup.await else {
            return;
        };
        let Bridged {
            shared,
            _admitted,
            _gauge,
            id,
            mode,
            ends: (src, dst),
            stream: s,
            up,
        } = b;
        match up {
            Upstream::Tcp(up) => {
                let fd = up.as_raw_fd();
                shared
                    .bridge(id, Kind::Tunnel, mode, src, dst, s, up, (-1, fd), (0, 0))
                    .await
            }
            Upstream::Pipe(up) => {
                let fd = up.as_raw_fd();
                shared
                    .bridge(id, Kind::Tunnel, mode, src, dst, s, up, (-1, fd), (0, 0))
                    .await
            }
        }
    }
}

/// A stream answered 200 with its upstream connected: what its bridge needs.
struct Bridged {
    shared: Arc<Shared>,
    _admitted: Admitted,
    _gauge: Gauge,
    id: u64,
    mode: &'static str,
    ends: (SocketAddr, SocketAddr),
    stream: H2Stream,
    up: Upstream,
}

enum Upstream {
    Tcp(TcpStream),
    Pipe(UnixStream),
}

async fn open_stream(
    shared: Arc<Shared>,
    o: Origin,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> Option<Bridged> {
    let Some(admitted) = shared.admit() else {
        shared.count("hbone_refused_max_connections", 1);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return None;
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
            return None;
        }
    };
    shared.count("hbone_streams_opened", 1);
    let gauge = Gauge::new(&shared, |s| &s.hbone_streams);
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
    let (mode, ends, up) = match shared.decide(id, ev).await {
        None => {
            return refused(
                &shared,
                id,
                respond,
                503,
                None,
                "decision_unavailable".into(),
            )
        }
        Some(Command::Refuse {
            reason,
            status,
            policy,
        }) => return refused(&shared, id, respond, status, policy, reason),
        Some(Command::Connect { upstream, bind }) => {
            match sockopt::connect(upstream, bind, shared.settings.connect_timeout).await {
                Ok(up) => ("hbone", (o.peer, upstream), Upstream::Tcp(up)),
                Err(e) => {
                    let reason = format!("upstream_failed: {}", sockopt::reason(&e));
                    return refused(&shared, id, respond, 503, None, reason);
                }
            }
        }
        Some(Command::Pipe { fd }) => {
            let pipe = outbound::pipe(fd)?;
            ("pipe", (o.peer, o.local), Upstream::Pipe(pipe))
        }
        Some(Command::Tunnel(_)) => {
            let reason = "tunnel_not_allowed_here".into();
            return refused(&shared, id, respond, 503, None, reason);
        }
    };
    // the upstream (or Python's pipe) exists: answer 200, then bridge
    let ok = Response::builder().status(200).body(()).ok()?;
    let send = respond.send_response(ok, false).ok()?;
    shared.count("hbone_status_200", 1);
    Some(Bridged {
        shared,
        _admitted: admitted,
        _gauge: gauge,
        id,
        mode,
        ends,
        stream: H2Stream::new(send, body),
        up,
    })
}

/// The stream's answer when it is not bridged (Python's refusal or a failed upstream).
fn refused(
    shared: &Shared,
    id: u64,
    mut respond: SendResponse<Bytes>,
    code: u16,
    policy: Option<String>,
    reason: String,
) -> Option<Bridged> {
    shared.count(&format!("hbone_status_{code}"), 1);
    respond_status(&mut respond, code, policy.as_deref());
    shared.report_upstream_failure(id, code, reason);
    None
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
