//! The pool's rules on connections over in-memory pipes (the peer's SETTINGS never
//! read, so each connection allows h2's initial 100 streams): one short of the limit
//! per connection, slots freed by leases, retirement, idleness, one opener per key.

use super::*;
use std::time::Duration;

async fn conn(id: u64) -> Arc<Conn> {
    let (a, b) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let _held = b; // the peer never answers: its SETTINGS never arrive
        std::future::pending::<()>().await;
    });
    let (send, conn) = crate::hbone::client_builder()
        .handshake::<_, Bytes>(a)
        .await
        .unwrap();
    tokio::spawn(conn);
    Conn::new(id, send)
}

fn key(source: &str) -> Key {
    Key {
        source: source.into(),
        expected: "spiffe://td/ns/a/sa/b".into(),
        peer: "10.0.0.1:15008".parse().unwrap(),
        bind: None,
    }
}

#[tokio::test]
async fn a_connection_takes_streams_until_one_short_of_the_limit() {
    let pool = Pool::default();
    let k = key("spiffe://td/ns/s/sa/x");
    assert!(pool.take(&k).is_none());
    let mut leases = vec![pool.insert(&k, conn(1).await)];
    while let Some(l) = pool.take(&k) {
        leases.push(l);
        assert!(leases.len() < 1000);
    }
    assert_eq!(leases.len(), 99); // the limit (100) minus one
    leases.pop();
    assert!(pool.take(&k).is_some(), "a freed slot is taken again");
    assert!(pool.take(&key("spiffe://td/ns/s/sa/other")).is_none());
}

#[tokio::test]
async fn retired_connections_take_no_stream_but_keep_theirs() {
    let pool = Pool::default();
    let (k1, k2) = (
        key("spiffe://td/ns/s/sa/one"),
        key("spiffe://td/ns/s/sa/two"),
    );
    let held = pool.insert(&k1, conn(1).await);
    let _other = pool.insert(&k2, conn(2).await);
    pool.retire(|k| k.source.ends_with("/one"));
    assert!(held.conn().retired());
    assert!(pool.take(&k1).is_none());
    assert!(pool.take(&k2).is_some());
    assert_eq!(pool.len(), 1);
    pool.remove(&k2, 2);
    assert_eq!(pool.len(), 0);
}

#[tokio::test]
async fn idle_means_no_stream_for_the_whole_period() {
    let pool = Pool::default();
    let k = key("spiffe://td/ns/s/sa/x");
    let lease = pool.insert(&k, conn(1).await);
    let c = lease.conn().clone();
    assert!(!c.idle_for(Duration::ZERO), "a stream is open");
    drop(lease);
    assert!(c.idle_for(Duration::ZERO));
    assert!(
        !c.idle_for(Duration::from_secs(3600)),
        "its last stream just ended"
    );
}

#[tokio::test]
async fn one_opener_per_key_and_the_waiters_see_its_failure() {
    let pool = Arc::new(Pool::default());
    let k = key("spiffe://td/ns/s/sa/x");
    let mut first = pool.opener(&k).await;
    let (p2, k2) = (pool.clone(), k.clone());
    let waiter = tokio::spawn(async move { p2.opener(&k2).await.clone() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "a second opener ran beside the first"
    );
    *first = Some((Instant::now(), 502, "connect_failed: refused".into()));
    drop(first);
    let seen = waiter.await.unwrap();
    assert_eq!(
        seen.map(|f| (f.1, f.2)),
        Some((502, "connect_failed: refused".to_string()))
    );
    // another key opens at once
    let _other = tokio::time::timeout(
        Duration::from_millis(100),
        pool.opener(&key("spiffe://td/ns/s/sa/y")),
    )
    .await
    .unwrap();
}
