//! The Python surface of the native data plane (`agent._dataplane`), and nothing else.
//!
//! Decides: the shape of what crosses into Python — one `Core` (listeners in, events
//! out, commands in, identities and trust pushed in, stats and live connections read)
//! and `verify` (the SPIFFE checks for Python's own callers). Must never: hold the GIL
//! while waiting, let a Rust panic or error cross as anything but a Python exception,
//! or hold logic that belongs in the modules below. Only agent/dataplane.py imports it.

mod connect;
mod copy;
mod decisions;
mod events;
mod grpc;
mod h2client;
mod h2server;
mod h2stream;
mod hbone;
mod hyperio;
mod inbound;
mod l7;
mod l7body;
mod l7head;
mod l7memo;
mod l7table;
mod l7tap;
mod l7watch;
mod limits;
mod listen;
mod live;
mod outbound;
mod pool;
mod runtime;
mod sessions;
mod sockopt;
mod spiffe;
mod threads;
mod tls;
mod ways;

use events::{Event, Kind};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use runtime::{Command, Settings, Shared, TunnelPlan};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threads::Threads;

fn addr(a: SocketAddr) -> (String, u16) {
    (a.ip().to_string(), a.port())
}

type TunnelTuple = (
    String,
    (String, u16),
    Option<(String, u16)>,
    Option<String>,
    &'static str,
    Option<String>,
);

fn tunnel_tuple(t: events::TunnelInfo) -> TunnelTuple {
    (
        t.peer_identity,
        addr(t.target),
        t.forwarded_for.map(addr),
        t.traceparent,
        t.protocol,
        t.baggage,
    )
}

