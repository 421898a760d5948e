//! HBONE request rules: a table of heads and their verdicts, and properties over
//! arbitrary authority, forwarded and baggage values.

use super::*;
use http::HeaderValue;
use proptest::prelude::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn a_full_request_gives_target_forwarded_trace_and_baggage() {
    let h = headers(&[
        ("forwarded", "for=\"10.0.0.9:4444\""),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            "baggage",
            "k8s.namespace.name=a,k8s.deployment.name=b,service.name=c",
        ),
    ]);
    let r = parse_request(&Method::CONNECT, Some("10.1.2.3:8080"), false, &h, None).unwrap();
    assert_eq!(r.target, "10.1.2.3:8080".parse().unwrap());
    assert_eq!(r.forwarded_for, Some("10.0.0.9:4444".parse().unwrap()));
    assert_eq!(
        r.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(
        r.baggage.as_deref(),
        Some("k8s.namespace.name=a,k8s.deployment.name=b,service.name=c")
    );
}

/// method, authority, extended CONNECT, pod address, the refusal
type Case = (Method, Option<&'static str>, bool, Option<IpAddr>, Refusal);

#[test]
fn refusals_have_their_reason() {
    let none = HeaderMap::new();
    let local: IpAddr = "10.1.2.3".parse().unwrap();
    let cases: &[Case] = &[
        (
            Method::GET,
            Some("10.1.2.3:80"),
            false,
            None,
            Refusal::NotConnect,
        ),
        (
            Method::CONNECT,
            Some("10.1.2.3:80"),
            true,
            None,
            Refusal::NotConnect,
        ),
        (Method::CONNECT, None, false, None, Refusal::BadAuthority),
        (
            Method::CONNECT,
            Some("example.com:80"),
            false,
            None,
            Refusal::BadAuthority,
        ),
        (
            Method::CONNECT,
            Some("10.1.2.3:0"),
            false,
            None,
            Refusal::BadAuthority,
        ),
        (
            Method::CONNECT,
            Some("10.1.2.3"),
            false,
            None,
            Refusal::BadAuthority,
        ),
        (
            Method::CONNECT,
            Some("10.9.9.9:80"),
            false,
            Some(local),
            Refusal::AuthorityMismatch,
        ),
    ];
    for (m, a, proto, pod, want) in cases {
        assert_eq!(
            parse_request(m, *a, *proto, &none, *pod),
            Err(*want),
            "{m} {a:?}"
        );
    }
    // the pod's own address passes, also as a v4-mapped local address
    let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert!(parse_request(
        &Method::CONNECT,
        Some("10.1.2.3:80"),
        false,
        &none,
        Some(mapped)
    )
    .is_ok());
    assert_eq!(Refusal::AuthorityMismatch.as_str(), "authority_mismatch");
}

#[test]
fn forwarded_forms() {
    let cases: &[(&str, Option<&str>)] = &[
        ("for=\"10.0.0.1:5\"", Some("10.0.0.1:5")),
        ("for=10.0.0.1", Some("10.0.0.1:0")),
        ("For=\"[fd00::1]:80\"", Some("[fd00::1]:80")),
        ("for=\"[fd00::1]\"", Some("[fd00::1]:0")),
        (
            "host=x;for=\"10.0.0.2:7\", for=10.0.0.3",
            Some("10.0.0.2:7"),
        ),
        ("for=fd00::1", None),
        ("by=10.0.0.1", None),
        ("for=_hidden", None),
        ("", None),
    ];
    for (raw, want) in cases {
        let want = want.map(|w| w.parse::<SocketAddr>().unwrap());
        assert_eq!(forwarded_for(raw), want, "{raw}");
    }
}

#[test]
fn oversized_or_non_text_telemetry_is_dropped_not_refused() {
    let mut h = HeaderMap::new();
    h.insert("baggage", HeaderValue::from_str(&"a".repeat(5000)).unwrap());
    h.insert("traceparent", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
    h.insert("forwarded", HeaderValue::from_static("for=nonsense"));
    let r = parse_request(&Method::CONNECT, Some("10.0.0.1:80"), false, &h, None).unwrap();
    assert_eq!(
        (r.baggage, r.traceparent, r.forwarded_for),
        (None, None, None)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // any string as authority: never a panic; an accepted one names a real port and
    // round-trips through SocketAddr's own formatting
    #[test]
    fn authority_is_ip_and_port_or_refused(raw in ".{0,60}") {
        match parse_request(&Method::CONNECT, Some(&raw), false, &HeaderMap::new(), None) {
            Ok(r) => {
                prop_assert!(r.target.port() != 0);
                prop_assert_eq!(parse_authority(&r.target.to_string()), Some(r.target));
            }
            Err(e) => prop_assert_eq!(e, Refusal::BadAuthority),
        }
    }

    // any valid target is accepted, and on a pod address only that pod's
    #[test]
    fn valid_targets_pass(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), port in 1u16..) {
        let t = SocketAddr::new(IpAddr::from(a), port);
        let none = HeaderMap::new();
        let r = parse_request(&Method::CONNECT, Some(&t.to_string()), false, &none, None).unwrap();
        prop_assert_eq!(r.target, t);
        let pod = IpAddr::from(b);
        let on_pod = parse_request(&Method::CONNECT, Some(&t.to_string()), false, &none, Some(pod));
        prop_assert_eq!(on_pod.is_ok(), pod == t.ip());
    }

    // arbitrary forwarded and baggage values: never a panic, never a refusal
    #[test]
    fn telemetry_headers_never_refuse(fwd in "[ -~]{0,80}", bag in "[ -~]{0,200}") {
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_str(&fwd).unwrap());
        h.insert("baggage", HeaderValue::from_str(&bag).unwrap());
        let r = parse_request(&Method::CONNECT, Some("10.0.0.1:1"), false, &h, None).unwrap();
        prop_assert_eq!(r.baggage.is_some(), !bag.is_empty());
        if let Some(f) = r.forwarded_for {
            prop_assert!(fwd.to_ascii_lowercase().contains("for="), "{} from {}", f, fwd);
        }
    }
}

/// A client connection whose peer answers PINGs (`serve`) or never reads again.
async fn ping_pair(serve: bool) -> h2::PingPong {
    let (a, b) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(b).await.unwrap();
        if serve {
            while conn.accept().await.is_some() {}
        } else {
            std::future::pending::<()>().await; // holds the connection, never polls it
        }
    });
    let (_sr, mut conn) = h2::client::handshake(a).await.unwrap();
    let pp = conn.ping_pong().unwrap();
    tokio::spawn(async move {
        let _sr = _sr;
        let _ = conn.await;
    });
    pp
}

#[tokio::test]
async fn keepalive_declares_a_silent_peer_dead_and_keeps_a_live_one() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    let dead = keepalive_with(ping_pair(false).await, ms(20), ms(100));
    assert_eq!(
        tokio::time::timeout(ms(2000), dead).await,
        Ok("ping_timeout")
    );
    let live = keepalive_with(ping_pair(true).await, ms(20), ms(100));
    assert!(
        tokio::time::timeout(ms(500), live).await.is_err(),
        "a live peer was declared dead"
    );
}
