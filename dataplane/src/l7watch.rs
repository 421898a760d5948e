//! The source's view of an HTTP/1.1 connection (`http_metrics: both`), as data: the
//! exchanges of two byte streams watched as they pass, the pod's requests and the
//! responses written back to it, for their records. Nothing is served here: the bytes
//! go on exactly as they came, and the destination serves and judges them (l7.rs).
//!
//! Decides: where each message starts and ends (httparse reads every head and chunk
//! size; the body framing is RFC 9112 section 6.3's: a response to HEAD, a 1xx, 204 or
//! 304 has none, then chunked, then Content-Length, else a response runs to the close
//! and a request has none), which request a response answers (in order, pipelining
//! included), what each exchange's record gets (method, target as received, first
//! Host, status, bytes each way, times, flags), and when a stream cannot be followed
//! (a head httparse refuses or over its bound, a request whose length cannot be known,
//! a response with no request, conflicting lengths): from then on nothing more is
//! recorded for the connection, and why is kept for the caller to count. A 101, or a
//! 2xx to CONNECT, ends the watch too (the bytes after it are not HTTP).
//! Must never: change, hold or delay a byte (it only reads copies of what passed), do
//! I/O, or record an exchange twice.

use crate::events::Told;
use crate::limits::{MAX_L7_HEAD, MAX_L7_HEADERS, MAX_L7_RESPONSE_HEAD, MAX_L7_WATCHED};
use std::collections::VecDeque;

/// One finished exchange, as its record wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub rid: u64,
    pub status: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub start: f64,
    pub end: f64,
    pub flags: &'static str,
    pub told: Told,
}

/// How much of a message is left after its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Len(u64),
    Chunked(Chunk),
    /// A response that runs until the workload closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line (its bytes so far are in the stream's `acc`).
    Size,
    Data(u64),
    /// The CRLF after a chunk's data: how many of its two bytes are still to come.
    DataEnd(u8),
    /// The trailer section after the last chunk, up to its empty line:
    /// (at the start of a line, a CR seen there).
    Trailer(bool, bool),
}

/// One direction's place in its messages.
#[derive(Debug, Default)]
struct Stream {
    /// None: reading a head (its bytes so far in `acc`).
    body: Option<Body>,
    /// A head or chunk-size line cut by a read: its bytes so far (empty otherwise).
    acc: Vec<u8>,
}

/// A request whose response has not ended.
#[derive(Debug)]
struct Asked {
    rid: u64,
    start: f64,
    told: Told,
    head: bool,
    connect: bool,
    req_bytes: u64,
}

/// The watch over one connection's two streams.
#[derive(Debug, Default)]
pub struct Watch {
    req: Stream,
    resp: Stream,
    asked: VecDeque<Asked>,
    /// Bytes of the response being written, and its status once its head was read.
    resp_bytes: u64,
    status: u16,
    next_rid: u64,
    /// Why the watch stopped following the connection (None: still watching, or ended
    /// in order: `over`).
    pub lost: Option<&'static str>,
    /// The bytes after a 101 or a CONNECT's 2xx are not HTTP: nothing more is watched.
    over: bool,
    /// Exchanges that ended, for the caller to take.
    pub done: Vec<Done>,
}

fn latin1(b: &[u8]) -> String {
    // as Python reads a field value (l7judge.request_attrs_of)
    b.iter().map(|&c| c as char).collect()
}

/// Every Content-Length field agrees on one valid length (None: none; Err: they
/// conflict or one is not a number).
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut len = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for v in h.value.split(|&c| c == b',') {
            let v = v.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(v)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if len.is_some_and(|l| l != n) {
                return Err(());
            }
            len = Some(n);
        }
    }
    Ok(len)
}

/// Transfer-Encoding: None when absent, else whether chunked is its final coding.
fn chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        for v in h.value.split(|&c| c == b',') {
            let v = v.trim_ascii();
            if !v.is_empty() {
                last = Some(v);
            }
        }
        last = last.or(Some(b""));
    }
    last.map(|v| v.eq_ignore_ascii_case(b"chunked"))
}

impl Watch {
    /// Still recording exchanges.
    pub fn watching(&self) -> bool {
        self.lost.is_none() && !self.over
    }

    /// A 101, or a 2xx to CONNECT, switched the connection to raw bytes.
    pub fn switched(&self) -> bool {
        self.over
    }

    fn lose(&mut self, why: &'static str) {
        if self.watching() {
            self.lost = Some(why);
        }
        self.asked.clear();
    }

    /// Bytes the pod sent (in order, as read); `now`: wall-clock seconds.
    pub fn requests(&mut self, b: &[u8], now: f64) {
        self.feed(b, true, now);
    }

    /// Bytes written to the pod (in order, as written).
    pub fn responses(&mut self, b: &[u8], now: f64) {
        self.feed(b, false, now);
    }

