//! L7 connections: HTTP/1.1 ports with per-request rules (or observed for HTTP
//! metrics) served by the core with hyper, one Python decision per request head.
//!
//! The pod side is a hyper server connection (keep-alive, pipelining, HTTP/1.0, heads
//! of at most 16 KiB); each head becomes one `Request` event and waits for Python's
//! answer (a bounded table; a slow answer makes the request wait, none within the
//! decision timeout ends the connection). An allowed request is re-serialized by a
//! hyper client connection on the upstream socket the core opened, its body and the
//! response streaming; a denied one is answered 403, its body read and dropped, and
//! the connection goes on; a bad one is answered 400 and the connection closes. Each
//! finished exchange is one `Exchange` event (status, bytes each way, times; it waits
//! up to limits::EXCHANGE_DELAY and reaches Python with its neighbours in one batch,
//! events.rs); a head
//! hyper refused is one `HttpRefused` event (its 400/431). An allowed Upgrade request
//! the workload answers 101 switches both sockets to the copy loop (raw bytes; the
//! exchange's record ends at the 101); CONNECT is 501. Must never: forward a byte
//! of a request before Python allowed its head, wait for the GIL, or let one
//! connection's error reach another.

use crate::copy::{Counters, Side};
use crate::events::Event;
use crate::hyperio::Io;
use crate::l7body::{Ex, Meter, Note, Reply, Tracked};
use crate::l7head::{self, Answer};
use crate::l7memo::{self, Memo, Memos};
use crate::limits::{
    DECISION_TIMEOUT, L7_LINGER, MAX_L7_HEAD, MAX_L7_HEADERS, MAX_L7_PENDING, MAX_L7_RESPONSE_HEAD,
};
use crate::runtime::{wall, Shared};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::l7table::Waiting;
pub use crate::l7table::{Mode, Table};

struct Ctx<'s> {
    shared: &'s Shared,
    id: u64,
    meter: Arc<Meter>,
    next_rid: AtomicU64,
    send: tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>,
    /// The workload answered an Upgrade request 101: after it, raw bytes both ways.
    upgraded: AtomicBool,
    /// Allowed answers Python let this connection reuse (l7memo.rs).
    memos: Memos,
}

fn own(r: Response<Bytes>) -> Response<Reply> {
    r.map(|b| Either::Left(Full::new(b)))
}

