//! A stream piped to Python's socket pair (the L7 inspector's path), and flow control
//! holding a stream whose upstream stops reading.

use super::*;
use std::os::fd::OwnedFd;

/// Python's end of a pipe, played by an echo task: every byte back, then EOF.
pub fn echo_pipe() -> OwnedFd {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    tokio::spawn(async move {
        let mut s = tokio::net::UnixStream::from_std(theirs).unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    OwnedFd::from(ours)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_stream_reaches_python_and_back() {
    let pki = pki();
    let (_srv, addr, seen) = server(&pki, 0).await;
    let cli = core(&pki, &[CLIENT]);
    let piped: SocketAddr = "127.0.0.1:8".parse().unwrap();
    let (s, _l) = open(&cli, &plan(addr, piped)).await.unwrap();
    let sent = data(500_000, 11);
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
        sent
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert!(got == writer.await.unwrap());
    drop(r);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fin: Vec<(u64, u64)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Finished { sent, received, .. } => Some((*sent, *received)),
            _ => None,
        })
        .collect();
    assert_eq!(fin, [(500_000, 500_000)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_stops_the_sender_within_the_window() {
    let pki = pki();
    let (srv, addr, _) = server(&pki, 0).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let _ = hold_rx.recv().await; // never reads; holds the socket open
        drop(s);
    });
    let cli = core(&pki, &[CLIENT]);
    let (mut s, _l) = open(&cli, &plan(addr, up)).await.unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(500), s.write_all(&chunk)).await {
        r.unwrap();
        written += chunk.len();
        assert!(written < 64 << 20, "never stalled");
    }
    // what is in flight: one stream window, the copy buffer and h2's send buffer, and
    // the two loopback sockets' kernel buffers (autotuned, a few MiB each)
    let window = crate::limits::H2_STREAM_WINDOW as usize;
    assert!(written >= window, "stalled early: {written}");
    assert!(written <= window + (1 << 20) + (16 << 20), "{written}");
    let c = srv.counters();
    assert_eq!(c.get("hbone_status_200"), Some(&1));
    drop(hold_tx);
}
