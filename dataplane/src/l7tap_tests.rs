//! A watched connection through the copy loop: the bytes go on unchanged both ways
//! (HTTP/1.0 stays 1.0, a dot segment stays), and each exchange is one event carrying
//! its told head, reported when its response was written to the pod.

use super::bridge_watched;
use crate::copy::Counters;
use crate::events::Event;
use crate::l7::tests::shared;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Seen = (
    u64,
    u16,
    u64,
    u64,
    &'static str,
    Option<(String, String, String)>,
);

fn exchanges(evs: &[Event]) -> Vec<Seen> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Exchange {
                id,
                rid,
                status,
                req_bytes,
                resp_bytes,
                flags,
                memo,
                told,
                ..
            } => {
                assert_eq!((*id, *memo), (7, 0));
                Some((
                    *rid,
                    *status,
                    *req_bytes,
                    *resp_bytes,
                    *flags,
                    told.as_deref().cloned(),
                ))
            }
            _ => None,
        })
        .collect()
}

const REQ: &[u8] = b"GET /a/../b HTTP/1.0\r\nHost: web:8080\r\n\r\n\
    POST http://x/c HTTP/1.1\r\nHost: w\xe9b\r\nContent-Length: 3\r\n\r\nabc";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\
    HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";

#[tokio::test]
async fn a_watched_connection_moves_every_byte_unchanged_and_reports_each_exchange() {
    let s = shared();
    let (mut pod, mut a) = tokio::io::duplex(1 << 16);
    let (mut b, mut up) = tokio::io::duplex(1 << 16);
    let upstream = tokio::spawn(async move {
        let mut got = vec![0u8; REQ.len()];
        up.read_exact(&mut got).await.unwrap();
        up.write_all(RESP).await.unwrap();
        up.shutdown().await.unwrap();
        let mut rest = Vec::new();
        up.read_to_end(&mut rest).await.unwrap();
        got
    });
    pod.write_all(REQ).await.unwrap();
    pod.shutdown().await.unwrap();
    let (c, now) = (Counters::default(), || 0u64);
    let bridged = bridge_watched(&s, 7, &mut a, &mut b, &c, &now);
    let mut out = Vec::new();
    let (r, _) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), bridged),
        pod.read_to_end(&mut out)
    );
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    assert_eq!(
        upstream.await.unwrap(),
        REQ,
        "the workload gets the pod's bytes as they were"
    );
    assert_eq!(out, RESP, "the pod gets the workload's bytes as they were");
    let evs = s.events.drain(64);
    let t = |m: &str, p: &str, h: &str| Some((m.to_string(), p.to_string(), h.to_string()));
    assert_eq!(
        exchanges(&evs),
        [
            (1, 200, 40, 40, "-", t("GET", "/a/../b", "web:8080")),
            (2, 503, 61, 75, "-", t("POST", "http://x/c", "w\u{e9}b")),
        ]
    );
    assert_eq!(s.counters().get("l7_watched"), Some(&1));
}

#[tokio::test]
async fn bytes_that_are_not_http_go_on_as_they_are_and_the_loss_is_counted() {
    let s = shared();
    let (mut pod, mut a) = tokio::io::duplex(1 << 16);
    let (mut b, mut up) = tokio::io::duplex(1 << 16);
    let junk: &[u8] = b"\x16\x03\x01 not an http request\r\n\r\n";
    let upstream = tokio::spawn(async move {
        let mut got = vec![0u8; junk.len()];
        up.read_exact(&mut got).await.unwrap();
        up.write_all(b"pong").await.unwrap();
        up.shutdown().await.unwrap();
        got
    });
    pod.write_all(junk).await.unwrap();
    pod.shutdown().await.unwrap();
    let (c, now) = (Counters::default(), || 0u64);
    let mut out = Vec::new();
    let (r, _) = tokio::join!(
        bridge_watched(&s, 7, &mut a, &mut b, &c, &now),
        pod.read_to_end(&mut out)
    );
    assert!(r.is_ok());
    assert_eq!(
        (upstream.await.unwrap(), out),
        (junk.to_vec(), b"pong".to_vec())
    );
    assert!(exchanges(&s.events.drain(64)).is_empty());
    assert_eq!(s.counters().get("l7_watch_lost_bad_request_head"), Some(&1));
}
