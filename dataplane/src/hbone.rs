//! HBONE's rules without I/O: what an HTTP/2 CONNECT request must be, what the core
//! reads from it, the HTTP/2 settings of both ends, and the keepalive.
//!
//! Decides: a request is acceptable when it is CONNECT (not extended CONNECT), its
//! `:authority` is `<ip>:<port>` (connect.rs's rule) and, on a pod-address connection,
//! that ip is the address the connection arrived on; everything else is 400 with a
//! named reason. `forwarded` (its first `for=`), `traceparent` and `baggage` are read
//! for telemetry only: a malformed or oversized one is dropped, never refused (ztunnel
//! ignores `for=` too). The settings are ztunnel's (limits.rs). Must never: do I/O, or
//! trust `forwarded` for anything but a record.

use crate::connect::parse_authority;
use crate::limits::*;
use http::{HeaderMap, Method};
use std::net::{IpAddr, SocketAddr};

/// What the server reads from an acceptable CONNECT stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub target: SocketAddr,
    pub forwarded_for: Option<SocketAddr>,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}

/// Why a stream is answered 400 (counted as `hbone_refused_<reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotConnect,
    BadAuthority,
    AuthorityMismatch,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotConnect => "not_connect",
            Refusal::BadAuthority => "bad_authority",
            Refusal::AuthorityMismatch => "authority_mismatch",
        }
    }
}

/// Check a request head. `pod_address`: the local address when the connection came to a
/// pod's address (the authority must name it), None on the node address.
pub fn parse_request(
    method: &Method,
    authority: Option<&str>,
    protocol: bool,
    headers: &HeaderMap,
    pod_address: Option<IpAddr>,
) -> Result<Request, Refusal> {
    if method != Method::CONNECT || protocol {
        return Err(Refusal::NotConnect);
    }
    let target = authority
        .and_then(parse_authority)
        .ok_or(Refusal::BadAuthority)?;
    if let Some(local) = pod_address {
        if canonical(target.ip()) != canonical(local) {
            return Err(Refusal::AuthorityMismatch);
        }
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_TELEMETRY_HEADER)
            .map(str::to_string)
    };
    Ok(Request {
        target,
        forwarded_for: text("forwarded").and_then(|v| forwarded_for(&v)),
        traceparent: text("traceparent"),
        baggage: text("baggage"),
    })
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's view) is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The first `for=` of a Forwarded header (RFC 7239): `for="<ip>:<port>"`,
/// `for="[v6]:port"`, `for=<ipv4>` or `for="[v6]"` (port 0 when none).
pub fn forwarded_for(v: &str) -> Option<SocketAddr> {
    let pair = v
        .split([',', ';'])
        .map(str::trim)
        .find(|p| p.len() > 4 && p[..4].eq_ignore_ascii_case("for="))?;
    let raw = pair[4..].trim_matches('"');
    if let Some(a) = parse_authority(raw) {
        return Some(a);
    }
    let bare = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    let ip: IpAddr = bare.unwrap_or(raw).parse().ok()?;
    if bare.is_none() && ip.is_ipv6() {
        return None; // RFC 7239 6: an IPv6 node is bracketed
    }
    Some(SocketAddr::new(ip, 0))
}

/// The server's HTTP/2 settings (ztunnel's inbound); `max_streams`: Settings'
/// hbone_max_streams (H2_SERVER_MAX_STREAMS outside tests).
pub fn server_builder(max_streams: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_concurrent_streams(max_streams)
        .max_header_list_size(H2_SERVER_HEADER_LIST)
        .max_send_buffer_size(H2_SEND_BUFFER);
    b
}

/// The client's HTTP/2 settings (ztunnel's outbound pool).
pub fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_header_list_size(H2_CLIENT_HEADER_LIST)
        .initial_max_send_streams(H2_CLIENT_INITIAL_STREAMS)
        .max_send_buffer_size(H2_SEND_BUFFER)
        .enable_push(false);
    b
}

/// PING every H2_PING_EVERY; returns when a PONG did not come within H2_PING_TIMEOUT
/// (the connection is dead: the caller drops it) or the connection is gone.
pub async fn keepalive(pp: h2::PingPong) -> &'static str {
    keepalive_with(pp, H2_PING_EVERY, H2_PING_TIMEOUT).await
}

pub async fn keepalive_with(
    mut pp: h2::PingPong,
    every: std::time::Duration,
    timeout: std::time::Duration,
) -> &'static str {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return "closed",
            Err(_) => return "ping_timeout",
        }
    }
}

#[cfg(test)]
#[path = "hbone_tests.rs"]
mod tests;
