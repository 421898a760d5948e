//! The source's view, as data: what a watch records of two byte streams, however the
//! reads and writes cut them.

use super::*;
use proptest::prelude::*;

/// The exchanges' (method, target, host, status, request bytes, response bytes, flags).
type Rec = (String, String, String, u16, u64, u64, &'static str);

fn recs(w: &Watch) -> Vec<Rec> {
    w.done
        .iter()
        .map(|d| {
            let (m, t, h) = d.told.clone();
            (m, t, h, d.status, d.req_bytes, d.resp_bytes, d.flags)
        })
        .collect()
}

fn rec(m: &str, t: &str, h: &str, status: u16, req: usize, resp: usize) -> Rec {
    (
        m.into(),
        t.into(),
        h.into(),
        status,
        req as u64,
        resp as u64,
        "-",
    )
}

/// All requests, then all responses, each in one piece.
fn watch(req: &[u8], resp: &[u8]) -> Watch {
    let mut w = Watch::default();
    w.requests(req, 1.0);
    w.responses(resp, 2.0);
    w
}

const GET: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: web:8080\r\n\r\n";
const OK2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";

#[test]
fn one_exchange_has_its_head_status_bytes_and_times() {
    let w = watch(GET, OK2);
    assert_eq!(
        recs(&w),
        [rec("GET", "/a?x=1", "web:8080", 200, GET.len(), OK2.len())]
    );
    assert_eq!(
        (w.done[0].rid, w.done[0].start, w.done[0].end),
        (1, 1.0, 2.0)
    );
    assert!(w.watching());
}

#[test]
fn pipelined_requests_are_answered_in_order_with_bodies_of_every_framing() {
    let post = b"POST /p HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello";
    let chunked = b"PUT /c HTTP/1.1\r\nhost: \xe9\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
        3;ext=1\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n";
    let head = b"HEAD /h HTTP/1.1\r\n\r\n";
    let req = [&post[..], chunked, head, GET].concat();
    let r1 = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let r2 = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    // HEAD: a length that says what a GET would carry, and no body
    let r3 = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    let r4 = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n";
    let resp = [&r1[..], r2, r3, r4].concat();
    let w = watch(&req, &resp);
    assert_eq!(
        recs(&w),
        [
            rec("POST", "/p", "w", 201, post.len(), r1.len()),
            rec("PUT", "/c", "\u{e9}", 204, chunked.len(), r2.len()),
            rec("HEAD", "/h", "", 200, head.len(), r3.len()),
            rec("GET", "/a?x=1", "web:8080", 304, GET.len(), r4.len()),
        ]
    );
    assert_eq!(
        w.done.iter().map(|d| d.rid).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(w.watching());
}

#[test]
fn a_response_without_length_runs_to_the_close() {
    let mut w = watch(
        b"GET / HTTP/1.0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nall of it",
    );
    assert!(w.done.is_empty());
    w.responses(b" and more", 3.0);
    w.end(None, 4.0);
    assert_eq!(recs(&w), [rec("GET", "/", "", 200, 18, 37)]);
    assert_eq!(w.done[0].end, 4.0);
}

#[test]
fn a_response_cut_short_is_uc_or_dc_by_the_side_that_failed_and_none_without_a_head() {
    for (side, flags) in [
        (None, "UC"),
        (Some(crate::copy::Side::B), "UC"),
        (Some(crate::copy::Side::A), "DC"),
    ] {
        let mut w = watch(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        w.end(side, 3.0);
        assert_eq!(w.done.len(), 1);
        assert_eq!((w.done[0].flags, w.done[0].resp_bytes), (flags, 42));
    }
    let mut w = watch(GET, b"HTTP/1.1 200");
    w.end(None, 3.0);
    assert!(
        w.done.is_empty(),
        "no response head, no exchange (as a served connection)"
    );
}

#[test]
fn a_101_or_a_connect_2xx_ends_the_watch_at_its_head() {
    let up = b"GET /ws HTTP/1.1\r\nHost: w\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let mut w = watch(
        up,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    w.requests(b"\x81\x85not http at all", 3.0);
    assert_eq!(recs(&w).len(), 1);
    assert_eq!(
        (w.done[0].status, w.lost, w.watching(), w.switched()),
        (101, None, false, true)
    );

    let c = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n";
    let w = watch(c, b"HTTP/1.1 200 OK\r\n\r\n\x00\x01binary");
    assert_eq!(
        recs(&w),
        [rec("CONNECT", "db:5432", "db:5432", 200, c.len(), 19)]
    );
    assert!(!w.watching());
    // a refused CONNECT is an ordinary response: the connection goes on as HTTP
    let w = watch(
        &[&c[..], GET].concat(),
        &[
            &b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n"[..],
            OK2,
        ]
        .concat(),
    );
    assert_eq!(
        w.done.iter().map(|d| d.status).collect::<Vec<_>>(),
        [501, 200]
    );
}

#[test]
fn what_cannot_be_followed_stops_the_watch_with_its_reason_and_records_nothing_more() {
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_L7_HEAD));
    let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
    let cl = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let plus = b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc";
    let cases: [(&[u8], &[u8], &str); 7] = [
        (
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"",
            "bad_request_head",
        ),
        (big.as_bytes(), b"", "request_head_too_large"),
        (te, b"", "unframed_request"),
        (cl, b"", "bad_content_length"),
        (plus, b"", "bad_content_length"),
        (b"", OK2, "response_without_request"),
        (GET, b"HTTP/1.1 2000 OK\r\n\r\n", "bad_response_head"),
    ];
    for (req, resp, why) in cases {
        let mut w = watch(req, resp);
        w.requests(GET, 3.0);
        w.responses(OK2, 4.0);
        w.end(None, 5.0);
        assert_eq!((w.lost, w.done.len()), (Some(why), 0), "{why}");
    }
    let mut w = watch(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"",
    );
    assert_eq!(w.lost, Some("bad_chunk_size"));
    w = watch(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        b"",
    );
    assert_eq!(w.lost, Some("bad_chunk_end"));
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_queue() {
    let mut w = Watch::default();
    for _ in 0..MAX_L7_WATCHED {
        w.requests(GET, 1.0);
    }
    assert!(w.watching());
    w.requests(GET, 1.0);
    assert_eq!(w.lost, Some("too_many_requests_in_flight"));
    assert!(w.asked.is_empty());
}

#[test]
fn a_head_cut_by_a_read_keeps_only_its_bytes_and_nothing_after_it() {
    let mut w = Watch::default();
    w.requests(&GET[..10], 1.0);
    assert_eq!(w.req.acc.len(), 10);
    w.requests(&GET[10..], 1.5);
    assert_eq!((w.req.acc.capacity(), w.asked.len()), (0, 1));
    assert_eq!(
        w.asked[0].start, 1.5,
        "a request starts when its head is complete"
    );
}

/// A conversation of several exchanges in every framing, and its records.
/// The requests, the responses, and the end of each response in the responses' bytes.
fn conversation() -> (Vec<u8>, Vec<u8>, Vec<usize>) {
    let reqs: [&[u8]; 4] = [
        GET,
        b"POST /p HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n",
        b"\r\nHEAD /h HTTP/1.1\r\n\r\n",
    ];
    let resps: [&[u8]; 4] = [
        OK2,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    ];
    let ends = resps
        .iter()
        .scan(0, |at, r| {
            *at += r.len();
            Some(*at)
        })
        .collect();
    (reqs.concat(), resps.concat(), ends)
}

fn cut(b: &[u8], at: &[usize]) -> Vec<Vec<u8>> {
    let mut pts: Vec<usize> = at.iter().map(|&p| p % (b.len() + 1)).collect();
    pts.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for p in pts.into_iter().chain([b.len()]) {
        out.push(b[from..p].to_vec());
        from = p;
    }
    out
}

proptest! {
    #[test]
    fn however_reads_and_writes_cut_the_streams_the_records_are_the_same(
        req_cuts in proptest::collection::vec(0usize..400, 0..12),
        resp_cuts in proptest::collection::vec(0usize..400, 0..12),
        interleave in proptest::collection::vec(any::<bool>(), 0..30),
    ) {
        let (req, resp, ends) = conversation();
        let whole = watch(&req, &resp);
        prop_assert_eq!(whole.done.len(), ends.len());
        prop_assert!(whole.watching());
        let mut rq = cut(&req, &req_cuts).into_iter().peekable();
        let mut w = Watch::default();
        let mut at = 0;
        // requests and responses interleaved in any order, a response's bytes only
        // after its request's head was read (as a workload answers)
        let pieces = cut(&resp, &resp_cuts);
        let mut rs = pieces.iter().peekable();
        let mut turns = interleave.into_iter();
        while rq.peek().is_some() || rs.peek().is_some() {
            let may_answer = rs.peek().is_some_and(|p| {
                let last = at + p.len();
                let k = ends.iter().position(|&e| last <= e).unwrap_or(ends.len() - 1);
                p.is_empty() || w.next_rid as usize > k
            });
            if may_answer && (!turns.next().unwrap_or(true) || rq.peek().is_none()) {
                let p = rs.next().unwrap();
                at += p.len();
                w.responses(p, 2.0);
            } else if let Some(p) = rq.next() {
                w.requests(&p, 1.0);
            } else {
                break;
            }
        }
        prop_assert!(rs.peek().is_none());
        // a request's bytes are those read when its exchange ended (a response may end
        // before its request's body was all read); everything else is the same
        let (got, want) = (recs(&w), recs(&whole));
        prop_assert_eq!(got.len(), want.len());
        for (g, x) in got.iter().zip(&want) {
            prop_assert!(g.4 <= x.4, "{:?} {:?}", g, x);
            prop_assert_eq!((&g.0, &g.1, &g.2, g.3, g.5, g.6), (&x.0, &x.1, &x.2, x.3, x.5, x.6));
        }
    }

    #[test]
    fn any_bytes_at_all_never_panic_and_never_record_more_exchanges_than_heads(
        req in proptest::collection::vec(any::<u8>(), 0..600),
        resp in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut w = Watch::default();
        w.requests(&req, 1.0);
        w.responses(&resp, 2.0);
        w.end(None, 3.0);
        prop_assert!(w.done.len() <= w.next_rid as usize);
    }
}
