//! Request heads on L7 connections, as data: what Python is shown of a head hyper
//! parsed, what Python may answer, how an allowed head is rewritten for the workload,
//! and the core's own answers (403, 400, 502, 503) and the status of a refused head.
//!
//! Decides: the event fields of a head (method, target as received, version, every
//! field line as raw name/value bytes in order), the rewrite of an allowed head (the
//! normalized target Python judged, one Host, HTTP/1.0 sent as HTTP/1.1 with
//! `Connection: close`), and the shape of the answers the core writes. Must never:
//! parse HTTP itself (hyper did), do I/O, or change a head Python did not allow.

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE,
};
use http::{request, Response, StatusCode, Uri, Version};

/// Python's answer for one request head (Core.http_answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Forward it with `target` (the normalized form Python judged) and, when given,
    /// this `Host` (an absolute-form target's authority, or a request without Host).
    Allow {
        target: String,
        host: Option<String>,
        /// Python's token and policy generation when this answer may be reused for
        /// heads with the same key on this connection (l7memo.rs)
        memo: Option<(u32, u64)>,
    },
    /// Answer `status` (403) naming `policy`; the body is read and dropped and the
    /// connection continues.
    Deny {
        status: u16,
        body: Bytes,
        policy: Option<String>,
    },
    /// Answer `status` (400) and close: the head cannot be framed or normalized.
    Bad { status: u16, body: Bytes },
}

/// What Python is shown of a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub version: &'static str,
    pub headers: Vec<(Bytes, Bytes)>,
}

pub fn version_str(v: Version) -> &'static str {
    if v == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

/// The event fields of a parsed head: names lower case (HTTP field names are case
/// insensitive; Python lower-cases them anyway), values as received, in order.
pub fn head(parts: &request::Parts, target: String) -> Head {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_str().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect();
    Head {
        method: parts.method.as_str().to_string(),
        target,
        version: version_str(parts.version),
        headers,
    }
}

const HOP: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