    /// One stream's bytes through its heads and bodies: a request's body bytes count
    /// on it, a response's on the exchange, which ends with its body.
    fn feed(&mut self, mut b: &[u8], request: bool, now: f64) {
        while !b.is_empty() && self.watching() {
            let at = if request {
                self.req.body
            } else {
                self.resp.body
            };
            let Some(body) = at else {
                match self.head(&mut b, request, now) {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(why) => return self.lose(why),
                }
            };
            let n = match self.body(body, b, request) {
                Ok(n) => n,
                Err(why) => return self.lose(why),
            };
            b = &b[n..];
            if request {
                if let Some(a) = self.asked.back_mut() {
                    a.req_bytes += n as u64;
                }
            } else {
                self.resp_bytes += n as u64;
                if self.resp.body.is_none() {
                    self.answered(now, "-");
                }
            }
        }
    }

    /// The connection ended: a response running until the close ends with it (`-`
    /// when the workload's side ended in order, else `UC`); one cut short is `UC` when
    /// the workload's side failed, `DC` when the pod's did (None: ended in order).
    pub fn end(&mut self, failed: Option<crate::copy::Side>, now: f64) {
        if !self.watching() || self.asked.is_empty() {
            return;
        }
        match (self.resp.body, failed) {
            (Some(Body::UntilClose), None) => self.answered(now, "-"),
            (Some(_), Some(crate::copy::Side::A)) => self.answered(now, "DC"),
            (Some(_), _) => self.answered(now, "UC"),
            // no response head yet: no exchange to record (as a served connection's)
            (None, _) => {}
        }
        self.asked.clear();
    }

    /// The response to the oldest request ended.
    fn answered(&mut self, now: f64, flags: &'static str) {
        if let Some(a) = self.asked.pop_front() {
            self.done.push(Done {
                rid: a.rid,
                status: self.status,
                req_bytes: a.req_bytes,
                resp_bytes: self.resp_bytes,
                start: a.start,
                end: now,
                flags,
                told: a.told,
            });
        }
        self.resp_bytes = 0;
    }

    /// Read a head from `b` (request or response): Ok(true) when one was complete and
    /// `b` moved past it, Ok(false) when `b` was all taken into `acc` (a head cut by
    /// the read).
    fn head(&mut self, b: &mut &[u8], request: bool, now: f64) -> Result<bool, &'static str> {
        let max = if request {
            MAX_L7_HEAD
        } else {
            MAX_L7_RESPONSE_HEAD
        };
        let s = if request {
            &mut self.req
        } else {
            &mut self.resp
        };
        // the common case: a whole head inside one read, parsed where it lies
        let held = s.acc.len();
        let mut acc = std::mem::take(&mut s.acc);
        let buf: &[u8] = if held == 0 {
            b
        } else {
            let room = (max + 1).saturating_sub(held).min(b.len());
            acc.extend_from_slice(&b[..room]);
            &acc
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_L7_HEADERS];
        let parsed = if request {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => Some((n, self.request_head(&r, n, now)?)),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return Err("bad_request_head"),
            }
        } else {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => Some((n, self.response_head(&r, n, now)?)),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return Err("bad_response_head"),
            }
        };
        let s = if request {
            &mut self.req
        } else {
            &mut self.resp
        };
        let too_large = if request {
            "request_head_too_large"
        } else {
            "response_head_too_large"
        };
        match parsed {
            Some((n, _)) if n > max => Err(too_large),
            Some((n, body)) => {
                *b = &b[n - held..];
                s.acc = Vec::new(); // a cut head's buffer is not kept past it
                s.body = body;
                Ok(true)
            }
            None if buf.len() > max => Err(too_large),
            None => {
                if held == 0 {
                    acc.extend_from_slice(b);
                }
                s.acc = acc;
                *b = &[];
                Ok(false)
            }
        }
    }

    /// A complete request head of `n` bytes: the request is asked; its body follows.
    fn request_head(
        &mut self,
        r: &httparse::Request<'_, '_>,
        n: usize,
        now: f64,
    ) -> Result<Option<Body>, &'static str> {
        if self.asked.len() >= MAX_L7_WATCHED {
            return Err("too_many_requests_in_flight");
        }
        let method = r.method.unwrap_or_default();
        let body = match (chunked(r.headers), content_length(r.headers)) {
            (Some(true), _) => Body::Chunked(Chunk::Size),
            // a request's length must be known (RFC 9112 6.3): the workload refuses it
            (Some(false), _) => return Err("unframed_request"),
            (None, Err(())) => return Err("bad_content_length"),
            (None, Ok(Some(l))) => Body::Len(l),
            (None, Ok(None)) => Body::Len(0),
        };
        let host = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| latin1(h.value))
            .unwrap_or_default();
        self.next_rid += 1;
        self.asked.push_back(Asked {
            rid: self.next_rid,
            start: now,
            told: (
                method.to_string(),
                r.path.unwrap_or_default().to_string(),
                host,
            ),
            head: method == "HEAD",
            connect: method == "CONNECT",
            req_bytes: n as u64,
        });
        Ok((body != Body::Len(0)).then_some(body))
    }

    /// A complete response head of `n` bytes, answering the oldest request.
    fn response_head(
        &mut self,
        r: &httparse::Response<'_, '_>,
        n: usize,
        now: f64,
    ) -> Result<Option<Body>, &'static str> {
        let Some(a) = self.asked.front() else {
            return Err("response_without_request");
        };
        let status = r.code.unwrap_or_default();
        self.status = status;
        self.resp_bytes += n as u64;
        if status == 101 || (a.connect && (200..300).contains(&status)) {
            // what follows is not HTTP: this exchange ends at its head, and the watch
            self.answered(now, "-");
            self.over = true;
            return Ok(None);
        }
        if (100..200).contains(&status) {
            return Ok(None); // interim: the final head follows
        }
        let body = if a.head || status == 204 || status == 304 {
            None
        } else {
            match (chunked(r.headers), content_length(r.headers)) {
                (Some(true), _) => Some(Body::Chunked(Chunk::Size)),
                (Some(false), _) => Some(Body::UntilClose),
                (None, Err(())) => return Err("bad_content_length"),
                (None, Ok(Some(0))) => None,
                (None, Ok(Some(l))) => Some(Body::Len(l)),
                (None, Ok(None)) => Some(Body::UntilClose),
            }
        };
        if body.is_none() {
            self.answered(now, "-"); // ended at its head
        }
        Ok(body)
    }

    /// Move through a body: how many bytes of `b` it took (the stream's body is None
    /// once the message ended).
    fn body(&mut self, body: Body, b: &[u8], request: bool) -> Result<usize, &'static str> {
        let s = if request {
            &mut self.req
        } else {
            &mut self.resp
        };
        let (n, next) = match body {
            Body::UntilClose => (b.len(), Some(body)),
            Body::Len(left) => {
                let n = (b.len() as u64).min(left);
                (n as usize, (left > n).then_some(Body::Len(left - n)))
            }
            Body::Chunked(c) => {
                let (n, c) = chunk(s, c, b)?;
                (n, c.map(Body::Chunked))
            }
        };
        s.body = next;
        Ok(n)
    }
}

