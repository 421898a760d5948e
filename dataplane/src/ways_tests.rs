//! The ways that copy less, over in-memory legs: an HBONE stream on h2 over a duplex
//! pipe, a buffered reader as a source with its own buffer. Bytes exact both ways, the
//! half-close carried both ways, the counts right, chunks that grow with use.

use super::*;
use crate::copy::Counters;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

fn clock() -> u64 {
    0
}

fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(seed) % 251) as u8)
        .collect()
}

/// One HBONE-like stream: (client end, server end), h2 over an in-memory pipe.
async fn h2_pair() -> (H2Stream, H2Stream) {
    let (c, s) = duplex(1 << 20);
    let srv = tokio::spawn(async move {
        let mut conn = crate::hbone::server_builder(10)
            .handshake::<_, Bytes>(s)
            .await
            .unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        H2Stream::new(send, req.into_body())
    });
    let (sr, conn) = crate::hbone::client_builder()
        .handshake::<_, Bytes>(c)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut sr = sr.ready().await.unwrap();
    let req = http::Request::connect("10.0.0.1:80").body(()).unwrap();
    let (resp, send) = sr.send_request(req, false).unwrap();
    let server = srv.await.unwrap();
    let resp = resp.await.unwrap();
    (H2Stream::new(send, resp.into_body()), server)
}

/// A pod's socket bridged to the client end of an HBONE stream (the client core's
/// bridge); the test plays the pod and the far side.
#[tokio::test]
async fn hbone_client_side_bytes_exact_both_ways_with_half_close() {
    let (client_h2, mut far) = h2_pair().await;
    let (mut pod, leg) = duplex(64 * 1024);
    let c = Arc::new(Counters::default());
    let c2 = c.clone();
    let relay = tokio::spawn(async move {
        let (mut leg, mut h2) = (leg, client_h2);
        bridge_legs(&mut leg, &mut h2, &c2, &clock).await
    });
    let (up, down) = (data(3_000_000, 7), data(1_500_000, 13));
    let up2 = up.clone();
    let pod_task = tokio::spawn(async move {
        pod.write_all(&up2).await.unwrap();
        pod.shutdown().await.unwrap(); // half-close: the far side must see END_STREAM
        let mut got = Vec::new();
        pod.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got = Vec::new();
    far.read_to_end(&mut got).await.unwrap();
    assert!(got == up, "bytes to the far side differ");
    far.write_all(&down).await.unwrap();
    far.shutdown().await.unwrap();
    assert!(
        pod_task.await.unwrap() == down,
        "bytes back to the pod differ"
    );
    relay.await.unwrap().unwrap();
    assert_eq!(c.sent.load(Ordering::Relaxed), up.len() as u64);
    assert_eq!(c.received.load(Ordering::Relaxed), down.len() as u64);
}

/// The server end of a stream bridged to a workload's socket, the workload closing first.
#[tokio::test]
async fn hbone_server_side_bytes_exact_the_workload_half_closes_first() {
    let (mut near, server_h2) = h2_pair().await;
    let (mut workload, leg) = duplex(64 * 1024);
    let c = Arc::new(Counters::default());
    let c2 = c.clone();
    let relay = tokio::spawn(async move {
        let (mut h2, mut leg) = (server_h2, leg);
        bridge_legs(&mut h2, &mut leg, &c2, &clock).await
    });
    let (up, down) = (data(700_000, 3), data(2_000_000, 11));
    workload.write_all(&down).await.unwrap();
    workload.shutdown().await.unwrap();
    let mut got = Vec::new();
    near.read_to_end(&mut got).await.unwrap();
    assert!(got == down, "bytes from the workload differ");
    near.write_all(&up).await.unwrap();
    near.shutdown().await.unwrap();
    let mut got = Vec::new();
    workload.read_to_end(&mut got).await.unwrap();
    assert!(got == up, "bytes to the workload differ");
    relay.await.unwrap().unwrap();
    assert_eq!(c.sent.load(Ordering::Relaxed), up.len() as u64);
    assert_eq!(c.received.load(Ordering::Relaxed), down.len() as u64);
}

/// A source with a buffer of its own is written from that buffer, EOF becomes shutdown.
#[tokio::test]
async fn from_buf_carries_every_byte_and_the_eof() {
    let (mut w, r) = duplex(1 << 16);
    let mut src: BufReader<DuplexStream> = BufReader::with_capacity(10_000, r);
    let (mut dst, mut sink) = duplex(1 << 16);
    let c = Counters::default();
    let m = Meter {
        moved: &c.sent,
        active: &c.active_ms,
        now_ms: &clock,
    };
    let sent = data(1_000_003, 5);
    let s2 = sent.clone();
    tokio::spawn(async move {
        w.write_all(&s2).await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        sink.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut way = FromBuf::default();
    std::future::poll_fn(|cx| way.poll_move(cx, &mut src, &mut dst, &m))
        .await
        .unwrap();
    drop(dst);
    assert!(reader.await.unwrap() == sent);
    assert_eq!(c.sent.load(Ordering::Relaxed), sent.len() as u64);
}

/// Chunks into h2 grow as a copy buffer does (1 KiB, 16 KiB, 256 KiB).
#[tokio::test]
async fn into_h2_chunks_grow_with_use() {
    let (mut h2, mut far) = h2_pair().await;
    let (mut w, mut r) = duplex(1 << 20);
    let c = Counters::default();
    let m = Meter {
        moved: &c.sent,
        active: &c.active_ms,
        now_ms: &clock,
    };
    let mut way = IntoH2::default();
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(way.poll_move(&mut cx, &mut r, &mut h2, &m).is_pending());
    assert_eq!(way.class(), 0, "idle: the smallest");
    w.write_all(&data(600_000, 9)).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 600_000];
        far.read_exact(&mut got).await.unwrap();
        got
    });
    while c.sent.load(Ordering::Relaxed) < 600_000 {
        std::future::poll_fn(|cx| match way.poll_move(cx, &mut r, &mut h2, &m) {
            Poll::Pending => Poll::Ready(()),
            Poll::Ready(r) => panic!("ended early: {:?}", r.err()),
        })
        .await;
        tokio::task::yield_now().await;
    }
    assert_eq!(BUFFER_SIZES[way.class()], 256 * 1024);
    assert!(reader.await.unwrap() == data(600_000, 9));
}
