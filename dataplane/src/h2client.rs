//! The HBONE client: a CONNECT stream to a destination pod's :15008 on a pooled
//! HTTP/2 connection (pool.rs), opening the connection when the pool has none with room.
//!
//! Decides: how a connection is opened — TCP bound to the source pod's address
//! (IP_TRANSPARENT, SO_MARK, TCP_NODELAY: sockopt.rs), TLS 1.3 with ALPN h2 and no SNI,
//! the source identity's SVID, the server accepted only as the expected identity, h2
//! with ztunnel's client settings, PING keepalive — and what a failure is: connect or
//! handshake failure 502, timeout 504, no SVID 503, the peer's status as it answered
//! (401 with `x-hostmesh-policy` as the policy). A stream refused because its connection
//! was going away (GOAWAY, REFUSED_STREAM) is tried once more on a fresh connection;
//! streams that waited for a connection attempt that failed fail with it.
//! Must never: present another identity than the source's, accept a server that is not
//! the expected identity, or send a byte before the 200.

use crate::h2stream::H2Stream;
use crate::hbone;
use crate::limits::POOL_IDLE;
use crate::outbound::{fail, Failure};
use crate::pool::{Conn, Key, Lease};
use crate::runtime::{Gauge, Shared, TunnelPlan};
use crate::sockopt;
use crate::tls;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Instant;

/// A stream to `plan.authority` through the peer, after its 200; the lease keeps its
/// slot on the pooled connection until dropped.
pub async fn open(shared: &Arc<Shared>, plan: &TunnelPlan) -> Result<(H2Stream, Lease), Failure> {
    let key = Key {
        source: plan.source_identity.clone(),
        expected: plan.expected_identity.clone(),
        peer: plan.peer,
        bind: plan.bind,
    };
    let req = request(plan)?;
    let mut fresh_only = false;
    loop {
        let lease = match (!fresh_only).then(|| shared.pool.take(&key)).flatten() {
            Some(l) => l,
            None => {
                let asked = Instant::now();
                let mut opening = shared.pool.opener(&key).await;
                match (!fresh_only).then(|| shared.pool.take(&key)).flatten() {
                    Some(l) => l,
                    None => match &*opening {
                        // the attempt this stream waited for failed: so does this one
                        Some((at, status, reason)) if *at >= asked => {
                            return Err(fail(*status, reason.clone()))
                        }
                        // boxed: the handshake's state would size every stream's set-up
                        _ => match Box::pin(connect(shared, plan, &key)).await {
                            Ok(c) => {
                                *opening = None;
                                shared.pool.insert(&key, c)
                            }
                            Err(f) => {
                                *opening = Some((Instant::now(), f.status, f.reason.clone()));
                                return Err(f);
                            }
                        },
                    },
                }
            }
        };
        match send(shared, &lease, req.clone()).await {
            Ok(s) => return Ok((s, lease)),
            Err(Attempt::Retry(why)) => {
                shared.pool.remove(&key, lease.conn().id);
                if fresh_only {
                    return Err(fail(502, why));
                }
                fresh_only = true;
            }
            Err(Attempt::Failed(f)) => return Err(f),
        }
    }
}

enum Attempt {
    /// The connection would not take the stream (going away): try a new one.
    Retry(String),
    Failed(Failure),
}

fn request(plan: &TunnelPlan) -> Result<Request<()>, Failure> {
    if crate::connect::parse_authority(&plan.authority).is_none() {
        return Err(fail(400, "bad CONNECT authority"));
    }
    let mut b = Request::builder()
        .method(Method::CONNECT)
        .uri(plan.authority.as_str());
    for (k, v) in &plan.headers {
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            return Err(fail(400, "bad CONNECT header"));
        };
        // HTTP/2 forbids connection-specific headers (RFC 9113 8.2.2)
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
            "host",
        ];
        if hop.contains(&k.as_str()) {
            return Err(fail(400, format!("header {k} is not allowed in HTTP/2")));
        }
        b = b.header(k, v);
    }
    b.body(()).map_err(|_| fail(400, "bad CONNECT request"))
}