/// One step through a chunked body: the bytes of `b` taken, and where the body is
/// after them (None: it ended).
fn chunk(s: &mut Stream, c: Chunk, b: &[u8]) -> Result<(usize, Option<Chunk>), &'static str> {
    match c {
        Chunk::Size => {
            let held = s.acc.len();
            let take = (MAX_L7_HEAD + 1).saturating_sub(held).min(b.len());
            let line: &[u8] = if held == 0 {
                &b[..take]
            } else {
                s.acc.extend_from_slice(&b[..take]);
                &s.acc
            };
            let (parsed, len) = (httparse::parse_chunk_size(line), line.len());
            match parsed {
                Ok(httparse::Status::Complete((n, size))) => {
                    s.acc = Vec::new();
                    let next = if size == 0 {
                        Chunk::Trailer(true, false)
                    } else {
                        Chunk::Data(size)
                    };
                    Ok((n - held, Some(next)))
                }
                Ok(httparse::Status::Partial) if len > MAX_L7_HEAD => Err("chunk_size_too_large"),
                Ok(httparse::Status::Partial) => {
                    if held == 0 {
                        s.acc.extend_from_slice(&b[..take]);
                    }
                    Ok((take, Some(Chunk::Size)))
                }
                Err(_) => Err("bad_chunk_size"),
            }
        }
        Chunk::Data(left) => {
            let n = (b.len() as u64).min(left);
            let next = if left > n {
                Chunk::Data(left - n)
            } else {
                Chunk::DataEnd(2)
            };
            Ok((n as usize, Some(next)))
        }
        Chunk::DataEnd(left) => {
            let want: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
            let n = want.len().min(b.len());
            if b[..n] != want[..n] {
                return Err("bad_chunk_end");
            }
            let left = left - n as u8;
            Ok((
                n,
                Some(if left == 0 {
                    Chunk::Size
                } else {
                    Chunk::DataEnd(left)
                }),
            ))
        }
        Chunk::Trailer(mut start, mut cr) => {
            // field lines up to an empty one (CRLF, or a bare LF as httparse allows)
            for (i, &c) in b.iter().enumerate() {
                match c {
                    b'\n' if start => return Ok((i + 1, None)),
                    b'\n' => start = true,
                    b'\r' if start && !cr => cr = true,
                    _ => (start, cr) = (false, false),
                }
            }
            Ok((b.len(), Some(Chunk::Trailer(start, cr))))
        }
    }
}

#[cfg(test)]
#[path = "l7watch_tests.rs"]
mod tests;
