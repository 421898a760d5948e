//! The CONNECT exchange: a table of requests and their outcome, and properties over
//! arbitrary bytes (the fuzz target that runs in `cargo test`).

use super::*;
use proptest::prelude::*;

fn ok(raw: &str) -> Request {
    parse_request(raw.as_bytes()).unwrap().unwrap()
}

fn status(raw: &[u8]) -> u16 {
    parse_request(raw).unwrap_err().status
}

#[test]
fn a_full_request_gives_target_forwarded_and_trace() {
    let raw = "CONNECT 10.1.2.3:8080 HTTP/1.1\r\nhost: 10.1.2.3:8080\r\nforwarded: for=\"10.0.0.9:4444\"\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\nhello";
    let r = ok(raw);
    assert_eq!(r.target, "10.1.2.3:8080".parse().unwrap());
    assert_eq!(r.forwarded_for, Some("10.0.0.9:4444".parse().unwrap()));
    assert_eq!(
        r.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(&raw.as_bytes()[r.head_len..], b"hello");
}

#[test]
fn ipv6_targets_and_forwarded() {
    let r = ok("CONNECT [fd00::5]:80 HTTP/1.1\r\nHost: [fd00::5]:80\r\nForwarded: for=\"[fd00::9]:1234\"\r\n\r\n");
    assert_eq!(r.target, "[fd00::5]:80".parse().unwrap());
    assert_eq!(r.forwarded_for, Some("[fd00::9]:1234".parse().unwrap()));
}

#[test]
fn incomplete_heads_ask_for_more() {
    assert_eq!(
        parse_request(b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nhost: x"),
        Ok(None)
    );
    assert_eq!(parse_request(b""), Ok(None));
}

#[test]
fn bad_requests_get_their_status() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"CONNECT example.com:80 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"CONNECT 10.0.0.1:0 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"CONNECT 10.0.0.1:65536 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"CONNECT 10.0.0.1 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"CONNECT 10.0.0.1:80 HTTP/1.0\r\nhost: x\r\n\r\n", 400),
        (b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n", 400),
        (
            b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nhost: x\r\nforwarded: by=x\r\n\r\n",
            400,
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    ];
    for (raw, want) in cases {
        assert_eq!(status(raw), *want, "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn a_head_over_16_kib_is_431() {
    let mut raw = b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 17 * 1024));
    assert_eq!(status(&raw), 431); // still incomplete, already too long
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(&raw), 431);
}

#[test]
fn answers_are_exact() {
    assert_eq!(response(200, None), b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(
        response(403, Some("ns/deny-all")),
        b"HTTP/1.1 403 Forbidden\r\nx-hostmesh-policy: ns/deny-all\r\ncontent-length: 0\r\n\r\n"
    );
    let r = parse_response(&response(403, Some("ns/p")))
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.policy.as_deref()), (403, Some("ns/p")));
}

#[test]
fn the_client_request_round_trips_through_the_server_parser() {
    let hs = vec![
        ("forwarded".to_string(), "for=\"10.0.0.2:555\"".to_string()),
        ("traceparent".to_string(), "00-aa-bb-01".to_string()),
    ];
    let raw = request("10.0.0.1:80", &hs).unwrap();
    let r = parse_request(&raw).unwrap().unwrap();
    assert_eq!(r.target, "10.0.0.1:80".parse().unwrap());
    assert_eq!(r.forwarded_for, Some("10.0.0.2:555".parse().unwrap()));
    assert_eq!(r.head_len, raw.len());
    // header injection is refused
    assert!(request("10.0.0.1:80", &[("a".into(), "b\r\nx: y".into())]).is_none());
    assert!(request("10.0.0.1:80\r\n", &[]).is_none());
}

#[test]
fn response_with_informational_first_and_leftover() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbytes";
    let r = parse_response(raw).unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&raw[r.head_len..], b"bytes");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // arbitrary bytes: never a panic; an accepted request's head is within the input
    // and within 16 KiB
    #[test]
    fn fuzz_request_parser(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match parse_request(&data) {
            Ok(Some(r)) => prop_assert!(r.head_len <= data.len() && r.head_len <= MAX_CONNECT_HEAD),
            Ok(None) => prop_assert!(data.len() <= MAX_CONNECT_HEAD),
            Err(rej) => prop_assert!(rej.status == 400 || rej.status == 431),
        }
    }

    #[test]
    fn fuzz_response_parser(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Some(r)) = parse_response(&data) {
            prop_assert!(r.head_len <= data.len());
        }
    }

    // any valid target, split anywhere: the parser waits, then gives the same request
    #[test]
    fn split_requests_parse_the_same(a in any::<[u8; 4]>(), port in 1u16.., cut in 0usize..200, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let target = format!("{}.{}.{}.{}:{port}", a[0], a[1], a[2], a[3]);
        let mut raw = request(&target, &[]).unwrap();
        let head = raw.len();
        raw.extend_from_slice(&tail);
        let cut = cut.min(head - 1);
        prop_assert_eq!(parse_request(&raw[..cut]), Ok(None));
        let r = parse_request(&raw).unwrap().unwrap();
        prop_assert_eq!(r.target, target.parse::<SocketAddr>().unwrap());
        prop_assert_eq!(r.head_len, head);
    }
}
