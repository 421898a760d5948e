//! Reused answers on the core's HTTP path (l7memo.rs): what Python is asked, what
//! reaches the workload, and what each exchange's event carries.

use super::tests::{run_on, shared, OK};
use crate::events::Event;

fn asked(evs: &[Event]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Request { target, .. } => Some(target.clone()),
            _ => None,
        })
        .collect()
}

type Seen = (u64, u16, u32, Option<(String, String, String)>);

fn exchanges(evs: &[Event]) -> Vec<Seen> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Exchange {
                rid,
                status,
                memo,
                told,
                ..
            } => Some((*rid, *status, *memo, told.as_deref().cloned())),
            _ => None,
        })
        .collect()
}

const THREE: &[u8] = b"GET /m HTTP/1.1\r\nHost: web\r\nUser-Agent: a\r\n\r\n\
    GET /m HTTP/1.1\r\nHost: web\r\nUser-Agent: b\r\n\r\n\
    GET /m HTTP/1.1\r\nHost: other\r\n\r\n";

#[tokio::test]
async fn an_answer_python_lets_reuse_is_carried_out_without_asking_again() {
    let (out, up, evs) = run_on(shared(), THREE, OK, false).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(up.matches("GET /m HTTP/1.1").count(), 3, "{up}");
    // the second head has the first's key (another User-Agent is not in it); the third
    // another Host: asked
    assert_eq!(asked(&evs), ["/m", "/m"]);
    let ex: Vec<(u64, u16, u32)> = exchanges(&evs).iter().map(|e| (e.0, e.1, e.2)).collect();
    assert_eq!(ex, [(1, 200, 0), (2, 200, 7), (3, 200, 0)]);
}

#[tokio::test]
async fn a_memo_of_another_policy_generation_is_not_used() {
    let s = shared();
    s.l7.generation.set(1); // the decider's memos are of generation 0
    let (out, _, evs) = run_on(s, THREE, OK, false).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(asked(&evs), ["/m", "/m", "/m"]);
    assert!(exchanges(&evs).iter().all(|e| e.2 == 0));
}

#[tokio::test]
async fn a_denied_head_is_never_reused_and_never_reaches_the_workload() {
    let req = b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n";
    let (out, up, evs) = run_on(shared(), req, OK, false).await;
    assert_eq!(out.matches("HTTP/1.1 403 Forbidden").count(), 2, "{out}");
    assert!(!up.contains("admin"), "{up}");
    assert_eq!(asked(&evs).len(), 2);
}