/// ("exchanges", [exchange tuples]): one event, so Python takes a batch of records in
/// one call (agent/proxy/l7core.py on_exchanges).
fn exchanges(py: Python<'_>, run: Vec<PyObject>) -> PyResult<PyObject> {
    Ok(("exchanges", PyList::new(py, run)?)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

/// An exchange's response flags as one shared Python string per value (one per
/// exchange otherwise: a new str object each).
fn flag<'py>(py: Python<'py>, flags: &'static str) -> Bound<'py, pyo3::types::PyString> {
    match flags {
        "-" => pyo3::intern!(py, "-").clone(),
        "DC" => pyo3::intern!(py, "DC").clone(),
        "UC" => pyo3::intern!(py, "UC").clone(),
        "DPE" => pyo3::intern!(py, "DPE").clone(),
        other => pyo3::types::PyString::new(py, other),
    }
}

fn ip(s: &str) -> PyResult<IpAddr> {
    s.parse()
        .map_err(|_| PyValueError::new_err(format!("{s:?} is not an IP address")))
}

/// The native core: tokio threads moving bytes and TLS, asking Python per connection.
#[pyclass(module = "agent._dataplane", frozen)]
struct Core {
    shared: Arc<Shared>,
    rt: Mutex<Option<Threads>>,
}

impl Core {
    fn with_rt<T>(&self, f: impl FnOnce(&tokio::runtime::Handle) -> T) -> PyResult<T> {
        let g = self.rt.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(rt) => Ok(f(rt.handle())),
            None => Err(PyOSError::new_err("the data plane core is shut down")),
        }
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (threads=1, connect_timeout_s=5.0, handshake_timeout_s=5.0, idle_timeout_s=3600.0, max_connections=100_000))]
    fn new(
        threads: usize,
        connect_timeout_s: f64,
        handshake_timeout_s: f64,
        idle_timeout_s: f64,
        max_connections: usize,
    ) -> PyResult<Self> {
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.001));
        let settings = Settings {
            connect_timeout: secs(connect_timeout_s),
            handshake_timeout: secs(handshake_timeout_s),
            idle_timeout: secs(idle_timeout_s),
            max_connections,
            hbone_max_streams: limits::H2_SERVER_MAX_STREAMS,
        };
        let shared = Shared::new(settings)?;
        let rt = Threads::start(threads.max(1))?;
        rt.handle().spawn(shared.clone().sweep());
        Ok(Core {
            shared,
            rt: Mutex::new(Some(rt)),
        })
    }

    /// The eventfd to await; readable when `events()` has something.
    fn eventfd(&self) -> i32 {
        self.shared.events.fd()
    }

    /// Accept on a listening socket (the core takes a duplicate of `fd`); `kind`:
    /// "outbound" (:15001), "plaintext" (:15006) or "tunnel" (:15008).
    fn listen(&self, fd: i32, kind: &str) -> PyResult<()> {
        let kind = match kind {
            "outbound" => Kind::Outbound,
            "plaintext" => Kind::Plaintext,
            "tunnel" => Kind::Tunnel,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unknown listener kind {kind:?}"
                )))
            }
        };
        // SAFETY: dup returns a new descriptor (or -1), owned by the listener below.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `dup` is a fresh descriptor nobody else owns.
        let std = unsafe { std::net::TcpListener::from_raw_fd(dup) };
        std.set_nonblocking(true)?;
        let shared = self.shared.clone();
        self.with_rt(|rt| {
            let _g = rt.enter();
            let l = tokio::net::TcpListener::from_std(std)?;
            rt.spawn(listen::accept_loop(shared, l, kind));
            Ok::<(), std::io::Error>(())
        })??;
        Ok(())
    }

    /// Up to one batch of events, as tuples:
    /// ("conn", id, kind, (src ip, port), (dst ip, port), tunnel | None) where tunnel is
    /// (peer identity, (target ip, port), (forwarded ip, port) | None, traceparent | None,
    /// protocol ("hbone" | "connect"), baggage | None);
    /// ("cached", id, entry, at, (src ip, port), (dst ip, port), tunnel | None,
    /// traceparent | None): a connection the core answered from Python's stored answer
    /// `entry` (decisions.rs; a captured one carries the traceparent the core sent);
    /// ("failed", id, status, reason, policy | None);
    /// ("finished", id, sent, received, start, end, reason);
    /// ("progress", id, sent, received);
    /// ("request", id, rid, method, target, version, [(name, value)]): an L7 head to answer;
    /// ("exchanges", [(id, rid, status, request bytes, response bytes, start, end, flags,
    /// memo, told | None)]): L7 exchanges that ended one after the other, in order
    /// (`told`: (method, target, first Host));
    /// ("http_refused", id, status, reason, request bytes).
    fn events(&self, py: Python<'_>) -> PyResult<Vec<PyObject>> {
        let evs = self.shared.events.drain(limits::EVENT_BATCH);
        let mut out = Vec::with_capacity(evs.len());
        // consecutive exchanges, handed over as one ("exchanges", [...]) event
        let mut run: Vec<PyObject> = Vec::new();
        for ev in evs {
            if !run.is_empty() && !matches!(ev, Event::Exchange { .. }) {
                out.push(exchanges(py, std::mem::take(&mut run))?);
            }
            let o = match ev {
                Event::Conn {
                    id,
                    kind,
                    src,
                    dst,
                    tunnel,
                } => {
                    let t = tunnel.map(tunnel_tuple);
                    ("conn", id, kind.as_str(), addr(src), addr(dst), t)
                        .into_pyobject(py)?
                        .into_any()
                        .unbind()
                }
                Event::Cached {
                    id,
                    entry,
                    at,
                    src,
                    dst,
                    tunnel,
                    traceparent,
                } => (
                    "cached",
                    id,
                    entry,
                    at,
                    addr(src),
                    addr(dst),
                    tunnel.map(|t| tunnel_tuple(*t)),
                    traceparent,
                )
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
                Event::Failed {
                    id,
                    status,
                    reason,
                    policy,
                } => ("failed", id, status, reason, policy)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
                Event::Finished {
                    id,
                    sent,
                    received,
                    start,
                    end,
                    reason,
                } => ("finished", id, sent, received, start, end, reason)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
                Event::Progress { id, sent, received } => ("progress", id, sent, received)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
                Event::Request {
                    id,
                    rid,
                    method,
                    target,
                    version,
                    headers,
                } => {
                    let hs: Vec<_> = headers
                        .iter()
                        .map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v)))
                        .collect();
                    ("request", id, rid, method, target, version, hs)
                        .into_pyobject(py)?
                        .into_any()
                        .unbind()
                }
                Event::Exchange {
                    id,
                    rid,
                    status,
                    req_bytes,
                    resp_bytes,
                    start,
                    end,
                    flags,
                    memo,
                    told,
                } => {
                    let t = (
                        id,
                        rid,
                        status,
                        req_bytes,
                        resp_bytes,
                        start,
                        end,
                        flag(py, flags),
                        memo,
                        told.map(|t| *t),
                    );
                    run.push(t.into_pyobject(py)?.into_any().unbind());
                    continue;
                }
                Event::HttpRefused {
                    id,
                    status,
                    reason,
                    req_bytes,
                } => ("http_refused", id, status, reason, req_bytes)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
            };
            out.push(o);
        }
        if !run.is_empty() {
            out.push(exchanges(py, run)?);
        }
        Ok(out)
    }

    /// Connect to ip:port (bound to `bind` with IP_TRANSPARENT when given) and bridge.
    /// `remember` = (generation, entry): the answer is also stored for the connection's
    /// repeat flows (a tunnel stream's; decisions.rs), valid while `generation` is.
    #[pyo3(signature = (id, ip_, port, bind=None, remember=None))]
    fn connect(
        &self,
        id: u64,
        ip_: &str,
        port: u16,
        bind: Option<&str>,
        remember: Option<(u64, u64)>,
    ) -> PyResult<bool> {
        let upstream = SocketAddr::new(ip(ip_)?, port);
        let bind = bind.map(ip).transpose()?;
        Ok(self
            .shared
            .command_remembered(id, Command::Connect { upstream, bind }, remember))
    }

    /// A new decision generation (every policy, registry, traffic-rule or config
    /// change): every stored answer is gone before this returns.
    fn set_generation(&self, generation: u64) {
        self.shared.decisions.set_generation(generation);
    }

    /// Connect as `connect` does, then serve the connection as HTTP/1.1 in the core
    /// (l7.rs): one ("request", ...) event per head, answered with `http_answer`.
    #[pyo3(signature = (id, ip_, port, bind=None))]
    fn http(&self, id: u64, ip_: &str, port: u16, bind: Option<&str>) -> PyResult<bool> {
        let upstream = SocketAddr::new(ip(ip_)?, port);
        let bind = bind.map(ip).transpose()?;
        self.shared.l7.mark(id, Some(upstream), l7::Mode::Ask);
        let ok = self.shared.command(id, Command::Connect { upstream, bind });
        if !ok {
            self.shared.l7.unmark(id);
        }
        Ok(ok)
    }

    /// Watch connection `id` as HTTP when the command Python sends next (a tunnel)
    /// bridges it: the source's view of a workload's HTTP port (HTTP metrics). Its
    /// bytes go on as they are (l7tap.rs); each exchange's event carries its told head.
    fn http_mark(&self, id: u64) {
        self.shared.l7.mark(id, None, l7::Mode::Tell);
    }

    /// The policy generation in force: memos of L7 answers (http_answer's `memo`) of any
    /// other generation are no longer used. Python calls it on every policy swap.
    fn http_generation(&self, generation: u64) {
        self.shared.l7.generation.set(generation);
    }

    /// Forget `http_mark` (the command was not sent after all).
    fn http_unmark(&self, id: u64) {
        self.shared.l7.unmark(id);
    }

    /// Python's answer for request head `rid` of connection `id`: verdict "allow"
    /// (forward with `target`, and `host` when given), "deny" (answer `status`, `body`,
    /// naming `policy`; the connection goes on) or "bad" (answer `status`, `body`, close).
    /// An allow with `memo` (Python's token, then the policy generation it was decided
    /// under) is reused for this connection's later heads of the same key (l7memo.rs)
    /// while that generation is in force; their exchanges carry the token.
    /// False when nobody waits for it (timed out, the connection gone).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (id, rid, verdict, status=0, body=None, target=None, host=None, policy=None, memo=None))]
    fn http_answer(
        &self,
        id: u64,
        rid: u64,
        verdict: &str,
        status: u16,
        body: Option<&[u8]>,
        target: Option<String>,
        host: Option<String>,
        policy: Option<String>,
        memo: Option<(u32, u64)>,
    ) -> PyResult<bool> {
        let body = bytes::Bytes::copy_from_slice(body.unwrap_or_default());
        if memo.is_some_and(|m| m.0 == 0) {
            return Err(PyValueError::new_err("a memo token is 1 or more"));
        }
        let a = match verdict {
            "allow" => l7head::Answer::Allow {
                target: target.ok_or_else(|| PyValueError::new_err("allow needs a target"))?,
                host,
                memo,
            },
            "deny" => l7head::Answer::Deny {
                status,
                body,
                policy,
            },
            "bad" => l7head::Answer::Bad { status, body },
            _ => {
                return Err(PyValueError::new_err(format!(
                    "verdict is \"allow\", \"deny\" or \"bad\", not {verdict:?}"
                )))
            }
        };
        Ok(self.shared.l7.answer(id, rid, a))
    }

    /// Open an mTLS tunnel to the peer's ip:port and CONNECT to `authority`.
    /// protocol "connect": one TLS connection (SNI `sni`) and an HTTP/1.1 CONNECT;
    /// "hbone": a stream on a pooled HTTP/2 connection (ALPN h2, no SNI), the outer
    /// socket bound to `bind` (the source pod's address).
    #[allow(clippy::too_many_arguments)]
    /// `remember` as for `connect`: stored for the captured flow's repeats, which the core
    /// sends with their own `forwarded` and a fresh `traceparent`.
    #[pyo3(signature = (id, peer_ip, peer_port, source_identity, expected_identity, sni, authority, headers, protocol="connect", bind=None, remember=None))]
    fn tunnel(
        &self,
        id: u64,
        peer_ip: &str,
        peer_port: u16,
        source_identity: String,
        expected_identity: String,
        sni: String,
        authority: String,
        headers: Vec<(String, String)>,
        protocol: &str,
        bind: Option<&str>,
        remember: Option<(u64, u64)>,
    ) -> PyResult<bool> {
        let hbone = match protocol {
            "hbone" => true,
            "connect" => false,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "protocol is \"hbone\" or \"connect\", not {protocol:?}"
                )))
            }
        };
        let plan = TunnelPlan {
            hbone,
            bind: bind.map(ip).transpose()?,
            peer: SocketAddr::new(ip(peer_ip)?, peer_port),
            source_identity,
            expected_identity,
            sni,
            authority,
            headers,
        };
        Ok(self
            .shared
            .command_remembered(id, Command::Tunnel(plan), remember))
    }

    /// Refuse: a reset (captured listeners) or `status` (tunnel listener).
    #[pyo3(signature = (id, reason, status=503, policy=None))]
    fn refuse(&self, id: u64, reason: String, status: u16, policy: Option<String>) -> bool {
        self.shared.command(
            id,
            Command::Refuse {
                reason,
                status,
                policy,
            },
        )
    }

    /// Bridge the connection to a socket pair and return Python's end (a file
    /// descriptor Python owns), or None when the connection is gone.
    fn pipe(&self, id: u64) -> PyResult<Option<i32>> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        if self.shared.command(
            id,
            Command::Pipe {
                fd: OwnedFd::from(ours),
            },
        ) {
            Ok(Some(theirs.into_raw_fd()))
        } else {
            Ok(None)
        }
    }

    /// End a live connection with a reset; false when it is not live.
    fn close(&self, id: u64, reason: &str) -> bool {
        self.shared.close(id, reason)
    }

    /// Drain: take what is already in the backlogs, then stop accepting; HBONE server
    /// connections get GOAWAY (their streams go on until shutdown or close).
    fn stop_accepting(&self) {
        self.shared.stop_accepting.notify_one();
        self.shared.draining.send_replace(true);
    }

    /// Replace the map local pod address -> SPIFFE ID: a tunnel connection to one of
    /// these addresses presents that identity's SVID (pushed with set_identity).
    fn set_pod_identities(&self, pairs: Vec<(String, String)>) -> PyResult<()> {
        let mut m = HashMap::with_capacity(pairs.len());
        for (a, id) in pairs {
            m.insert(ip(&a)?.to_canonical(), id);
        }
        self.shared.set_pod_identities(m);
        Ok(())
    }

    fn set_trust(&self, bundle_pem: &[u8], trust_domain: &str) -> PyResult<()> {
        let t = tls::Trust::new(bundle_pem, trust_domain).map_err(PyValueError::new_err)?;
        self.shared.set_trust(t).map_err(PyValueError::new_err)
    }

    /// Present `chain_pem`/`key_pem` for `spiffe_id` (client side) and `sni` (server).
    fn set_identity(
        &self,
        spiffe_id: &str,
        sni: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> PyResult<()> {
        let ck = tls::certified_key(chain_pem, key_pem).map_err(PyValueError::new_err)?;
        self.shared.ids.set(spiffe_id, sni, ck);
        self.shared.identity_changed(spiffe_id);
        Ok(())
    }

    fn remove_identity(&self, spiffe_id: &str, sni: &str) {
        self.shared.ids.remove(spiffe_id, sni);
        self.shared.identity_changed(spiffe_id);
    }

    /// Counters (connections, handshakes, resumptions, refusals by reason, bytes) and
    /// gauges (live connections, HBONE connections, streams and pooled connections).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let c: HashMap<String, u64> = self.shared.counters();
        for (k, v) in c {
            d.set_item(k, v)?;
        }
        d.set_item("connections", self.shared.live().len())?;
        d.set_item("open", self.shared.open_connections())?;
        d.set_item("pending_decisions", self.shared.pending_len())?;
        d.set_item("l7_pending_requests", self.shared.l7.pending_len())?;
        d.set_item("events_queued", self.shared.events.len())?;
        d.set_item(
            "events_dropped",
            self.shared.events.dropped.load(Ordering::Relaxed),
        )?;
        d.set_item("identities", self.shared.ids.len())?;
        d.set_item("decision_cache_entries", self.shared.decisions.len())?;
        d.set_item("decision_generation", self.shared.decisions.generation())?;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        d.set_item("hbone_connections", g(&self.shared.hbone_connections))?;
        d.set_item("hbone_streams", g(&self.shared.hbone_streams))?;
        d.set_item("hbone_pooled", self.shared.pool.len())?;
        Ok(d)
    }

    /// The byte counts of every live connection, packed: (id, sent, received) as three
    /// native-endian u64 each. What the telemetry tick reads every flush: one bytes
    /// object where `connections()` builds a tuple, two address strings and their tuples
    /// per connection, a peak of ~0.4 KiB per idle connection that malloc keeps after
    /// it is freed (measured: docs/dataplane.md, Memory).
    fn live_counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let live = self.shared.live();
        let mut out = Vec::with_capacity(live.len() * 24);
        for l in &live {
            out.extend_from_slice(&l.id.to_ne_bytes());
            out.extend_from_slice(&l.counters.sent.load(Ordering::Relaxed).to_ne_bytes());
            out.extend_from_slice(&l.counters.received.load(Ordering::Relaxed).to_ne_bytes());
        }
        PyBytes::new(py, &out)
    }

    /// Live connections: (id, kind, mode, (src), (dst), sent, received, start).
    #[allow(clippy::type_complexity)]
    fn connections(
        &self,
    ) -> Vec<(
        u64,
        &'static str,
        &'static str,
        (String, u16),
        (String, u16),
        u64,
        u64,
        f64,
    )> {
        self.shared
            .live()
            .iter()
            .map(|l| {
                (
                    l.id,
                    l.kind.as_str(),
                    l.mode,
                    addr(l.src),
                    addr(l.dst),
                    l.counters.sent.load(Ordering::Relaxed),
                    l.counters.received.load(Ordering::Relaxed),
                    l.start,
                )
            })
            .collect()
    }

    /// Reset every live connection and stop the threads.
    fn shutdown(&self, py: Python<'_>) {
        self.shared.close_all("shutdown");
        let rt = self.rt.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rt) = rt {
            py.allow_threads(|| rt.stop());
        }
    }
}