async fn send(shared: &Shared, lease: &Lease, req: Request<()>) -> Result<H2Stream, Attempt> {
    let retry = |e: h2::Error| {
        if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_io() {
            Attempt::Retry(format!("tunnel_closed: {e}"))
        } else {
            Attempt::Failed(fail(502, format!("tunnel_reset: {e}")))
        }
    };
    let wait = shared.settings.connect_timeout * 2;
    let go = async {
        let mut sr = lease.send_request().ready().await.map_err(retry)?;
        let (resp, send) = sr.send_request(req, false).map_err(retry)?;
        let resp = resp.await.map_err(retry)?;
        Ok((resp, send))
    };
    let (resp, send) = match tokio::time::timeout(wait, go).await {
        Ok(r) => r?,
        Err(_) => return Err(Attempt::Failed(fail(504, "tunnel_timeout"))),
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let policy = resp
            .headers()
            .get("x-hostmesh-policy")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        shared.count(&format!("hbone_answered_{status}"), 1);
        return Err(Attempt::Failed(Failure {
            status,
            reason: format!("tunnel_status_{status}"),
            policy,
        }));
    }
    Ok(H2Stream::new(send, resp.into_body()))
}

/// A new HBONE connection for `key`, its driver task spawned.
async fn connect(shared: &Arc<Shared>, plan: &TunnelPlan, key: &Key) -> Result<Arc<Conn>, Failure> {
    let cfg = shared
        .client_config(&plan.source_identity, &plan.expected_identity, true)
        .map_err(|e| fail(503, format!("no_certificate: {e}")))?;
    let tcp = sockopt::connect(plan.peer, plan.bind, shared.settings.connect_timeout)
        .await
        .map_err(|e| {
            let status = if e.kind() == std::io::ErrorKind::TimedOut {
                504
            } else {
                502
            };
            fail(status, format!("connect_failed: {}", sockopt::reason(&e)))
        })?;
    let name = ServerName::IpAddress(plan.peer.ip().into());
    let mut tls = crate::outbound::handshake(shared, cfg, name, tcp, 502, &[]).await?;
    // rustls takes up to this much plaintext per write (h2 hands it whole frames)
    tls.get_mut()
        .1
        .set_buffer_limit(Some(crate::limits::H2_TLS_BUFFER));
    if tls.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
        shared.count("tunnel_handshake_failed_no_h2", 1);
        return Err(fail(502, "tls: peer did not select ALPN h2"));
    }
    let hs = hbone::client_builder().handshake::<_, Bytes>(tls);
    let (send, mut conn) = match tokio::time::timeout(shared.settings.handshake_timeout, hs).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(fail(502, format!("h2 handshake: {e}"))),
        Err(_) => return Err(fail(504, "h2 handshake: timeout")),
    };
    shared.count("hbone_connections_opened", 1);
    let pooled = Conn::new(shared.next_id(), send);
    let keepalive = conn.ping_pong().map(hbone::keepalive);
    let (shared2, key2, pooled2) = (shared.clone(), key.clone(), Arc::downgrade(&pooled));
    tokio::spawn(async move {
        let _gauge = Gauge::new(&shared2, |s| &s.hbone_connections);
        let keepalive = async move {
            match keepalive {
                Some(k) => k.await,
                None => std::future::pending().await,
            }
        };
        let idle = async {
            loop {
                tokio::time::sleep(POOL_IDLE / 10).await;
                match pooled2.upgrade() {
                    Some(c) if c.idle_for(POOL_IDLE) => return,
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
        };
        let why = tokio::select! {
            r = &mut conn => if r.is_err() { "error" } else { "closed" },
            r = keepalive => r,
            _ = idle => "idle",
        };
        if let Some(c) = pooled2.upgrade() {
            shared2.pool.remove(&key2, c.id);
        }
        shared2.count(&format!("hbone_client_connection_{why}"), 1);
        if why != "closed" && why != "error" {
            // idle or dead: its streams (none when idle) end with it
            drop(conn);
        }
    });
    Ok(pooled)
}
