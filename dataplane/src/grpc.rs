//! One unary gRPC call over HTTP/2 and TLS: what the agent's CA client needs to ask
//! Istio's `IstioCertificateService` (istiod, or `hostmesh ca serve`) for an SVID, so
//! the agent process carries no gRPC library of its own (docs/decisions/0005).
//!
//! Decides: how the call is made — TCP to each resolved address of `host:port` in turn,
//! TLS (1.2 or 1.3, ALPN `h2`) with the server verified against the given roots and
//! name (WebPKI: the CA is server-authenticated, as Istio's is), the node's client
//! certificate when one is given, one HTTP/2 POST with gRPC's headers (`content-type:
//! application/grpc`, `te: trailers`, `grpc-timeout`) and the caller's metadata, the
//! message in one length-prefixed frame (gRPC over HTTP/2: a compressed flag byte and a
//! 4-byte big-endian length) — and what an answer means: the status of `grpc-status` /
//! `grpc-message` (in the trailers, or in the headers of a trailers-only answer), an HTTP
//! status without one mapped as gRPC's http-grpc-status-mapping.md maps it, a transport
//! failure `UNAVAILABLE` and the deadline `DEADLINE_EXCEEDED`, each with a message naming
//! what failed.
//! Must never: retry (the identity manager's backoff paces calls), read or write the
//! protobuf messages (Python's `agent/identity/cawire.py` does), run on the data plane's
//! runtime, or be called with the GIL held (lib.rs releases it; the call runs on the
//! caller's thread in a runtime of its own that ends with it).

use crate::limits::GRPC_MAX_RESPONSE;
use crate::tls;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// gRPC status codes (grpc/doc/statuscodes.md) the client produces itself.
pub const OK: u32 = 0;
pub const CANCELLED: u32 = 1;
pub const UNKNOWN: u32 = 2;
pub const INVALID_ARGUMENT: u32 = 3;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const PERMISSION_DENIED: u32 = 7;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

/// One call's parameters: where, whom to trust, who we are, what to send.
pub struct Call<'a> {
    pub address: &'a str,
    pub server_name: Option<&'a str>,
    pub roots_pem: &'a [u8],
    pub cert_pem: Option<&'a [u8]>,
    pub key_pem: Option<&'a [u8]>,
    pub path: &'a str,
    pub metadata: &'a [(String, String)],
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// A call that did not return a message: the gRPC status code and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

fn status(code: u32, message: impl Into<String>) -> Status {
    Status {
        code,
        message: message.into(),
    }
}

/// The call, on the caller's thread: the response message's bytes or the status.
pub fn call_blocking(c: &Call<'_>) -> Result<Vec<u8>, Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| status(INTERNAL, format!("runtime: {e}")))?;
    rt.block_on(async {
        match tokio::time::timeout(c.timeout, call(c)).await {
            Ok(r) => r,
            Err(_) => Err(status(
                DEADLINE_EXCEEDED,
                format!("no answer from {} within {:?}", c.address, c.timeout),
            )),
        }
    })
}

async fn call(c: &Call<'_>) -> Result<Vec<u8>, Status> {
    let (host, port) = split_address(c.address).map_err(|m| status(INVALID_ARGUMENT, m))?;
    let name = c.server_name.unwrap_or(host);
    let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
        status(
            INVALID_ARGUMENT,
            format!("{name:?} is not a TLS server name"),
        )
    })?;
    let cfg = client_config(c.roots_pem, c.cert_pem, c.key_pem)
        .map_err(|m| status(INVALID_ARGUMENT, m))?;
    let tcp = connect(host, port).await?;
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            status(
                UNAVAILABLE,
                format!("TLS handshake with {}: {e}", c.address),
            )
        })?;
    if tls.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
        return Err(status(
            UNAVAILABLE,
            format!("{} did not select ALPN h2 (not a gRPC server)", c.address),
        ));
    }
    let (send, conn) = h2::client::Builder::new()
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| h2_status("HTTP/2 handshake", &e))?;
    // the connection's driver; it ends with this call's runtime
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send
        .ready()
        .await
        .map_err(|e| h2_status("HTTP/2 connection", &e))?;
    let req = request(c)?;
    let (resp, mut body) = send
        .send_request(req, false)
        .map_err(|e| h2_status("request", &e))?;
    body.send_data(frame(c.message), true)
        .map_err(|e| h2_status("request body", &e))?;
    let resp = resp.await.map_err(|e| h2_status("response", &e))?;
    let (parts, mut rbody) = resp.into_parts();
    if let Some(s) = grpc_status(&parts.headers) {
        return Err(s
            .err()
            .unwrap_or_else(|| status(INTERNAL, "no response message")));
    }
    if parts.status != StatusCode::OK {
        return Err(http_status(parts.status));
    }
    let grpc_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if !grpc_type {
        return Err(status(UNKNOWN, "the answer is not gRPC (content-type)"));
    }
    let mut data = BytesMut::new();
    while let Some(chunk) = rbody.data().await {
        let chunk = chunk.map_err(|e| h2_status("response body", &e))?;
        let _ = rbody.flow_control().release_capacity(chunk.len());
        if data.len() + chunk.len() > GRPC_MAX_RESPONSE {
            return Err(status(
                RESOURCE_EXHAUSTED,
                format!("response over {GRPC_MAX_RESPONSE} bytes"),
            ));
        }
        data.extend_from_slice(&chunk);
    }
    let trailers = rbody
        .trailers()
        .await
        .map_err(|e| h2_status("trailers", &e))?
        .unwrap_or_default();
    match grpc_status(&trailers) {
        None => Err(status(INTERNAL, "the server sent no grpc-status")),
        Some(Err(s)) => Err(s),
        Some(Ok(())) => unframe(&data).map(<[u8]>::to_vec),
    }
}