/// Rewrite an allowed head for the workload: `target` replaces the received one, `host`
/// (when given) replaces every Host line; an HTTP/1.0 request goes out as HTTP/1.1 with
/// its hop-by-hop fields dropped and `Connection: close`. Returns whether the client
/// spoke HTTP/1.0 (its answer closes too: HTTP/1.0 keep-alive is declined).
pub fn forward(
    parts: &mut request::Parts,
    target: &str,
    host: Option<&str>,
) -> Result<bool, String> {
    parts.uri = target
        .parse::<Uri>()
        .map_err(|e| format!("normalized target {target:?}: {e}"))?;
    if let Some(h) = host {
        let v = HeaderValue::from_str(h).map_err(|_| format!("host {h:?} is not a field value"))?;
        parts.headers.insert(HOST, v);
    }
    if parts.version == Version::HTTP_10 && parts.headers.contains_key(UPGRADE) {
        // HTTP/1.1 upgrades go to the workload as they came (a 101 switches the
        // connection to raw bytes, l7.rs); HTTP/1.0 has none (RFC 9110 7.8): declined by
        // removing its hop-by-hop fields (7.6.1), so the workload answers in HTTP/1.1
        parts.headers.remove(UPGRADE);
        parts
            .headers
            .remove(HeaderName::from_static("http2-settings"));
        let close = parts.headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(5)
                .any(|w| w == b"close")
        });
        parts.headers.remove(CONNECTION);
        if close {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let http10 = parts.version == Version::HTTP_10;
    if http10 {
        for h in HOP {
            parts.headers.remove(HeaderName::from_static(h));
        }
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    parts.version = Version::HTTP_11;
    Ok(http10)
}

/// Whether the client waits for `100 Continue` before its body.
pub fn expects_continue(parts: &request::Parts) -> bool {
    parts
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// One of the core's own answers: text/plain, its length, the policy that denied it,
/// and `Connection: close` when the connection ends after it.
pub fn reply(status: u16, body: Bytes, policy: Option<&str>, close: bool) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(p) = policy.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(HeaderName::from_static("x-hostmesh-policy"), p);
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    *r.body_mut() = body;
    r
}

/// The status of a request hyper refused: what it answered a head it could not take
/// (its `on_error`: 431 for a head over the buffer, 400 for anything else it could not
/// parse), or 400 for a request the pod ended part-way (head or body cut short; the h11
/// inspector's 400, though nobody is left to read it). None for anything else (I/O).
pub fn refused_status(e: &hyper::Error) -> Option<u16> {
    if e.is_parse_too_large() {
        Some(431)
    } else if (e.is_parse() && !e.is_parse_version_h2()) || e.is_incomplete_message() {
        Some(400)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> request::Parts {
        req.into_parts().0
    }

    #[test]
    fn a_head_becomes_its_event_fields_in_order_with_duplicates() {
        let p = parts(
            http::Request::get("/a/b?q=1")
                .header("Host", "web")
                .header("X-A", "1")
                .header("x-a", "2")
                .header("Content-Length", "5, 5")
                .body(())
                .unwrap(),
        );
        let h = head(&p, p.uri.to_string());
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/a/b?q=1");
        assert_eq!(h.version, "HTTP/1.1");
        let hs: Vec<(&[u8], &[u8])> = h.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(
            hs,
            vec![
                (&b"host"[..], &b"web"[..]),
                (b"x-a", b"1"),
                (b"x-a", b"2"),
                (b"content-length", b"5, 5")
            ]
        );
    }

    #[test]
    fn absolute_form_and_lower_case_methods_are_shown_as_received() {
        let p = parts(
            http::Request::builder()
                .method(http::Method::from_bytes(b"get").unwrap())
                .uri("http://web/admin/abs")
                .version(Version::HTTP_10)
                .body(())
                .unwrap(),
        );
        let h = head(&p, p.uri.to_string());
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.version),
            ("get", "http://web/admin/abs", "HTTP/1.0")
        );
    }

    #[test]
    fn an_allowed_head_goes_out_normalized_with_one_host() {
        let mut p = parts(
            http::Request::get("http://web/public/../x")
                .header("host", "a")
                .header("host", "b")
                .body(())
                .unwrap(),
        );
        assert_eq!(forward(&mut p, "/x", Some("web")), Ok(false));
        assert_eq!(p.uri, "/x");
        assert_eq!(
            p.headers.get_all(HOST).iter().collect::<Vec<_>>(),
            vec!["web"]
        );
        assert_eq!(p.version, Version::HTTP_11);
        assert!(p.headers.get(CONNECTION).is_none());
    }

    #[test]
    fn http10_goes_out_as_11_with_close_and_without_keep_alive() {
        let mut p = parts(
            http::Request::get("/ten")
                .version(Version::HTTP_10)
                .header("connection", "keep-alive")
                .header("keep-alive", "timeout=5")
                .body(())
                .unwrap(),
        );
        assert_eq!(forward(&mut p, "/ten", None), Ok(true));
        assert_eq!(p.version, Version::HTTP_11);
        assert_eq!(p.headers.get(CONNECTION).unwrap(), "close");
        assert!(p.headers.get("keep-alive").is_none());
    }

    #[test]
    fn an_http11_upgrade_goes_as_it_came_an_http10_one_is_declined() {
        let req = || {
            http::Request::get("/ws")
                .header("connection", "Upgrade, HTTP2-Settings")
                .header("upgrade", "h2c")
                .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
                .header("x-keep", "1")
        };
        let mut p = parts(req().body(()).unwrap());
        assert_eq!(forward(&mut p, "/ws", None), Ok(false));
        assert_eq!(p.headers[CONNECTION], "Upgrade, HTTP2-Settings");
        assert_eq!(p.headers[UPGRADE], "h2c");
        assert!(p.headers.get("http2-settings").is_some());
        let mut p = parts(req().version(Version::HTTP_10).body(()).unwrap());
        assert_eq!(forward(&mut p, "/ws", None), Ok(true));
        for h in ["upgrade", "http2-settings"] {
            assert!(p.headers.get(h).is_none(), "{h}");
        }
        assert_eq!(p.headers[CONNECTION], "close");
        assert_eq!(p.headers["x-keep"], "1");
    }

    #[test]
    fn a_target_that_is_no_uri_is_an_error_not_a_forward() {
        let mut p = parts(http::Request::get("/a").body(()).unwrap());
        assert!(forward(&mut p, "/a b", None).is_err());
        assert!(forward(&mut p, "/a", Some("bad\nhost")).is_err());
    }

    #[test]
    fn the_cores_answers_say_length_policy_and_close() {
        let r = reply(
            403,
            Bytes::from_static(b"RBAC: access denied by shop/no-admin\n"),
            Some("shop/no-admin"),
            false,
        );
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["content-length"], "37");
        assert_eq!(r.headers()["x-hostmesh-policy"], "shop/no-admin");
        assert!(r.headers().get(CONNECTION).is_none());
        let r = reply(400, Bytes::from_static(b"bad request: x\n"), None, true);
        assert_eq!(r.headers()[CONNECTION], "close");
        assert!(r.headers().get("x-hostmesh-policy").is_none());
    }

    #[test]
    fn expect_continue_is_recognized_in_any_case() {
        let p = parts(
            http::Request::post("/")
                .header("expect", "100-Continue")
                .body(())
                .unwrap(),
        );
        assert!(expects_continue(&p));
        let p = parts(http::Request::post("/").body(()).unwrap());
        assert!(!expects_continue(&p));
    }
}