/// The SPIFFE X.509-SVID checks on a PEM chain (leaf first) against a PEM bundle at
/// `now` (Unix seconds): (ok, SPIFFE ID or None, reason or ""). `role`: whose chain it
/// is ("client" or "server"); X509-SVID 4.4 asks both usages of every SVID, so the
/// verdict is the same for either.
#[pyfunction]
#[pyo3(signature = (chain_pem, bundle_pem, trust_domain, now, expected=None, role="client"))]
fn verify(
    chain_pem: &[u8],
    bundle_pem: &[u8],
    trust_domain: &str,
    now: f64,
    expected: Option<&str>,
    role: &str,
) -> PyResult<(bool, Option<String>, String)> {
    let chain = match tls::parse_certs(chain_pem) {
        Ok(c) => c,
        Err(_) => return Ok((false, None, "no_certificate".into())),
    };
    let roots = tls::parse_certs(bundle_pem).map_err(PyValueError::new_err)?;
    if !matches!(role, "client" | "server") {
        return Err(PyValueError::new_err("role is \"client\" or \"server\""));
    }
    let now = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs_f64(now.max(0.0)));
    Ok(
        match spiffe::verify(&chain, &roots, trust_domain, now, expected) {
            Ok(id) => (true, Some(id), String::new()),
            Err(r) => (false, None, r.as_str().to_string()),
        },
    )
}

