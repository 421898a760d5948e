//! The core's HTTP path end to end in one process: a pod's raw bytes in, a decider
//! playing Python, a raw upstream; what reaches the upstream and what the pod gets back.

use super::serve;
use crate::copy::Counters;
use crate::events::Event;
use crate::l7head::Answer;
use crate::runtime::{Settings, Shared};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) fn shared() -> Arc<Shared> {
    Shared::new(Settings {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_connections: 100,
        hbone_max_streams: crate::limits::H2_SERVER_MAX_STREAMS,
    })
    .unwrap()
}

/// Answers every head: /admin* denied, a lower-case method bad, the rest allowed.
async fn decider(s: Arc<Shared>, seen: Arc<std::sync::Mutex<Vec<Event>>>) {
    loop {
        for ev in s.events.drain(64) {
            if let Event::Request {
                id,
                rid,
                method,
                target,
                ..
            } = &ev
            {
                let a = if method != &method.to_uppercase() {
                    Answer::Bad {
                        status: 400,
                        body: Bytes::from_static(b"bad request: method\n"),
                    }
                } else if target.starts_with("/admin") {
                    Answer::Deny {
                        status: 403,
                        body: Bytes::from_static(b"RBAC: access denied by shop/no-admin\n"),
                        policy: Some("shop/no-admin".into()),
                    }
                } else {
                    Answer::Allow {
                        target: target.clone(),
                        host: None,
                        // "/m...": Python lets the core reuse it (token 7, generation 0)
                        memo: target.starts_with("/m").then_some((7, 0)),
                    }
                };
                assert!(s.l7.answer(*id, *rid, a));
            }
            seen.lock().unwrap().push(ev);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs `client_bytes` through serve() against an upstream that answers each request
/// with `answer` (closing after it when `close`); returns (pod's bytes back, upstream's
/// bytes in, events).
async fn run(
    client_bytes: &[u8],
    answer: &'static [u8],
    close: bool,
) -> (String, String, Vec<Event>) {
    run_on(shared(), client_bytes, answer, close).await
}

/// `run` on `s`.
pub(super) async fn run_on(
    s: Arc<Shared>,
    client_bytes: &[u8],
    answer: &'static [u8],
    close: bool,
) -> (String, String, Vec<Event>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = tokio::spawn(decider(s.clone(), seen.clone()));
    let (mut pod, mut a) = tokio::io::duplex(1 << 16);
    let (mut b, mut up) = tokio::io::duplex(1 << 16);
    let upstream = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(300), up.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"\r\n\r\n") {
                        up.write_all(answer).await.unwrap();
                        if close {
                            break;
                        }
                    }
                }
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    pod.write_all(client_bytes).await.unwrap();
    let c = Counters::default();
    let now = || 0u64;
    let srv = serve(&s, 7, &mut a, &mut b, &c, &now);
    let reader = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), pod.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    };
    let (r, out) = tokio::join!(tokio::time::timeout(Duration::from_secs(3), srv), reader);
    let _ = r;
    let upstream_got = upstream.await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    d.abort();
    let evs = seen.lock().unwrap().clone();
    (
        String::from_utf8_lossy(&out).into_owned(),
        upstream_got,
        evs,
    )
}

const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
pub(super) const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

#[tokio::test]
async fn a_request_with_connection_close_gets_the_response_then_the_close() {
    let (out, up, _) = run(
        b"GET /ten HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        OK_CLOSE,
        true,
    )
    .await;
    assert!(up.starts_with("GET /ten HTTP/1.1\r\n"), "{up}");
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("ok\n"),
        "{out:?}"
    );
}

fn exchanges(evs: &[Event]) -> Vec<(u64, u16, u64, u64, &'static str)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Exchange {
                rid,
                status,
                req_bytes,
                resp_bytes,
                flags,
                ..
            } => Some((*rid, *status, *req_bytes, *resp_bytes, *flags)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_denied_request_is_403_on_the_same_keepalive_and_never_reaches_the_workload() {
    let req = b"GET /ok HTTP/1.1\r\nHost: web\r\n\r\n\
                POST /admin/x HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nHELLO\
                GET /ok2 HTTP/1.1\r\nHost: web\r\n\r\n";
    let (out, up, evs) = run(req, OK, false).await;
    assert_eq!(up.matches("GET /ok").count(), 2, "{up}");
    assert!(!up.contains("admin") && !up.contains("HELLO"), "{up}");
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "403", "200"], "{out}");
    assert!(
        out.contains("x-hostmesh-policy: shop/no-admin\r\n"),
        "{out}"
    );
    assert!(
        out.contains("RBAC: access denied by shop/no-admin\n"),
        "{out}"
    );
    // one record per exchange, in order, with the status each got
    let ex = exchanges(&evs);
    assert_eq!(
        ex.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        [(1, 200), (2, 403), (3, 200)]
    );
    assert!(ex.iter().all(|e| e.4 == "-"), "{ex:?}");
    assert_eq!(
        ex.iter().map(|e| e.3).sum::<u64>() as usize,
        out.len(),
        "response bytes are the pod's"
    );
}

