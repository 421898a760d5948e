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

/// A TCP relay between client and server whose connections can all be killed at once
/// (dropped with SO_LINGER 0: resets both ways).
async fn killable(to: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let (kill, _) = tokio::sync::watch::channel(false);
    let k = kill.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let mut killed = k.subscribe();
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                    _ = killed.wait_for(|k| *k) => {
                        crate::sockopt::reset_on_close(std::os::fd::AsRawFd::as_raw_fd(&c));
                        crate::sockopt::reset_on_close(std::os::fd::AsRawFd::as_raw_fd(&s));
                    }
                }
            });
        }
    });
    (a, kill)
}

/// Issue 17's bad input: one TLS connection carrying 1,000 streams (the server's limit
/// raised to 1,001, as a peer advertising more than ztunnel's 200 would), killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_end_every_stream_and_leak_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    let pki = pki();
    let n = 1000;
    let (srv, addr, seen) = server_with(&pki, 0, n + 1).await;
    let (relay, kill) = killable(addr).await;
    let up = reverser().await;
    let cli = core(&pki, &[CLIENT]);
    // the first stream alone (the server's SETTINGS known after it), then the rest at once
    let mut streams = vec![open(&cli, &plan(relay, up)).await.unwrap()];
    let opening: Vec<_> = (1..n)
        .map(|_| {
            let (cli, p) = (cli.clone(), plan(relay, up));
            tokio::spawn(async move { open(&cli, &p).await.unwrap() })
        })
        .collect();
    for t in opening {
        streams.push(t.await.unwrap());
    }
    for (s, _) in &mut streams {
        s.write_all(b"x").await.unwrap();
    }
    // one short of the server's 1,001: every stream on one TLS connection
    assert_eq!(srv.counters().get("hbone_connections_opened"), Some(&1));
    assert_eq!(cli.counters().get("hbone_connections_opened"), Some(&1));
    assert_eq!(srv.hbone_streams.load(Relaxed), n as u64);
    kill.send_replace(true);
    let started = std::time::Instant::now();
    for (mut s, _lease) in streams {
        let mut sink = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        let err = end
            .expect("a stream outlived its connection")
            .expect_err("a lost tunnel is a reset, never a clean EOF");
        assert_eq!(sink, b"", "nothing came back before the kill");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        assert_eq!(crate::sockopt::reason(&err), "tunnel_lost");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let finished = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Finished { .. }))
            .count()
    };
    // the decider drains the events every 2 ms: the last records may still be queued
    let settled = || {
        finished() == n as usize
            && srv.hbone_streams.load(Relaxed) == 0
            && srv.hbone_connections.load(Relaxed) == 0
            && srv.open_connections() == 0
            && cli.hbone_connections.load(Relaxed) == 0
            && cli.pool.len() == 0
    };
    for _ in 0..100 {
        if settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        settled(),
        "left: streams {} conns {} open {} client conns {} pooled {}",
        srv.hbone_streams.load(Relaxed),
        srv.hbone_connections.load(Relaxed),
        srv.open_connections(),
        cli.hbone_connections.load(Relaxed),
        cli.pool.len()
    );
    // every stream's record names why it ended: its tunnel was lost
    let reasons: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Finished { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), n as usize);
    assert!(
        reasons.iter().all(|r| r == "tunnel_lost (source)"),
        "{:?}",
        reasons.iter().find(|r| *r != "tunnel_lost (source)")
    );
    assert!(srv.live().is_empty());
    // and a new stream afterwards opens a new TLS connection
    kill.send_replace(false);
    let (mut s, _l) = open(&cli, &plan(relay, up)).await.unwrap();
    s.write_all(b"again").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"niaga");
    assert_eq!(cli.counters().get("hbone_connections_opened"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_address_without_a_pushed_svid_fails_the_handshake() {
    let pki = pki();
    let (srv, addr, _) = server(&pki, 0).await;
    let gone = "spiffe://cluster.local/ns/dst/sa/gone";
    srv.set_pod_identities([("127.0.0.1".parse().unwrap(), gone.to_string())].into());
    let cli = core(&pki, &[CLIENT]);
    let up = reverser().await;
    assert_eq!(
        open(&cli, &plan(addr, up)).await.err().map(|e| e.0),
        Some(502)
    );
    let c = srv.counters();
    assert_eq!(c.get("peer_rejected_no_server_identity"), Some(&1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_waiting_for_a_connection_that_fails_fail_with_it() {
    let pki = pki();
    // a peer that accepts TCP and never answers the ClientHello
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let cli = core(&pki, &[CLIENT]);
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cli, p) = (cli.clone(), plan(silent, up));
        tasks.push(tokio::spawn(async move { open(&cli, &p).await.err() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().map(|e| e.0), Some(504));
    }
    // one handshake timed out (2 s), not twenty in turn
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let c = cli.counters();
    assert_eq!(c.get("tunnel_handshake_failed_handshake_timeout"), Some(&1));
}

/// CPU time of this process (user + system), seconds.
fn cpu_s() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// A measurement, not a test (run by hand: `cargo test --release bulk_cpu -- --ignored
/// --nocapture`): CPU seconds per GiB through HBONE, pod sockets -> client core's copy
/// loop -> h2 over TLS -> server core -> upstream sockets, all in this process.
/// BULK_STREAMS=4 runs four streams on the one pooled connection (bulk-4), BULK_GIB the
/// total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bulk_cpu() {
    // the process as the agent runs it (threads.rs); BULK_DEFAULT_MALLOC=1 for glibc's own
    if std::env::var_os("BULK_DEFAULT_MALLOC").is_none() {
        crate::threads::tune_malloc();
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (gib, streams) = (env("BULK_GIB", 4), env("BULK_STREAMS", 1));
    let pki = pki();
    let (_srv, addr, _) = server(&pki, 0).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = l.local_addr().unwrap();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = done.send(total).await;
            });
        }
    });
    let cli = core(&pki, &[CLIENT]);
    let pl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut pods = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..streams {
        let (mut h2s, lease) = open(&cli, &plan(addr, sink)).await.unwrap();
        leases.push(lease);
        let pod = tokio::net::TcpStream::connect(pl.local_addr().unwrap())
            .await
            .unwrap();
        let (mut agent, _) = pl.accept().await.unwrap();
        pod.set_nodelay(true).unwrap();
        agent.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let c = crate::copy::Counters::default();
            let _ = crate::ways::bridge_legs(&mut agent, &mut h2s, &c, &|| 0).await;
        });
        pods.push(pod);
    }
    assert_eq!(cli.counters().get("hbone_connections_opened"), Some(&1));
    let each = (gib << 30) / streams;
    let (c0, t0) = (cpu_s(), std::time::Instant::now());
    let writers: Vec<_> = pods
        .into_iter()
        .map(|mut pod| {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 1 << 20];
                let mut left = each;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    pod.write_all(&chunk[..n]).await.unwrap();
                    left -= n as u64;
                }
                pod.shutdown().await.unwrap();
            })
        })
        .collect();
    let mut total = 0;
    for _ in 0..streams {
        total += done_rx.recv().await.unwrap();
    }
    for w in writers {
        w.await.unwrap();
    }
    let (cpu, wall) = (cpu_s() - c0, t0.elapsed().as_secs_f64());
    assert_eq!(total, each * streams);
    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "BULK {gib:.2} GiB, {streams} streams: cpu {:.3} s/GiB, wall {:.3} s/GiB, {:.2} Gbit/s",
        cpu / gib,
        wall / gib,
        total as f64 * 8.0 / wall / 1e9
    );
}