/// One unary gRPC call (grpc.rs), made on the calling thread with the GIL released:
/// (status code, message, response bytes). The agent's CA client calls it from a worker
/// thread, never from the trio thread.
#[pyfunction]
#[pyo3(signature = (address, roots_pem, path, message, metadata, timeout_s, server_name=None, cert_pem=None, key_pem=None))]
#[allow(clippy::too_many_arguments)]
fn grpc_unary<'py>(
    py: Python<'py>,
    address: &str,
    roots_pem: &[u8],
    path: &str,
    message: &[u8],
    metadata: Vec<(String, String)>,
    timeout_s: f64,
    server_name: Option<&str>,
    cert_pem: Option<&[u8]>,
    key_pem: Option<&[u8]>,
) -> (u32, String, Bound<'py, PyBytes>) {
    let call = grpc::Call {
        address,
        server_name,
        roots_pem,
        cert_pem,
        key_pem,
        path,
        metadata: &metadata,
        message,
        timeout: Duration::from_secs_f64(if timeout_s.is_finite() {
            timeout_s.clamp(0.001, 86_400.0)
        } else {
            86_400.0
        }),
    };
    match py.allow_threads(|| grpc::call_blocking(&call)) {
        Ok(body) => (grpc::OK, String::new(), PyBytes::new(py, &body)),
        Err(s) => (s.code, s.message, PyBytes::new(py, b"")),
    }
}

#[pymodule]
fn _dataplane(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Core>()?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(grpc_unary, m)?)?;
    Ok(())
}
