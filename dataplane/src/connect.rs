//! The tunnel's HTTP/1.1 CONNECT exchange (SPEC.md "Tunnel"), parsed with httparse.
//!
//! Decides: whether bytes are a complete, acceptable CONNECT request (target
//! `<ip>:<port>`, `Forwarded: for="<ip>:<port>"`, `traceparent`) or response, the status
//! for a bad one (400, 431 over 16 KiB), and the exact bytes of every answer. Must
//! never: touch a socket, parse HTTP by hand, or let bytes after the head go missing
//! (they belong to the stream: `leftover`).

use crate::limits::{MAX_CONNECT_HEAD, MAX_CONNECT_HEADERS};
use std::net::{IpAddr, SocketAddr};

/// A CONNECT request the server accepted for decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub target: SocketAddr,
    pub forwarded_for: Option<SocketAddr>,
    pub traceparent: Option<String>,
    /// Bytes of the head (the rest of the buffer is the stream's first bytes).
    pub head_len: usize,
}

/// A request refused before any decision, with the status SPEC.md names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: String,
}

fn reject(status: u16, message: impl Into<String>) -> Reject {
    Reject {
        status,
        message: message.into(),
    }
}

/// `Ok(None)`: need more bytes (and fewer than 16 KiB so far).
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many headers")),
        Err(e) => return Err(reject(400, format!("malformed request: {e}"))),
    };
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() > MAX_CONNECT_HEAD {
                return Err(reject(
                    431,
                    format!("header block over {MAX_CONNECT_HEAD} bytes"),
                ));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > MAX_CONNECT_HEAD {
        return Err(reject(
            431,
            format!("header block over {MAX_CONNECT_HEAD} bytes"),
        ));
    }
    if req.version != Some(1) {
        return Err(reject(400, "not HTTP/1.1"));
    }
    let method = req.method.unwrap_or("");
    if method != "CONNECT" {
        return Err(reject(400, format!("method {method} is not CONNECT")));
    }
    let target = parse_authority(req.path.unwrap_or(""))
        .ok_or_else(|| reject(400, "CONNECT target is not <ip>:<port>"))?;
    let mut forwarded_for = None;
    let mut traceparent = None;
    let mut host = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            host = true;
        } else if h.name.eq_ignore_ascii_case("forwarded") {
            let v = std::str::from_utf8(h.value)
                .map_err(|_| reject(400, "Forwarded header is not text"))?;
            forwarded_for = Some(
                parse_forwarded(v)
                    .ok_or_else(|| reject(400, "Forwarded header is not for=\"<ip>:<port>\""))?,
            );
        } else if h.name.eq_ignore_ascii_case("traceparent") {
            traceparent = std::str::from_utf8(h.value).ok().map(str::to_string);
        }
    }
    if !host {
        return Err(reject(400, "missing Host header"));
    }
    Ok(Some(Request {
        target,
        forwarded_for,
        traceparent,
        head_len,
    }))
}

/// `<ipv4>:<port>` or `[<ipv6>]:<port>`, port 1-65535.
pub fn parse_authority(raw: &str) -> Option<SocketAddr> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        let ip: std::net::Ipv6Addr = h.parse().ok()?;
        (IpAddr::V6(ip), p)
    } else {
        let (h, p) = raw.rsplit_once(':')?;
        let ip: std::net::Ipv4Addr = h.parse().ok()?;
        (IpAddr::V4(ip), p)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    Some(SocketAddr::new(host, port))
}

fn parse_forwarded(v: &str) -> Option<SocketAddr> {
    let v = v.trim().strip_prefix("for=")?;
    let v = v.strip_prefix('"').unwrap_or(v);
    let v = v.strip_suffix('"').unwrap_or(v);
    parse_authority(v)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The answer to a CONNECT (`policy`: the denying policy, sent as x-hostmesh-policy).
pub fn response(status: u16, policy: Option<&str>) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    if let Some(p) = policy {
        // a header value must not break the head: control characters are dropped
        let clean: String = p.chars().filter(|c| !c.is_control()).collect();
        out.push_str(&format!("x-hostmesh-policy: {clean}\r\n"));
    }
    if status != 200 {
        out.push_str("content-length: 0\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The client's request: target, Host, then the headers Python chose (Forwarded,
/// traceparent). Header names and values with CR/LF are refused.
pub fn request(authority: &str, headers: &[(String, String)]) -> Option<Vec<u8>> {
    let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
    if bad(authority) || parse_authority(authority).is_none() {
        return None;
    }
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n");
    for (k, v) in headers {
        if bad(k) || bad(v) || k.is_empty() || k.contains(':') {
            return None;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    Some(out.into_bytes())
}

/// A CONNECT response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub policy: Option<String>,
    pub head_len: usize,
}

/// `Ok(None)`: need more bytes. Informational (1xx) answers are skipped.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[start..]) {
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_CONNECT_HEAD {
                    return Err("CONNECT response head over 16 KiB".into());
                }
                return Ok(None);
            }
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                if (100..200).contains(&status) {
                    start += n;
                    continue;
                }
                let policy = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("x-hostmesh-policy"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string);
                return Ok(Some(Response {
                    status,
                    policy,
                    head_len: start + n,
                }));
            }
            Err(e) => return Err(format!("malformed CONNECT response: {e}")),
        }
    }
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