impl Ctx<'_> {
    /// The exchange that ended before this point has all its bytes written: report it.
    fn flush(&self) {
        if let Some(ev) = self.meter.ended_event(self.id) {
            self.shared.events.push(ev);
        }
    }

    async fn ask(&self, rid: u64, ev: Event) -> Option<Answer> {
        let table = &self.shared.l7;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = table.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_L7_PENDING {
                drop(p);
                self.shared.count("l7_refused_pending_full", 1);
                return None;
            }
            p.insert((self.id, rid), tx);
        }
        let _waiting = Waiting(table, (self.id, rid));
        self.shared.events.push(ev);
        match tokio::time::timeout(DECISION_TIMEOUT, rx).await {
            Ok(Ok(a)) => Some(a),
            _ => {
                self.shared.count("l7_refused_decision_timeout", 1);
                None
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Tracked>, Infallible> {
        self.flush();
        let rid = self.next_rid.fetch_add(1, Ordering::Relaxed) + 1;
        let (start, written_mark) = (wall(), self.meter.written.load(Ordering::Relaxed));
        self.meter.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut note = Note::default();
        let resp = self.respond(rid, req, &mut note).await;
        let ex = Ex {
            rid,
            start,
            written_mark,
            memo: note.memo,
        };
        let status = resp.status().as_u16();
        let meter = self.meter.clone();
        Ok(resp.map(|inner| Tracked {
            inner,
            ex: Some(ex),
            status,
            meter,
        }))
    }

    async fn respond(&self, rid: u64, req: Request<Incoming>, note: &mut Note) -> Response<Reply> {
        let (parts, mut body) = req.into_parts();
        if parts.method == http::Method::CONNECT {
            // a tunnel inside an HTTP port: not served (docs/policy.md)
            self.shared.count("l7_refused_connect", 1);
            let text = Bytes::from_static(b"CONNECT is not served on this port\n");
            return own(l7head::reply(501, text, None, true));
        }
        let target = parts.uri.to_string();
        // an answer Python allowed for this very key on this connection, under the
        // policies in force: carried out without asking again (l7memo.rs)
        let key = l7memo::key(&parts, &target);
        if let Some(m) = self.memos.get(&key, self.shared.l7.generation.get()) {
            self.shared.count("l7_memo_hits", 1);
            note.memo = m.token;
            return self
                .forward(parts, body, &m.target, m.host.as_deref())
                .await;
        }
        let h = l7head::head(&parts, target);
        let ev = Event::Request {
            id: self.id,
            rid,
            method: h.method,
            target: h.target,
            version: h.version,
            headers: h.headers,
        };
        let unavailable = || {
            own(l7head::reply(
                503,
                Bytes::from_static(b"decision unavailable\n"),
                None,
                true,
            ))
        };
        match self.ask(rid, ev).await {
            None => unavailable(),
            Some(Answer::Bad { status, body }) => own(l7head::reply(status, body, None, true)),
            Some(Answer::Deny {
                status,
                body: text,
                policy,
            }) => {
                // Envoy's RBAC: 403 naming the policy. The body is read and dropped so the
                // keep-alive connection goes on; a client waiting for 100 Continue is
                // answered at once and the connection closes instead.
                let close = l7head::expects_continue(&parts);
                if !close {
                    while let Some(f) = body.frame().await {
                        if f.is_err() {
                            break;
                        }
                    }
                }
                own(l7head::reply(status, text, policy.as_deref(), close))
            }
            Some(Answer::Allow { target, host, memo }) => {
                if let Some((token, generation)) = memo {
                    let m = Memo {
                        target: target.clone(),
                        host: host.clone(),
                        token,
                        generation,
                    };
                    self.memos.put(key, m);
                }
                self.forward(parts, body, &target, host.as_deref()).await
            }
        }
    }

    /// Send an allowed head (rewritten: `target`, `host`) and its streaming body to the
    /// workload; the response, or the core's 400/502.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        target: &str,
        host: Option<&str>,
    ) -> Response<Reply> {
        let http10 = match l7head::forward(&mut parts, target, host) {
            Ok(v) => v,
            Err(why) => {
                self.shared.count("l7_bad_rewrite", 1);
                let text = Bytes::from(format!("bad request: {why}\n"));
                return own(l7head::reply(400, text, None, true));
            }
        };
        let upgrade = parts.headers.contains_key(http::header::UPGRADE);
        let sent = {
            let mut s = self.send.lock().await;
            match s.ready().await {
                Ok(()) => Some(s.send_request(Request::from_parts(parts, body))),
                Err(_) => None,
            }
        };
        let bad = |t: &'static [u8]| own(l7head::reply(502, Bytes::from_static(t), None, true));
        let Some(sent) = sent else {
            return bad(b"the workload closed the connection\n");
        };
        match sent.await {
            Ok(r) => {
                let (mut p, b) = r.into_parts();
                if upgrade && p.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    // hyper's server writes this 101 and ends its HTTP use of both
                    // sockets; serve() then copies raw bytes
                    self.upgraded.store(true, Ordering::Relaxed);
                }
                if http10 {
                    p.headers.insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Response::from_parts(p, Either::Right(b))
            }
            // the pod's own body failed (cut short, a bad chunk): its 400, as the h11
            // inspector answered (flagged DPE, counted by Python)
            Err(e) if e.is_user() => {
                let text = Bytes::from_static(
                    b"bad request: the request body is incomplete or malformed\n",
                );
                own(l7head::reply(400, text, None, true))
            }
            Err(_) => bad(b"bad response from the workload\n"),
        }
    }
}

fn io_error(e: &hyper::Error) -> Option<io::Error> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io::Error::new(io.kind(), io.to_string()));
        }
        src = s.source();
    }
    None
}

