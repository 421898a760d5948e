//! Python's allowed answers an L7 connection may reuse: the key of a head (everything
//! of it Python's decision reads) and the per-connection table of answers Python said
//! may be reused, valid for one policy generation.
//!
//! Python's per-head decision (agent/proxy/l7judge.py, h1rules.py, pathnorm.py and the
//! policy engine) reads of a head only: the method, the target as received, the version,
//! the Host field values, how many Content-Length values there are (lines plus commas:
//! h1rules), whether Transfer-Encoding is present, and the other fields only when a
//! policy has a `request.headers` condition (Python then never offers a memo). So two
//! heads with equal keys get the same answer on one connection under one policy set;
//! Python offers a memo only for a plain allow (no audit, no dry-run match), and a
//! policy swap moves the generation, after which no older memo is used.
//!
//! Decides: the key and whether a memo applies. Must never: decide anything itself,
//! match rules, or keep an answer past the generation or the bound it was given for.

use crate::limits::MAX_L7_MEMO;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Everything of a head Python's decision reads (when no policy reads other fields).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    method: String,
    target: String,
    http10: bool,
    hosts: Vec<Bytes>,
    /// Content-Length values: field lines plus the commas in them (h1rules counts so)
    content_lengths: usize,
    transfer_encoding: bool,
}

pub fn key(parts: &request::Parts, target: &str) -> Key {
    let content_lengths = parts
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|v| 1 + v.as_bytes().iter().filter(|&&b| b == b',').count())
        .sum();
    Key {
        method: parts.method.as_str().to_string(),
        target: target.to_string(),
        http10: parts.version == http::Version::HTTP_10,
        hosts: parts
            .headers
            .get_all(HOST)
            .iter()
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .collect(),
        content_lengths,
        transfer_encoding: parts.headers.contains_key(TRANSFER_ENCODING),
    }
}

/// An allowed answer Python said may be reused: forward with `target` / `host`;
/// `token` names Python's decision in the exchange's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    pub target: String,
    pub host: Option<String>,
    pub token: u32,
    pub generation: u64,
}

/// The policy generation Python last announced (Core.http_generation): memos of any
/// other are not used.
#[derive(Default)]
pub struct Generation(AtomicU64);

impl Generation {
    pub fn set(&self, g: u64) {
        self.0.store(g, Ordering::Release);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// One connection's memos (bounded by MAX_L7_MEMO).
#[derive(Default)]
pub struct Memos(Mutex<HashMap<Key, Memo>>);

impl Memos {
    /// The memo for `k`, when it is of generation `current`.
    pub fn get(&self, k: &Key, current: u64) -> Option<Memo> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(k).filter(|e| e.generation == current).cloned()
    }

    pub fn put(&self, k: Key, memo: Memo) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_L7_MEMO && !m.contains_key(&k) {
            m.clear();
        }
        m.insert(k, memo);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(b: http::request::Builder) -> request::Parts {
        b.body(()).unwrap().into_parts().0
    }

    fn k(b: http::request::Builder) -> Key {
        let p = parts(b);
        let t = p.uri.to_string();
        key(&p, &t)
    }

    #[test]
    fn fields_the_decision_does_not_read_do_not_change_the_key() {
        let a = k(http::Request::get("/1k")
            .header("host", "web")
            .header("user-agent", "hey/0.0.1"));
        let b = k(http::Request::get("/1k")
            .header("host", "web")
            .header("accept", "*/*")
            .header("cookie", "x=1"));
        assert_eq!(a, b);
        let post = |n: &str| {
            k(http::Request::post("/up")
                .header("host", "web")
                .header("content-length", n))
        };
        assert_eq!(post("5"), post("500"));
    }

    #[test]
    fn every_field_the_decision_reads_changes_the_key() {
        let base = || http::Request::get("/a").header("host", "web");
        let k0 = k(base());
        let variants = [
            k(http::Request::get("/b").header("host", "web")),
            k(http::Request::get("/a?q").header("host", "web")),
            k(http::Request::head("/a").header("host", "web")),
            k(http::Request::get("/a").header("host", "Web")),
            k(http::Request::get("/a")),
            k(base().header("host", "web")),
            k(base().version(http::Version::HTTP_10)),
            k(base().header("content-length", "0")),
            k(base().header("transfer-encoding", "chunked")),
            k(http::Request::builder()
                .method(http::Method::from_bytes(b"get").unwrap())
                .uri("/a")
                .header("host", "web")),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(&k0, v, "variant {i}");
        }
        assert_ne!(
            k(base().header("content-length", "5")),
            k(base().header("content-length", "5, 5"))
        );
    }

    /// The table shared with tests/unit/test_l7memo.py: one group, one key.
    #[test]
    fn the_shared_cases_group_heads_by_key() {
        let mut seen: Vec<(String, Key)> = Vec::new();
        for line in include_str!("l7memo_cases.txt").lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let (group, method, target, version) = (cols[0], cols[1], cols[2], cols[3]);
            let mut b = http::Request::builder()
                .method(http::Method::from_bytes(method.as_bytes()).unwrap())
                .uri(target)
                .version(if version == "1.0" {
                    http::Version::HTTP_10
                } else {
                    http::Version::HTTP_11
                });
            for f in cols
                .get(4)
                .unwrap_or(&"")
                .split(" | ")
                .filter(|f| !f.is_empty())
            {
                let (n, v) = f.split_once(": ").unwrap();
                b = b.header(n, v);
            }
            let key = k(b);
            for (g, other) in &seen {
                assert_eq!(g == group, &key == other, "{line:?} vs group {g}");
            }
            seen.push((group.to_string(), key));
        }
        assert!(seen.len() > 20);
    }

    #[test]
    fn a_memo_holds_for_its_generation_only_and_the_table_is_bounded() {
        let m = Memos::default();
        let memo = |g| Memo {
            target: "/a".into(),
            host: None,
            token: 1,
            generation: g,
        };
        let k0 = k(http::Request::get("/a"));
        m.put(k0.clone(), memo(3));
        assert_eq!(m.get(&k0, 3), Some(memo(3)));
        assert_eq!(m.get(&k0, 4), None);
        for i in 0..MAX_L7_MEMO + 5 {
            m.put(k(http::Request::get(format!("/p{i}"))), memo(3));
            assert!(m.len() <= MAX_L7_MEMO);
        }
    }
}