/// `host:port` or `[v6]:port` -> (host, port).
pub fn split_address(a: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{a:?} is not host:port");
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None => host,
    };
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

fn client_config(
    roots_pem: &[u8],
    cert: Option<&[u8]>,
    key: Option<&[u8]>,
) -> Result<ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for r in tls::parse_certs(roots_pem).map_err(|e| format!("CA root: {e}"))? {
        roots.add(r).map_err(|e| format!("CA root: {e}"))?;
    }
    let builder = ClientConfig::builder_with_provider(tls::crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain = tls::parse_certs(c).map_err(|e| format!("node credential: {e}"))?;
            let key = rustls_pemfile::private_key(&mut &k[..])
                .ok()
                .flatten()
                .ok_or("node credential: no private key in the key file")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("node credential: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    Ok(cfg)
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, Status> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| status(UNAVAILABLE, format!("resolve {host}: {e}")))?;
    let mut last = status(UNAVAILABLE, format!("resolve {host}: no address"));
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = status(UNAVAILABLE, format!("connect {a}: {e}")),
        }
    }
    Err(last)
}

/// The POST; `:authority` is the address dialled (as gRPC clients send it).
fn request(c: &Call<'_>) -> Result<Request<()>, Status> {
    let (host, port) = split_address(c.address).map_err(|m| status(INVALID_ARGUMENT, m))?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{host}:{port}{}", c.path))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", c.timeout.as_millis().max(1)))
        .header(
            http::header::USER_AGENT,
            concat!("hostmesh/", env!("CARGO_PKG_VERSION")),
        )
        .body(())
        .map_err(|e| status(INVALID_ARGUMENT, format!("request: {e}")))?;
    for (k, v) in c.metadata {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| status(INVALID_ARGUMENT, format!("metadata key {k:?}")))?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            status(
                INVALID_ARGUMENT,
                format!("metadata {k:?}: not a header value"),
            )
        })?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

/// The message as one gRPC length-prefixed frame, uncompressed.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// The one message of a unary answer's body.
pub fn unframe(data: &[u8]) -> Result<&[u8], Status> {
    if data.len() < 5 {
        return Err(status(INTERNAL, "no response message"));
    }
    if data[0] != 0 {
        return Err(status(
            INTERNAL,
            "a compressed response message (none was offered)",
        ));
    }
    let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() - 5 != n {
        return Err(status(
            INTERNAL,
            format!("response frame of {n} bytes in a body of {}", data.len()),
        ));
    }
    Ok(&data[5..])
}

/// `grpc-status` and `grpc-message` when the headers carry them: Ok for OK.
pub fn grpc_status(h: &HeaderMap) -> Option<Result<(), Status>> {
    let code = h.get("grpc-status")?;
    let code = match code.to_str().ok().and_then(|s| s.parse::<u32>().ok()) {
        Some(c) => c,
        None => return Some(Err(status(UNKNOWN, "unreadable grpc-status"))),
    };
    if code == OK {
        return Some(Ok(()));
    }
    let message = h
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Some(Err(status(code, message)))
}

/// gRPC's mapping of an HTTP status without a gRPC status (http-grpc-status-mapping.md).
pub fn http_status(s: StatusCode) -> Status {
    let code = match s.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    };
    status(code, format!("HTTP status {s} without a gRPC status"))
}

fn h2_status(what: &str, e: &h2::Error) -> Status {
    let code = match e.reason() {
        _ if e.is_io() => UNAVAILABLE,
        Some(h2::Reason::REFUSED_STREAM) => UNAVAILABLE,
        Some(h2::Reason::CANCEL) => CANCELLED,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => RESOURCE_EXHAUSTED,
        _ if e.is_go_away() => UNAVAILABLE,
        _ => INTERNAL,
    };
    status(code, format!("{what}: {e}"))
}

/// grpc-message is percent-encoded UTF-8 (PROTOCOL-HTTP2.md); a malformed escape is
/// kept as it is.
pub fn percent_decode(v: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(a), Some(b)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(a << 4 | b);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