#[tokio::test]
async fn a_bad_head_is_answered_400_and_nothing_more_is_read() {
    let req = b"get /x HTTP/1.1\r\nHost: web\r\n\r\nGET /ok HTTP/1.1\r\nHost: web\r\n\r\n";
    let (out, up, evs) = run(req, OK, false).await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(
        out.contains("connection: close\r\n") && out.ends_with("bad request: method\n"),
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    assert_eq!(up, "");
    assert_eq!(
        exchanges(&evs)
            .iter()
            .map(|e| (e.1, e.4))
            .collect::<Vec<_>>(),
        [(400, "DPE")]
    );
}

#[tokio::test]
async fn a_head_over_16_kib_is_431_and_reported() {
    let mut req = b"GET /x HTTP/1.1\r\nHost: web\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 17 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let (out, up, evs) = run(&req, OK, false).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    assert_eq!(up, "");
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::HttpRefused { status: 431, .. })),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| matches!(e, Event::Request { .. })));
}

#[tokio::test]
async fn te_with_cl_goes_out_chunked_only_and_the_smuggled_head_stays_body() {
    // hyper frames by Transfer-Encoding and drops the Content-Length after it (RFC 9112
    // 6.3 (3)); the workload gets one framing, never the bytes as a second request
    let req =
        b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
                2e\r\nGET /admin/te-cl HTTP/1.1\r\nHost: web\r\nX: 1\r\n\r\n\r\n0\r\n\r\n";
    let (_, up, evs) = run(req, OK, false).await;
    assert!(up.starts_with("POST /a HTTP/1.1\r\n"), "{up}");
    assert!(!up.to_ascii_lowercase().contains("content-length"), "{up}");
    let heads: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .collect();
    assert_eq!(heads.len(), 1, "{evs:?}");
}

#[tokio::test]
async fn http10_goes_out_as_11_with_close_and_the_client_is_answered_and_closed() {
    let req = b"GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /admin/ka HTTP/1.0\r\n\r\n";
    let (out, up, _) = run(req, OK, false).await;
    let lower = up.to_ascii_lowercase();
    assert!(
        up.starts_with("GET /ten HTTP/1.1\r\n") && lower.contains("connection: close\r\n"),
        "{up}"
    );
    assert!(!up.contains("keep-alive"), "{up}");
    assert!(
        out.starts_with("HTTP/1.0 200 OK\r\n") && out.ends_with("ok\n"),
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.").count(), 1, "{out}");
}

/// An upstream that answers its first head 101 and then echoes raw bytes until EOF;
/// returns what it read (head included).
async fn upgrading_upstream(mut up: tokio::io::DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = up.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            up.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
            )
            .await
            .unwrap();
            // the raw bytes that came with the head, then the rest
            let extra = got[end + 4..].to_vec();
            up.write_all(&extra).await.unwrap();
            loop {
                let n = up.read(&mut buf).await.unwrap();
                if n == 0 {
                    up.shutdown().await.unwrap();
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                up.write_all(&buf[..n]).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn an_allowed_upgrade_answered_101_becomes_raw_bytes_both_ways() {
    let s = shared();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = tokio::spawn(decider(s.clone(), seen.clone()));
    let (mut pod, mut a) = tokio::io::duplex(1 << 16);
    let (mut b, up) = tokio::io::duplex(1 << 16);
    let upstream = tokio::spawn(upgrading_upstream(up));
    let c = Counters::default();
    let now = || 0u64;
    let client = async {
        // raw bytes right behind the head: hyper has read them, they must not be lost
        pod.write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n\x00\x01raw")
            .await
            .unwrap();
        let want = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: Upgrade\r\n\r\n\x00\x01raw";
        let mut out = vec![0u8; want.len()];
        pod.read_exact(&mut out).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out).to_lowercase(),
            String::from_utf8_lossy(want).to_lowercase()
        );
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; big.len()];
        let (mut rd, mut wr) = tokio::io::split(&mut pod);
        let (_, r) = tokio::join!(
            async {
                wr.write_all(&big).await.unwrap();
                wr.shutdown().await.unwrap();
            },
            rd.read_exact(&mut back)
        );
        r.unwrap();
        assert!(back == big, "echo differs");
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    };
    let srv = serve(&s, 7, &mut a, &mut b, &c, &now);
    let (r, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(5), srv), client);
    assert!(
        matches!(r, Ok(Ok(()))),
        "{:?}",
        r.map(|x| x.map_err(|e| e.1))
    );
    let got = upstream.await.unwrap();
    assert!(got.starts_with(b"GET /ws HTTP/1.1\r\n"));
    let head =
        String::from_utf8_lossy(&got[..got.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .to_lowercase();
    assert!(
        head.contains("upgrade: echo") && head.contains("connection: upgrade"),
        "{head}"
    );
    assert_eq!(got.len() - head.len() - 4, 5 + 200_000);
    assert_eq!(s.counters().get("l7_upgrades"), Some(&1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    d.abort();
    let evs = seen.lock().unwrap().clone();
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Exchange { status: 101, .. })),
        "{evs:?}"
    );
}

#[tokio::test]
async fn a_denied_upgrade_is_403_and_never_reaches_the_workload() {
    let (out, up, _) = run(
        b"GET /admin/ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        OK,
        false,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out:?}");
    assert_eq!(up, "");
}