/// Serve connection `id` as HTTP: `a` the pod (source) side, `b` the workload's socket.
/// Ok when it ended in order (a refused head included), else the side that failed.
pub async fn serve<A, B>(
    shared: &Shared,
    id: u64,
    a: &mut A,
    b: &mut B,
    c: &Counters,
    now_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<(), (Side, io::Error)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    shared.count("l7_connections", 1);
    let meter = Arc::new(Meter::default());
    let a_written = [&c.received, &meter.written];
    let a_io = Io {
        inner: &mut *a,
        read: Some(&meter.read),
        written: &a_written,
        active: &c.active_ms,
        now_ms,
    };
    let b_written = [&c.sent];
    let b_io = Io {
        inner: &mut *b,
        read: None,
        written: &b_written,
        active: &c.active_ms,
        now_ms,
    };
    let (send, client) = match hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .max_buf_size(MAX_L7_RESPONSE_HEAD)
        .handshake::<_, Incoming>(b_io)
        .await
    {
        Ok(x) => x,
        Err(e) => {
            return Err((
                Side::B,
                io_error(&e).unwrap_or_else(|| io::Error::other(e.to_string())),
            ))
        }
    };
    let ctx = Ctx {
        shared,
        id,
        meter: meter.clone(),
        next_rid: AtomicU64::new(0),
        send: tokio::sync::Mutex::new(send),
        upgraded: AtomicBool::new(false),
        memos: Memos::default(),
    };
    let svc = hyper::service::service_fn(|req| ctx.handle(req));
    let server = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .keep_alive(true)
        .max_buf_size(MAX_L7_HEAD)
        .max_headers(MAX_L7_HEADERS)
        .preserve_header_case(true)
        .auto_date_header(false)
        .serve_connection(a_io, svc);
    let (mut server, mut client) = (server, client);
    let (mut upstream_done, mut shut) = (false, false);
    let r = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut server).poll(cx) {
            return Poll::Ready(r);
        }
        // hyper waits (for the pod, or a full socket): what it could write of the
        // exchange that ended is out, so that exchange is reported now
        ctx.flush();
        if !upstream_done && Pin::new(&mut client).poll(cx).is_ready() {
            upstream_done = true;
        }
        // the workload closed: once the response in flight has ended, the pod's
        // connection ends too (one framing to the workload: no second connection)
        // (not after a 101: the upgraded connection goes on raw)
        let upgraded = ctx.upgraded.load(Ordering::Relaxed);
        if upstream_done && !shut && !upgraded && meter.in_flight.load(Ordering::Relaxed) == 0 {
            shut = true;
            Pin::new(&mut server).graceful_shutdown();
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    if r.is_ok() && ctx.upgraded.load(Ordering::Relaxed) {
        // hyper's own (low-level) upgrade: both connections ended their HTTP use at the
        // 101 without shutting their sockets; take the sockets back, with the bytes
        // hyper read past the heads, and copy raw both ways (the copy loop's half-close
        // and resets). The exchange's record ends at the 101.
        let sp = server.into_parts(); // its service (borrowing ctx) is dropped here
        let cp = client.into_parts();
        ctx.flush();
        shared.count("l7_upgrades", 1);
        let (a, b) = (sp.io.inner, cp.io.inner);
        if !sp.read_buf.is_empty() {
            b.write_all(&sp.read_buf).await.map_err(|e| (Side::B, e))?;
            c.sent
                .fetch_add(sp.read_buf.len() as u64, Ordering::Relaxed);
        }
        if !cp.read_buf.is_empty() {
            a.write_all(&cp.read_buf).await.map_err(|e| (Side::A, e))?;
            c.received
                .fetch_add(cp.read_buf.len() as u64, Ordering::Relaxed);
        }
        return crate::copy::bridge(a, b, c, now_ms).await;
    }
    // hyper drops the bodies it still holds: an exchange cut short ends ("DC") here
    drop(server);
    drop(client);
    ctx.flush();
    let refused = r.as_ref().err().and_then(l7head::refused_status);
    if r.is_ok() || refused.is_some() {
        // RFC 9112 9.6's staged close: our side ends (an HBONE stream's END_STREAM, a
        // TCP FIN), then what the pod still sends is read and dropped until it ends too,
        // so the response (a refused head's 400/431 included: what followed the head
        // is still unread) is never cut by a reset; bounded by L7_LINGER
        if a.shutdown().await.is_ok() {
            let linger = async {
                let mut buf = [0u8; 1024];
                while let Ok(n) = a.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(L7_LINGER, linger).await;
        }
    }
    match r {
        Ok(()) => Ok(()),
        Err(e) => match refused {
            Some(status) => {
                shared.count(&format!("l7_refused_{status}"), 1);
                let m = &meter;
                let read = m.read.load(Ordering::Relaxed);
                shared.events.push(Event::HttpRefused {
                    id,
                    status,
                    reason: e.to_string(),
                    req_bytes: read.saturating_sub(m.read_mark.load(Ordering::Relaxed)),
                });
                Ok(())
            }
            None => match io_error(&e) {
                Some(io) => Err((Side::A, io)),
                None => Ok(()),
            },
        },
    }
}

#[cfg(test)]
#[path = "l7_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "l7_memo_tests.rs"]
mod memo_tests;
