//! The copy loop over in-memory pipes: bytes exact both ways, buffers that grow with
//! use and are released when drained, half-close carried across.

use super::*;
use std::sync::Arc;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

fn clock() -> u64 {
    0
}

#[tokio::test]
async fn bytes_cross_exactly_both_ways_and_half_close_is_carried() {
    let (mut client, mut a) = duplex(64 * 1024);
    let (mut b, mut server) = duplex(64 * 1024);
    let c = Arc::new(Counters::default());
    let c2 = c.clone();
    let relay = tokio::spawn(async move { bridge(&mut a, &mut b, &c2, &clock).await });
    let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let writer = tokio::spawn(async move {
        client.write_all(&up2).await.unwrap();
        client.shutdown().await.unwrap(); // half-close: the server must see EOF
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert!(got == up, "upstream bytes differ");
    server.write_all(&down2).await.unwrap();
    server.shutdown().await.unwrap();
    assert!(writer.await.unwrap() == down, "downstream bytes differ");
    relay.await.unwrap().unwrap();
    assert_eq!(c.sent.load(Ordering::Relaxed), up.len() as u64);
    assert_eq!(c.received.load(Ordering::Relaxed), down.len() as u64);
}

#[test]
fn buffers_grow_with_use_and_are_released_when_drained() {
    use std::task::Context;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut src_w, mut src) = duplex(1 << 20);
        let (mut dst, mut sink) = duplex(1 << 20);
        let moved = AtomicU64::new(0);
        let active = AtomicU64::new(0);
        let mut d = Direction::default();
        let m = Meter {
            moved: &moved,
            active: &active,
            now_ms: &clock,
        };
        // idle: nothing held
        let r = poll_direction(&mut cx, &mut d, &mut src, &mut dst, &m);
        assert!(r.is_pending());
        assert_eq!(d.held(), 0);
        // one small message: 1 KiB buffer, then released once drained
        src_w.write_all(&[1u8; 100]).await.unwrap();
        let _ = poll_direction(&mut cx, &mut d, &mut src, &mut dst, &m);
        assert_eq!((d.class, d.held()), (0, 0));
        // a burst: each full read moves the buffer up one size
        src_w.write_all(&vec![2u8; 600_000]).await.unwrap();
        let mut sizes = Vec::new();
        for _ in 0..8 {
            let _ = poll_direction(&mut cx, &mut d, &mut src, &mut dst, &m);
            sizes.push(BUFFER_SIZES[d.class]);
            let mut sunk = vec![0u8; 1 << 20];
            let _ = Pin::new(&mut sink).poll_read(&mut cx, &mut ReadBuf::new(&mut sunk));
        }
        assert_eq!(*sizes.last().unwrap(), 256 * 1024, "{sizes:?}");
        assert_eq!(d.held(), 0, "drained and waiting: the buffer is released");
        assert_eq!(moved.load(Ordering::Relaxed), 600_100);
    });
}
